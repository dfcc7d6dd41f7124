-- Storage primitives shared by every time-series table.
-- The TimescaleDB/native choice is made here, once, in SQL; the rest of the code calls
-- smc_create_time_table() and smc_prepare_time_range() and never asks which one it got.

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
       AND current_setting('shared_preload_libraries') LIKE '%timescaledb%' THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION smc_storage_mode() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
                THEN 'timescaledb' ELSE 'native' END
$$;

-- Create a table partitioned on its timestamptz column "ts".
--   TimescaleDB: a hypertable with chunks of chunk_interval, compressed after
--                compress_after, segmented by segment_by.
--   native:      PARTITION BY RANGE (ts) with monthly partitions made on demand by
--                smc_prepare_time_range(), plus a BRIN index on ts.
CREATE OR REPLACE FUNCTION smc_create_time_table(
    table_name text, columns_sql text, chunk_interval interval,
    segment_by text, compress_after interval
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF smc_storage_mode() = 'timescaledb' THEN
        EXECUTE format('CREATE TABLE %I (%s)', table_name, columns_sql);
        EXECUTE format('SELECT create_hypertable(%L, by_range(%L, %L::interval))',
                       table_name, 'ts', chunk_interval);
        EXECUTE format('ALTER TABLE %I SET (timescaledb.compress, timescaledb.compress_segmentby = %L, '
                       'timescaledb.compress_orderby = %L)', table_name, segment_by, 'ts');
        EXECUTE format('SELECT add_compression_policy(%L, %L::interval)', table_name, compress_after);
    ELSE
        EXECUTE format('CREATE TABLE %I (%s) PARTITION BY RANGE (ts)', table_name, columns_sql);
        EXECUTE format('CREATE INDEX %I ON %I USING brin (ts)', table_name || '_ts_brin', table_name);
    END IF;
END
$$;

-- Make sure rows with ts in [lo, hi] have somewhere to go. A no-op under TimescaleDB,
-- which creates chunks itself; natively it creates the missing monthly partitions.
CREATE OR REPLACE FUNCTION smc_prepare_time_range(table_name text, lo timestamptz, hi timestamptz)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamptz;
    partition_name text;
    created integer := 0;
BEGIN
    IF smc_storage_mode() = 'timescaledb' THEN
        RETURN 0;
    END IF;
    -- Serialise partition creation per table; released at commit.
    PERFORM pg_advisory_xact_lock(hashtext('smc_prepare_time_range:' || table_name));
    month_start := date_trunc('month', lo AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    WHILE month_start <= hi LOOP
        partition_name := format('%s_p%s', table_name, to_char(month_start AT TIME ZONE 'UTC', 'YYYY_MM'));
        IF to_regclass(partition_name) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                           partition_name, table_name, month_start, month_start + interval '1 month');
            created := created + 1;
        END IF;
        month_start := month_start + interval '1 month';
    END LOOP;
    RETURN created;
END
$$;
