"""What the model said and how it did: the queries behind ``GET /signals``, ``/signals/{id}``
and ``/signals/analytics``.

Why from ``predictions`` and ``prediction_outcomes``: a signal is a served, non-shadow row of
the prediction log (with its risk block, sql/014_signals.sql), and its outcome is the row
``smc_core.outcomes`` wrote once its label was known, so the history, the analytics and the
monitoring loop score the same calls the same way. Framework-free: the service maps HTTP on it.

Conventions: the list is newest first by (bar time, request id), with an opaque cursor that
resumes after the last item; ``since`` ≤ bar time < ``until``. Analytics are per model version
and trading day of the bar time on its symbol's calendar (as ``live_metrics``):
  * ``signals``: served signals; ``trades``: of those, long or short with a size > 0;
    ``trade_rate = trades / signals``;
  * ``resolved`` / ``resolved_trades``: signals / trades whose outcome is known;
  * ``hit_rate = hits / resolved_trades`` (a hit: the realised label equals the served one);
  * ``mean_realised_return``: mean ``realised_return`` (direction × size × the label's log
    return) over resolved trades; ``total_realised_return``: its sum over resolved signals
    (skips add 0). Rates and means are null where nothing defines them.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Mapping

import numpy as np
import pandas as pd
from psycopg import sql

from smc_core.instruments import trading_days_of
from smc_core.labels import LABELS
from smc_core.serving.request import RequestError
from smc_core.signals import signal_of

MAX_PAGE = 1000
DEFAULT_PAGE = 100
ANALYTICS_DAYS = 30
"""Without ``since``, analytics cover the trading days of the last 30 calendar days up to ``until``."""
_LIST_PARAMS = ("symbol", "timeframe", "label", "model_version", "since", "until", "limit", "cursor")
_SIGNAL_COLUMNS = ("ts", "request_id", "symbol", "timeframe", "label", "raw_label", "confidence", "p_long", "p_short",
                   "p_skip", "position_size", "risk", "model_version", "logged_at")


@dataclass(frozen=True)
class SignalQuery:
    symbol: str | None = None
    timeframe: str | None = None
    label: str | None = None
    model_version: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = DEFAULT_PAGE
    after: tuple[datetime, str] | None = None
    """The cursor: (bar time, request id) of the last item of the previous page."""

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> "SignalQuery":
        """The query string of ``GET /signals``; a 422 names every bad parameter."""
        errors = [_error(name, f"unknown parameter (accepted: {', '.join(_LIST_PARAMS)})")
                  for name in params if name not in _LIST_PARAMS]
        label = params.get("label")
        if label is not None and label not in LABELS:
            errors.append(_error("label", f"{label!r} is not one of {', '.join(LABELS)}"))
        since, until = (_time(params, name, errors) for name in ("since", "until"))
        if since is not None and until is not None and until <= since:
            errors.append(_error("until", f"must be after since ({since.isoformat()})"))
        limit = _integer(params, "limit", DEFAULT_PAGE, 1, MAX_PAGE, errors)
        after = None
        if params.get("cursor"):
            try:
                stamp, request_id = json.loads(base64.urlsafe_b64decode(params["cursor"].encode()))
                after = (datetime.fromisoformat(stamp), str(request_id))
            except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
                errors.append(_error("cursor", "not a cursor this service gave (use next_cursor of the previous page)"))
        if errors:
            raise RequestError(422, "request validation failed", {"errors": errors})
        return cls(params.get("symbol") or None, params.get("timeframe") or None, label,
                   params.get("model_version") or None, since, until, limit, after)


def list_signals(conn, query: SignalQuery) -> dict:
    """One page of signals, newest first; ``next_cursor`` is null on the last page."""
    where = [sql.SQL("NOT shadow")]
    values: list = []
    for column in ("symbol", "timeframe", "label", "model_version"):
        if getattr(query, column) is not None:
            where.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            values.append(getattr(query, column))
    if query.since is not None:
        where.append(sql.SQL("ts >= %s"))
        values.append(query.since)
    if query.until is not None:
        where.append(sql.SQL("ts < %s"))
        values.append(query.until)
    if query.after is not None:
        where.append(sql.SQL("(ts, request_id) < (%s, %s)"))
        values.extend(query.after)
    statement = sql.SQL("SELECT {} FROM predictions WHERE {} ORDER BY ts DESC, request_id DESC LIMIT %s").format(
        sql.SQL(", ").join(map(sql.Identifier, _SIGNAL_COLUMNS)), sql.SQL(" AND ").join(where))
    rows = conn.execute(statement, [*values, query.limit + 1]).fetchall()
    page = [_signal(row) for row in rows[:query.limit]]
    cursor = None
    if len(rows) > query.limit:
        last = rows[query.limit - 1]
        cursor = base64.urlsafe_b64encode(json.dumps([last[0].isoformat(), last[1]]).encode()).decode()
    return {"signals": page, "next_cursor": cursor}


def get_signal(conn, request_id: str) -> dict:
    """The signal with its outcome (null until the outcome is known); 404 for an unknown id."""
    row = conn.execute(sql.SQL("SELECT {} FROM predictions WHERE request_id = %s AND NOT shadow").format(
        sql.SQL(", ").join(map(sql.Identifier, _SIGNAL_COLUMNS))), (request_id,)).fetchone()
    if row is None:
        raise RequestError(404, "no such signal", {"reason": f"no served signal has request_id {request_id!r}"})
    outcome = conn.execute(
        """SELECT horizon, realised_label, barrier, t1, ret, ambiguous, realised_return, hit, computed_at
           FROM prediction_outcomes WHERE ts = %s AND request_id = %s AND NOT shadow""", (row[0], request_id)).fetchone()
    signal = _signal(row)
    signal["outcome"] = None if outcome is None else {
        "horizon": outcome[0], "realised_label": LABELS[outcome[1]], "barrier": outcome[2],
        "exit_time": outcome[3].isoformat(), "return": outcome[4], "ambiguous": outcome[5],
        "realised_return": outcome[6], "hit": outcome[7], "computed_at": outcome[8].isoformat()}
    return signal


def analytics(conn, params: Mapping[str, str]) -> dict:
    """Per model version and trading day (see the module's conventions); filters model_version, since, until."""
    errors = [_error(name, "unknown parameter (accepted: model_version, since, until)")
              for name in params if name not in ("model_version", "since", "until")]
    until = _day(params, "until", errors) or datetime.now(timezone.utc).date()
    since = _day(params, "since", errors) or until - timedelta(days=ANALYTICS_DAYS)
    if until < since:
        errors.append(_error("until", f"must not be before since ({since})"))
    if errors:
        raise RequestError(422, "request validation failed", {"errors": errors})
    version = params.get("model_version") or None
    # a trading day starts the evening before its date: read one calendar day either side, then keep the days asked
    rows = conn.execute(
        """SELECT p.model_version, p.ts, p.symbol, p.label, p.position_size, o.request_id IS NOT NULL, o.hit, o.realised_return
           FROM predictions p LEFT JOIN prediction_outcomes o
             ON o.ts = p.ts AND o.request_id = p.request_id AND NOT o.shadow
           WHERE NOT p.shadow AND p.ts >= %s AND p.ts < %s AND (%s::text IS NULL OR p.model_version = %s)""",
        (_midnight(since - timedelta(days=1)), _midnight(until + timedelta(days=2)), version, version)).fetchall()
    frame = pd.DataFrame(rows, columns=["model_version", "ts", "symbol", "label", "position_size", "resolved", "hit",
                                        "realised_return"])
    if frame.empty:
        return {"since": since.isoformat(), "until": until.isoformat(), "days": []}
    frame["day"] = trading_days_of(frame["symbol"], frame["ts"])
    frame = frame[(frame["day"] >= np.datetime64(since)) & (frame["day"] <= np.datetime64(until))]
    frame["trade"] = frame["label"].isin(("long", "short")) & (frame["position_size"] > 0)
    frame["resolved_trade"] = frame["resolved"] & frame["trade"]
    frame["hit"] = frame["hit"].eq(True)  # NULL (no trade) is no hit
    frame["realised_return"] = frame["realised_return"].astype(float)
    days = []
    for (model_version, day), group in frame.groupby(["model_version", "day"], sort=True):
        signals, trades = len(group), int(group["trade"].sum())
        resolved, resolved_trades = int(group["resolved"].sum()), int(group["resolved_trade"].sum())
        hits = int((group["hit"] & group["resolved_trade"]).sum())
        returns = group.loc[group["resolved_trade"], "realised_return"]
        days.append({"model_version": model_version, "day": str(np.datetime64(day, "D")), "signals": signals,
                     "trades": trades, "trade_rate": trades / signals, "resolved": resolved,
                     "resolved_trades": resolved_trades, "hits": hits,
                     "hit_rate": hits / resolved_trades if resolved_trades else None,
                     "mean_realised_return": float(returns.mean()) if resolved_trades else None,
                     "total_realised_return": float(group.loc[group["resolved"], "realised_return"].sum())})
    return {"since": since.isoformat(), "until": until.isoformat(), "days": days}


def _signal(row) -> dict:
    values = dict(zip(_SIGNAL_COLUMNS, row))
    body = {"label": values["label"], "raw_label": values["raw_label"], "confidence": values["confidence"],
            "probabilities": {"long": values["p_long"], "short": values["p_short"], "skip": values["p_skip"]},
            "position_size": values["position_size"], "risk": values["risk"], "model_version": values["model_version"]}
    return signal_of(values["request_id"], values["symbol"], values["timeframe"], values["ts"], values["logged_at"],
                     body)


def _error(name: str, message: str) -> dict:
    return {"path": f"query.{name}", "message": message}


def _time(params: Mapping[str, str], name: str, errors: list) -> datetime | None:
    text = params.get(name)
    if text is None:  # absent; an empty value is refused below like any other that is not a time
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        errors.append(_error(name, f"{text!r} is not an ISO 8601 time (e.g. 2024-03-05T14:30:00Z)"))
        return None
    if value.tzinfo is None:
        errors.append(_error(name, f"{text!r} has no UTC offset (add Z or +00:00)"))
        return None
    return value


def _day(params: Mapping[str, str], name: str, errors: list) -> date | None:
    text = params.get(name)
    if text is None:  # absent; an empty value is refused below like any other that is not a time
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        errors.append(_error(name, f"{text!r} is not a trading day (YYYY-MM-DD)"))
        return None


def _integer(params: Mapping[str, str], name: str, default: int, low: int, high: int, errors: list) -> int:
    text = params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        errors.append(_error(name, f"{text!r} is not an integer"))
        return default
    if not low <= value <= high:
        errors.append(_error(name, f"{value} is outside [{low}, {high}]"))
        return default
    return value


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
