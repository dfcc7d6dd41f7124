"""Partitions shared by the per-bar assets: symbol × trading day.

Trading days are keyed by date (Monday–Friday) in the exchange time zone; the session a
key stands for (17:00 the previous evening to 16:00 that day on CME) comes from the
session calendar, not from Dagster's midnight-to-midnight window.
"""

from __future__ import annotations

from datetime import date, timedelta

from dagster import DynamicPartitionsDefinition, MultiPartitionKey, MultiPartitionsDefinition, TimeWindowPartitionsDefinition

from smc_core.settings import Settings

SYMBOLS = DynamicPartitionsDefinition(name="symbols")



def _window_end(last_day: date | None) -> str | None:
    """Dagster's exclusive end for a last partition key: the next weekday (a Friday's window
    runs to Monday, the next tick of the cron)."""
    if last_day is None:
        return None
    following = last_day + timedelta(days=1)
    while following.weekday() >= 5:
        following += timedelta(days=1)
    return following.isoformat()


_settings = Settings.from_env()
TRADING_DAYS = TimeWindowPartitionsDefinition(
    cron_schedule="0 0 * * 1-5",
    start=_settings.partition_start.isoformat(),
    end=_window_end(_settings.partition_end),
    fmt="%Y-%m-%d",
    timezone=_settings.exchange_tz,
    end_offset=1,
)

BAR_PARTITIONS = MultiPartitionsDefinition({"symbol": SYMBOLS, "day": TRADING_DAYS})


def requestable_days() -> tuple[date, date]:
    """The first and last trading day a sensor may request a partition for."""
    keys = TRADING_DAYS.get_partition_keys()
    return date.fromisoformat(keys[0]), date.fromisoformat(keys[-1])


def bar_partition_key(symbol: str, day: date) -> MultiPartitionKey:
    return MultiPartitionKey({"symbol": symbol, "day": day.isoformat()})


def split_bar_partition_key(key: MultiPartitionKey | str) -> tuple[str, date]:
    """(symbol, day) of a ``bars``-style partition key."""
    dims = key.keys_by_dimension if isinstance(key, MultiPartitionKey) else _parse(key)
    return dims["symbol"], date.fromisoformat(dims["day"])


def _parse(key: str) -> dict[str, str]:
    day, symbol = key.split("|")  # Dagster orders dimension names alphabetically: day|symbol
    return {"day": day, "symbol": symbol}
