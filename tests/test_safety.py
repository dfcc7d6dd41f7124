"""Safety on real PostgreSQL: the circuit breaker's limits tripping and not tripping on
hand-computed records, halts and resumes with their events, the service's halt switch
through a database outage and a restart, the A/B assignment and decision rule (hand-computed
Welch t-test, every outcome), and prediction rows spooled before the arm column existed."""

from __future__ import annotations

import hashlib
import math
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from serving_setup import DatabaseProxy

from smc_core.ab_test import ab_verdict, arm_bucket, arm_figures
from smc_core.alerts import recent_alerts
from smc_core.db import Database
from smc_core.errors import ConfigError
from smc_core.safety import (ALL, SafetySettings, breaches, check_breaker, halt, halt_events, last_resumes,
                             longest_losing_run, max_drawdown, read_halts, resume, rollback_reason)
from smc_core.serving.halts import HaltSwitch
from smc_core.serving.prediction_log import COLUMNS, _decode

T0 = pd.Timestamp("2024-03-05 15:00", tz="UTC")  # a Tuesday: CME trading day 2024-03-05
SERVED = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)


def record(rows: list[tuple[str, float]], start: pd.Timestamp = T0, served: datetime = SERVED,
           step: timedelta = timedelta(seconds=1)) -> pd.DataFrame:
    """Trades one minute apart, served ``step`` apart: (symbol, realised return)."""
    return pd.DataFrame({"ts": [start + pd.Timedelta(minutes=i) for i in range(len(rows))],
                         "request_id": [f"r{i:04d}" for i in range(len(rows))],
                         "symbol": [s for s, _ in rows], "realised_return": [r for _, r in rows],
                         "logged_at": [served + i * step for i in range(len(rows))]})


# ES: +0.002 -0.003 -0.004 -0.001 +0.001 → day sum -0.005, 3 losses in a row.
# NQ in between: -0.002 -0.002 (a run of 2).
# All trades in bar order: +0.002(ES) -0.002(NQ) -0.003(ES) -0.002(NQ) -0.004(ES) -0.001(ES) +0.001(ES)
# equity 0, .002, 0, -.003, -.005, -.009, -.010, -.009: peak .002, deepest -.010 → drawdown 0.012.
TRADES = record([("ES", 0.002), ("NQ", -0.002), ("ES", -0.003), ("NQ", -0.002), ("ES", -0.004), ("ES", -0.001),
                 ("ES", 0.001)])


def limits(**values) -> SafetySettings:
    off = dict(daily_loss=0.0, consecutive_losses=0, drawdown=0.0, rollback_drawdown=0.0)
    return SafetySettings(**{**off, **values})


def test_hand_computed_record_figures():
    assert max_drawdown(TRADES["realised_return"]) == pytest.approx(0.012)
    assert longest_losing_run([0.002, -0.003, -0.004, -0.001, 0.001]) == 3
    assert longest_losing_run([-0.001, 0.0, -0.001]) == 1  # a zero-return trade ends a run
    assert max_drawdown([]) == 0.0


@pytest.mark.parametrize("rule, trips, stays", [
    ("daily_loss", 0.0049, 0.0051),          # ES lost 0.005 on 2024-03-05
    ("consecutive_losses", 3, 4),            # ES: 3 losses in a row
    ("drawdown", 0.0119, 0.0121),            # all symbols: 0.012 below the peak
])
def test_each_limit_trips_above_the_record_and_not_below(rule, trips, stays):
    found = breaches(TRADES, limits(**{rule: trips}), "smc-lora/1")
    assert [(b.scope, b.rule) for b in found] == [(ALL if rule == "drawdown" else "ES", rule)]
    expected = {"daily_loss": 0.005, "consecutive_losses": 3, "drawdown": 0.012}[rule]
    assert found[0].value == pytest.approx(expected)
    assert breaches(TRADES, limits(**{rule: stays}), "smc-lora/1") == []


def test_daily_loss_is_per_trading_day_and_symbol():
    # the same ES losses split over two CME trading days (the session closes 21:00 UTC in March)
    split = record([("ES", -0.003), ("ES", -0.003)], start=pd.Timestamp("2024-03-05 20:59", tz="UTC"))
    split.loc[1, "ts"] = pd.Timestamp("2024-03-05 22:01", tz="UTC")  # next session (2024-03-06)
    assert breaches(split, limits(daily_loss=0.005), "m") == []
    assert [b.rule for b in breaches(split, limits(daily_loss=0.003), "m")] == ["daily_loss"]


def test_trades_served_before_a_resume_do_not_count():
    resumed = {"ES": SERVED + timedelta(seconds=4)}  # after the ES trade at +4 s: ES keeps -0.001, +0.001
    assert breaches(TRADES, limits(daily_loss=0.0049), "m", resumed) == []
    assert breaches(TRADES, limits(consecutive_losses=3), "m", resumed) == []
    # the drawdown of all symbols restarts only with a resume of all
    assert [b.rule for b in breaches(TRADES, limits(drawdown=0.0119), "m", resumed)] == ["drawdown"]
    assert breaches(TRADES, limits(drawdown=0.0119), "m", {ALL: SERVED + timedelta(seconds=2)}) == []


def test_the_rollback_rule_both_ways():
    assert "0.0120%" not in (rollback_reason(TRADES, limits(rollback_drawdown=0.0119), "smc-lora/3") or "")
    assert "1.2000%" in rollback_reason(TRADES, limits(rollback_drawdown=0.0119), "smc-lora/3")
    assert rollback_reason(TRADES, limits(rollback_drawdown=0.0121), "smc-lora/3") is None
    assert rollback_reason(TRADES, limits(rollback_drawdown=0.0), "smc-lora/3") is None  # off


def test_settings_refuse_nonsense():
    with pytest.raises(ConfigError, match="daily_loss"):
        SafetySettings(daily_loss=-0.1)
    with pytest.raises(ConfigError, match="SMC_AB_SHARE"):
        SafetySettings.from_env({"SMC_AB_SHARE": "1.5"})
    assert SafetySettings.from_env({"SMC_BREAKER_DRAWDOWN": "0.05"}).drawdown == 0.05


# --- halts on the database ----------------------------------------------------------------

def test_halts_and_resumes_are_kept_with_their_events(database):
    assert read_halts(database).halts == {}
    state = halt(database, ["ES"], "spread wide", "cli")
    assert state.applying_to("ES").reason == "spread wide" and state.applying_to("NQ") is None
    state = halt(database, None, "FOMC", "admin")
    assert state.applying_to("NQ").scope == ALL and state.applying_to("ES").scope == ALL  # all first
    again = halt(database, ["ES"], "second reason", "cli")
    assert again.halts["ES"].reason == "spread wide"  # the first halt of a scope is kept
    state = resume(database, ["ES"], "feed fine", "cli")
    assert set(state.halts) == {ALL}  # ES's own halt lifted; the halt of all still applies
    assert state.applying_to("ES").scope == ALL
    assert resume(database, None, "all clear", "admin").halts == {}
    actions = [(e["action"], e["scope"], e["source"]) for e in reversed(halt_events(database))]
    assert actions == [("halt", "ES", "cli"), ("halt", ALL, "admin"), ("halt", "ES", "cli"), ("resume", "ES", "cli"),
                       ("resume", ALL, "admin")]
    assert set(last_resumes(database)) == {"ES", ALL}
    with pytest.raises(ConfigError, match="reason"):
        halt(database, ["ES"], " ", "cli")
    with pytest.raises(ConfigError, match="symbol 'es'"):
        halt(database, ["es"], "lower case", "cli")


def _log_trades(database: Database, version: str, trades: pd.DataFrame) -> None:
    """Prediction and outcome rows for ``trades`` (long, full size)."""
    with database.connection() as conn:
        conn.execute("SELECT smc_prepare_time_range('predictions', %s, %s)", (trades["ts"].min(), trades["ts"].max()))
        conn.execute("SELECT smc_prepare_time_range('prediction_outcomes', %s, %s)",
                     (trades["ts"].min(), trades["ts"].max()))
        for row in trades.itertuples():
            conn.execute(
                "INSERT INTO predictions (ts, request_id, shadow, logged_at, symbol, timeframe, model_version, label, "
                "raw_label, confidence, p_long, p_short, p_skip, position_size, latency_ms, features, feature_set) "
                "VALUES (%s, %s, false, %s, %s, '1m', %s, 'long', 'long', 0.8, 0.8, 0.1, 0.1, 1, 1, '{}', 'x')",
                (row.ts, row.request_id, row.logged_at, row.symbol, version))
            conn.execute(
                "INSERT INTO prediction_outcomes (ts, request_id, shadow, symbol, timeframe, model_version, horizon, "
                "realised_label, barrier, t1, ret, ambiguous, direction, position_size, realised_return, hit) VALUES "
                "(%s, %s, false, %s, '1m', %s, 'h15_u1.5_d1.5', %s, 'upper', %s, %s, false, 1, 1, %s, %s)",
                (row.ts, row.request_id, row.symbol, version, 0 if row.realised_return > 0 else 1,
                 row.ts + pd.Timedelta(minutes=15), row.realised_return, row.realised_return,
                 row.realised_return > 0))


def test_the_breaker_halts_a_breached_scope_once_with_an_alert(database):
    resume(database, None, "clean slate", "cli")
    cleared = datetime.now(timezone.utc)
    trades = record(list(zip(TRADES["symbol"], TRADES["realised_return"])), served=cleared,
                    step=timedelta(milliseconds=1))  # served before the resumes below
    _log_trades(database, "smc-lora/7", trades)
    calm = check_breaker(database, "smc-lora/7", limits(daily_loss=0.0051, drawdown=0.0121, rollback_drawdown=0.0121))
    assert calm.trades == 7 and calm.breaches == [] and calm.halted == [] and calm.rollback is None
    assert read_halts(database).halts == {}

    tight = limits(daily_loss=0.0049, drawdown=0.0121, rollback_drawdown=0.0119)
    tripped = check_breaker(database, "smc-lora/7", tight)
    assert tripped.halted == ["ES"] and len(tripped.alerts) == 1
    assert "lost 0.5000% on 2024-03-05" in read_halts(database).halts["ES"].reason
    (alert,) = recent_alerts(database, kind="circuit_breaker")
    assert alert["severity"] == "error" and alert["details"]["breaches"][0]["rule"] == "daily_loss"
    assert "1.2000%" in tripped.rollback
    again = check_breaker(database, "smc-lora/7", tight)  # already halted: no second halt, no second alert
    assert again.halted == [] and len(recent_alerts(database, kind="circuit_breaker")) == 1
    # a resume starts the record afresh: the same losses do not halt again
    resume(database, ["ES"], "looked at it", "cli")
    assert check_breaker(database, "smc-lora/7", tight).halted == []
    resume(database, None, "clean slate", "cli")


# --- the service's switch through an outage and a restart -----------------------------------

def test_the_switch_keeps_halts_through_an_outage_and_a_restart(database, tmp_path):
    resume(database, None, "clean slate", "cli")
    proxy = DatabaseProxy(database.url).restore()
    through = Database(proxy.url)
    state_file = tmp_path / "halts.json"
    try:
        switch = HaltSwitch(lambda: through, state_file, 0.1)
        assert switch.refresh() and switch.applying_to("ES") is None and switch.origin == "database"
        halt(database, ["ES"], "breaker test", "breaker")
        assert switch.refresh() and switch.applying_to("ES").source == "breaker"
        proxy.cut()
        resume(database, ["ES"], "resumed while the service cannot see it", "cli")
        assert not switch.refresh()  # unreachable: the last known state holds, never un-halted
        assert switch.applying_to("ES") is not None and switch.health()["database_error"]
        # a halt sent to the service while the database is away: in force at once, pending
        assert switch.halt(["NQ"], "admin during outage", "admin") is False
        assert switch.applying_to("NQ").source == "admin" and switch.health()["pending"] == 1
        with pytest.raises(Exception):
            switch.resume(["NQ"], "needs the database", "admin")
        assert switch.applying_to("NQ") is not None

        restarted = HaltSwitch(lambda: through, state_file, 0.1)  # a restart while the database is away
        assert restarted.origin == "local file" and not restarted.refresh()
        assert restarted.applying_to("ES") is not None and restarted.applying_to("NQ") is not None

        proxy.restore()
        # the pending NQ halt is written; ES was resumed in the database (the pool reconnects: a poll or two)
        deadline = time.monotonic() + 15
        while not restarted.refresh():
            assert time.monotonic() < deadline, restarted.health()
            time.sleep(0.2)
        assert set(restarted.state.halts) == {"NQ"} and restarted.health()["pending"] == 0
        assert read_halts(database).halts["NQ"].source == "admin"
        restarted.resume(None, "all clear", "admin")
        assert restarted.state.halts == {} and read_halts(database).halts == {}
    finally:
        proxy.cut()
        through.close()


# --- the A/B split ----------------------------------------------------------------------

def test_assignment_is_the_stated_hash_and_splits_bars_by_the_share():
    close = datetime(2024, 3, 5, 15, 1, tzinfo=timezone.utc)
    digest = hashlib.sha256(b"ES|1m|2024-03-05T15:01:00+00:00").digest()
    assert arm_bucket("ES", "1m", close) == int.from_bytes(digest[:8], "big") / 2**64
    other_zone = close.astimezone(timezone(timedelta(hours=-5)))
    assert arm_bucket("ES", "1m", other_zone) == arm_bucket("ES", "1m", close)  # the instant, not its spelling
    buckets = np.array([arm_bucket("ES", "1m", close + timedelta(minutes=i)) for i in range(10_000)])
    assert abs((buckets < 0.2).mean() - 0.2) < 0.015  # 3 standard errors of 10,000 bars


def arm(returns: list[float], skips: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"direction": [1] * len(returns) + [0] * skips,
                         "position_size": [1.0] * len(returns) + [0.0] * skips,
                         "realised_return": returns + [0.0] * skips,
                         "hit": [r > 0 for r in returns] + [None] * skips})


def welch_by_hand(a: list[float], b: list[float]) -> tuple[float, float, float]:
    from scipy.stats import t as student

    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1) / len(a)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1) / len(b)
    t = (ma - mb) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t, df, student.sf(t, df)


def test_the_ab_rule_promotes_ends_or_waits_as_the_test_says():
    better = [0.003, 0.001, 0.004, 0.002, 0.003, 0.002]
    worse = [-0.001, 0.001, -0.002, 0.000, 0.001, -0.001]
    figures = arm_figures(arm(better, skips=3))
    assert (figures.predictions, figures.trades, figures.hits) == (9, 6, 6)
    assert figures.mean_return == pytest.approx(0.0025) and figures.total_return == pytest.approx(0.015)

    t, df, p = welch_by_hand(better, worse)
    promoted = ab_verdict(arm(worse), arm(better), min_trades=6, alpha=0.05)
    assert promoted.decision == "promote" and p < 0.05
    assert (promoted.t, promoted.df, promoted.p_value) == pytest.approx((t, df, p))

    t, df, p = welch_by_hand(worse, better)
    ended = ab_verdict(arm(better), arm(worse), min_trades=6, alpha=0.05)  # the challenger is the worse arm
    assert ended.decision == "end" and p >= 0.05 and ended.p_value == pytest.approx(p)

    close = [0.001, -0.001, 0.002, 0.0, 0.001, -0.002]  # no significant difference either way
    _, _, p = welch_by_hand(close, worse)
    assert ab_verdict(arm(worse), arm(close), 6, 0.05).decision == ("promote" if p < 0.05 else "end") == "end"

    waiting = ab_verdict(arm(worse), arm(better[:5]), min_trades=6, alpha=0.05)
    assert waiting.decision == "continue" and "each arm needs 6" in waiting.reason


def test_rows_spooled_before_arms_existed_still_replay():
    old = ["2024-03-05T15:00:00+00:00", "r1", True, "2024-03-05T15:00:01+00:00", "ES", "1m", "smc-lora/1", "skip",
           "skip", 0.5, 0.2, 0.3, 0.5, 0.0, 3.0, [0.1], "fs"]
    row = _decode(list(old))
    assert len(row) == len(COLUMNS) and row[COLUMNS.index("arm")] == "shadow" and row[COLUMNS.index("halted")] is False


def test_prediction_rows_round_trip_through_the_binary_copy(database):
    """The binary COPY's declared types are the table's own, and a row (numpy floats, an int size,
    the features as the request path hands them over: a float64 array, NaN included; a risk block
    with numpy numbers; a spooled row decoded) reads back as written; a batch holding a stored row
    (a replay) leaves that row alone and stores the others."""
    from datetime import datetime, timezone

    import numpy as np

    from smc_core.serving.prediction_log import COPY_TYPES, write_predictions

    with database.connection() as conn:
        declared = dict(conn.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                                     "WHERE attrelid = 'predictions'::regclass AND attnum > 0").fetchall())
        aliases = {"timestamptz": "timestamp with time zone"}
        assert [aliases.get(t, t) for t in COPY_TYPES] == [declared[c] for c in COLUMNS]
        ts = datetime(2024, 3, 5, 15, 0, tzinfo=timezone.utc)
        fresh = (ts, "copy-1", False, ts, "ES", "1m", "smc-lora/1", "long", "long", np.float64(0.7), 0.7, 0.2, 0.1,
                 1, 2.5, np.where(np.arange(52) == 7, np.nan, np.linspace(-1, 1, 52)), "fs", "champion",
                 np.bool_(False), {"atr": np.float64(2.0), "stop_distance": 3.0})
        spooled = _decode(["2024-03-05T15:01:00+00:00", "copy-2", True, "2024-03-05T15:01:01+00:00", "ES", "1m",
                           "smc-lora/1", "skip", "skip", 0.5, 0.2, 0.3, 0.5, 0.0, 3.0, [0.1], "fs"])
        with conn.transaction():
            write_predictions(conn, [fresh, spooled])
        again = (*fresh[:2], fresh[2], *fresh[3:9], 0.1, *fresh[10:])  # the same key, another confidence
        third = (fresh[0], "copy-3", *fresh[2:])
        with conn.transaction():  # a replay whose acknowledgement was lost: stored rows are left alone
            write_predictions(conn, [again, third])
            conn.execute("SELECT 1")  # the transaction is still usable after the fallback
        stored = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM predictions WHERE request_id LIKE 'copy-%' "
                              f"ORDER BY request_id").fetchall()
    assert [row[1] for row in stored] == ["copy-1", "copy-2", "copy-3"]
    np.testing.assert_array_equal(stored[0][COLUMNS.index("features")], fresh[COLUMNS.index("features")])
    assert np.isnan(stored[0][COLUMNS.index("features")][7])
    assert stored[1][COLUMNS.index("features")] == [0.1]
    assert stored[0][COLUMNS.index("risk")] == {"atr": 2.0, "stop_distance": 3.0}
    assert stored[0][COLUMNS.index("position_size")] == 1.0 and stored[0][COLUMNS.index("confidence")] == 0.7
    assert stored[1][COLUMNS.index("arm")] == "shadow" and stored[1][COLUMNS.index("risk")] is None


def test_a_row_whose_features_are_not_floats_is_refused_as_the_rows_fault(database):
    """A feature that is not a number is a DataError (permanent: the batch is quarantined, not
    retried forever); a None is a missing reading, stored as NaN like the feature code's own; an
    empty feature list is stored as an empty array."""
    from datetime import datetime, timezone

    import psycopg

    from smc_core.serving.prediction_log import permanent, write_predictions

    ts = datetime(2024, 3, 6, 15, 0, tzinfo=timezone.utc)

    def row(request_id, features):
        return (ts, request_id, False, ts, "ES", "1m", "smc-lora/1", "skip", "skip", 0.5, 0.2, 0.3, 0.5, 0.0, 3.0,
                features, "fs", "champion", False, None)

    with database.connection() as conn:
        with pytest.raises(psycopg.DataError, match="features must be floats") as refused:
            with conn.transaction():
                write_predictions(conn, [row("text-1", [0.1, "high"])])
        assert permanent(refused.value)
        with conn.transaction():
            write_predictions(conn, [row("empty-1", []), row("none-1", [0.1, None])])
        stored = dict(conn.execute("SELECT request_id, features FROM predictions WHERE request_id IN "
                                   "('empty-1', 'none-1', 'text-1')").fetchall())
    assert stored["empty-1"] == [] and stored["none-1"][0] == 0.1 and math.isnan(stored["none-1"][1])
    assert "text-1" not in stored
