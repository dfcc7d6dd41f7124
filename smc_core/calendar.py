"""Exchange session calendar: which trading day a bar belongs to, and which bars to expect.

Bars are stamped with their close time (DESIGN §3). A CME Globex trading day D runs from
the previous calendar day's ETH open (17:00 exchange time, Sunday for Monday) to D's ETH
close (16:00); a bar belongs to D when its close lies in (open, close]. Everything is
computed in the exchange time zone, so DST switches shorten or lengthen sessions correctly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from smc_core.errors import ConfigError

_MICROSECOND_NS = 1_000
SECOND_NS = 1_000_000_000
MINUTE_NS = 60 * SECOND_NS
DAY_NS = 86_400 * SECOND_NS
_SHORT_SPAN_NS = 7 * DAY_NS
"""Shorter than the time between any two UTC-offset changes of a real time zone (months)."""


def zone(name: str) -> ZoneInfo:
    """Return the IANA time zone ``name`` or raise a ConfigError naming it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown time zone {name!r}: use an IANA name such as America/Chicago") from None


@dataclass(frozen=True)
class SessionCalendar:
    """Session times of one exchange (defaults: CME equity index futures, ES/NQ)."""

    tz: str = "America/Chicago"
    eth_open: time = time(17, 0)
    eth_close: time = time(16, 0)
    rth_open: time = time(8, 30)
    rth_close: time = time(15, 0)
    holidays: frozenset[date] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        zone(self.tz)

    # --- single days ---------------------------------------------------------------
    def is_trading_day(self, day: date) -> bool:
        return day.weekday() < 5 and day not in self.holidays

    def session_bounds(self, day: date) -> tuple[pd.Timestamp, pd.Timestamp]:
        """UTC (open, close] of trading day ``day``'s full (ETH) session."""
        return _session_bounds(self, day)

    def expected_closes(self, day: date, width: timedelta) -> pd.DatetimeIndex:
        """Close times of every bar of ``width`` in trading day ``day`` (empty on holidays)."""
        if not self.is_trading_day(day):
            return pd.DatetimeIndex([], tz="UTC")
        start, end = self.session_bounds(day)
        return pd.date_range(start + width, end, freq=width, tz="UTC")

    def trading_days(self, first: date, last: date) -> list[date]:
        """Trading days from ``first`` to ``last`` inclusive."""
        days = pd.date_range(first, last, freq="D")
        return [d.date() for d in days if self.is_trading_day(d.date())]

    # --- vectorised over bar close times ------------------------------------------
    # One time-zone conversion to exchange wall-clock nanoseconds, then integer arithmetic:
    # the service computes these for every request, and pandas' per-call overhead dominated.
    def wall_clock_ns(self, ts_utc: pd.DatetimeIndex | pd.Series) -> np.ndarray:
        """Exchange-local wall-clock time of each UTC stamp, as int64 nanoseconds since 1970.

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
        """Trading day (``datetime64[D]``) each bar close belongs to, by the (open, close] rule."""
        return self.trading_day_at(self.wall_clock_ns(ts_utc))

    def in_session(self, ts_utc: pd.DatetimeIndex | pd.Series) -> np.ndarray:
        """True where a bar close lies inside its trading day's session (not in a halt,
        a weekend or a holiday)."""
        return self.in_session_at(self.wall_clock_ns(ts_utc))

    def is_rth(self, ts_utc: pd.DatetimeIndex | pd.Series) -> np.ndarray:
        """True where a bar close lies in the regular trading hours (rth_open, rth_close]."""
        return self.is_rth_at(self.wall_clock_ns(ts_utc))

    def trading_day_at(self, wall: np.ndarray) -> np.ndarray:
        """``trading_day_of`` for stamps already in wall-clock nanoseconds (``wall_clock_ns``)."""
        close_offset = (self.eth_close.hour * 60 + self.eth_close.minute) * MINUTE_NS
        return ((wall - _MICROSECOND_NS - close_offset) // DAY_NS + 1).astype("datetime64[D]")

    def in_session_at(self, wall: np.ndarray) -> np.ndarray:
        """``in_session`` for stamps already in wall-clock nanoseconds."""
        days = self.trading_day_at(wall)
        minutes = _minutes_into_day(wall)
        open_min = self.eth_open.hour * 60 + self.eth_open.minute
        close_min = self.eth_close.hour * 60 + self.eth_close.minute
        in_halt = (minutes >= close_min) & (minutes < open_min)
        weekday = (days.astype("int64") - 4) % 7  # 1970-01-01 was a Thursday (3); Monday = 0
        trading = weekday < 5
        if self.holidays:
            trading &= ~np.isin(days, np.array(sorted(self.holidays), dtype="datetime64[D]"))
        return trading & ~in_halt

    def is_rth_at(self, wall: np.ndarray) -> np.ndarray:
        """``is_rth`` for stamps already in wall-clock nanoseconds."""
        minutes = _minutes_into_day(wall)
        open_min = self.rth_open.hour * 60 + self.rth_open.minute
        close_min = self.rth_close.hour * 60 + self.rth_close.minute
        return (minutes >= open_min) & (minutes < close_min) & self.in_session_at(wall)


def _utc_offset_ns(tz: str, utc_ns: int) -> int:
    offset = datetime.fromtimestamp(utc_ns // SECOND_NS, zone(tz)).utcoffset()
    return (offset // timedelta(seconds=1)) * SECOND_NS


def _minutes_into_day(wall: np.ndarray) -> np.ndarray:
    """Minutes from the stamp's local midnight to one microsecond before it, so a bar closing
    at 15:00 counts as inside the minute that starts at 14:59."""
    return ((wall - _MICROSECOND_NS - wall // DAY_NS * DAY_NS) / SECOND_NS) / 60.0


@lru_cache(maxsize=4096)
def _session_bounds(calendar: SessionCalendar, day: date) -> tuple[pd.Timestamp, pd.Timestamp]:
    tzinfo = zone(calendar.tz)
    open_local = datetime.combine(day - timedelta(days=1), calendar.eth_open, tzinfo)
    close_local = datetime.combine(day, calendar.eth_close, tzinfo)
    return pd.Timestamp(open_local).tz_convert("UTC"), pd.Timestamp(close_local).tz_convert("UTC")


CME_EQUITY = SessionCalendar()
