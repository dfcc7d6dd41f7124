-- Live outcomes: what each logged prediction turned out to be, and per-day live metrics.
-- Why: the loop (DESIGN §1) closes only when a served call is scored against what the market
-- did next. The realised label is read from the labels table (the same triple_barrier the
-- model was trained on), never recomputed here, so live and backtest scores mean the same.
-- One outcome per prediction, written once its label is known (horizon passed and the labels
-- asset has run); smc_core.outcomes fills both tables idempotently.
SELECT smc_create_time_table(
    'prediction_outcomes',
    $cols$
        ts               timestamptz NOT NULL,
        request_id       text        NOT NULL,
        shadow           boolean     NOT NULL,
        symbol           text        NOT NULL,
        timeframe        text        NOT NULL,
        model_version    text        NOT NULL,
        horizon          text        NOT NULL,
        realised_label   smallint    NOT NULL CHECK (realised_label BETWEEN 0 AND 2),
        barrier          text        NOT NULL,
        t1               timestamptz NOT NULL,
        ret              float8,
        ambiguous        boolean     NOT NULL,
        direction        smallint    NOT NULL CHECK (direction IN (-1, 0, 1)),
        position_size    float8      NOT NULL CHECK (position_size >= 0),
        realised_return  float8      NOT NULL,
        hit              boolean,
        computed_at      timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (ts, request_id, shadow),
        CHECK (t1 >= ts),
        -- ret is the label's long log return; NULL exactly when both barriers were touched
        -- in one bar (no exit price known), which is then scored as a zero return.
        CHECK (ambiguous = (ret IS NULL)),
        -- hit is defined exactly for trades taken (a direction and a size > 0).
        CHECK ((hit IS NULL) = (direction = 0 OR position_size = 0))
    $cols$,
    interval '7 days',
    'model_version, shadow',
    interval '30 days'
);

CREATE INDEX prediction_outcomes_model_ts ON prediction_outcomes (model_version, shadow, ts);

-- One row per model version x shadow x CME trading day of the prediction's ts, recomputed
-- from prediction_outcomes (and the predictions' probabilities for log loss and ECE).
-- Rates are NULL where undefined (no trades); counts are of predictions with a known outcome.
CREATE TABLE live_metrics (
    model_version      text        NOT NULL,
    shadow             boolean     NOT NULL,
    day                date        NOT NULL,
    predictions        integer     NOT NULL CHECK (predictions > 0),
    trades             integer     NOT NULL CHECK (trades BETWEEN 0 AND predictions),
    hits               integer     NOT NULL CHECK (hits BETWEEN 0 AND trades),
    ambiguous          integer     NOT NULL CHECK (ambiguous BETWEEN 0 AND predictions),
    hit_rate           float8,
    skip_rate          float8      NOT NULL,
    realised_return    float8      NOT NULL,
    mean_trade_return  float8,
    log_loss           float8,
    ece                float8,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_version, shadow, day)
);
