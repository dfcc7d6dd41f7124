-- Signals beyond the caller (DESIGN §11). A signal is a served, non-shadow row of
-- `predictions`; its risk block (stop, target, ATR the client trades) is kept with it so
-- GET /signals answers what the caller was told. Rows logged before this migration have none.
ALTER TABLE predictions ADD COLUMN risk jsonb;

-- GET /signals/{request_id}, and the signal list filtered by series, newest first.
CREATE INDEX predictions_request_id ON predictions (request_id);
CREATE INDEX predictions_series_ts ON predictions (symbol, timeframe, ts DESC);

-- What each consumer group of the signal stream has handled: one row per (group, request_id),
-- inserted in the same transaction as the handler's own writes, so a redelivered or repeated
-- signal is recognised and not handled twice (smc_core/signals.py states the guarantee).
CREATE TABLE signal_inbox (
    consumer_group  text        NOT NULL,
    request_id      text        NOT NULL,
    stream_id       text        NOT NULL,
    bar_time        timestamptz,
    symbol          text,
    timeframe       text,
    model_version   text,
    signal          jsonb       NOT NULL,
    handled_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, request_id)
);
