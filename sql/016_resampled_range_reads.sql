-- Resampled bars read by time range, at the cost of that range.
--
-- smc_resampled_bars(symbol, timeframe, after, until): the resampled bars of one symbol with
-- close in (after, until], finished buckets only (close at or before the newest stored
-- 1-minute bar: nothing of a bar still filling is read).
--
-- Native: the bars_5m … bars_1h views group every 1-minute bar of the symbol before a
-- filter on their close time can apply (that close is computed, so no index serves it):
-- each read cost the symbol's whole history. Here the 1-minute bars are bounded first:
-- a bucket closing in (after, until] holds only bars in (after - width, until], which the
-- primary key's ts index finds directly.
-- TimescaleDB: the real-time continuous aggregates behind the same views (sql/004, 015).
CREATE OR REPLACE FUNCTION smc_resampled_width(timeframe text) RETURNS interval
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE timeframe WHEN '5m' THEN interval '5 minutes' WHEN '15m' THEN interval '15 minutes'
                          WHEN '1h' THEN interval '1 hour' END
$$;

CREATE OR REPLACE FUNCTION smc_resampled_bars(p_symbol text, p_timeframe text, p_after timestamptz,
                                              p_until timestamptz)
RETURNS TABLE (ts timestamptz, open float8, high float8, low float8, close float8, volume float8, delta float8)
LANGUAGE plpgsql STABLE AS $f$
#variable_conflict use_column
DECLARE
    width interval := smc_resampled_width(p_timeframe);
    newest timestamptz;
BEGIN
    IF width IS NULL THEN
        RAISE EXCEPTION 'timeframe % is not resampled in the database', p_timeframe;
    END IF;
    SELECT max(b.ts) INTO newest FROM bars b WHERE b.symbol = p_symbol AND b.timeframe = '1m';
    IF smc_storage_mode() = 'timescaledb' THEN
        RETURN QUERY EXECUTE format(
            'SELECT v.ts, v.open, v.high, v.low, v.close, v.volume, v.delta FROM %I v
             WHERE v.symbol = $1 AND v.ts > $2 AND v.ts <= least($3, $4)', 'bars_' || p_timeframe)
            USING p_symbol, p_after, p_until, newest;
        RETURN;
    END IF;
    RETURN QUERY
        SELECT r.ts, r.open, r.high, r.low, r.close, r.volume, r.delta FROM (
            SELECT date_bin(width, b.ts - interval '1 microsecond', timestamptz '2000-01-03 00:00:00+00') + width AS ts,
                   (array_agg(b.open ORDER BY b.ts))[1] AS open, max(b.high) AS high, min(b.low) AS low,
                   (array_agg(b.close ORDER BY b.ts DESC))[1] AS close, sum(b.volume) AS volume,
                   sum(b.delta) AS delta
            FROM bars b
            WHERE b.symbol = p_symbol AND b.timeframe = '1m'
              AND b.ts > p_after - width AND b.ts <= least(p_until, newest)
            GROUP BY 1) r
        WHERE r.ts > p_after AND r.ts <= least(p_until, newest);
END
$f$;
