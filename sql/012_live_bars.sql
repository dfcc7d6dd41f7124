-- Live bars (sent by the service's callers) next to file ingests. A live bar never
-- overwrites a stored one: a differing value is kept here as a conflict (applied = false).
-- A file ingest is the authority: when it changes a stored bar, the old and new values are
-- kept here too (applied = true). The source of every stored bar is its ingest_log row
-- (format 'live' for bars the service received).
CREATE TABLE bar_revisions (
    id                 bigserial        PRIMARY KEY,
    recorded_at        timestamptz      NOT NULL DEFAULT now(),
    symbol             text             NOT NULL,
    timeframe          text             NOT NULL,
    ts                 timestamptz      NOT NULL,
    kind               text             NOT NULL CHECK (kind IN ('live_conflict', 'file_correction')),
    applied            boolean          NOT NULL,
    source             text             NOT NULL,
    stored_ingest_id   bigint           NOT NULL,
    incoming_ingest_id bigint,
    stored_open        double precision NOT NULL,
    stored_high        double precision NOT NULL,
    stored_low         double precision NOT NULL,
    stored_close       double precision NOT NULL,
    stored_volume      double precision NOT NULL,
    stored_delta       double precision,
    incoming_open      double precision NOT NULL,
    incoming_high      double precision NOT NULL,
    incoming_low       double precision NOT NULL,
    incoming_close     double precision NOT NULL,
    incoming_volume    double precision NOT NULL,
    incoming_delta     double precision
);
-- One conflict row per distinct received value, however often a caller repeats it.
CREATE UNIQUE INDEX bar_revisions_once ON bar_revisions
    (symbol, timeframe, ts, kind, stored_ingest_id, incoming_open, incoming_high, incoming_low, incoming_close,
     incoming_volume, incoming_delta) NULLS NOT DISTINCT;
CREATE INDEX bar_revisions_by_bar ON bar_revisions (symbol, timeframe, ts);

ALTER TABLE ingest_log ADD COLUMN rows_conflicting bigint NOT NULL DEFAULT 0;
CREATE INDEX ingest_log_changes ON ingest_log (id) WHERE dagster_run_id IS NULL AND status = 'succeeded';
