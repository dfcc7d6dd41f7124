"""Sensor: bars that arrived outside Dagster (the service's live bars, ``POST /bars``, ``smc
ingest``) → market-data runs for the trading days they changed, once each day's session has
closed. Features, labels, outcomes, drift and the performance sensor then see live days with
no file export; the landing folder stays for history.

The run key is the partition and a fingerprint of its stored bars (count and newest ingest),
so a day is run again only when its bars changed, however often the sensor ticks.
"""

import json
from datetime import date

import pandas as pd
from dagster import (AddDynamicPartitionsRequest, DefaultSensorStatus, RunRequest, SensorEvaluationContext,
                     SensorResult, SkipReason, sensor)

from smc_assets.partitions import SYMBOLS, bar_partition_key, requestable_days
from smc_assets.resources import DatabaseResource, LandingResource
from smc_core.errors import ConfigError
from smc_core.store import bar_changes_since, bars_fingerprint

TRIGGER = "live_bars"
_REMEMBERED = 2000
"""Requested (partition, fingerprint) pairs kept in the cursor, newest last."""


def build_live_bars_sensor(job_name: str, minimum_interval_seconds: int = 60,
                           default_status: DefaultSensorStatus = DefaultSensorStatus.STOPPED):
    @sensor(
        name="live_bars_sensor",
        job_name=job_name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description="Requests the bars partitions (symbol × trading day) whose stored bars changed outside Dagster "
                    "(live bars from the service, POST /bars, smc ingest), once the day's session has closed.",
    )
    def live_bars_sensor(context: SensorEvaluationContext, database: DatabaseResource, landing: LandingResource):
        state = json.loads(context.cursor) if context.cursor else {"ingest_id": 0, "pending": [], "requested": []}
        db = database.database()
        newest, changes = bar_changes_since(db, state["ingest_id"], landing.timeframe)
        pending = {(symbol, day) for symbol, day in state["pending"]}
        calendars = {}
        for symbol, first, last in changes:
            try:
                calendar = calendars[symbol] = calendars.get(symbol) or landing.calendar(symbol)
            except ConfigError as error:  # bars of a symbol without a specification: say so, keep going
                context.log.warning(f"live bars for {symbol} not requested: {error}")
                continue
            first_day, last_day = (pd.Timestamp(d).date() for d in calendar.trading_day_of(pd.DatetimeIndex([first, last])))
            pending.update((symbol, day) for day in calendar.trading_days(first_day, last_day))
        requested = [tuple(item) for item in state["requested"]]
        seen = set(requested)
        lowest, highest = requestable_days()
        now = pd.Timestamp.now(tz="UTC")
        waiting, run_requests = [], []
        for symbol, day in sorted(pending, key=lambda item: (item[1], item[0])):
            day = day if isinstance(day, date) else date.fromisoformat(day)
            calendar = calendars.get(symbol) or landing.calendar(symbol)
            owned_from, close = calendar.partition_bounds(day)
            if close > now:
                waiting.append((symbol, day.isoformat()))  # the session is still trading
                continue
            if not lowest <= day <= highest:
                context.log.warning(f"live bars for {symbol} on {day}: outside the partitions {lowest} … {highest} "
                                    f"(SMC_PARTITION_START)")
                continue
            key = bar_partition_key(symbol, day)
            fingerprint = bars_fingerprint(db, symbol, landing.timeframe, owned_from, close)
            if (str(key), fingerprint) in seen:
                continue
            seen.add((str(key), fingerprint))
            requested.append((str(key), fingerprint))
            run_requests.append(RunRequest(run_key=f"{TRIGGER}|{key}@{fingerprint}", partition_key=key,
                                           tags={"smc/trigger": TRIGGER, "smc/bars": fingerprint}))
        cursor = json.dumps({"ingest_id": newest, "pending": sorted(waiting),
                             "requested": requested[-_REMEMBERED:]}, sort_keys=True)
        if not run_requests:
            why = (f"{len(waiting)} day(s) with new bars still trading" if waiting
                   else "no bars changed outside Dagster since the last tick")
            return SensorResult(skip_reason=SkipReason(why), cursor=cursor)
        symbols = sorted({request.partition_key.keys_by_dimension["symbol"] for request in run_requests}
                         - set(context.instance.get_dynamic_partitions(SYMBOLS.name)))
        context.log.info(f"{len(run_requests)} trading day(s) with changed bars: "
                         f"{', '.join(str(r.partition_key) for r in run_requests[:10])}")
        return SensorResult(run_requests=run_requests, cursor=cursor,
                            dynamic_partitions_requests=[AddDynamicPartitionsRequest(SYMBOLS.name, symbols)]
                            if symbols else [])

    return live_bars_sensor
