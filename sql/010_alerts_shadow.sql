-- Monitoring alerts (skip-heavy model, failed runs): one row each, so what the sensors saw
-- stays queryable after the Dagster logs are gone; a webhook copy is optional.
CREATE TABLE alerts (
    id          bigserial   PRIMARY KEY,
    raised_at   timestamptz NOT NULL DEFAULT now(),
    kind        text        NOT NULL,
    subject     text        NOT NULL,
    message     text        NOT NULL,
    details     jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX alerts_by_kind ON alerts (kind, raised_at DESC);

-- A challenger that passed its gates may serve in shadow before promotion: the decision to
-- start (and how it ended) is a promotion decision like the others.
ALTER TABLE model_promotions DROP CONSTRAINT model_promotions_decision_check;
ALTER TABLE model_promotions ADD CONSTRAINT model_promotions_decision_check
    CHECK (decision IN ('promoted', 'refused', 'rollback', 'shadow'));
