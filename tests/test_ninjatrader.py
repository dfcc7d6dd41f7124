"""The NinjaTrader client (bento/clients/ninjatrader) compiled with Mono and run against the real
service: C# tests in tests/ninjatrader/SmcTests.cs, driven and checked from here.

What is proven: SmcClient.cs and SmcAutobot.cs compile as C# 7.2 against the .NET Framework 4.8
reference assemblies (the strategy against a shim of the NinjaScript members it uses); the client
talks to the real service (round trip into typed answers with the risk block, 4xx not retried,
5xx/429/refused/reset retried three times, one deadline over all attempts, POST /bars counts and
idempotence); a stored day replayed through the C# client gives the Python client's answers; the
strategy, driven through the shim on that day, makes the decisions smc_core/policy.py makes on the
same answers and the backtest's position path; bar times convert to UTC through DST as Python's
calendar does. Not proven: anything about NinjaTrader itself (its order handling, fills, session
templates, threads) — the shim only stands in for its API (see README, "NinjaTrader").
"""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from serving_setup import KEY, ROOT, Server, bars, request_for

sys.path.insert(0, str(ROOT / "bento" / "clients" / "python"))
from smc_client import SmcClient  # noqa: E402

from smc_core.calendar import CME_EQUITY, zone
from smc_core.evaluation.backtest import backtest
from smc_core.policy import PolicyConfig, decide

CLIENT = ROOT / "bento" / "clients" / "ninjatrader"
TESTS = ROOT / "tests" / "ninjatrader"
MCS = ["mcs", "-langversion:7.2", "-sdk:4.8", "-warnaserror+", "-r:System.Net.Http.dll",
       "-r:System.Runtime.Serialization.dll", "-r:System.Xml.dll", "-r:System.ComponentModel.DataAnnotations.dll"]
CHART_ZONE = "America/New_York"  # NinjaTrader's configured zone in these tests: neither UTC nor the exchange's
CONTRACTS = 3  # half size: round(1.5) = 2, as Python rounds
DAY_ROWS = 1380  # one CME trading day of 1-minute bars

if not (shutil.which("mcs") and shutil.which("mono")):
    pytest.skip("!!! Mono (mcs, mono) is not installed: the NinjaTrader C# tests did NOT run "
                "(apt-get install mono-devel; .ci/run installs it)", allow_module_level=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The client alone (no NinjaTrader type may slip in), then the tests with the strategy and the shim."""
    out = tmp_path_factory.mktemp("cs")
    run([*MCS, "-target:library", f"-out:{out / 'SmcClient.dll'}", str(CLIENT / "SmcClient.cs")])
    run([*MCS, f"-out:{out / 'SmcTests.exe'}", str(CLIENT / "SmcClient.cs"), str(CLIENT / "SmcAutobot.cs"),
         str(TESTS / "NinjaScriptShim.cs"), str(TESTS / "SmcTests.cs")])
    return out / "SmcTests.exe"


def run(command: list[str], timeout: float = 120) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, \
        f"{command[0]} failed ({done.returncode}):\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def mono(exe: Path, *args, expect: set[str], timeout: float = 300) -> dict[str, str]:
    """Run one mode of the C# tests; every expected test must say ok (none may go missing)."""
    done = subprocess.run(["mono", "--debug", str(exe), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)
    lines = done.stdout.splitlines()
    print("\n".join(lines))  # shown with -s or on failure: each C# test's name and time
    passed = {line.split()[1] for line in lines if line.startswith("ok ")}
    failed = [line for line in lines if line.startswith("FAIL ")]
    assert not failed and done.returncode == 0 and expect <= passed, "\n".join(lines[-60:]) + done.stderr[-3000:]
    data = {}
    for line in lines:
        if line.startswith("data "):
            name, _, rest = line[5:].partition(" ")
            data[name] = rest
    return data


@pytest.fixture(scope="module")
def market() -> pd.DataFrame:
    frame = bars(days=3, seed=9).assign(delta=np.nan)  # NinjaTrader sends no order-flow delta
    assert (frame["volume"] % 1 == 0).all()  # NinjaTrader's volumes are whole
    return frame


@pytest.fixture(scope="module")
def thresholds(package, market) -> tuple[float, float]:
    """Entry and full-size thresholds at the 35th and 75th percentiles of the tiny model's
    confidences on the replayed stretch (computed in process), so that both tiers and no entry
    all occur on that day whatever one epoch of training gave (it is not bit-reproducible)."""
    from smc_core.serving.engine import load_model, predict
    from smc_core.serving.request import parse_request

    model = load_model(package, "local/model")
    stretch = market.iloc[:2 * DAY_ROWS + 100]
    confidences = [predict(parse_request(request_for(stretch, row)), model, PolicyConfig(), 0.0).body["confidence"]
                   for row in range(DAY_ROWS, len(stretch), 3)]
    half, full = (round(float(q), 4) for q in np.quantile(confidences, [0.35, 0.75]))
    return half, max(half, full)


@pytest.fixture(scope="module")
def server(package, thresholds, database, tmp_path_factory):
    running = Server({"MODEL_PATH": str(package), "DATABASE_URL": database.url, "RATE_LIMIT_PER_SECOND": "100000",
                      "RATE_LIMIT_BURST": "100000", "CONFIDENCE_THRESHOLD": str(thresholds[0])},
                     tmp_path_factory.mktemp("home")).wait()
    yield running
    running.stop()


def write_bars(frame: pd.DataFrame, path: Path) -> Path:
    """wall (in CHART_ZONE), utc, o, h, l, c, volume, last_of_session (the backtest's rule)."""
    session = CME_EQUITY.trading_day_of(frame["ts"])
    last = np.append(session[1:] != session[:-1], True)
    wall = frame["ts"].dt.tz_convert(CHART_ZONE).dt.strftime("%Y-%m-%d %H:%M:%S")
    utc = frame["ts"].dt.strftime("%Y-%m-%d %H:%M:%S")
    lines = ["wall,utc,open,high,low,close,volume,last_of_session"]
    for row in zip(wall, utc, frame["open"], frame["high"], frame["low"], frame["close"], frame["volume"], last):
        prices = ",".join(repr(float(x)) for x in row[2:6])
        lines.append(f"{row[0]},{row[1]},{prices},{int(row[6])},{int(row[7])}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_unit_tiers_decisions_json_and_dst(built, tmp_path):
    """Pure parts: tiers and decide against smc_core/policy.py's own output, JSON shapes, and bar
    times in three zones through the 2024 DST edges against Python's UTC."""
    rng = random.Random(13)
    lines = []
    for case in range(600):
        if case % 5 == 0:  # ties and tier edges
            p = rng.choice([[0.5, 0.5, 0.0], [0.4, 0.4, 0.2], [0.70, 0.2, 0.1], [0.55, 0.25, 0.2], [0.2, 0.7, 0.1],
                            [1 / 3, 1 / 3, 1 / 3], [0.2, 0.55, 0.25], [0.5499999, 0.3, 0.1500001]])
        else:
            raw = [rng.random() ** 2 for _ in range(3)]
            p = [x / sum(raw) for x in raw]
        position = rng.choice([-3, -2, -1, 0, 0, 1, 2, 3])
        half = rng.choice([0.4, 0.55, 0.6])
        full = max(half, rng.choice([0.5, 0.7, 0.8]))
        contracts = rng.choice([1, 2, 3, 5])
        stop, target = rng.choice([1.75, 3.25, 0.25]), rng.choice([1.75, 4.5])
        config = PolicyConfig(full_threshold=full, half_threshold=half, contracts=contracts, stop_atr=1.0,
                              target_atr=1.0)
        d = decide(p, position, 1.0, config)
        entering = d.action in ("enter", "reverse")
        lines.append("\t".join([*(repr(float(x)) for x in p), str(position), repr(full), repr(half), str(contracts),
                                repr(stop), repr(target), d.action, str(d.direction), str(d.contracts),
                                f"{d.size_fraction:g}", d.label, f"{stop if entering else 0.0:g}",
                                f"{target if entering else 0.0:g}"]))
    (tmp_path / "decisions.tsv").write_text("\n".join(lines) + "\n")

    rows = []
    # whole trading sessions around the 2024 switches, from the calendar (the offset changes between sessions)
    for series, day in (("spring", date(2024, 3, 11)), ("spring", date(2024, 3, 12)), ("fall", date(2024, 11, 1)),
                        ("fall", date(2024, 11, 4))):
        for name in ("America/New_York", "Europe/Berlin", "America/Chicago"):
            for ts in CME_EQUITY.expected_closes(day, timedelta(minutes=1))[::7]:
                rows.append((f"{series}-{name}", name, ts))
    # continuous minutes through the repeated and the skipped hour
    for name, start in (("America/New_York", "2024-11-03 04:30"), ("America/New_York", "2024-03-10 06:00"),
                        ("Europe/Berlin", "2024-10-27 00:00"), ("Europe/Berlin", "2024-03-31 00:30"),
                        ("America/Chicago", "2024-11-03 05:30")):
        for ts in pd.date_range(start, periods=180, freq="min", tz="UTC"):
            rows.append((f"continuous-{name}-{start}", name, ts))
    with open(tmp_path / "times.tsv", "w") as out:
        for series, name, ts in rows:
            wall = ts.tz_convert(zone(name)).strftime("%Y-%m-%d %H:%M:%S")
            out.write(f"{series}\t{name}\t{wall}\t{ts.strftime('%Y-%m-%d %H:%M:%S')}\n")

    mono(built, "unit", tmp_path, expect={"tiers_both_ways", "decide_matches_smc_core_policy",
                                          "json_answer_and_request_shapes", "json_error_bodies",
                                          "bar_times_to_utc_through_dst"})


def test_client_against_the_real_service(built, server, market, database, tmp_path):
    data = mono(built, "http", server.url, KEY, write_bars(market.iloc[:800], tmp_path / "bars.csv"), expect={
        "predict_round_trip_typed_with_risk", "unprocessable_422_is_not_retried_and_its_body_is_read",
        "unauthorized_401_is_not_retried", "fails_twice_then_the_real_answer_on_the_third_attempt",
        "retries_on_5xx_and_429_only", "refused_connection_is_retried_three_times", "the_deadline_covers_all_attempts",
        "a_slow_service_gives_no_signal_within_the_deadline", "upload_bars_counts_and_is_idempotent",
        "the_shared_http_client_is_configured_once"})
    assert "again_unchanged=400" in data["upload"], data
    with database.connection() as conn:
        stored = conn.execute("SELECT ts, open, high, low, close, volume FROM bars WHERE symbol = 'ES' AND ts >= %s "
                              "AND ts <= %s ORDER BY ts", (market["ts"].iloc[300], market["ts"].iloc[699])).fetchall()
    expected = market.iloc[300:700]
    assert [row[0] for row in stored] == list(expected["ts"])  # the uploaded times are the bars' UTC closes
    assert [row[4] for row in stored] == list(expected["close"])


@pytest.fixture(scope="module")
def stored_day(server, market):
    """Day 1 as history, day 2 replayed (with the first 100 bars of day 3, past a session close),
    all stored in the service's database first."""
    whole = request_for(market, len(market) - 1, count=len(market))
    records = [*whole["context_bars"], whole["current_bar"]]
    with SmcClient(server.url, KEY, timeout=30) as client:
        counts = client.upload_bars("ES", "1m", records)
        assert counts["received"] == len(market) and counts["conflicting"] == 0
        stretch = market.iloc[:2 * DAY_ROWS + 100].reset_index(drop=True)
        answers = {row: client.predict_payload(request_for(stretch, row)) for row in range(DAY_ROWS, len(stretch))}
    return stretch, answers


def test_a_stored_day_through_the_csharp_client_gives_the_python_answers(built, server, stored_day, tmp_path):
    stretch, python = stored_day
    out = tmp_path / "answers.jsonl"
    data = mono(built, "replay", server.url, KEY, write_bars(stretch, tmp_path / "bars.csv"), DAY_ROWS, out,
                expect={"replay_through_the_client"}, timeout=600)
    csharp = {line["row"]: line["answer"] for line in map(json.loads, out.read_text().splitlines())}
    assert sorted(csharp) == sorted(python) and len(csharp) == DAY_ROWS + 100
    for row, theirs in python.items():
        ours = csharp[row]
        for field in ("label", "position_size", "threshold", "raw_label", "model_version", "bars_from_store"):
            assert ours[field] == theirs[field], (row, field, ours[field], theirs[field])
        # .NET Framework's and Mono's double.Parse are not correctly rounded: a 17-digit number may be
        # read one ulp off (0.3729340741218721 → …213). Everything else is equal bit for bit.
        for ours_value, theirs_value, what in (
                *((ours["probabilities"][k], theirs["probabilities"][k], k) for k in ("long", "short", "skip")),
                (ours["confidence"], theirs["confidence"], "confidence"),
                (ours["risk"]["atr"], theirs["risk"]["atr"], "atr")):
            assert abs(ours_value - theirs_value) <= math.ulp(theirs_value), (row, what, ours_value, theirs_value)
        assert {k: v for k, v in ours["risk"].items() if k != "atr"} == \
            {k: v for k, v in theirs["risk"].items() if k != "atr"}, (row, ours["risk"], theirs["risk"])
        assert ours["request_id"] != theirs["request_id"]
    labels = pd.Series([a["label"] for a in python.values()]).value_counts()
    assert {"long", "short", "skip"} <= set(labels.index), labels
    print("C# replay:", data["replay"], dict(labels))


def test_the_strategy_decides_like_the_policy_on_that_day(built, server, thresholds, stored_day, tmp_path):
    """SmcAutobot.cs through the shim, bar by bar in real time, against smc_core/policy.py on the
    same answers and the same positions: entries by tier, no pyramiding, reversal, stop and target
    from the risk block, nothing on a session's last bar. The positions are the backtest's (the
    one behind the gates) for the first 700 bars, then a rotation of long, short and flat, so that
    holds and reversals occur whatever the model's bias."""
    stretch, answers = stored_day
    first = DAY_ROWS
    threshold, full = thresholds
    probabilities = np.full((len(stretch), 3), np.nan)
    atr = np.full(len(stretch), np.nan)
    for row, answer in answers.items():
        probabilities[row] = [answer["probabilities"][k] for k in ("long", "short", "skip")]
        atr[row] = answer["risk"]["atr"]
    policy = PolicyConfig(half_threshold=threshold, full_threshold=max(threshold, full), contracts=CONTRACTS)
    session = CME_EQUITY.trading_day_of(stretch["ts"]).astype("int64")
    traded = stretch.assign(atr=atr, session=session).iloc[first:].reset_index(drop=True)
    result = backtest(traded, probabilities[first:], policy)
    ts = traded["ts"].to_numpy()
    position = np.zeros(len(traded), dtype=int)  # held when bar i's answer is traded (after its exits)
    for trade in result.trades.itertuples():
        held = (ts >= trade.entry_ts) & (ts < trade.exit_ts)
        position[held] += trade.direction * trade.contracts
    rotation = [0, CONTRACTS, CONTRACTS, -1, 0, -CONTRACTS, -2, 2]
    position[700:] = [rotation[(i // 3) % len(rotation)] for i in range(len(position) - 700)]
    (tmp_path / "positions.csv").write_text(
        "bar,position\n" + "".join(f"{first + i},{p}\n" for i, p in enumerate(position)))

    last = np.append(session[1:] != session[:-1], True)
    expected, counts = {}, {"enter": 0, "reverse": 0, "hold": 0, "none": 0, "full": 0, "half": 0, "session_end": 0}
    for row in range(first, len(stretch)):
        calls = []
        if last[row]:
            counts["session_end"] += 1
        else:
            answer = answers[row]
            d = decide(probabilities[row], int(position[row - first]), atr[row], policy)
            counts[d.action] += 1
            if d.action in ("enter", "reverse"):
                counts["full" if d.size_fraction == 1 else "half"] += 1
                signal = "SmcLong" if d.direction > 0 else "SmcShort"
                ticks = [round(answer["risk"][k] / 0.25) for k in ("stop_distance", "target_distance")]
                calls = [f"SetStopLoss {signal} Ticks {ticks[0]} False", f"SetProfitTarget {signal} Ticks {ticks[1]}",
                         f"Enter{'Long' if d.direction > 0 else 'Short'} {d.contracts} {signal}"]
        expected[row] = calls
    assert all(counts[k] > 0 for k in counts), counts  # every branch of the policy is exercised on this day
    assert len(result.trades) > 10

    out = tmp_path / "calls.jsonl"
    data = mono(built, "strategy", server.url, KEY, write_bars(stretch, tmp_path / "bars.csv"), CHART_ZONE, first,
         tmp_path / "positions.csv", full, CONTRACTS, out,
         expect={"strategy_defaults", "strategy_trades_the_answers_bar_by_bar",
                 "a_recreated_strategy_uploads_again_idempotently", "a_missed_answer_means_no_entry_and_is_logged",
                 "strategy_analyzer_option_calls_the_service_on_historical_bars"}, timeout=600)
    got = {line["bar"]: line["calls"] for line in map(json.loads, out.read_text().splitlines())}
    mismatches = [(row, expected[row], got.get(row)) for row in expected if got.get(row) != expected[row]]
    assert not mismatches, mismatches[:5]
    # the history the strategy uploaded at the switch to real time is the stored day, to the minute
    assert f"history uploaded: 0 new, {first} known, 0 differing" in data["first_upload"], data
    print("strategy decisions:", counts, "backtest trades:", len(result.trades), "thresholds:", thresholds)
