-- Safety for real money: the kill switch, the circuit breaker's audit, and A/B arms.
--
-- trading_halts holds the halts in force, one row per scope ('*' = every symbol, else a
-- symbol); the service polls it and answers `skip` for a halted scope. Every halt and
-- resume, whoever made it (admin route, CLI, Dagster job, circuit breaker), is also a row of
-- trading_halt_events, so "why did it stop trading, and who let it trade again?" has an
-- answer; the breaker only counts trades made after the last resume of a scope.
CREATE TABLE trading_halts (
    scope      text        PRIMARY KEY CHECK (scope = '*' OR scope ~ '^[A-Za-z0-9._-]+$'),
    halted_at  timestamptz NOT NULL DEFAULT now(),
    reason     text        NOT NULL,
    source     text        NOT NULL,
    details    jsonb       NOT NULL DEFAULT '{}'
);

CREATE TABLE trading_halt_events (
    id         bigserial   PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    action     text        NOT NULL CHECK (action IN ('halt', 'resume')),
    scope      text        NOT NULL,
    reason     text        NOT NULL,
    source     text        NOT NULL,
    details    jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX trading_halt_events_by_scope ON trading_halt_events (scope, at DESC);

-- Which arm of an A/B traffic split answered: 'champion', 'challenger', or 'shadow' for a
-- shadow model's logged (never returned) answer; and whether the answer was a halt's skip.
-- Rows logged before this migration read 'champion' and false. No CHECK here: predictions
-- may be a compressed hypertable; the service writes only the three values.
ALTER TABLE predictions ADD COLUMN arm text NOT NULL DEFAULT 'champion';
ALTER TABLE predictions ADD COLUMN halted boolean NOT NULL DEFAULT false;

-- Starting an A/B test is a promotion decision like starting a shadow period.
ALTER TABLE model_promotions DROP CONSTRAINT model_promotions_decision_check;
ALTER TABLE model_promotions ADD CONSTRAINT model_promotions_decision_check
    CHECK (decision IN ('promoted', 'refused', 'rollback', 'shadow', 'ab_test'));
