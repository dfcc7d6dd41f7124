-- Model promotion decisions and the trials behind the Deflated Sharpe Ratio.
-- Every decision (promoted, refused, rollback) is a row with its gate statistics and the
-- Dagster run that made it, so "why is this model trading?" has a queryable answer.
CREATE TABLE model_promotions (
    id               bigserial   PRIMARY KEY,
    decided_at       timestamptz NOT NULL DEFAULT now(),
    model_name       text        NOT NULL,
    version          text        NOT NULL,
    decision         text        NOT NULL CHECK (decision IN ('promoted', 'refused', 'rollback')),
    champion_before  text,
    champion_after   text,
    reason           text        NOT NULL,
    gates            jsonb       NOT NULL DEFAULT '[]',
    metrics          jsonb       NOT NULL DEFAULT '{}',
    dagster_run_id   text
);
CREATE INDEX model_promotions_by_model ON model_promotions (model_name, decided_at DESC);

-- One row per candidate configuration ever backtested for a model name: DSR counts them
-- all (N) and uses the variance of their Sharpe ratios, so retrying until something
-- passes is paid for.
CREATE TABLE backtest_trials (
    id              bigserial   PRIMARY KEY,
    created_at      timestamptz NOT NULL DEFAULT now(),
    model_name      text        NOT NULL,
    version         text        NOT NULL,
    candidate       text        NOT NULL,
    sharpe          float8,
    observations    integer     NOT NULL,
    dagster_run_id  text
);
CREATE INDEX backtest_trials_by_model ON backtest_trials (model_name);
