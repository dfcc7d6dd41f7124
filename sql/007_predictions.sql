-- Every prediction the service makes, with the feature vector it was made from, so live
-- outcomes, drift reports and audits can be computed later. A time table like bars
-- (a hypertable when TimescaleDB is present), keyed by the decision bar's close time.
SELECT smc_create_time_table(
    'predictions',
    $cols$
        ts             timestamptz NOT NULL,
        request_id     text        NOT NULL,
        shadow         boolean     NOT NULL DEFAULT false,
        logged_at      timestamptz NOT NULL,
        symbol         text        NOT NULL,
        timeframe      text        NOT NULL,
        model_version  text        NOT NULL,
        label          text        NOT NULL,
        raw_label      text        NOT NULL,
        confidence     float8      NOT NULL,
        p_long         float8      NOT NULL,
        p_short        float8      NOT NULL,
        p_skip         float8      NOT NULL,
        position_size  float8      NOT NULL,
        latency_ms     float8      NOT NULL,
        features       float8[]    NOT NULL,
        feature_set    text        NOT NULL,
        PRIMARY KEY (ts, request_id, shadow)
    $cols$,
    interval '7 days',
    'symbol, timeframe',
    interval '30 days'
);
