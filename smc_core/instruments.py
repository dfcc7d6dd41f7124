"""Instrument specifications: one per symbol, from a configuration file.

Why: costs, tick rounding and sessions differ per contract, and a model of 6E traded with
ES's tick and costs would pass gates it never faced. The built-in file
(``smc_core/instruments.toml``) covers the common CME futures and their micros; your own
file (``SMC_INSTRUMENTS``, default ``$SMC_HOME/instruments.toml``) adds symbols or changes
values, key by key. Everything that needs an instrument — backtest costs, the risk block's
tick rounding, the session calendar, the zone of naive timestamps — asks ``instrument(symbol)``.
"""

from __future__ import annotations

import logging
import math
import tomllib
from dataclasses import dataclass, fields
from datetime import time
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from smc_core.calendar import SessionCalendar, zone
from smc_core.errors import ConfigError

if TYPE_CHECKING:
    from smc_core.evaluation.backtest import InstrumentSpec

BUILT_IN = Path(__file__).with_name("instruments.toml")
_REQUIRED = ("tick_size", "tick_value", "calendar")


@dataclass(frozen=True)
class Instrument:
    """Contract terms, costs and sessions of one symbol."""

    symbol: str
    tick_size: float
    tick_value: float
    calendar_name: str
    commission: float = 0.0
    """Dollars per contract per fill (each side)."""
    slippage_ticks: float = 1.0
    """Ticks lost on every fill in the backtest."""
    timezone: str | None = None
    """Zone of naive timestamps in this symbol's files; None: the calendar's."""
    rth: str | None = None
    """Regular trading hours ``HH:MM-HH:MM`` in the calendar's zone; None: the whole session."""
    roll: str = "none"
    name: str = ""
    source: str = str(BUILT_IN)
    """The file the specification came from (named in errors)."""

    @property
    def multiplier(self) -> float:
        """Dollars per point."""
        return self.tick_value / self.tick_size

    def calendar(self) -> SessionCalendar:
        return self.sessions

    @cached_property
    def sessions(self) -> SessionCalendar:
        opens, closes = _hours(self.rth, self.symbol, self.source)
        return SessionCalendar(self.calendar_name, opens, closes)

    @property
    def zone(self) -> str:
        """Zone of naive timestamps in this symbol's files."""
        return self.timezone or self.calendar().tz

    def costs(self, capital: float | None = None) -> "InstrumentSpec":
        """The backtest's contract terms and costs for this symbol."""
        from smc_core.evaluation.backtest import InstrumentSpec

        terms = dict(symbol=self.symbol, tick_size=self.tick_size, tick_value=self.tick_value,
                     commission=self.commission, slippage_ticks=self.slippage_ticks)
        return InstrumentSpec(**terms, **({} if capital is None else {"capital": capital}))


def user_file() -> Path:
    """Your instruments file: SMC_INSTRUMENTS, else ``$SMC_HOME/instruments.toml``."""
    from smc_core.settings import Settings

    return Settings.from_env().instruments_file


def instrument(symbol: str, path: Path | None = None) -> Instrument:
    """The specification of ``symbol``; a ConfigError naming the file to edit when there is none."""
    path = path or user_file()
    known = instruments(path)
    if symbol not in known:
        raise ConfigError(
            f"unknown instrument {symbol!r}: add a [{symbol}] table to {path} with tick_size, tick_value and "
            f"calendar (\"24/5\", \"24/7\" or an exchange calendar such as \"CME Globex Equity\"); "
            f"the built-in ones ({', '.join(sorted(instruments(BUILT_IN)))}) are in {BUILT_IN}")
    return known[symbol]


@lru_cache(maxsize=256)
def serving_instrument(symbol: str) -> Instrument:
    """``instrument(symbol)`` read once per process: the service's per-request path (restart the
    service after editing the file)."""
    return instrument(symbol)


def calendar_of(symbol: str | None) -> SessionCalendar:
    """``symbol``'s session calendar for reading history: its specification's, else CME Globex
    equity's with a warning (a symbol whose entry was removed keeps its logged predictions and
    outcomes readable; everything that trades or trains still refuses an unknown symbol)."""
    from smc_core.calendar import CME_EQUITY

    if symbol is None:
        return CME_EQUITY
    try:
        return instrument(symbol).calendar()
    except ConfigError as error:
        _warn_once(symbol, f"{error}; its trading days are counted on the CME Globex equity calendar")
        return CME_EQUITY


def trading_days_of(symbols, ts) -> np.ndarray:
    """The trading day (``datetime64[D]``) of each (symbol, bar time) pair, on that symbol's calendar:
    a day of live metrics, loss limits or signal analytics is the instrument's session, not CME's
    for every symbol."""
    symbols = np.asarray(symbols, dtype=object)
    stamps = pd.DatetimeIndex(pd.to_datetime(ts, utc=True))
    days = np.empty(len(stamps), dtype="datetime64[D]")
    for symbol in pd.unique(symbols):
        mine = symbols == symbol if symbol is not None else pd.isna(symbols)
        days[mine] = calendar_of(symbol).trading_day_of(stamps[mine])
    return days


_warned: set[str] = set()


def _warn_once(symbol: str, message: str) -> None:
    if symbol not in _warned:
        _warned.add(symbol)
        logging.getLogger(__name__).warning(message)


def built_in(symbol: str) -> Instrument:
    """A built-in specification, whatever your file says: the project's documented defaults."""
    return instrument(symbol, BUILT_IN)


def instruments(path: Path | None = None) -> dict[str, Instrument]:
    """Every known instrument: the built-in ones, with your file's tables merged over them."""
    path = path or user_file()
    stamp = path.stat().st_mtime_ns if path.exists() else None
    return _load(str(path), stamp)


@lru_cache(maxsize=16)
def _load(path: str, stamp: int | None) -> dict[str, Instrument]:
    tables = {symbol: (table, str(BUILT_IN)) for symbol, table in _read(BUILT_IN).items()}
    if stamp is not None and Path(path) != BUILT_IN:
        for symbol, table in _read(Path(path)).items():
            merged = {**tables.get(symbol, ({}, path))[0], **table}
            tables[symbol] = (merged, path)
    return {symbol: _instrument(symbol, table, source) for symbol, (table, source) in tables.items()}


def _read(path: Path) -> dict[str, dict]:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror})") from None
    for symbol, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {symbol!r} must be a table ([{symbol}] with its keys below it)")
    return data


_KEYS = {f.name for f in fields(Instrument)} - {"symbol", "calendar_name", "source"} | {"calendar"}


def _instrument(symbol: str, table: dict, source: str) -> Instrument:
    where = f"{source}: [{symbol}]"
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}")
    missing = [key for key in _REQUIRED if key not in table]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    values = {key: value for key, value in table.items() if key != "calendar"}
    for key in ("tick_size", "tick_value", "commission", "slippage_ticks"):
        if key in values:
            value = values[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
            values[key] = float(value)
    if values["tick_size"] <= 0 or values["tick_value"] <= 0:
        raise ConfigError(f"{where}: tick_size and tick_value must be > 0")
    if values.get("commission", 0.0) < 0 or values.get("slippage_ticks", 0.0) < 0:
        raise ConfigError(f"{where}: commission and slippage_ticks must be >= 0")
    if values.get("timezone") is not None:
        try:
            zone(values["timezone"])
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
    spec = Instrument(symbol=symbol, calendar_name=str(table["calendar"]), source=source, **values)
    try:
        spec.calendar()
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    return spec


def _hours(rth: str | None, symbol: str, source: str) -> tuple[time, time]:
    if rth is None:
        return time(0), time(0)
    try:
        first, last = (time.fromisoformat(part.strip()) for part in rth.split("-"))
    except ValueError:
        raise ConfigError(f"{source}: [{symbol}] rth must be \"HH:MM-HH:MM\", got {rth!r}") from None
    return first, last
