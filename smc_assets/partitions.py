"""Partitions shared by the per-bar assets: symbol × trading day.

Days are keyed by date. The session a key stands for comes from the symbol's calendar
(CME: 17:00 the evening before to 16:00; 24/5 FX: 17:00 to 17:00 New York; 24/7: the UTC
day), not from Dagster's midnight-to-midnight window. Every calendar day is a key, so a
24/7 symbol's weekends have partitions too; on a day without a session (a weekend or
holiday of the symbol's calendar) the assets record "no session" and expect nothing.
"""

from __future__ import annotations

from datetime import date, timedelta

from dagster import DynamicPartitionsDefinition, MultiPartitionKey, MultiPartitionsDefinition, TimeWindowPartitionsDefinition

from smc_core.settings import Settings

SYMBOLS = DynamicPartitionsDefinition(name="symbols")


def _window_end(last_day: date | None) -> str | None:
    """Dagster's exclusive end for a last partition key: the next day."""
    return None if last_day is None else (last_day + timedelta(days=1)).isoformat()


_settings = Settings.from_env()
TRADING_DAYS = TimeWindowPartitionsDefinition(
    cron_schedule="0 0 * * *",
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


def register_symbols(instance, symbols) -> list[str]:
    """Add ``symbols`` to the ``symbols`` dynamic partitions of ``instance``; the ones that were new."""
    known = set(instance.get_dynamic_partitions(SYMBOLS.name))
    new = sorted(set(symbols) - known)
    if new:
        instance.add_dynamic_partitions(SYMBOLS.name, new)
    return new
