"""Bar timeframes such as ``1m``, ``5m``, ``1h``, ``1d``."""

from __future__ import annotations

import re
from datetime import timedelta

import numpy as np

from smc_core.errors import ConfigError

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}

RESAMPLED_FROM_1M = ("5m", "15m", "1h")
"""Timeframes the database resamples from 1-minute bars (``bars_5m`` … ``bars_1h``, sql/004)."""
_PATTERN = re.compile(r"^([1-9][0-9]*)([smhd])$")


def parse_timeframe(value: str) -> timedelta:
    """Return the bar width of ``value`` (``<n><s|m|h|d>``), or raise ConfigError."""
    match = _PATTERN.match(value or "")
    if not match:
        raise ConfigError(
            f"timeframe {value!r} is not valid: use <number><unit> with unit s, m, h or d (e.g. 1m, 5m, 1h)"
        )
    count, unit = match.groups()
    try:
        return timedelta(**{_UNITS[unit]: int(count)})
    except OverflowError:  # e.g. 99999999999m, sent to the service (was a 500)
        raise ConfigError(f"timeframe {value!r} is not valid: longer than any bar") from None


def timeframe_ns(value: str) -> int:
    """The bar width of ``value`` in nanoseconds (the unit bar stamps are compared in), or ConfigError."""
    return parse_timeframe(value) // timedelta(microseconds=1) * 1000


def format_timeframe(width: timedelta) -> str:
    """``1m``, ``5m``, ``1h``, ``1d``, ``30s``: the inverse of ``parse_timeframe``."""
    seconds = int(width.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def is_daily(width: timedelta) -> bool:
    """Bars of a day or longer: one per session, stamped at the session's close (which no fixed
    grid holds: 16:00 New York is 21:00 or 20:00 UTC), so they are checked against the calendar."""
    return width >= timedelta(days=1)


def off_grid(stamps_ns: np.ndarray, width: timedelta) -> np.ndarray:
    """True where a bar close (int64 ns, UTC) is not on the ``width`` bar grid; never for daily bars."""
    if is_daily(width):
        return np.zeros(len(stamps_ns), dtype=bool)
    return stamps_ns % (width // timedelta(microseconds=1) * 1000) != 0
