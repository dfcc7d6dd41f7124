-- Every ingest attempt, successful or not, with what it did; rejected rows kept verbatim.
CREATE TABLE ingest_log (
    id              bigserial   PRIMARY KEY,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    source          text        NOT NULL,
    source_sha256   text,
    format          text,
    symbol          text        NOT NULL,
    timeframe       text        NOT NULL,
    first_ts        timestamptz,
    last_ts         timestamptz,
    rows_read       bigint      NOT NULL DEFAULT 0,
    rows_inserted   bigint      NOT NULL DEFAULT 0,
    rows_updated    bigint      NOT NULL DEFAULT 0,
    rows_unchanged  bigint      NOT NULL DEFAULT 0,
    rows_rejected   bigint      NOT NULL DEFAULT 0,
    skip_invalid    boolean     NOT NULL DEFAULT false,
    status          text        NOT NULL CHECK (status IN ('succeeded', 'rejected', 'failed')),
    error           text,
    dagster_run_id  text,
    partition_key   text
);
CREATE INDEX ingest_log_symbol_idx ON ingest_log (symbol, timeframe, started_at);

CREATE TABLE ingest_rejects (
    ingest_id  bigint NOT NULL REFERENCES ingest_log (id) ON DELETE CASCADE,
    source     text   NOT NULL,
    line       bigint NOT NULL,
    reason     text   NOT NULL,
    raw        text,
    PRIMARY KEY (ingest_id, source, line)
);

-- Files seen in the landing folder and the trading days they cover, so the file sensor
-- and the bars asset do not re-read every export on every tick.
CREATE TABLE landing_files (
    path        text        PRIMARY KEY,
    size        bigint      NOT NULL,
    mtime_ns    bigint      NOT NULL,
    sha256      text        NOT NULL,
    format      text        NOT NULL,
    symbol      text        NOT NULL,
    timeframe   text        NOT NULL,
    first_ts    timestamptz,
    last_ts     timestamptz,
    days        date[]      NOT NULL,
    seen_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX landing_files_days_idx ON landing_files USING gin (days);
