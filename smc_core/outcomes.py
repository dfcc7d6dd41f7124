"""Live outcomes: score every logged prediction against the label the market later gave it.

Why: a model is only as good as its calls turn out live. The realised label of a prediction
is the row of the ``labels`` table for the same (symbol, timeframe, ts, horizon) — the exact
``triple_barrier`` the model was trained and backtested on — so nothing here recomputes a
barrier, and live, training and backtest scores share one definition.

Conventions, stated once:
  * a prediction is resolved when its label row exists, is known (label >= 0) and its
    outcome was known at ``now`` (t1 <= now); otherwise it stays pending and is counted;
  * direction comes from the served label (after the confidence tiers): long +1, short -1,
    skip 0. A trade is taken when direction != 0 and position_size > 0;
  * ``realised_return = direction * position_size * ret`` for trades, where ``ret`` is the
    label's long log return from close[t] to its exit; 0 for no trade. When both barriers
    were touched in the same bar the label is skip with no exit price (ret NaN): the row is
    flagged ``ambiguous``, its ret stored NULL and its return counted as 0;
  * ``hit``: a trade whose realised label equals the served label; NULL without a trade
    (an ambiguous trade is a miss: its realised label is skip);
  * one outcome per prediction (primary key ts, request_id, shadow): writing is insert-only
    and idempotent, so re-running adds nothing twice;
  * live metrics are per (model_version, shadow, trading day of ts on the symbol's calendar). Log loss and ECE
    score the served probabilities (p_long, p_short, p_skip) against the realised label; ECE
    bins the top-class (raw_label) confidence. The Sharpe ratio is of daily realised returns
    (sum per trading day over days with resolved predictions), annualised by sqrt(252) as
    in the backtest.

Every function takes the ``smc_core.db.Database`` the rest of the project passes around.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Iterable

import numpy as np
import pandas as pd

from smc_core.calendar import CME_EQUITY
from smc_core.db import Database
from smc_core.errors import ConfigError
from smc_core.evaluation.backtest import TRADING_DAYS_PER_YEAR
from smc_core.evaluation.metrics import log_loss as _log_loss
from smc_core.evaluation.statistics import sharpe as _sharpe
from smc_core.instruments import calendar_of, trading_days_of
from smc_core.labels import LABELS, Horizon

DIRECTIONS = {"long": 1, "short": -1, "skip": 0}
PREDICTION_COLUMNS = ("ts", "request_id", "shadow", "symbol", "timeframe", "model_version", "label", "position_size")
LABEL_COLUMNS = ("symbol", "timeframe", "ts", "horizon", "label", "t1", "ret")
OUTCOME_COLUMNS = ("ts", "request_id", "shadow", "symbol", "timeframe", "model_version", "horizon", "realised_label",
                   "barrier", "t1", "ret", "ambiguous", "direction", "position_size", "realised_return", "hit")
METRIC_COLUMNS = ("model_version", "shadow", "day", "predictions", "trades", "hits", "ambiguous", "hit_rate",
                  "skip_rate", "realised_return", "mean_trade_return", "log_loss", "ece")
_HORIZON_NAME = re.compile(r"^h[1-9]\d*_u\d+(\.\d+)?(e[-+]?\d+)?_d\d+(\.\d+)?(e[-+]?\d+)?(_m\d+(\.\d+)?(e[-+]?\d+)?)?$")
_KEY = ["symbol", "timeframe", "ts"]


@dataclass(frozen=True)
class OutcomeBatch:
    """What one ``resolve_outcomes`` call added, and what is still waiting for its label."""

    horizon: str
    added: int
    pending: int
    pending_unknown: int
    """Label row present but unknown (-1), or known only after ``now``: the horizon or the
    session is not over yet, or the labels partition was last materialized before it was."""
    pending_unlabelled: int
    """No label row for this horizon yet: the labels asset has not run for that bar."""
    ambiguous: int
    outcomes: pd.DataFrame = field(repr=False)
    """The rows added now (OUTCOME_COLUMNS plus computed_at), oldest first."""
    oldest_pending: pd.Timestamp | None = None

    @property
    def model_versions(self) -> tuple[str, ...]:
        return tuple(sorted(self.outcomes["model_version"].unique())) if self.added else ()

    @property
    def first_ts(self) -> pd.Timestamp | None:
        return self.outcomes["ts"].min() if self.added else None

    def metadata(self) -> dict:
        """Plain Python values for Dagster metadata and logs."""
        return {
            "horizon": self.horizon, "added": self.added, "pending": self.pending,
            "pending_unknown": self.pending_unknown, "pending_unlabelled": self.pending_unlabelled,
            "ambiguous": self.ambiguous, "model_versions": list(self.model_versions),
            "oldest_pending": None if self.oldest_pending is None else self.oldest_pending.isoformat(),
        }


# --------------------------------------------------------------------------------------
# The arithmetic (pure)
# --------------------------------------------------------------------------------------
def compute_outcomes(predictions: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Outcome rows (OUTCOME_COLUMNS) of the predictions whose label is known, oldest first.

    ``predictions``: PREDICTION_COLUMNS (``label`` is the served label text). ``labels``:
    LABEL_COLUMNS of one horizon as in the ``labels`` table (``label`` the code, ret the
    long log return), optionally ``barrier``. Predictions without a known label (no row,
    or -1) are left out.
    """
    _require(predictions, PREDICTION_COLUMNS, "predictions")
    _require(labels, LABEL_COLUMNS, "labels")
    horizons = labels["horizon"].dropna().unique()
    if len(horizons) > 1:
        raise ConfigError(f"labels must be of one horizon, got {sorted(map(str, horizons))}")
    if labels["horizon"].isna().any():
        raise ConfigError("labels.horizon has missing values")
    served = predictions["label"].astype("object")
    bad = ~served.isin(list(DIRECTIONS))
    if bad.any():
        raise ConfigError(f"predictions.label must be one of {', '.join(LABELS)}; got {served[bad].iloc[0]!r}")
    size = pd.to_numeric(predictions["position_size"], errors="coerce").to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(size)) or np.any(size < 0):
        raise ConfigError("predictions.position_size must be finite and >= 0")

    left = predictions.loc[:, list(PREDICTION_COLUMNS)].rename(columns={"label": "served_label"})
    left["ts"] = _utc(left["ts"], "predictions.ts")
    left["position_size"] = size
    right = labels.loc[:, [*LABEL_COLUMNS, *(["barrier"] if "barrier" in labels.columns else [])]].copy()
    right["ts"] = _utc(right["ts"], "labels.ts")
    if right.duplicated(_KEY).any():
        raise ConfigError("labels have more than one row per (symbol, timeframe, ts)")
    code = pd.to_numeric(right["label"], errors="coerce")
    if code.isna().any() or not code.isin([-1, 0, 1, 2]).all():
        raise ConfigError("labels.label must be codes -1..2")
    right = right[code >= 0].rename(columns={"label": "realised_label"})
    if "barrier" not in right.columns:
        right["barrier"] = None

    frame = left.merge(right, on=_KEY, how="inner", validate="many_to_one")
    frame = frame.sort_values(["ts", "request_id", "shadow"], kind="stable").reset_index(drop=True)
    frame["t1"] = _utc(frame["t1"], "labels.t1")
    if frame["t1"].isna().any():
        raise ConfigError("a known label (label >= 0) has no t1")

    ret = pd.to_numeric(frame["ret"], errors="coerce").to_numpy(dtype=np.float64)
    ambiguous = np.isnan(ret)
    direction = frame["served_label"].map(DIRECTIONS).to_numpy(dtype=np.int8)
    realised = frame["realised_label"].to_numpy(dtype=np.int8)
    size = frame["position_size"].to_numpy(dtype=np.float64)
    trade = (direction != 0) & (size > 0)
    served_code = frame["served_label"].map({name: code for code, name in enumerate(LABELS)}).to_numpy(dtype=np.int8)
    with np.errstate(invalid="ignore"):
        realised_return = np.where(trade & ~ambiguous, direction * size * ret, 0.0)
    hit = pd.array(np.where(trade, realised == served_code, False), dtype="boolean")
    hit[~trade] = pd.NA

    frame["realised_label"] = realised
    frame["ret"] = ret
    frame["ambiguous"] = ambiguous
    frame["direction"] = direction
    frame["realised_return"] = realised_return
    frame["hit"] = hit
    frame["barrier"] = frame["barrier"].astype("object")
    frame["shadow"] = frame["shadow"].astype(bool)
    return frame.loc[:, list(OUTCOME_COLUMNS)]


def summarise(outcomes: pd.DataFrame) -> dict:
    """Counts, rates, returns, log loss and ECE of a set of outcome rows, as plain Python.

    ``outcomes`` has realised_label, realised_return, hit, ambiguous and, for log loss and
    ECE, p_long/p_short/p_skip (rows with missing probabilities are left out of those two).
    """
    n = len(outcomes)
    hit = outcomes["hit"].astype("boolean") if n else pd.Series([], dtype="boolean")
    trades = int(hit.notna().sum())
    hits = int(hit.fillna(False).sum())
    total = float(outcomes["realised_return"].astype(float).sum()) if n else 0.0
    result = {
        "predictions": n, "trades": trades, "hits": hits,
        "ambiguous": int(outcomes["ambiguous"].astype(bool).sum()) if n else 0,
        "hit_rate": hits / trades if trades else None,
        "skip_rate": (n - trades) / n if n else None,
        "realised_return": total,
        "mean_trade_return": total / trades if trades else None,
        "log_loss": None, "ece": None,
    }
    if n and {"p_long", "p_short", "p_skip"} <= set(outcomes.columns):
        probs = outcomes[["p_long", "p_short", "p_skip"]].to_numpy(dtype=np.float64)
        present = np.isfinite(probs).all(axis=1)
        if present.any():
            y = outcomes["realised_label"].to_numpy(dtype=np.int64)[present]
            result["log_loss"] = _log_loss(probs[present], y)
            result["ece"] = _ece(probs[present], y)
    return result


def annualised_sharpe(daily_returns) -> float | None:
    """Sharpe of daily returns x sqrt(252); None with fewer than 2 days or no variance."""
    daily = np.asarray(daily_returns, dtype=np.float64)
    if len(daily) < 2 or np.ptp(daily) == 0:
        return None
    value = _sharpe(daily)
    return float(value * math.sqrt(TRADING_DAYS_PER_YEAR)) if np.isfinite(value) else None


def _ece(probs: np.ndarray, y: np.ndarray) -> float:
    # Imported here: smc_core.model loads torch, which a sensor tick or a plain summary
    # should not pay for at import time.
    from smc_core.model.calibration import expected_calibration_error

    return expected_calibration_error(probs, y)


# --------------------------------------------------------------------------------------
# Database
# --------------------------------------------------------------------------------------
_PENDING_SQL = """
SELECT p.ts, p.request_id, p.shadow, p.symbol, p.timeframe, p.model_version, p.label, p.position_size,
       l.label AS realised_label, l.t1, l.ret, l.barrier, l.ts IS NOT NULL AS labelled
FROM predictions p
LEFT JOIN labels l
       ON l.ts = p.ts AND l.symbol = p.symbol AND l.timeframe = p.timeframe AND l.horizon = %(horizon)s
WHERE p.ts <= %(now)s
  AND (%(since)s::timestamptz IS NULL OR p.ts >= %(since)s::timestamptz)
  AND (%(versions)s::text[] IS NULL OR p.model_version = ANY(%(versions)s::text[]))
  AND NOT EXISTS (SELECT 1 FROM prediction_outcomes o
                  WHERE o.ts = p.ts AND o.request_id = p.request_id AND o.shadow = p.shadow)
ORDER BY p.ts, p.request_id, p.shadow
"""


def resolve_outcomes(db: Database, *, horizon: str | Horizon, since=None, now=None,
                     model_versions: str | Iterable[str] | None = None) -> OutcomeBatch:
    """Write the outcome of every logged prediction (ts in [since, now]) that has none yet and
    whose ``horizon`` label is known by ``now`` (default: the current time); count the rest.

    ``model_versions`` (one name or several; default all) restricts both to the predictions
    of those versions: pass the versions trained on ``horizon``, since a prediction gets one
    outcome, from the first horizon that resolves it.

    Insert-only and idempotent: a prediction that already has an outcome is never touched,
    and concurrent callers cannot write one twice (ON CONFLICT DO NOTHING).
    """
    _require_database(db)
    horizon = _horizon_name(horizon)
    versions = _versions(model_versions)
    since = _timestamp(since, "since")
    now = _timestamp(now, "now") or pd.Timestamp.now(tz="UTC")
    if since is not None and since > now:
        raise ConfigError(f"since ({since.isoformat()}) is after now ({now.isoformat()})")

    with db.connection() as conn:
        cursor = conn.execute(_PENDING_SQL, {"horizon": horizon, "now": now, "since": since, "versions": versions})
        rows = cursor.fetchall()
        names = [column.name for column in cursor.description]
        joined = pd.DataFrame(rows, columns=names)
        joined["ts"] = _utc(joined["ts"], "predictions.ts")
        joined["t1"] = _utc(joined["t1"], "labels.t1")
        joined["realised_label"] = pd.to_numeric(joined["realised_label"]).fillna(-1).astype("int64")
        joined["ret"] = pd.to_numeric(joined["ret"]).astype("float64")
        known = (joined["realised_label"] >= 0) & joined["t1"].notna() & (joined["t1"] <= now)
        ready = joined[known]
        waiting = joined[~known]
        labels = (ready[["symbol", "timeframe", "ts", "realised_label", "t1", "ret", "barrier"]]
                  .rename(columns={"realised_label": "label"}).drop_duplicates(_KEY).assign(horizon=horizon))
        outcomes = compute_outcomes(ready[list(PREDICTION_COLUMNS)], labels)
        added = _insert_outcomes(conn, outcomes)

    unlabelled = int((~waiting["labelled"].astype(bool)).sum())
    return OutcomeBatch(
        horizon=horizon, added=len(added), pending=len(waiting), pending_unknown=len(waiting) - unlabelled,
        pending_unlabelled=unlabelled, ambiguous=int(added["ambiguous"].sum()) if len(added) else 0,
        outcomes=added, oldest_pending=waiting["ts"].min() if len(waiting) else None,
    )


def _insert_outcomes(conn, outcomes: pd.DataFrame) -> pd.DataFrame:
    """COPY into a staging table, then insert what is new; returns the rows actually added."""
    if outcomes.empty:
        return outcomes.assign(computed_at=pd.Series([], dtype="datetime64[ns, UTC]"))
    columns = ", ".join(OUTCOME_COLUMNS)
    conn.execute("SELECT smc_prepare_time_range('prediction_outcomes', %s, %s)",
                 (outcomes["ts"].min(), outcomes["ts"].max()))
    conn.execute("CREATE TEMP TABLE outcome_stage (LIKE prediction_outcomes INCLUDING DEFAULTS) ON COMMIT DROP")
    with conn.cursor().copy(f"COPY outcome_stage ({columns}) FROM STDIN") as copy:
        for row in outcomes.itertuples(index=False):
            copy.write_row((
                row.ts.to_pydatetime(), str(row.request_id), bool(row.shadow), str(row.symbol), str(row.timeframe),
                str(row.model_version), str(row.horizon), int(row.realised_label),
                "unknown" if row.barrier is None or pd.isna(row.barrier) else str(row.barrier),
                row.t1.to_pydatetime(), None if row.ambiguous else float(row.ret), bool(row.ambiguous),
                int(row.direction), float(row.position_size), float(row.realised_return),
                None if pd.isna(row.hit) else bool(row.hit),
            ))
    inserted = conn.execute(
        f"""INSERT INTO prediction_outcomes ({columns}, computed_at)
            SELECT {columns}, now() FROM outcome_stage
            ON CONFLICT (ts, request_id, shadow) DO NOTHING
            RETURNING ts, request_id, shadow, computed_at""").fetchall()
    conn.execute("DROP TABLE outcome_stage")
    keys = pd.DataFrame(inserted, columns=["ts", "request_id", "shadow", "computed_at"])
    keys["ts"] = _utc(keys["ts"], "ts")
    keys["computed_at"] = pd.to_datetime(keys["computed_at"], utc=True)
    keys["shadow"] = keys["shadow"].astype(bool)
    added = outcomes.merge(keys, on=["ts", "request_id", "shadow"], how="inner")
    return added.sort_values(["ts", "request_id", "shadow"], kind="stable").reset_index(drop=True)


_OUTCOME_ROWS_SQL = """
SELECT o.model_version, o.shadow, o.ts, o.symbol, o.realised_label, o.realised_return, o.hit, o.ambiguous,
       p.p_long, p.p_short, p.p_skip
FROM prediction_outcomes o
LEFT JOIN predictions p ON p.ts = o.ts AND p.request_id = o.request_id AND p.shadow = o.shadow
WHERE (%(versions)s::text[] IS NULL OR o.model_version = ANY(%(versions)s::text[]))
  AND (%(shadow)s::boolean IS NULL OR o.shadow = %(shadow)s::boolean)
  AND (%(after)s::timestamptz IS NULL OR o.ts > %(after)s::timestamptz)
  AND (%(since)s::timestamptz IS NULL OR o.ts >= %(since)s::timestamptz)
  AND (%(until)s::timestamptz IS NULL OR o.ts <= %(until)s::timestamptz)
ORDER BY o.ts, o.request_id, o.shadow
"""


def _outcome_rows(conn, *, versions=None, shadow=None, after=None, since=None, until=None) -> pd.DataFrame:
    """Outcomes with the predictions' probabilities and the trading day of each ts (its symbol's)."""
    cursor = conn.execute(_OUTCOME_ROWS_SQL, {"versions": versions, "shadow": shadow, "after": after,
                                              "since": since, "until": until})
    frame = pd.DataFrame(cursor.fetchall(), columns=[c.name for c in cursor.description])
    frame["ts"] = _utc(frame["ts"], "ts")
    for column in ("realised_return", "p_long", "p_short", "p_skip"):
        frame[column] = frame[column].astype("float64")
    frame["hit"] = frame["hit"].astype("boolean")
    frame["ambiguous"] = frame["ambiguous"].astype(bool)
    frame["day"] = trading_days_of(frame["symbol"], frame["ts"])
    return frame


_DAY_MARGIN = pd.Timedelta(days=2)
"""Rows are read from this long before the CME session of a date, then kept by their own
symbol's trading day: on another calendar the day containing a time may be the day before
CME's (24/7, UTC days), and a day may begin an hour before CME's (24/5, New York)."""


def refresh_live_metrics(db: Database, model_versions: str | Iterable[str] | None = None, *, since=None) -> pd.DataFrame:
    """Recompute ``live_metrics`` per (model_version, shadow, trading day) from the outcomes.

    ``model_versions``: one name or several (default: every version with outcomes).
    ``since``: only the trading days from the one containing ``since`` onwards (whole days
    are always recomputed). Rows of the selected versions and days that no longer have
    outcomes are removed, so the table always equals a full recomputation. Returns the
    selected rows as now stored (METRIC_COLUMNS plus updated_at), sorted by the key.
    """
    _require_database(db)
    versions = _versions(model_versions)
    since = _timestamp(since, "since")
    first_day = after = None
    if since is not None:
        first_day = _as_date(CME_EQUITY.trading_day_of(pd.DatetimeIndex([since]))[0])
        after = CME_EQUITY.session_bounds(first_day)[0] - _DAY_MARGIN  # a trading day is (open, close]

    with db.connection() as conn:
        rows = _outcome_rows(conn, versions=versions, after=after)
        if first_day is not None:  # whole days only: from the day containing ``since`` on any symbol's calendar
            first_day = min([_as_date(calendar_of(symbol).trading_day_of(pd.DatetimeIndex([since]))[0])
                             for symbol in rows["symbol"].unique()], default=first_day)
            rows = rows[rows["day"] >= np.datetime64(first_day)]
        records = []
        for (version, shadow, day), group in rows.groupby(["model_version", "shadow", "day"], sort=True):
            summary = summarise(group)
            records.append({"model_version": str(version), "shadow": bool(shadow), "day": _as_date(day),
                            **{column: summary[column] for column in METRIC_COLUMNS[3:]}})
        if records:
            placeholders = ", ".join(f"%({column})s" for column in METRIC_COLUMNS)
            updates = ", ".join(f"{column} = EXCLUDED.{column}" for column in METRIC_COLUMNS[3:])
            with conn.cursor() as cursor:
                cursor.executemany(
                    f"""INSERT INTO live_metrics ({', '.join(METRIC_COLUMNS)}, updated_at)
                        VALUES ({placeholders}, now())
                        ON CONFLICT (model_version, shadow, day) DO UPDATE SET {updates}, updated_at = now()""",
                    records)
        selection = {"versions": versions, "first_day": first_day}
        conn.execute(
            """DELETE FROM live_metrics m
               WHERE (%(versions)s::text[] IS NULL OR m.model_version = ANY(%(versions)s::text[]))
                 AND (%(first_day)s::date IS NULL OR m.day >= %(first_day)s::date)
                 AND NOT EXISTS (SELECT 1 FROM unnest(%(v)s::text[], %(s)s::boolean[], %(d)s::date[]) AS k(v, s, d)
                                 WHERE k.v = m.model_version AND k.s = m.shadow AND k.d = m.day)""",
            {**selection, "v": [r["model_version"] for r in records], "s": [r["shadow"] for r in records],
             "d": [r["day"] for r in records]})
        cursor = conn.execute(
            f"""SELECT {', '.join(METRIC_COLUMNS)}, updated_at FROM live_metrics
                WHERE (%(versions)s::text[] IS NULL OR model_version = ANY(%(versions)s::text[]))
                  AND (%(first_day)s::date IS NULL OR day >= %(first_day)s::date)
                ORDER BY model_version, shadow, day""", selection)
        stored = pd.DataFrame(cursor.fetchall(), columns=[c.name for c in cursor.description])
    stored["updated_at"] = pd.to_datetime(stored["updated_at"], utc=True)
    return stored


def live_summary(db: Database, model_version: str, *, shadow: bool = False, since=None, days: int | None = None,
                 now=None) -> dict:
    """Live performance of one model version over a window, as plain Python values.

    The window is outcomes with ts in [since, now] (``now`` default: the current time);
    ``days`` further keeps only the last ``days`` trading days (each symbol's calendar) up to
    the trading day of ``now`` (weekends and holidays do not count; trading days without
    predictions do).
    Keys: model_version, shadow, first_day/last_day (ISO dates of the first and last day
    with resolved predictions, or None), days (how many such days), predictions, trades,
    hits, ambiguous, hit_rate (None without trades), skip_rate (None without predictions),
    realised_return (sum), mean_trade_return (None without trades), sharpe (of the daily
    realised returns, annualised; None under 2 days or without variance), log_loss, ece
    (None without predictions).
    """
    _require_database(db)
    if not isinstance(model_version, str) or not model_version:
        raise ConfigError(f"model_version must be a non-empty string such as 'smc-model/3', got {model_version!r}")
    if not isinstance(shadow, (bool, np.bool_)):
        raise ConfigError(f"shadow must be True or False, got {shadow!r}")
    since = _timestamp(since, "since")
    now = _timestamp(now, "now") or pd.Timestamp.now(tz="UTC")
    after = None
    if days is not None:
        if isinstance(days, (bool, np.bool_)) or not isinstance(days, (int, np.integer)) or days < 1:
            raise ConfigError(f"days must be an integer >= 1, got {days!r}")
        after = now - timedelta(days=3 * int(days) + 14)  # then each symbol's last ``days`` trading days

    with db.connection() as conn:
        rows = _outcome_rows(conn, versions=[model_version], shadow=bool(shadow), after=after, since=since,
                             until=now)
    if days is not None and len(rows):
        rows = rows[rows["day"] >= _window_firsts(rows["symbol"], now, int(days))]
    summary = summarise(rows)
    daily = rows.groupby("day", sort=True)["realised_return"].sum() if len(rows) else pd.Series([], dtype=float)
    return {
        "model_version": model_version, "shadow": bool(shadow),
        "first_day": _as_date(daily.index[0]).isoformat() if len(daily) else None,
        "last_day": _as_date(daily.index[-1]).isoformat() if len(daily) else None,
        "days": int(len(daily)),
        **summary,
        "sharpe": annualised_sharpe(daily.to_numpy()),
    }


def _window_firsts(symbols: pd.Series, now: pd.Timestamp, days: int) -> np.ndarray:
    """For each row's symbol, the first of its calendar's last ``days`` trading days up to the
    trading day of ``now`` (weekends and holidays do not count)."""
    firsts = {}
    for symbol in symbols.unique():
        calendar = calendar_of(symbol)
        last = _as_date(calendar.trading_day_of(pd.DatetimeIndex([now]))[0])
        window = calendar.trading_days(last - timedelta(days=3 * days + 14), last)[-days:]
        firsts[symbol] = np.datetime64(window[0] if window else last + timedelta(days=1), "D")
    return symbols.map(firsts).to_numpy(dtype="datetime64[D]")


# --------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------
def _require_database(db) -> None:
    if not isinstance(db, Database):
        raise ConfigError(f"db must be a smc_core.db.Database (not a URL or an engine), got {type(db).__name__}")


def _horizon_name(horizon) -> str:
    if isinstance(horizon, Horizon):
        return horizon.name
    if not isinstance(horizon, str) or not _HORIZON_NAME.match(horizon):
        raise ConfigError(f"horizon must be a labels horizon key such as 'h15_u1.5_d1.5' (Horizon.name), "
                          f"got {horizon!r}")
    return horizon


def _timestamp(value, name: str) -> pd.Timestamp | None:
    if value is None:
        return None
    if isinstance(value, date) and not isinstance(value, datetime):
        raise ConfigError(f"{name} must be a timezone-aware time, got the date {value!r}")
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a timezone-aware time, got {value!r}") from None
    if stamp is pd.NaT or pd.isna(stamp):
        raise ConfigError(f"{name} must be a timezone-aware time, got {value!r}")
    if stamp.tzinfo is None:
        raise ConfigError(f"{name} must be timezone-aware (UTC), got {value!r}")
    return stamp.tz_convert("UTC")


def _versions(model_versions) -> list[str] | None:
    if model_versions is None:
        return None
    if isinstance(model_versions, str):
        model_versions = [model_versions]
    try:
        versions = list(model_versions)
    except TypeError:
        raise ConfigError(f"model_versions must be a name or a list of names, got {model_versions!r}") from None
    if not versions or not all(isinstance(v, str) and v for v in versions):
        raise ConfigError(f"model_versions must be non-empty names such as 'smc-model/3', got {model_versions!r}")
    return versions


def _require(frame, columns, name: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise ConfigError(f"{name} must be a DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(f"{name} lack column(s) {', '.join(missing)}; need {', '.join(columns)}")


def _utc(values, name: str) -> pd.Series:
    """Timestamps as datetime64[ns, UTC]; naive ones are refused (they are ambiguous)."""
    stamps = pd.Series(values)
    if isinstance(stamps.dtype, pd.DatetimeTZDtype):
        return stamps.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    if pd.api.types.is_datetime64_dtype(stamps.dtype):
        if stamps.notna().any():
            raise ConfigError(f"{name} must be timezone-aware (UTC)")
        return stamps.dt.tz_localize("UTC").astype("datetime64[ns, UTC]")
    for value in stamps:
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            continue
        try:
            aware = pd.Timestamp(value).tzinfo is not None
        except (TypeError, ValueError):
            raise ConfigError(f"{name} has a value that is not a time: {value!r}") from None
        if not aware:
            raise ConfigError(f"{name} must be timezone-aware (UTC), got {value!r}")
    return pd.to_datetime(stamps, utc=True).astype("datetime64[ns, UTC]")


def _as_date(day) -> date:
    return pd.Timestamp(day).date()
