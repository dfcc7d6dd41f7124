"""Safety for real money: the kill switch (halts) and the circuit breaker on the live record.

Why here, without a framework: the admin routes, the ``smc halt`` command, the Dagster jobs
and the breaker sensor all halt and resume through the same few functions, so a halt means
the same thing whoever made it. The service follows the ``trading_halts`` table
(``smc_core.serving.halts``) and answers ``skip`` for a halted scope.

A *scope* is a symbol or ``*`` (every symbol). Halting is idempotent (the first halt of a
scope keeps its time and reason); resuming deletes the scope's row. Both are events in
``trading_halt_events``.

The breaker judges the trades a serving model made live (``prediction_outcomes`` of its
non-shadow answers with a position) against three limits, all in the outcome table's units
(realised return = direction × position size × the label's log return, no costs):

* **daily loss**, per symbol: the sum of a CME trading day's realised returns at or below
  ``-daily_loss`` halts that symbol;
* **consecutive losses**, per symbol: ``consecutive_losses`` losing trades (realised return
  < 0) in a row halt that symbol (a zero-return trade, e.g. an ambiguous barrier, ends a run);
* **drawdown**, over every symbol of the model: the equity curve (cumulative realised
  return, trades in bar order, starting at 0) falling ``drawdown`` below its running peak
  halts every symbol.

Only trades *served after the last resume* of a scope count (by the prediction's
``logged_at``), so an operator's resume is not undone at once by the losses that caused the
halt. A second rule, independent of resumes, rolls the champion back to ``previous``: its
whole live record drawing down ``rollback_drawdown`` from its peak.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd
from psycopg.types.json import Jsonb

from smc_core.alerts import raise_alert
from smc_core.db import Database
from smc_core.errors import ConfigError
from smc_core.ingest import check_symbol
from smc_core.instruments import calendar_of
from smc_core.settings import env_number

ALL = "*"
SOURCES = ("admin", "cli", "dagster", "breaker")


# --------------------------------------------------------------------------------------
# The kill switch
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Halt:
    scope: str
    """A symbol, or ``*`` for every symbol."""
    reason: str
    source: str
    """Who halted: admin (the service's route), cli, dagster (halt_job) or breaker."""
    since: datetime
    details: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        return {"scope": "all" if self.scope == ALL else self.scope, "reason": self.reason, "source": self.source,
                "since": self.since.isoformat(), "details": self.details}

    @classmethod
    def from_json(cls, value: dict) -> "Halt":
        scope = ALL if value["scope"] == "all" else value["scope"]
        return cls(scope, value["reason"], value["source"], datetime.fromisoformat(value["since"]),
                   value.get("details") or {})


@dataclass(frozen=True)
class HaltState:
    """The halts in force: scope → Halt."""

    halts: dict[str, Halt] = field(default_factory=dict)

    def applying_to(self, symbol: str) -> Halt | None:
        """The halt that stops ``symbol`` (the halt of every symbol first), or None."""
        return self.halts.get(ALL) or self.halts.get(symbol)

    @property
    def all_halted(self) -> bool:
        return ALL in self.halts

    def symbols(self) -> list[str]:
        return sorted(scope for scope in self.halts if scope != ALL)

    def merged(self, halts: list[Halt]) -> "HaltState":
        """This state plus ``halts`` (a scope already halted keeps its first halt)."""
        return HaltState({**{h.scope: h for h in halts}, **self.halts})

    def as_json(self) -> dict:
        return {"all": self.halts[ALL].as_json() if ALL in self.halts else None,
                "symbols": {scope: self.halts[scope].as_json() for scope in self.symbols()}}

    @classmethod
    def from_json(cls, value: dict) -> "HaltState":
        halts = [Halt.from_json(value["all"])] if value.get("all") else []
        halts += [Halt.from_json(h) for h in (value.get("symbols") or {}).values()]
        return cls({h.scope: h for h in halts})


def scopes_of(symbols) -> list[str]:
    """``None`` or an empty list: every symbol (``*``); else the symbols, each checked."""
    if not symbols:
        return [ALL]
    if isinstance(symbols, str):
        symbols = [symbols]
    scopes = []
    for symbol in symbols:
        if symbol in (ALL, "all"):
            return [ALL]
        check_symbol(symbol)
        scopes.append(symbol)
    return sorted(set(scopes))


def _check(reason: str, source: str) -> None:
    if not isinstance(reason, str) or not reason.strip():
        raise ConfigError("a halt or resume needs a reason (who and why, for the record)")
    if source not in SOURCES:
        raise ConfigError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")


def halt(db: Database, symbols, reason: str, source: str, details: dict | None = None,
         timeout: float | None = None) -> HaltState:
    """Halt ``symbols`` (None: every symbol); returns the halts in force afterwards.
    ``timeout``: seconds to wait for a database connection (the pool's default otherwise)."""
    _check(reason, source)
    scopes = scopes_of(symbols)
    with db.connection(timeout=timeout) as conn:
        for scope in scopes:
            conn.execute("INSERT INTO trading_halts (scope, reason, source, details) VALUES (%s, %s, %s, %s) "
                         "ON CONFLICT (scope) DO NOTHING", (scope, reason, source, Jsonb(details or {})))
            conn.execute("INSERT INTO trading_halt_events (action, scope, reason, source, details) "
                         "VALUES ('halt', %s, %s, %s, %s)", (scope, reason, source, Jsonb(details or {})))
        return _read(conn)


def resume(db: Database, symbols, reason: str, source: str, timeout: float | None = None) -> HaltState:
    """Lift the halts of ``symbols``; None lifts every halt (all symbols and each symbol's own).

    Resuming one symbol while every symbol is halted lifts that symbol's own halt only: the
    halt of all still applies to it."""
    _check(reason, source)
    scopes = scopes_of(symbols)
    with db.connection(timeout=timeout) as conn:
        if scopes == [ALL]:
            lifted = [row[0] for row in conn.execute("SELECT scope FROM trading_halts").fetchall()]
            conn.execute("DELETE FROM trading_halts")
            scopes = sorted(set(lifted) | {ALL})
        else:
            for scope in scopes:
                conn.execute("DELETE FROM trading_halts WHERE scope = %s", (scope,))
        for scope in scopes:
            conn.execute("INSERT INTO trading_halt_events (action, scope, reason, source) VALUES ('resume', %s, %s, %s)",
                         (scope, reason, source))
        return _read(conn)


def read_halts(db: Database, timeout: float | None = None) -> HaltState:
    with db.connection(timeout=timeout) as conn:
        return _read(conn)


def _read(conn) -> HaltState:
    rows = conn.execute("SELECT scope, reason, source, halted_at, details FROM trading_halts ORDER BY scope").fetchall()
    return HaltState({scope: Halt(scope, reason, source, at, details) for scope, reason, source, at, details in rows})


def last_resumes(db: Database) -> dict[str, datetime]:
    """Scope → time of its last resume (a resume of every symbol is under ``*``)."""
    with db.connection() as conn:
        rows = conn.execute("SELECT scope, max(at) FROM trading_halt_events WHERE action = 'resume' "
                            "GROUP BY scope").fetchall()
    return {scope: at for scope, at in rows}


def halt_events(db: Database, limit: int = 50) -> list[dict]:
    with db.connection() as conn:
        rows = conn.execute("SELECT id, at, action, scope, reason, source, details FROM trading_halt_events "
                            "ORDER BY id DESC LIMIT %s", (limit,)).fetchall()
    return [dict(zip(("id", "at", "action", "scope", "reason", "source", "details"), row)) for row in rows]


# --------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SafetySettings:
    """Circuit-breaker limits, the rollback rule and the A/B test's rule (0 turns a limit off)."""

    daily_loss: float = 0.01
    """Per symbol and trading day: halt when the realised returns sum to -1 % or less."""
    consecutive_losses: int = 8
    """Per symbol: halt after this many losing trades in a row."""
    drawdown: float = 0.02
    """Every symbol: halt all when the model's live equity falls this far below its peak."""
    rollback_drawdown: float = 0.03
    """The champion's whole live record this far below its peak: roll back to ``previous``."""
    breaker_interval_s: int = 60
    ab_share: float = 0.0
    """Share of requests a gated challenger answers in an A/B test; 0: no A/B test (promote
    at once, or shadow when SMC_SHADOW_HOURS is set)."""
    ab_min_trades: int = 100
    """Resolved trades each arm needs before the test is judged (once: a fixed-sample test)."""
    ab_alpha: float = 0.05
    """Significance level of the one-sided Welch t-test that promotes the challenger."""
    ab_interval_s: int = 300

    def __post_init__(self):
        for name in ("daily_loss", "drawdown", "rollback_drawdown"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0 turns it off), got {getattr(self, name)}")
        if not 0 <= self.ab_share < 1:
            raise ConfigError(f"the A/B share must be in [0, 1), got {self.ab_share}")
        if not 0 < self.ab_alpha < 0.5:
            raise ConfigError(f"the A/B significance level must be in (0, 0.5), got {self.ab_alpha}")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "SafetySettings":
        env = os.environ if env is None else env
        d = cls
        return cls(
            daily_loss=env_number(env, "SMC_BREAKER_DAILY_LOSS", d.daily_loss, float, 0.0, 1.0),
            consecutive_losses=env_number(env, "SMC_BREAKER_CONSECUTIVE_LOSSES", d.consecutive_losses, int, 0, 10**6),
            drawdown=env_number(env, "SMC_BREAKER_DRAWDOWN", d.drawdown, float, 0.0, 1.0),
            rollback_drawdown=env_number(env, "SMC_ROLLBACK_DRAWDOWN", d.rollback_drawdown, float, 0.0, 1.0),
            breaker_interval_s=env_number(env, "SMC_BREAKER_INTERVAL_S", d.breaker_interval_s, int, 5, 86400),
            ab_share=env_number(env, "SMC_AB_SHARE", d.ab_share, float, 0.0, 0.99),
            ab_min_trades=env_number(env, "SMC_AB_MIN_TRADES", d.ab_min_trades, int, 2, 10**7),
            ab_alpha=env_number(env, "SMC_AB_ALPHA", d.ab_alpha, float, 0.0001, 0.49),
            ab_interval_s=env_number(env, "SMC_AB_INTERVAL_S", d.ab_interval_s, int, 10, 7 * 86400),
        )


# --------------------------------------------------------------------------------------
# The circuit breaker (pure)
# --------------------------------------------------------------------------------------
TRADE_COLUMNS = ("ts", "request_id", "symbol", "realised_return", "logged_at")


@dataclass(frozen=True)
class Breach:
    scope: str
    rule: str
    """daily_loss, consecutive_losses or drawdown."""
    value: float
    limit: float
    model_version: str
    detail: str

    def as_json(self) -> dict:
        return {"scope": "all" if self.scope == ALL else self.scope, "rule": self.rule, "value": self.value,
                "limit": self.limit, "model_version": self.model_version, "detail": self.detail}


def max_drawdown(returns) -> float:
    """Largest fall of the cumulative sum below its running peak (the curve starts at 0)."""
    equity = np.concatenate([[0.0], np.cumsum(np.asarray(returns, dtype=np.float64))])
    return float(np.max(np.maximum.accumulate(equity) - equity))


def longest_losing_run(returns) -> int:
    run = best = 0
    for value in np.asarray(returns, dtype=np.float64):
        run = run + 1 if value < 0 else 0
        best = max(best, run)
    return best


def breaches(trades: pd.DataFrame, limits: SafetySettings, model_version: str,
             resumed: dict[str, datetime] | None = None) -> list[Breach]:
    """The limits ``trades`` (TRADE_COLUMNS, one model's live trades) break.

    ``resumed``: scope → last resume; a scope's trades served at or before it do not count."""
    missing = [c for c in TRADE_COLUMNS if c not in trades.columns]
    if missing:
        raise ConfigError(f"trades lack column(s) {', '.join(missing)}")
    resumed = resumed or {}
    frame = trades.sort_values(["ts", "request_id"], kind="stable")
    logged = pd.to_datetime(frame["logged_at"], utc=True)
    found: list[Breach] = []

    def after(scope: str) -> pd.Series:
        starts = [pd.Timestamp(resumed[s]) for s in {scope, ALL} if s in resumed]
        return logged > max(starts) if starts else pd.Series(True, index=frame.index)

    for symbol in sorted(frame["symbol"].unique()):
        own = frame[(frame["symbol"] == symbol) & after(symbol)]
        if own.empty:
            continue
        returns = own["realised_return"].to_numpy(dtype=np.float64)
        if limits.daily_loss > 0:
            daily = own.groupby(calendar_of(symbol).trading_day_of(own["ts"]))["realised_return"].sum()
            worst_day, worst = daily.idxmin(), float(daily.min())
            if worst <= -limits.daily_loss:
                found.append(Breach(symbol, "daily_loss", -worst, limits.daily_loss, model_version,
                                    f"{symbol} lost {-worst:.4%} on {pd.Timestamp(worst_day).date()} "
                                    f"(limit {limits.daily_loss:.4%})"))
        if limits.consecutive_losses > 0:
            run = longest_losing_run(returns)
            if run >= limits.consecutive_losses:
                found.append(Breach(symbol, "consecutive_losses", run, limits.consecutive_losses, model_version,
                                    f"{symbol}: {run} losing trades in a row (limit {limits.consecutive_losses})"))
    if limits.drawdown > 0:
        every = frame[after(ALL)]
        drawdown = max_drawdown(every["realised_return"]) if len(every) else 0.0
        if drawdown >= limits.drawdown:
            found.append(Breach(ALL, "drawdown", drawdown, limits.drawdown, model_version,
                                f"live equity {drawdown:.4%} below its peak over {len(every)} trades "
                                f"(limit {limits.drawdown:.4%})"))
    return found


def rollback_reason(trades: pd.DataFrame, limits: SafetySettings, model_version: str) -> str | None:
    """Why the champion should be rolled back (its whole live record), or None."""
    if limits.rollback_drawdown <= 0 or trades.empty:
        return None
    drawdown = max_drawdown(trades.sort_values(["ts", "request_id"], kind="stable")["realised_return"])
    if drawdown < limits.rollback_drawdown:
        return None
    return (f"circuit breaker: {model_version}'s live equity fell {drawdown:.4%} below its peak over {len(trades)} "
            f"trades (rollback at {limits.rollback_drawdown:.4%})")


# --------------------------------------------------------------------------------------
# The circuit breaker on the database
# --------------------------------------------------------------------------------------
def live_trades(db: Database, model_version: str) -> pd.DataFrame:
    """``model_version``'s resolved live trades (non-shadow, a position taken), with when each was served."""
    with db.connection() as conn:
        rows = conn.execute(
            """SELECT o.ts, o.request_id, o.symbol, o.realised_return, p.logged_at
               FROM prediction_outcomes o
               JOIN predictions p ON p.ts = o.ts AND p.request_id = o.request_id AND p.shadow = o.shadow
               WHERE o.model_version = %s AND NOT o.shadow AND o.direction <> 0 AND o.position_size > 0
               ORDER BY o.ts, o.request_id""", (model_version,)).fetchall()
    frame = pd.DataFrame(rows, columns=list(TRADE_COLUMNS))
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    frame["realised_return"] = frame["realised_return"].astype("float64")
    return frame


@dataclass(frozen=True)
class BreakerCheck:
    model_version: str
    trades: int
    breaches: list[Breach]
    halted: list[str]
    """Scopes halted by this check (a scope already halted is left alone)."""
    alerts: list[int]
    rollback: str | None
    """The rollback rule's reason, when it says roll back (the caller carries it out)."""

    def summary(self) -> str:
        if not self.breaches:
            return f"{self.model_version}: {self.trades} live trades within every limit"
        return f"{self.model_version}: " + "; ".join(b.detail for b in self.breaches)


def check_breaker(db: Database, model_version: str, limits: SafetySettings, *, champion: bool = True) -> BreakerCheck:
    """Judge ``model_version``'s live trades; halt each breached scope not halted yet and raise
    an ``error`` alert for it. ``champion``: also apply the rollback rule."""
    trades = live_trades(db, model_version)
    found = breaches(trades, limits, model_version, last_resumes(db))
    state = read_halts(db)
    halted, alerts = [], []
    for scope in dict.fromkeys(b.scope for b in found):
        if scope in state.halts or state.all_halted:
            continue
        why = [b for b in found if b.scope == scope]
        reason = "circuit breaker: " + "; ".join(b.detail for b in why)
        halt(db, [scope], reason, "breaker", {"breaches": [b.as_json() for b in why]})
        halted.append(scope)
        alerts.append(raise_alert(db, "circuit_breaker", f"{model_version} halted "
                                  f"{'on every symbol' if scope == ALL else 'on ' + scope}", reason,
                                  {"breaches": [b.as_json() for b in why], "model_version": model_version},
                                  severity="error"))
        state = read_halts(db)
    rollback = rollback_reason(trades, limits, model_version) if champion else None
    return BreakerCheck(model_version, len(trades), found, halted, alerts, rollback)
