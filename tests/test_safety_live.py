"""Safety end to end on real parts: a BentoML server following the registry, real PostgreSQL
(behind a proxy that can cut it), the real market-data job and sensors.

A losing regime (the champion learnt setups that now resolve the other way) is replayed
through HTTP; the circuit breaker sensor resolves its outcomes, halts trading and raises an
alert, and requests the rollback, which runs; the service answers `skip` (reason `halted`)
within one halt poll interval. Restarted while the database is down it is still halted; a
resume from the CLI lets it trade again. Then an A/B test on the next replayed day ends with
the decision its rule gives on per-arm figures computed here by hand."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from datetime import date

import mlflow
import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance
from serving_setup import ADMIN, ROOT, DatabaseProxy, Server, request_for, tiny_package

from smc_core.ab_test import arm_bucket
from smc_core.alerts import recent_alerts
from smc_core.calendar import CME_EQUITY
from smc_core.labels import LABELS, Horizon
from smc_core.promotion import decisions, promote, start_ab_test
from smc_core.registry import TrackingConfig, alias_version, configure, register_package
from smc_core.safety import ALL, SafetySettings, halt_events, read_halts
from smc_core.settings import Settings
from smc_core.synthetic import SyntheticConfig, generate_bars
from smc_jobs.local import LocalRunner

pytestmark = pytest.mark.slow  # ~6 min: three tiny models, two replayed days, two server starts

CONTEXT = 49
POLL_S = 1.0
THRESHOLD = "0.34"
"""The tiny one-epoch models are rarely confident: a low entry threshold makes them trade."""
SAFETY = SafetySettings()  # the default limits and rules


@pytest.fixture(scope="module")
def system(database, tmp_path_factory):
    home = tmp_path_factory.mktemp("safety")
    env = {"SMC_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
           "DATABASE_URL": database.url, "SMC_PARTITION_START": "2024-01-01", "SMC_LANDING_DIR": str(home / "landing")}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    configure(TrackingConfig.from_settings(Settings.from_env()))
    versions = {}
    for name, edge, seed in (("previous", "smc", 6), ("losing", "smc", 5), ("challenger", "smc_reversed", 7)):
        frame = generate_bars(SyntheticConfig(days=3, edge=edge, edge_strength=0.9, seed=seed))
        package = tiny_package(home / f"package-{name}", bars_frame=frame)
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(package), "model_package")
            versions[name] = register_package(run.info.run_id, f"{run.info.artifact_uri}/model_package", alias=None)
    promote(database, versions["previous"], "test: the known-good champion")
    promote(database, versions["losing"], "test: the champion that will lose")  # previous ← the known-good one
    from smc_jobs.definitions import build_definitions

    (home / "dagster").mkdir()
    runner = LocalRunner(build_definitions(Settings.from_env(), safety=SAFETY),
                         DagsterInstance.local_temp(str(home / "dagster")))
    proxy = DatabaseProxy(database.url).restore()
    server_env = {"DATABASE_URL": proxy.url, "CONFIDENCE_THRESHOLD": THRESHOLD, "HALT_POLL_SECONDS": str(POLL_S),
                  "MODEL_POLL_SECONDS": "0.5", "RATE_LIMIT_PER_SECOND": "100000", "SHADOW_ALIAS": "off"}
    market = generate_bars(SyntheticConfig(days=2, edge="smc_reversed", edge_strength=0.9, seed=11,
                                           start=date(2024, 3, 11)))
    days = CME_EQUITY.trading_day_of(market["ts"])
    state = {"home": home, "runner": runner, "proxy": proxy, "server_env": server_env, "versions": versions,
             "market": market, "first_day_rows": int((days == days[0]).sum())}
    state["server"] = started(server_env, home)
    yield state
    state["server"].stop()
    proxy.cut()
    for key, value in saved.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def started(env: dict, home) -> Server:
    """A server that is ready, or stopped (never left running behind a failed start)."""
    server = Server(env, home)
    try:
        return server.wait(timeout=240)  # a busy 2-core machine has taken over 90 s to load the champion
    except Exception:
        server.stop()
        raise


def replay(server: Server, market: pd.DataFrame, rows: range) -> list[dict]:
    answers = []
    for end in rows:
        response = server.predict(request_for(market, end, CONTEXT))
        assert response.status_code == 200, response.text
        answers.append({**response.json(), "ts": market["ts"].iloc[end]})
    return answers


def wait_stored(server: Server, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = server.client.get("/health").json()
        if all(health[w]["queued"] == 0 and health[w]["spool_rows"] == 0 for w in ("prediction_log", "bar_capture")):
            return
        time.sleep(0.5)
    raise AssertionError(f"rows still waiting after {timeout}s: {health}")


def label_the_replayed_days(runner: LocalRunner) -> None:
    """What the live-bars sensor requests for the days the service received: bars, features, labels."""
    requests = runner.tick("live_bars_sensor").run_requests
    assert requests
    for request in requests:
        runner.execute(request, "market_data_job")


def realised(database, answers: list[dict]) -> pd.DataFrame:
    """By hand: each answer against its stored triple-barrier label (direction × size × log return)."""
    with database.connection() as conn:
        labels = pd.DataFrame(conn.execute(
            "SELECT ts, label, ret FROM labels WHERE symbol = 'ES' AND timeframe = '1m' AND horizon = %s",
            (Horizon().name,)).fetchall(), columns=["ts", "realised", "ret"])
    frame = pd.DataFrame(answers).merge(labels.assign(ts=pd.to_datetime(labels["ts"], utc=True)), on="ts")
    frame = frame[frame["realised"] >= 0]
    direction = frame["label"].map({"long": 1, "short": -1, "skip": 0})
    frame["trade"] = (direction != 0) & (frame["position_size"] > 0)
    frame["return"] = np.where(frame["trade"] & frame["ret"].notna(), direction * frame["position_size"] *
                               frame["ret"].fillna(0.0), 0.0)
    frame["hit"] = frame["trade"] & (frame["realised"] == frame["label"].map(LABELS.index))
    return frame


def until(server: Server, payload: dict, wanted, timeout: float = 30.0) -> tuple[dict, float]:
    """Post ``payload`` until ``wanted(answer)``; the answer and the wall time it came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = server.predict(payload).json()
        if wanted(answer):
            return answer, time.time()
        time.sleep(0.02)
    raise AssertionError(f"not seen within {timeout}s; last answer {answer}")


def test_a_losing_regime_trips_the_breaker_halts_within_a_poll_and_rolls_back(system, database):
    server, market, runner, versions = system["server"], system["market"], system["runner"], system["versions"]
    answers = replay(server, market, range(CONTEXT - 1, system["first_day_rows"]))
    assert {a["model_version"] for a in answers} == {f"smc-lora/{versions['losing']}"}
    wait_stored(server)
    label_the_replayed_days(runner)
    hand = realised(database, answers)
    trades = hand[hand["trade"]]
    assert len(trades) > 500 and trades["return"].sum() < 0  # the regime loses
    equity = np.concatenate([[0.0], trades["return"].cumsum().to_numpy()])
    drawdown = float(np.max(np.maximum.accumulate(equity) - equity))
    assert drawdown >= SAFETY.rollback_drawdown  # deep enough for both rules at their defaults

    tick = runner.tick("circuit_breaker_sensor")
    halts = read_halts(database)
    assert ALL in halts.halts and halts.halts[ALL].source == "breaker"
    halted_at = min(h.since for h in halts.halts.values()).timestamp()  # ES (daily loss, run of losses), then all
    alerts = recent_alerts(database, kind="circuit_breaker")
    assert alerts and all(alert["severity"] == "error" for alert in alerts)
    breach = {b["rule"]: b for alert in alerts for b in alert["details"]["breaches"]}
    assert breach["drawdown"]["value"] == pytest.approx(drawdown, rel=1e-9)  # = the hand computation

    # the service answers skip, reason halted, within one poll interval of the halt
    probe = request_for(market, system["first_day_rows"] - 1, CONTEXT)
    answer, seen_at = until(server, probe, lambda a: a.get("skip_reason") == "halted")
    assert seen_at - halted_at <= POLL_S + 0.5, seen_at - halted_at
    assert answer["label"] == "skip" and answer["position_size"] == 0 and answer["halt"]["scope"] in ("ES", "all")
    answer, _ = until(server, probe, lambda a: a.get("halt", {}).get("scope") == "all", timeout=5 * POLL_S)
    assert answer["risk"]["stop_price"] is None and answer["raw_label"] in LABELS
    health = server.client.get("/health").json()["halts"]
    assert health["all"]["source"] == "breaker" and health["source"] == "database"
    assert 'smc_trading_halted{scope="all"} 1.0' in server.client.get("/metrics").text

    # the rollback rule: its run moves the champion back, recorded with the reason
    (request,) = tick.run_requests
    assert request.tags["smc/trigger"] == "circuit_breaker"
    runner.execute(request, "rollback_job")
    last = decisions(database)[-1]
    assert last["decision"] == "rollback" and last["champion_after"] == versions["previous"]
    assert "circuit breaker" in last["reason"] and f"{drawdown:.4%}" in last["reason"]
    assert alias_version("champion") == versions["previous"]
    answer, _ = until(server, probe, lambda a: a["model_version"] == f"smc-lora/{versions['previous']}")
    assert answer["skip_reason"] == "halted"  # rolled back, still halted until someone resumes
    assert runner.tick("circuit_breaker_sensor").run_requests == []  # the new champion has no live trades


def test_restarted_while_the_database_is_down_it_stays_halted_until_resumed(system, database):
    proxy, home, market = system["proxy"], system["home"], system["market"]
    system["server"].stop()
    proxy.cut()
    server = system["server"] = started(system["server_env"], home)
    probe = request_for(market, system["first_day_rows"] - 1, CONTEXT)
    answer = server.predict(probe).json()
    assert answer["skip_reason"] == "halted" and answer["halt"]["source"] == "breaker"
    health = server.client.get("/health").json()["halts"]
    assert health["source"] == "local file" and health["database_error"]
    time.sleep(3 * POLL_S)
    assert server.predict(probe).json()["skip_reason"] == "halted"  # the outage never un-halts

    proxy.restore()
    deadline = time.monotonic() + 30
    while server.client.get("/health").json()["halts"]["source"] != "database" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.predict(probe).json()["skip_reason"] == "halted"
    refused = server.client.post("/admin/resume", json={"reason": "no key"})
    assert refused.status_code == 401

    subprocess.run([sys.executable, "-m", "smc_jobs.cli", "resume", "--reason", "test: reviewed the losses"],
                   cwd=ROOT, env={**os.environ, "DATABASE_URL": database.url}, check=True, capture_output=True)
    answer, seen_at = until(server, probe, lambda a: "skip_reason" not in a)
    resumed_at = halt_events(database, limit=1)[0]["at"].timestamp()
    assert seen_at - resumed_at <= POLL_S + 1.5, seen_at - resumed_at  # the CLI process's own exit included
    assert read_halts(database).halts == {}

    # and the admin route, per symbol
    halted = server.client.post("/admin/halt", json={"symbols": ["ES"], "reason": "test"},
                                headers={"X-Admin-Key": ADMIN})
    assert halted.status_code == 200 and halted.json()["persisted"] and halted.json()["halts"]["symbols"]["ES"]
    assert server.predict(probe).json()["halt"] == {k: v for k, v in halted.json()["halts"]["symbols"]["ES"].items()
                                                     if k != "details"}
    resumed = server.client.post("/admin/resume", json={"symbols": ["ES"], "reason": "test"},
                                 headers={"X-Admin-Key": ADMIN})
    assert resumed.status_code == 200 and "skip_reason" not in server.predict(probe).json()


def test_an_ab_test_on_a_replayed_day_ends_as_its_rule_says(system, database):
    server, market, runner, versions = system["server"], system["market"], system["runner"], system["versions"]
    champion, challenger = f"smc-lora/{versions['previous']}", f"smc-lora/{versions['challenger']}"
    start_ab_test(database, versions["challenger"], 0.5, "test: A/B against the champion")
    deadline = time.monotonic() + 30
    while (info := server.client.get("/model", headers={"X-API-Key": "test-key"}).json())["ab_test"] is None:
        assert time.monotonic() < deadline, info
        time.sleep(0.2)
    assert info["ab_test"]["challenger"] == challenger and info["ab_test"]["challenger_share"] == 0.5

    answers = replay(server, market, range(system["first_day_rows"], len(market)))
    for answer in answers:  # every answer's arm is the stated hash of its bar
        expected = "challenger" if arm_bucket("ES", "1m", answer["ts"].to_pydatetime()) < 0.5 else "champion"
        assert answer["arm"] == expected
        assert answer["model_version"] == (challenger if expected == "challenger" else champion)
    wait_stored(server)
    with database.connection() as conn:
        logged = dict(conn.execute("SELECT arm, count(*) FROM predictions WHERE ts >= %s AND NOT shadow GROUP BY arm",
                                   (answers[0]["ts"],)).fetchall())
    assert logged == {arm: sum(a["arm"] == arm for a in answers) for arm in ("champion", "challenger")}
    label_the_replayed_days(runner)

    # by hand: each arm's trades, hits and returns, and the one-sided Welch t-test
    hand = realised(database, answers)
    figures = {}
    for arm in ("champion", "challenger"):
        rows = hand[hand["arm"] == arm]
        returns = rows.loc[rows["trade"], "return"].to_numpy()
        figures[arm] = {"predictions": len(rows), "trades": len(returns), "hits": int(rows["hit"].sum()),
                        "total_return": float(returns.sum()), "mean_return": float(returns.mean()),
                        "var": float(returns.var(ddof=1))}
    a, b = figures["challenger"], figures["champion"]
    assert min(a["trades"], b["trades"]) >= SAFETY.ab_min_trades
    se2 = a["var"] / a["trades"] + b["var"] / b["trades"]
    t = (a["mean_return"] - b["mean_return"]) / math.sqrt(se2)
    df = se2**2 / ((a["var"] / a["trades"]) ** 2 / (a["trades"] - 1) + (b["var"] / b["trades"]) ** 2 / (b["trades"] - 1))
    from scipy.stats import t as student

    p = float(student.sf(t, df))
    expected = "promoted" if p < SAFETY.ab_alpha else "refused"

    (request,) = runner.tick("ab_test_sensor").run_requests
    runner.run("ab_review_job", tags=request.tags, asset_selection=[AssetKey("ab_review")])  # Bento tested elsewhere
    last = decisions(database)[-1]
    assert last["version"] == versions["challenger"] and last["decision"] == expected
    recorded = last["metrics"]
    for arm in ("champion", "challenger"):
        for key in ("predictions", "trades", "hits"):
            assert recorded[arm][key] == figures[arm][key], (arm, key)
        assert recorded[arm]["total_return"] == pytest.approx(figures[arm]["total_return"], rel=1e-9)
        assert recorded[arm]["mean_return"] == pytest.approx(figures[arm]["mean_return"], rel=1e-9)
    assert (recorded["t"], recorded["df"], recorded["p_value"]) == pytest.approx((t, df, p), rel=1e-9)
    assert alias_version("ab") is None
    assert alias_version("champion") == (versions["challenger"] if expected == "promoted" else versions["previous"])
    print(f"A/B: {expected}; challenger {a['trades']} trades mean {a['mean_return']:+.6f}, champion {b['trades']} "
          f"trades mean {b['mean_return']:+.6f}; t {t:.3f}, df {df:.1f}, p {p:.5f}")
