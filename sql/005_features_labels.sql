-- Derived data: feature rows and triple-barrier labels, partitioned like bars.
-- Feature values are one float8[] per bar in the order of the catalogue version that
-- produced them (feature_sets), so adding a feature needs no schema change and rows of
-- different versions never mix.
CREATE TABLE feature_sets (
    version     text        PRIMARY KEY,
    names       text[]      NOT NULL,
    catalogue   jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

SELECT smc_create_time_table(
    'features',
    $cols$
        symbol       text        NOT NULL,
        timeframe    text        NOT NULL,
        ts           timestamptz NOT NULL,
        feature_set  text        NOT NULL REFERENCES feature_sets (version),
        values       float8[]    NOT NULL,
        PRIMARY KEY (ts, symbol, timeframe, feature_set)
    $cols$,
    interval '7 days',
    'symbol, timeframe, feature_set',
    interval '30 days'
);

SELECT smc_create_time_table(
    'labels',
    $cols$
        symbol     text        NOT NULL,
        timeframe  text        NOT NULL,
        ts         timestamptz NOT NULL,
        horizon    text        NOT NULL,
        label      smallint    NOT NULL CHECK (label BETWEEN -1 AND 2),
        t1         timestamptz,
        ret        float8,
        barrier    text        NOT NULL,
        PRIMARY KEY (ts, symbol, timeframe, horizon),
        CHECK (t1 IS NULL OR t1 >= ts)
    $cols$,
    interval '7 days',
    'symbol, timeframe, horizon',
    interval '30 days'
);
