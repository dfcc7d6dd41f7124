"""Live outcomes on hand-built paths: labels from ``triple_barrier``, predictions written by hand,
every outcome column and every live metric compared with arithmetic written out below.

Bars: 1-minute ES, ATR 1 everywhere, every entry closes at 100; H = 3 bars, barriers 1.5 ATR,
so the profit/stop levels are 101.5 / 98.5. Trading days (CME, CST = UTC-6 in early March):
day 1 = Tue 2024-03-05, day 2 = Wed 2024-03-06. Each path is its own session:

  UP    day 1 14:31  14:33 high 101.7 reaches 101.5        -> long,  exit 101.5, t1 14:33
  END   day 1 21:58  no touch, session ends at 22:00 (16:00 CT, close 100.2)
                                                             -> skip "session_end", t1 22:00
  DOWN  day 2 14:31  14:32 low 98.3 reaches 98.5            -> short, exit 98.5,  t1 14:32
  TIME  day 2 15:31  three bars without a touch, close 100.3 -> skip "time",  t1 15:34
  BOTH  day 2 16:31  16:32 spans 98..102: both in one bar    -> skip "both_same_bar", ret NaN
  OPEN  day 2 21:58  one bar, the frame ends (session open)  -> unknown (-1): pending
"""

from __future__ import annotations

import math
import time
from datetime import date

import numpy as np
import pandas as pd
import pytest

from smc_core.errors import ConfigError
from smc_core.labels import Horizon, triple_barrier
from smc_core.outcomes import (OUTCOME_COLUMNS, annualised_sharpe, compute_outcomes, live_summary,
                               refresh_live_metrics, resolve_outcomes)
from smc_core.store import write_labels

H3 = Horizon(bars=3, up_atr=1.5, down_atr=1.5)
H1 = Horizon(bars=1, up_atr=1.5, down_atr=1.5)  # a second horizon in the same table: must be ignored
CHAMPION, CHALLENGER = "smc-model/3", "smc-model/4"
DAY1, DAY2 = date(2024, 3, 5), date(2024, 3, 6)

ENTRY = (100, 100, 100, 100)
FLAT = (100, 100.5, 99.5, 100)
UP_TOUCH = (100, 101.7, 99.8, 101.6)
DOWN_TOUCH = (100, 100.2, 98.3, 98.4)


def t(day: date, hhmm: str) -> pd.Timestamp:
    return pd.Timestamp(f"{day} {hhmm}", tz="UTC")


# (session, first bar close, rows)
PATHS = {
    "UP": (1, t(DAY1, "14:31"), [ENTRY, FLAT, UP_TOUCH, FLAT]),
    "END": (2, t(DAY1, "21:58"), [ENTRY, FLAT, (100, 100.6, 99.8, 100.2)]),
    "DOWN": (3, t(DAY2, "14:31"), [ENTRY, DOWN_TOUCH, FLAT, FLAT]),
    "TIME": (4, t(DAY2, "15:31"), [ENTRY, FLAT, FLAT, (100, 100.5, 99.9, 100.3), FLAT]),
    "BOTH": (5, t(DAY2, "16:31"), [ENTRY, (100, 102, 98, 100), FLAT, FLAT]),
    "OPEN": (6, t(DAY2, "21:58"), [ENTRY, FLAT]),
}

# Long log returns of each path, by hand.
L_UP = math.log(101.5 / 100)
L_END = math.log(100.2 / 100)
L_DOWN = math.log(98.5 / 100)
L_TIME = math.log(100.3 / 100)


def build_bars(paths) -> pd.DataFrame:
    frames = []
    for session, start, rows in paths.values():
        frame = pd.DataFrame(rows, columns=["open", "high", "low", "close"], dtype=float)
        frame.insert(0, "ts", pd.date_range(start, periods=len(rows), freq="1min"))
        frame["atr"], frame["session"] = 1.0, session
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def store_labels(db, symbol: str, bars: pd.DataFrame, horizon: Horizon, **kwargs) -> pd.DataFrame:
    labels = pd.concat([bars[["ts"]], triple_barrier(bars, horizon, **kwargs)], axis=1)
    write_labels(db, symbol, "1m", horizon.name, labels, bars["ts"].iloc[0] - pd.Timedelta(minutes=1),
                 bars["ts"].iloc[-1])
    return labels


# request, ts, symbol, shadow, version, served label, raw_label, confidence, (p_long, p_short, p_skip), size
PREDICTIONS = [
    ("r-up", t(DAY1, "14:31"), "ES", False, CHAMPION, "long", "long", 0.80, (0.80, 0.15, 0.05), 1.0),
    ("r-low", t(DAY1, "14:31"), "ES", False, CHAMPION, "skip", "long", 0.50, (0.50, 0.30, 0.20), 0.0),
    ("r-end", t(DAY1, "21:58"), "ES", False, CHAMPION, "short", "short", 0.72, (0.10, 0.72, 0.18), 1.0),
    ("r-down", t(DAY2, "14:31"), "ES", False, CHAMPION, "short", "short", 0.62, (0.18, 0.62, 0.20), 0.5),
    ("r-skip", t(DAY2, "15:31"), "ES", False, CHAMPION, "skip", "skip", 0.70, (0.18, 0.12, 0.70), 0.0),
    ("r-both", t(DAY2, "16:31"), "ES", False, CHAMPION, "long", "long", 0.90, (0.90, 0.04, 0.06), 1.0),
    ("r-open", t(DAY2, "21:58"), "ES", False, CHAMPION, "long", "long", 0.75, (0.75, 0.15, 0.10), 1.0),
    ("r-nq", t(DAY2, "14:31"), "NQ", False, CHAMPION, "short", "short", 0.60, (0.20, 0.60, 0.20), 0.5),
    # the challenger in shadow answers the same requests (same request_id, shadow = true)
    ("r-up", t(DAY1, "14:31"), "ES", True, CHALLENGER, "short", "short", 0.75, (0.15, 0.75, 0.10), 1.0),
    ("r-down", t(DAY2, "14:31"), "ES", True, CHALLENGER, "short", "short", 0.90, (0.05, 0.90, 0.05), 1.0),
    ("r-open", t(DAY2, "21:58"), "ES", True, CHALLENGER, "skip", "skip", 0.55, (0.25, 0.20, 0.55), 0.0),
]

# Every outcome column, by hand: (request, shadow) -> (version, realised label, barrier, t1, ret, ambiguous,
# direction, size, realised_return = direction * size * ret (0 without a trade or when ambiguous), hit)
EXPECTED = {
    ("r-up", False): (CHAMPION, 0, "up", t(DAY1, "14:33"), L_UP, False, 1, 1.0, +1 * 1.0 * L_UP, True),
    ("r-low", False): (CHAMPION, 0, "up", t(DAY1, "14:33"), L_UP, False, 0, 0.0, 0.0, None),
    ("r-end", False): (CHAMPION, 2, "session_end", t(DAY1, "22:00"), L_END, False, -1, 1.0, -1 * 1.0 * L_END, False),
    ("r-down", False): (CHAMPION, 1, "down", t(DAY2, "14:32"), L_DOWN, False, -1, 0.5, -1 * 0.5 * L_DOWN, True),
    ("r-skip", False): (CHAMPION, 2, "time", t(DAY2, "15:34"), L_TIME, False, 0, 0.0, 0.0, None),
    ("r-both", False): (CHAMPION, 2, "both_same_bar", t(DAY2, "16:32"), None, True, 1, 1.0, 0.0, False),
    ("r-up", True): (CHALLENGER, 0, "up", t(DAY1, "14:33"), L_UP, False, -1, 1.0, -1 * 1.0 * L_UP, False),
    ("r-down", True): (CHALLENGER, 1, "down", t(DAY2, "14:32"), L_DOWN, False, -1, 1.0, -1 * 1.0 * L_DOWN, True),
}


def insert_predictions(db, rows) -> None:
    with db.connection() as conn:
        conn.execute("SELECT smc_prepare_time_range('predictions', %s, %s)",
                     (min(r[1] for r in rows), max(r[1] for r in rows)))
        for request, ts, symbol, shadow, version, label, raw, conf, (pl, ps, pk), size in rows:
            conn.execute(
                """INSERT INTO predictions (ts, request_id, shadow, logged_at, symbol, timeframe, model_version, label,
                   raw_label, confidence, p_long, p_short, p_skip, position_size, latency_ms, features, feature_set)
                   VALUES (%s, %s, %s, %s, %s, '1m', %s, %s, %s, %s, %s, %s, %s, %s, 3.0, %s, 'v-test')""",
                (ts, request, shadow, ts + pd.Timedelta(seconds=1), symbol, version, label, raw, conf, pl, ps, pk,
                 size, [0.1, 0.2]))


def stored_outcomes(db) -> list:
    """The table's rows as the database returns them (NULL stays None)."""
    from collections import namedtuple

    with db.connection() as conn:
        cursor = conn.execute(f"SELECT {', '.join(OUTCOME_COLUMNS)}, computed_at FROM prediction_outcomes "
                              "ORDER BY ts, request_id, shadow")
        row = namedtuple("Outcome", [c.name for c in cursor.description])
        return [row(*values) for values in cursor.fetchall()]


@pytest.fixture(scope="module")
def state(database):
    started = time.perf_counter()
    bars = build_bars(PATHS)
    labels = store_labels(database, "ES", bars, H3)
    store_labels(database, "ES", bars, H1)
    insert_predictions(database, PREDICTIONS)
    early = resolve_outcomes(database, horizon=H3.name, now=t(DAY1, "14:32") + pd.Timedelta(seconds=30))
    shadow = resolve_outcomes(database, horizon=H3.name, model_versions=CHALLENGER)
    batch = resolve_outcomes(database, horizon=H3.name)
    again = resolve_outcomes(database, horizon=H3)
    return {"db": database, "bars": bars, "labels": labels, "early": early, "shadow": shadow, "batch": batch,
            "again": again, "seconds": time.perf_counter() - started}


def test_the_paths_give_the_intended_labels(state):
    labels = state["labels"].set_index("ts")
    expected = {  # entry bar -> (label, barrier, t1)
        t(DAY1, "14:31"): (0, "up", t(DAY1, "14:33")),
        t(DAY1, "21:58"): (2, "session_end", t(DAY1, "22:00")),
        t(DAY2, "14:31"): (1, "down", t(DAY2, "14:32")),
        t(DAY2, "15:31"): (2, "time", t(DAY2, "15:34")),
        t(DAY2, "16:31"): (2, "both_same_bar", t(DAY2, "16:32")),
    }
    for ts, (label, barrier, t1) in expected.items():
        assert (labels.loc[ts, "label"], labels.loc[ts, "barrier"], labels.loc[ts, "t1"]) == (label, barrier, t1)
    assert labels.loc[t(DAY2, "21:58"), "label"] == -1
    assert np.isnan(labels.loc[t(DAY2, "16:31"), "ret"])


def test_every_outcome_column_matches_the_hand_computation(state):
    stored = stored_outcomes(state["db"])
    assert len(stored) == len(EXPECTED)
    for row in stored:
        expected = EXPECTED[(row.request_id, row.shadow)]
        version, label, barrier, t1, ret, ambiguous, direction, size, realised, hit = expected
        assert (row.model_version, row.realised_label, row.barrier, pd.Timestamp(row.t1)) == \
            (version, label, barrier, t1)
        assert (row.symbol, row.timeframe, row.horizon) == ("ES", "1m", "h3_u1.5_d1.5")
        assert (row.ambiguous, row.direction, row.position_size, row.hit) == (ambiguous, direction, size, hit)
        assert row.ret == (None if ret is None else pytest.approx(ret, rel=1e-12))
        assert row.realised_return == pytest.approx(realised, rel=1e-12, abs=0)
    # what resolve_outcomes returned is what it wrote
    returned = pd.concat([state["shadow"].outcomes, state["batch"].outcomes])
    returned = returned.sort_values(["ts", "request_id", "shadow"])
    assert list(zip(returned["request_id"], returned["shadow"])) == [(r.request_id, r.shadow) for r in stored]
    assert returned["realised_return"].tolist() == [r.realised_return for r in stored]


def test_counts_pending_and_idempotence(state):
    early, shadow, batch, again = state["early"], state["shadow"], state["batch"], state["again"]
    # at 14:32:30 on day 1 only the three 14:31 predictions exist; their label's t1 (14:33) is later
    assert (early.added, early.pending, early.pending_unknown, early.pending_unlabelled) == (0, 3, 3, 0)
    # the challenger's only: r-up and r-down resolved, its OPEN (label -1) waits
    assert (shadow.added, shadow.pending, shadow.pending_unknown, shadow.model_versions) == (2, 1, 1, (CHALLENGER,))
    # then the rest: 6 champion calls; OPEN (label -1, champion and shadow) and NQ (no labels) wait
    assert (batch.added, batch.ambiguous) == (6, 1)
    assert (batch.pending, batch.pending_unknown, batch.pending_unlabelled) == (3, 2, 1)
    assert batch.oldest_pending == t(DAY2, "14:31")
    assert batch.model_versions == (CHAMPION,)
    # a second run adds nothing and leaves the table as it was
    assert (again.added, again.pending) == (0, 3)
    assert again.outcomes.empty
    assert len(stored_outcomes(state["db"])) == 8
    meta = batch.metadata()
    assert meta["added"] == 6 and meta["oldest_pending"] == t(DAY2, "14:31").isoformat()
    assert state["seconds"] < 30


def daily_expectations():
    """live_metrics by hand. ECE: 15 equal-width bins of the top probability; in each day
    every prediction falls into its own bin, so ECE = mean |correct - confidence|."""
    ln = math.log
    return {
        (CHAMPION, False, DAY1): dict(
            predictions=3, trades=2, hits=1, ambiguous=0, hit_rate=1 / 2, skip_rate=1 / 3,
            realised_return=L_UP - L_END, mean_trade_return=(L_UP - L_END) / 2,
            # y: up long(0), low long(0), end skip(2)
            log_loss=-(ln(0.80) + ln(0.50) + ln(0.18)) / 3,
            # argmax long right (0.80, bin 12), long right (0.50, bin 7), short wrong (0.72, bin 10)
            ece=(abs(1 - 0.80) + abs(1 - 0.50) + abs(0 - 0.72)) / 3),
        (CHAMPION, False, DAY2): dict(
            predictions=3, trades=2, hits=1, ambiguous=1, hit_rate=1 / 2, skip_rate=1 / 3,
            realised_return=-0.5 * L_DOWN + 0.0, mean_trade_return=(-0.5 * L_DOWN) / 2,
            # y: down short(1), skip skip(2), both skip(2)
            log_loss=-(ln(0.62) + ln(0.70) + ln(0.06)) / 3,
            ece=(abs(1 - 0.62) + abs(1 - 0.70) + abs(0 - 0.90)) / 3),
        (CHALLENGER, True, DAY1): dict(
            predictions=1, trades=1, hits=0, ambiguous=0, hit_rate=0.0, skip_rate=0.0,
            realised_return=-L_UP, mean_trade_return=-L_UP, log_loss=-ln(0.15), ece=abs(0 - 0.75)),
        (CHALLENGER, True, DAY2): dict(
            predictions=1, trades=1, hits=1, ambiguous=0, hit_rate=1.0, skip_rate=0.0,
            realised_return=-L_DOWN, mean_trade_return=-L_DOWN, log_loss=-ln(0.90), ece=abs(1 - 0.90)),
    }


def test_live_metrics_per_version_shadow_and_day(state):
    metrics = refresh_live_metrics(state["db"])
    expected = daily_expectations()
    assert [(r.model_version, r.shadow, r.day) for r in metrics.itertuples()] == list(expected)
    for row in metrics.itertuples(index=False):
        for column, value in expected[(row.model_version, row.shadow, row.day)].items():
            assert getattr(row, column) == pytest.approx(value, rel=1e-12, abs=1e-15), column
    # refreshing again is an upsert: same rows, nothing duplicated
    assert len(refresh_live_metrics(state["db"], [CHAMPION, CHALLENGER])) == 4
    with state["db"].connection() as conn:
        assert conn.execute("SELECT count(*) FROM live_metrics").fetchone()[0] == 4


def test_live_summary_matches_the_hand_computation(state):
    ln = math.log
    summary = live_summary(state["db"], CHAMPION, now=t(DAY2, "23:00"))
    daily = [L_UP - L_END, -0.5 * L_DOWN]
    mean, sd = (daily[0] + daily[1]) / 2, abs(daily[0] - daily[1]) / math.sqrt(2)  # two days: sd with ddof 1
    total = L_UP - L_END - 0.5 * L_DOWN
    assert summary == {
        "model_version": CHAMPION, "shadow": False, "first_day": "2024-03-05", "last_day": "2024-03-06", "days": 2,
        "predictions": 6, "trades": 4, "hits": 2, "ambiguous": 1, "hit_rate": 0.5, "skip_rate": pytest.approx(2 / 6),
        "realised_return": pytest.approx(total, rel=1e-12), "mean_trade_return": pytest.approx(total / 4, rel=1e-12),
        "sharpe": pytest.approx(mean / sd * math.sqrt(252), rel=1e-9),
        "log_loss": pytest.approx(-(ln(0.80) + ln(0.50) + ln(0.18) + ln(0.62) + ln(0.70) + ln(0.06)) / 6, rel=1e-12),
        # over both days 0.72 (wrong) and 0.70 (right) share bin 10: accuracy 1/2, mean confidence 0.71
        "ece": pytest.approx((0.20 + 0.50 + 2 * abs(0.5 - 0.71) + 0.38 + 0.90) / 6, rel=1e-12),
    }
    assert all(type(v) in (str, int, float, bool, type(None)) for v in summary.values())

    shadow = live_summary(state["db"], CHALLENGER, shadow=True, now=t(DAY2, "23:00"))
    daily = [-L_UP, -L_DOWN]
    mean, sd = (daily[0] + daily[1]) / 2, abs(daily[0] - daily[1]) / math.sqrt(2)
    assert (shadow["predictions"], shadow["trades"], shadow["hits"], shadow["hit_rate"]) == (2, 2, 1, 0.5)
    assert shadow["sharpe"] == pytest.approx(mean / sd * math.sqrt(252), rel=1e-9)
    assert shadow["ece"] == pytest.approx((0.75 + 0.10) / 2, rel=1e-12)


def test_windows_and_shadow_separation(state):
    db, now = state["db"], t(DAY2, "23:00")
    # the last trading day only (day 2): one day, no Sharpe
    one = live_summary(db, CHAMPION, days=1, now=t(DAY2, "21:00"))  # 15:00 CT: day 2 in progress
    assert (one["first_day"], one["days"], one["predictions"], one["trades"], one["sharpe"]) == \
        ("2024-03-06", 1, 3, 2, None)
    assert one["realised_return"] == pytest.approx(-0.5 * L_DOWN, rel=1e-12)
    # since a time on day 1: only the 21:58 prediction of day 1 plus day 2
    later = live_summary(db, CHAMPION, since=t(DAY1, "20:00"), now=now)
    assert (later["predictions"], later["trades"], later["hits"]) == (4, 3, 1)
    # now bounds the window from above
    assert live_summary(db, CHAMPION, now=t(DAY1, "23:00"))["predictions"] == 3
    # champion and shadow never mix, even for the same requests
    for version, shadow in ((CHAMPION, True), (CHALLENGER, False)):
        empty = live_summary(db, version, shadow=shadow, now=now)
        assert (empty["predictions"], empty["trades"], empty["hit_rate"], empty["skip_rate"], empty["sharpe"],
                empty["log_loss"], empty["first_day"], empty["realised_return"]) == (0, 0, None, None, None, None,
                                                                                    None, 0.0)


def test_sharpe_is_undefined_without_variance():
    assert annualised_sharpe([0.01]) is None
    assert annualised_sharpe([0.1, 0.1, 0.1]) is None
    assert annualised_sharpe([0.01, 0.03]) == pytest.approx(0.02 / (0.02 / math.sqrt(2)) * math.sqrt(252))


def test_compute_outcomes_pure_and_its_errors():
    ts = t(DAY1, "14:31")
    predictions = pd.DataFrame({"ts": [ts, ts], "request_id": ["a", "b"], "shadow": [False, False],
                                "symbol": ["ES", "ES"], "timeframe": ["1m", "1m"], "model_version": [CHAMPION] * 2,
                                "label": ["long", "short"], "position_size": [0.0, 0.5]})
    labels = pd.DataFrame({"symbol": ["ES"], "timeframe": ["1m"], "ts": [ts], "horizon": [H3.name], "label": [1],
                           "t1": [ts + pd.Timedelta(minutes=2)], "ret": [-0.01]})
    out = compute_outcomes(predictions, labels)
    # a long call without size is no trade: return 0, hit undefined; the short half-size trade hits
    assert out["direction"].tolist() == [1, -1]
    assert out["realised_return"].tolist() == [0.0, pytest.approx(-1 * 0.5 * -0.01)]
    assert out["hit"].tolist() == [pd.NA, True]
    assert compute_outcomes(predictions, labels.assign(label=-1)).empty  # unknown labels are left out
    with pytest.raises(ConfigError, match="predictions.label"):
        compute_outcomes(predictions.assign(label="buy"), labels)
    with pytest.raises(ConfigError, match="one horizon"):
        compute_outcomes(predictions, pd.concat([labels, labels.assign(horizon=H1.name)]))
    with pytest.raises(ConfigError, match="timezone-aware"):
        compute_outcomes(predictions.assign(ts=ts.tz_localize(None)), labels)
    with pytest.raises(ConfigError, match="lack column"):
        compute_outcomes(predictions.drop(columns="position_size"), labels)


def test_bad_arguments_are_config_errors(state):
    db = state["db"]
    with pytest.raises(ConfigError, match="horizon"):
        resolve_outcomes(db, horizon="15 bars")
    with pytest.raises(ConfigError, match="timezone-aware"):
        resolve_outcomes(db, horizon=H3.name, since=pd.Timestamp("2024-03-05"))
    with pytest.raises(ConfigError, match="after now"):
        resolve_outcomes(db, horizon=H3.name, since=t(DAY2, "00:00"), now=t(DAY1, "00:00"))
    with pytest.raises(ConfigError, match="engine"):
        resolve_outcomes(42, horizon=H3.name)
    with pytest.raises(ConfigError, match="days"):
        live_summary(db, CHAMPION, days=0)
    with pytest.raises(ConfigError, match="model_version"):
        live_summary(db, "")
    with pytest.raises(ConfigError, match="model_versions"):
        refresh_live_metrics(db, [""])


def test_labels_arriving_later_resolve_the_pending_predictions(state):
    """Runs last: the labels asset runs again after day 2's close and NQ gets labelled."""
    db = state["db"]
    before = refresh_live_metrics(db).set_index(["model_version", "shadow", "day"])
    paths = dict(PATHS, OPEN=(6, t(DAY2, "21:58"), [ENTRY, FLAT, (100, 100.6, 99.9, 100.4)]))  # 22:00 closes day 2
    store_labels(db, "ES", build_bars(paths), H3, last_session_complete=True)
    store_labels(db, "NQ", build_bars({"NQ": (1, t(DAY2, "14:31"), [ENTRY, UP_TOUCH, FLAT, FLAT])}), H3)

    batch = resolve_outcomes(db, horizon=H3.name, since=t(DAY2, "00:00"))
    assert (batch.added, batch.pending) == (3, 0)
    added = {(r.request_id, r.shadow): r for r in batch.outcomes.itertuples(index=False)}
    l_open = math.log(100.4 / 100)
    # OPEN: no touch by the close -> skip "session_end"; the champion's long full size earns the long return
    assert (added[("r-open", False)].barrier, added[("r-open", False)].hit) == ("session_end", False)
    assert added[("r-open", False)].realised_return == pytest.approx(+1 * 1.0 * l_open, rel=1e-12)
    assert (added[("r-open", True)].direction, added[("r-open", True)].realised_return) == (0, 0.0)
    assert pd.isna(added[("r-open", True)].hit)
    # NQ: long label, the short half-size call loses half the long return
    assert (added[("r-nq", False)].realised_label, added[("r-nq", False)].hit) == (0, False)
    assert added[("r-nq", False)].realised_return == pytest.approx(-1 * 0.5 * L_UP, rel=1e-12)

    # refreshing day 2 only recomputes day 2; day 1 keeps its row (and its updated_at)
    after = refresh_live_metrics(db, CHAMPION, since=t(DAY2, "12:00")).set_index(["model_version", "shadow", "day"])
    assert list(after.index) == [(CHAMPION, False, DAY2)]
    day2 = after.loc[(CHAMPION, False, DAY2)]
    assert (day2.predictions, day2.trades, day2.hits) == (5, 4, 1)
    assert day2.realised_return == pytest.approx(-0.5 * L_DOWN + l_open - 0.5 * L_UP, rel=1e-12)
    with db.connection() as conn:
        kept = conn.execute("SELECT updated_at FROM live_metrics WHERE model_version = %s AND day = %s",
                            (CHAMPION, DAY1)).fetchone()[0]
    assert pd.Timestamp(kept) == before.loc[(CHAMPION, False, DAY1), "updated_at"]


def test_live_days_are_the_symbols_trading_days(database, tmp_path, monkeypatch):
    """A 24/7 symbol's predictions at 22:31 UTC on day 1 and 01:01 UTC on day 2 fall on two UTC
    days; on CME's calendar (the 16:00 CT close) both would be day 2."""
    file = tmp_path / "instruments.toml"
    file.write_text('[BTCUSD]\ntick_size = 0.5\ntick_value = 0.5\ncalendar = "24/7"\n')
    monkeypatch.setenv("SMC_INSTRUMENTS", str(file))
    version = "smc-model/9"
    paths = {"LATE": (1, t(DAY1, "22:31"), [ENTRY, FLAT, UP_TOUCH, FLAT]),
             "EARLY": (2, t(DAY2, "01:01"), [ENTRY, DOWN_TOUCH, FLAT, FLAT])}
    store_labels(database, "BTCUSD", build_bars(paths), H3)
    insert_predictions(database, [
        ("b-late", t(DAY1, "22:31"), "BTCUSD", False, version, "long", "long", 0.8, (0.8, 0.1, 0.1), 1.0),
        ("b-early", t(DAY2, "01:01"), "BTCUSD", False, version, "short", "short", 0.7, (0.1, 0.7, 0.2), 1.0)])
    try:
        resolve_outcomes(database, horizon=H3.name, model_versions=version)
        metrics = refresh_live_metrics(database, version)
        assert [(r.day, r.predictions, r.hits) for r in metrics.itertuples()] == [(DAY1, 1, 1), (DAY2, 1, 1)]
        again = refresh_live_metrics(database, version, since=t(DAY1, "23:00"))  # within UTC day 1: both days
        assert [r.day for r in again.itertuples()] == [DAY1, DAY2]
        last = live_summary(database, version, days=1, now=t(DAY2, "12:00"))
        assert (last["first_day"], last["predictions"]) == (DAY2.isoformat(), 1)  # CME's last day would hold both
        both = live_summary(database, version, days=2, now=t(DAY2, "12:00"))
        assert (both["first_day"], both["days"], both["predictions"]) == (DAY1.isoformat(), 2, 2)
    finally:
        with database.connection() as conn:
            for table in ("live_metrics", "prediction_outcomes", "predictions"):
                conn.execute(f"DELETE FROM {table} WHERE model_version = %s", (version,))
