-- Drift reports: one row per comparison of live traffic (the predictions log) with a model's
-- reference sample, so the drift sensor, the retrain decision and a person asking "when did
-- the market move away from this model?" read the same verdicts. The per-feature detail is
-- in summary (smc_core.drift.DriftResult.summary()); the HTML report is a file at html_path.
CREATE TABLE drift_reports (
    id                bigserial   PRIMARY KEY,
    created_at        timestamptz NOT NULL DEFAULT now(),
    model_version     text        NOT NULL,
    window_start      timestamptz,
    window_end        timestamptz,
    reason            text,
    reference_rows    integer,
    current_rows      integer,
    n_features        integer,
    n_drifted         integer,
    drifted_share     float8,
    dataset_drift     boolean,
    prediction_drift  boolean,
    summary           jsonb       NOT NULL,
    html_path         text,
    CHECK (window_start IS NULL OR window_end IS NULL OR window_start <= window_end)
);
CREATE INDEX drift_reports_by_model ON drift_reports (model_version, created_at DESC);
