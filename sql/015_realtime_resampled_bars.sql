-- Resampled bars are current the moment their 1-minute bars are stored, on both engines.
--
-- Native: bars_5m … bars_1h are plain views, always current; nothing here applies.
--
-- TimescaleDB (https://docs.timescale.com, "Real-time aggregates"):
-- * Since 2.13 a continuous aggregate is materialized-only by default: a query sees
--   nothing that no refresh has materialized yet. Real-time aggregation
--   (materialized_only = false) adds the raw rows above the watermark (the end of the
--   last materialized bucket) at query time.
-- * Rows written into a bucket that is already materialized are not seen by real-time
--   aggregation until that bucket is refreshed. So every writer of 1-minute bars refreshes
--   the windows smc_resampled_refresh_windows() gives for what it wrote, right after its
--   commit (refresh_continuous_aggregate cannot run inside a transaction).
-- * The refresh policies were unbounded (start_offset NULL: every run re-scanned all
--   history). They now cover the last 3 days, as a backstop for writes made outside the
--   project's writers; end_offset leaves the bucket still being written to real-time
--   aggregation, as the documentation recommends.
DO $$
DECLARE
    spec record;
BEGIN
    IF smc_storage_mode() <> 'timescaledb' THEN
        RETURN;
    END IF;
    FOR spec IN SELECT * FROM (VALUES ('bars_5m_agg', '5 minutes'), ('bars_15m_agg', '15 minutes'),
                                      ('bars_1h_agg', '1 hour')) AS s(aggregate, width) LOOP
        EXECUTE format('ALTER MATERIALIZED VIEW %I SET (timescaledb.materialized_only = false)', spec.aggregate);
        PERFORM remove_continuous_aggregate_policy(spec.aggregate::regclass, if_exists => true);
        PERFORM add_continuous_aggregate_policy(spec.aggregate::regclass,
                                                start_offset => interval '3 days',
                                                end_offset => interval '1 minute',
                                                schedule_interval => spec.width::interval);
    END LOOP;
END
$$;

-- The continuous aggregates to refresh after bars of `timeframe` with close times in
-- [first_ts, last_ts] were written, each with a window covering every bucket those bars
-- fall in (a refresh covers only the buckets lying wholly inside its window). None for
-- timeframes the aggregates do not read, and none on the native engine, whose views need
-- no refresh.
CREATE OR REPLACE FUNCTION smc_resampled_refresh_windows(timeframe text, first_ts timestamptz,
                                                         last_ts timestamptz)
RETURNS TABLE (aggregate text, window_start timestamptz, window_end timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT s.aggregate, first_ts - s.width, last_ts + s.width
    FROM (VALUES ('bars_5m_agg', interval '5 minutes'), ('bars_15m_agg', interval '15 minutes'),
                 ('bars_1h_agg', interval '1 hour')) AS s(aggregate, width)
    WHERE smc_storage_mode() = 'timescaledb' AND timeframe = '1m'
      AND first_ts IS NOT NULL AND last_ts IS NOT NULL
$$;
