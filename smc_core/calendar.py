"""Exchange session calendars: which session a bar belongs to, and which bars to expect.

Why a maintained library: sessions come from ``pandas_market_calendars`` (CME Globex
equity, energy and metals, interest rates, FX, and every exchange it knows), so holidays
and early closes are the exchange's, not ours to keep up to date. Two calendars for data
that no exchange closes are defined here: ``24/5`` (FX: Sunday 17:00 New York to Friday
17:00, one session per weekday from 17:00 the evening before) and ``24/7`` (one session
per UTC day, every day).

Conventions. Bars are stamped with their close time (DESIGN §3). A session is the UTC
interval (open, close]; a bar belongs to the first session whose close is at or after its
stamp (``trading_day_of``). A bar before that session's open — in a daily halt, a weekend,
a holiday, or after an early close — is *outside* every session (``in_session`` False):
it is never dropped silently but counted by the ``session_coverage`` check, and
``SMC_OUT_OF_SESSION`` says what happens to it (settings). The span a trading day's
partition owns is (previous session's close, this close], so every stored bar lies in
exactly one partition. A bar of a day or longer is one bar per session, stamped at the
session's close (``stamp_sessions``).

Everything is vectorised over int64 nanoseconds and a per-year schedule cached in memory:
the service computes these encodings on every request.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from smc_core.errors import ConfigError
from smc_core.timeframe import is_daily

_MICROSECOND_NS = 1_000
SECOND_NS = 1_000_000_000
MINUTE_NS = 60 * SECOND_NS
DAY_NS = 86_400 * SECOND_NS
_SHORT_SPAN_NS = 7 * DAY_NS
"""Shorter than the time between any two UTC-offset changes of a real time zone (months)."""

FX_24X5, ALWAYS_OPEN = "24/5", "24/7"
_OWN_CALENDARS = {FX_24X5: ("America/New_York", time(17), time(17)), ALWAYS_OPEN: ("UTC", time(0), time(0))}


def zone(name: str) -> ZoneInfo:
    """Return the IANA time zone ``name`` or raise a ConfigError naming it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown time zone {name!r}: use an IANA name such as America/Chicago") from None


def calendar_names() -> list[str]:
    """Every calendar name a SessionCalendar accepts."""
    import pandas_market_calendars as mcal

    return sorted({*mcal.get_calendar_names(), *_OWN_CALENDARS})


@lru_cache(maxsize=64)
def _library_calendar(name: str):
    import pandas_market_calendars as mcal

    try:
        return mcal.get_calendar(name)
    except RuntimeError:
        raise ConfigError(f"unknown session calendar {name!r}: use {FX_24X5!r}, {ALWAYS_OPEN!r} or a "
                          "pandas_market_calendars name such as 'CME Globex Equity', 'CMEGlobex_Energy', "
                          "'CMEGlobex_Metals', 'CME Globex Fixed Income', 'CMEGlobex_FX', 'NYSE'") from None


class Schedule:
    """Sessions of a span of years as sorted arrays: trading day, UTC open and close (ns)."""

    def __init__(self, days: np.ndarray, opens: np.ndarray, closes: np.ndarray):
        self.days, self.opens, self.closes = days, opens, closes
        self.by_day = {int(d): i for i, d in enumerate(days.astype("int64"))}

    def owner(self, ts_ns: np.ndarray) -> np.ndarray:
        """Index of the session each stamp belongs to: the first whose close is at or after it."""
        return np.searchsorted(self.closes, ts_ns, side="left")


@lru_cache(maxsize=1024)
def _year(name: str, year: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sessions whose trading day falls in ``year``."""
    if name in _OWN_CALENDARS:
        tz, open_at, _ = _OWN_CALENDARS[name]
        days = pd.date_range(f"{year}-01-01", f"{year}-12-31", freq="D")
        if name == FX_24X5:
            days = days[days.weekday < 5]
            opens = (days - pd.Timedelta(days=1) + pd.Timedelta(hours=open_at.hour)).tz_localize(tz)
            closes = (days + pd.Timedelta(hours=open_at.hour)).tz_localize(tz)
        else:
            opens = days.tz_localize(tz)
            closes = (days + pd.Timedelta(days=1)).tz_localize(tz)
        return (days.values.astype("datetime64[D]"), opens.tz_convert("UTC").as_unit("ns").asi8,
                closes.tz_convert("UTC").as_unit("ns").asi8)
    schedule = _library_calendar(name).schedule(f"{year}-01-01", f"{year}-12-31")
    return (schedule.index.values.astype("datetime64[D]"),
            pd.DatetimeIndex(schedule["market_open"]).as_unit("ns").asi8,
            pd.DatetimeIndex(schedule["market_close"]).as_unit("ns").asi8)


@lru_cache(maxsize=256)
def _schedule(name: str, first_year: int, last_year: int) -> Schedule:
    parts = [_year(name, year) for year in range(first_year, last_year + 1)]
    return Schedule(*(np.concatenate([part[i] for part in parts]) for i in range(3)))


_GREGORIAN_YEAR_NS = 31_556_952 * SECOND_NS


def _year_of_ns(ns: int) -> int:
    """The year of a UTC stamp, to within a day of New Year (schedules are padded by a year)."""
    return 1970 + int(ns // _GREGORIAN_YEAR_NS)


@dataclass(frozen=True)
class SessionCalendar:
    """The sessions of one market (default: CME Globex equity index futures, ES/NQ).

    ``rth_open``/``rth_close`` are the regular trading hours in the calendar's own time zone
    (the ``is_rth`` feature); equal times mean the whole session counts as regular.
    """

    name: str = "CME Globex Equity"
    rth_open: time = time(8, 30)
    rth_close: time = time(15, 0)

    def __post_init__(self) -> None:
        if self.name not in _OWN_CALENDARS:
            _library_calendar(self.name)

    @property
    def tz(self) -> str:
        """The calendar's own time zone (wall-clock encodings, RTH, naive daily stamps)."""
        if self.name in _OWN_CALENDARS:
            return _OWN_CALENDARS[self.name][0]
        return str(_library_calendar(self.name).tz)

    @property
    def regular_open(self) -> time:
        """Wall-clock time a regular session opens (17:00 on CME Globex)."""
        if self.name in _OWN_CALENDARS:
            return _OWN_CALENDARS[self.name][1]
        return _library_calendar(self.name).open_time

    # --- the schedule -------------------------------------------------------------
    def schedule(self, first_ns: int, last_ns: int) -> Schedule:
        """Sessions covering stamps from ``first_ns`` to ``last_ns`` (and the sessions around them)."""
        return _schedule(self.name, _year_of_ns(first_ns) - 1, _year_of_ns(last_ns) + 1)

    def _schedule_for_day(self, day: date) -> Schedule:
        return _schedule(self.name, day.year - 1, day.year + 1)

    # --- single days ----------------------------------------------------------------
    def is_trading_day(self, day: date) -> bool:
        return _day_number(day) in self._schedule_for_day(day).by_day

    def session_bounds(self, day: date) -> tuple[pd.Timestamp, pd.Timestamp]:
        """UTC (open, close] of trading day ``day``'s session; an empty interval at the previous
        session's close for a day without a session (weekend, holiday)."""
        schedule = self._schedule_for_day(day)
        index = schedule.by_day.get(_day_number(day))
        if index is None:
            previous = _previous_close(schedule, day)
            return previous, previous
        return (pd.Timestamp(int(schedule.opens[index]), tz="UTC"),
                pd.Timestamp(int(schedule.closes[index]), tz="UTC"))

    def partition_bounds(self, day: date) -> tuple[pd.Timestamp, pd.Timestamp]:
        """UTC (previous session's close, this close]: every bar the partition of ``day`` owns,
        the session's own bars and those outside every session that lead into it."""
        schedule = self._schedule_for_day(day)
        previous = _previous_close(schedule, day)
        index = schedule.by_day.get(_day_number(day))
        if index is None:
            return previous, previous
        return previous, pd.Timestamp(int(schedule.closes[index]), tz="UTC")

    def expected_closes(self, day: date, width: timedelta) -> pd.DatetimeIndex:
        """Close times of every bar of ``width`` in trading day ``day``'s session (empty on a day
        without one): the bar grid inside (open, close], or the close itself for a daily bar."""
        if not self.is_trading_day(day):
            return pd.DatetimeIndex([], tz="UTC")
        start, end = self.session_bounds(day)
        if is_daily(width):
            return pd.DatetimeIndex([end])
        step = pd.Timedelta(width).value
        first = (start.value // step + 1) * step
        return pd.DatetimeIndex(np.arange(first, end.value + 1, step), tz="UTC").as_unit("ns")

    def trading_days(self, first: date, last: date) -> list[date]:
        """Trading days from ``first`` to ``last`` inclusive."""
        schedule = _schedule(self.name, first.year - 1, last.year + 1)
        days = schedule.days[(schedule.days >= np.datetime64(first, "D")) & (schedule.days <= np.datetime64(last, "D"))]
        return [d.item() for d in days]

    def session_length(self) -> timedelta:
        """Length of a regular session (the most common one of recent years)."""
        schedule = _schedule(self.name, 2023, 2024)
        lengths, counts = np.unique(schedule.closes - schedule.opens, return_counts=True)
        return timedelta(microseconds=int(lengths[np.argmax(counts)]) // 1000)

    # --- vectorised over bar close times --------------------------------------------
    def locate(self, ts_utc: pd.DatetimeIndex | pd.Series | np.ndarray) -> tuple[Schedule, np.ndarray, np.ndarray]:
        """(schedule, owning session index, in-session flag) of each UTC stamp."""
        stamps = _ns(ts_utc)
        if len(stamps) == 0:
            return self._schedule_for_day(date(2024, 1, 1)), np.zeros(0, np.int64), np.zeros(0, bool)
        schedule = self.schedule(int(stamps.min()), int(stamps.max()))
        owner = schedule.owner(stamps)
        return schedule, owner, stamps > schedule.opens[owner]

    def wall_clock_ns(self, ts_utc: pd.DatetimeIndex | pd.Series) -> np.ndarray:
        """Calendar-local wall-clock time of each UTC stamp, as int64 nanoseconds since 1970.

        A few days of stamps whose first and last have the same UTC offset have it throughout
        (offsets change months apart): one addition then gives exactly what the time-zone
        conversion gives, at a fraction of its cost for the service's one-request series."""
        stamps = ts_utc if isinstance(ts_utc, pd.DatetimeIndex) else pd.DatetimeIndex(ts_utc)  # no copy: ~0.1 ms
        if stamps.tz is not None and len(stamps):
            utc = stamps.asi8
            first, last = int(utc.min()), int(utc.max())
            if last - first < _SHORT_SPAN_NS:
                offset = _utc_offset_ns(self.tz, first)
                if offset == _utc_offset_ns(self.tz, last):
                    return utc + offset
        return stamps.tz_convert(self.tz).tz_localize(None).asi8

    def trading_day_of(self, ts_utc: pd.DatetimeIndex | pd.Series) -> np.ndarray:
        """Trading day (``datetime64[D]``) each bar belongs to: its session, or for a bar outside
        every session, the session it leads into."""
        schedule, owner, _ = self.locate(ts_utc)
        return schedule.days[owner]

    def in_session(self, ts_utc: pd.DatetimeIndex | pd.Series) -> np.ndarray:
        """True where a bar close lies inside a session (not in a halt, a weekend, a holiday or
        after an early close)."""
        return self.locate(ts_utc)[2]

    def is_rth(self, ts_utc: pd.DatetimeIndex | pd.Series) -> np.ndarray:
        """True where a bar close lies in the regular trading hours (rth_open, rth_close] of a session."""
        return self.is_rth_at(self.wall_clock_ns(ts_utc), self.in_session(ts_utc))

    def is_rth_at(self, wall: np.ndarray, in_session: np.ndarray) -> np.ndarray:
        """``is_rth`` for stamps already in wall-clock nanoseconds, given their session flags."""
        if self.rth_open == self.rth_close:
            return in_session.copy()
        minutes = _minutes_into_day(wall)
        open_min = self.rth_open.hour * 60 + self.rth_open.minute
        close_min = self.rth_close.hour * 60 + self.rth_close.minute
        return (minutes >= open_min) & (minutes < close_min) & in_session

    def position_sessions(self, ts_utc: pd.DatetimeIndex | pd.Series, width: timedelta) -> np.ndarray:
        """Session numbers positions are flattened at (labels and the backtest): the trading day
        for intraday bars; one session for daily bars, whose positions are held from day to day
        (a bar that is a whole session would otherwise never be traded)."""
        if is_daily(width):
            return np.zeros(len(ts_utc), dtype=np.int64)
        return self.trading_day_of(ts_utc).astype("int64")

    def stamp_sessions(self, ts_utc: pd.Series | pd.DatetimeIndex) -> np.ndarray:
        """Daily bars restamped at their session's close (int64 ns, UTC); NaT where a stamp names
        no session. A stamp at local midnight is a date (most daily files) and names that day's
        session; any other stamp names the session it lies in."""
        stamps = pd.DatetimeIndex(ts_utc)
        local = stamps.tz_convert(self.tz)
        midnight = local == local.normalize()
        days = np.where(midnight, local.tz_localize(None).values.astype("datetime64[D]"),
                        self.trading_day_of(stamps) if len(stamps) else np.array([], "datetime64[D]"))
        schedule = self.schedule(int(stamps.asi8.min()), int(stamps.asi8.max())) if len(stamps) else None
        out = np.full(len(stamps), np.iinfo(np.int64).min, dtype=np.int64)
        for i, day in enumerate(days.astype("int64")):
            index = schedule.by_day.get(int(day))
            if index is not None and (midnight[i] or stamps.asi8[i] > schedule.opens[index]):
                out[i] = schedule.closes[index]
        return out


def _day_number(day: date) -> int:
    return int(np.datetime64(day, "D").astype("int64"))


def _previous_close(schedule: Schedule, day: date) -> pd.Timestamp:
    position = int(np.searchsorted(schedule.days, np.datetime64(day, "D"), side="left"))
    if position == 0:  # the cached span always starts a year earlier, so this is the first year known
        return pd.Timestamp(datetime.combine(day - timedelta(days=1), time(0)), tz="UTC")
    return pd.Timestamp(int(schedule.closes[position - 1]), tz="UTC")


def _ns(ts_utc) -> np.ndarray:
    if isinstance(ts_utc, np.ndarray) and ts_utc.dtype == np.int64:
        return ts_utc
    if isinstance(ts_utc, pd.DatetimeIndex) and ts_utc.unit == "ns":
        return ts_utc.asi8
    return pd.DatetimeIndex(ts_utc).as_unit("ns").asi8


def _utc_offset_ns(tz: str, utc_ns: int) -> int:
    offset = datetime.fromtimestamp(utc_ns // SECOND_NS, zone(tz)).utcoffset()
    return (offset // timedelta(seconds=1)) * SECOND_NS


def _minutes_into_day(wall: np.ndarray) -> np.ndarray:
    """Minutes from the stamp's local midnight to one microsecond before it, so a bar closing
    at 15:00 counts as inside the minute that starts at 14:59."""
    return ((wall - _MICROSECOND_NS - wall // DAY_NS * DAY_NS) / SECOND_NS) / 60.0


CME_EQUITY = SessionCalendar()
