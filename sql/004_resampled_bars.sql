-- Resampled timeframes from 1-minute bars, labelled by CLOSE time like every bar:
-- a 5-minute bar closing at 09:35 aggregates the 1-minute bars closing 09:31 … 09:35.
-- TimescaleDB: continuous aggregates (time_bucket with a 1 µs offset makes buckets
-- right-closed); native: plain views over date_bin with the same labels.
DO $$
DECLARE
    spec record;
BEGIN
    FOR spec IN SELECT * FROM (VALUES ('bars_5m', '5 minutes'), ('bars_15m', '15 minutes'),
                                      ('bars_1h', '1 hour')) AS s(view_name, width) LOOP
        IF smc_storage_mode() = 'timescaledb' THEN
            -- The aggregate keeps time_bucket's own column; the view adds the close label.
            EXECUTE format($q$
                CREATE MATERIALIZED VIEW %I WITH (timescaledb.continuous) AS
                SELECT symbol,
                       time_bucket(%L::interval, ts, "offset" => interval '1 microsecond') AS bucket,
                       first(open, ts) AS open, max(high) AS high, min(low) AS low,
                       last(close, ts) AS close, sum(volume) AS volume, sum(delta) AS delta,
                       count(*) AS bar_count
                FROM bars WHERE timeframe = '1m'
                GROUP BY symbol, bucket
                WITH NO DATA$q$, spec.view_name || '_agg', spec.width);
            EXECUTE format('SELECT add_continuous_aggregate_policy(%L, start_offset => NULL, '
                           'end_offset => interval ''1 minute'', schedule_interval => %L::interval)',
                           spec.view_name || '_agg', spec.width);
            EXECUTE format($q$
                CREATE VIEW %I AS
                SELECT symbol, bucket - interval '1 microsecond' + %L::interval AS ts,
                       open, high, low, close, volume, delta, bar_count
                FROM %I$q$, spec.view_name, spec.width, spec.view_name || '_agg');
        ELSE
            EXECUTE format($q$
                CREATE VIEW %I AS
                SELECT symbol,
                       date_bin(%L::interval, ts - interval '1 microsecond', timestamptz '2000-01-03 00:00:00+00')
                           + %L::interval AS ts,
                       (array_agg(open ORDER BY ts))[1] AS open, max(high) AS high, min(low) AS low,
                       (array_agg(close ORDER BY ts DESC))[1] AS close, sum(volume) AS volume,
                       sum(delta) AS delta, count(*) AS bar_count
                FROM bars WHERE timeframe = '1m'
                GROUP BY 1, 2$q$, spec.view_name, spec.width, spec.width);
        END IF;
    END LOOP;
END
$$;
