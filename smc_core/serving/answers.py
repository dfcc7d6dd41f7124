"""What the service answers, as pydantic models: the OpenAPI document's response schemas.

Why models the runtime does not build its answers from: the answers are plain dicts made on
the hot path (``runtime``, ``engine``); these models only describe them, so clients and
generated code see the real contract, and the schemathesis test checks every answer the
running service gives against them (a drift between the two fails that test).
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, Field

Label = Literal["long", "short", "skip"]


class FieldError(BaseModel):
    path: str = Field(description="Where the problem is, e.g. `context_bars[3].h`, `metadata.timeframe`, `body`.")
    message: str = Field(description="What is wrong there, and what would be accepted.")


class ErrorDetails(BaseModel):
    """The keys present depend on the error; the common ones are listed (others may appear)."""

    errors: Optional[list[FieldError]] = Field(default=None, description="422: every field error with its path.")
    minimum_bars: Optional[int] = Field(default=None, description="422 `too few bars`: bars the model needs.")
    missing_bars: Optional[int] = Field(default=None, description="422 `too few bars`: how many more to send.")
    rejected: Optional[int] = Field(default=None, description="422 on POST /bars: bars refused (nothing stored).")
    message: Optional[str] = Field(default=None, description="400: the JSON parser's message.")
    header: Optional[str] = Field(default=None, description="401: the header expected (X-API-Key or X-Admin-Key).")
    limit_bytes: Optional[int] = Field(default=None, description="413: the body limit (MAX_BODY_BYTES, "
                                                                 "UPLOAD_MAX_BYTES).")
    received_bytes: Optional[int] = None
    max_batch_size: Optional[int] = Field(default=None, description="413: MAX_BATCH_SIZE.")
    max_bars: Optional[int] = Field(default=None, description="413: UPLOAD_MAX_BARS.")
    received: Optional[int] = None
    limit_per_second: Optional[float] = Field(default=None, description="429: RATE_LIMIT_PER_SECOND.")
    burst: Optional[int] = Field(default=None, description="429: RATE_LIMIT_BURST.")
    type: Optional[str] = Field(default=None, description="500 `model failure`: the exception's type (no traceback).")
    last_error: Optional[str] = Field(default=None, description="503 `no model loaded yet`: the last load error.")
    reason: Optional[str] = Field(default=None, description="409 refused reload, 503 database away: why.")
    serving: Optional[str] = Field(default=None, description="409 refused reload: the version still serving.")
    timeout_ms: Optional[float] = Field(default=None, description="504: the budget (TIMEOUT_MS).")


class ErrorBody(BaseModel):
    """Every refusal and failure has this body (DESIGN §6); never a traceback."""

    error: str = Field(description="Short, stable description, e.g. `request validation failed`, `too few bars`, "
                                   "`request does not match the model`, `rate limit exceeded`.")
    code: int = Field(description="The HTTP status, repeated.")
    details: ErrorDetails


class ItemError(ErrorBody):
    """One refused item of a batch; the other items are still answered."""

    index: int = Field(ge=0, description="The item's position in `requests`.")


class Probabilities(BaseModel):
    """Calibrated class probabilities; they sum to 1."""

    long: float = Field(ge=0, le=1)
    short: float = Field(ge=0, le=1)
    skip: float = Field(ge=0, le=1)


class Risk(BaseModel):
    """Stop and target from the server's ATR and the multiples the served model was validated
    with, in whole ticks. Clients trade these; they never compute their own ATR."""

    atr: float = Field(ge=0, description="The server's ATR at the decision bar (mean true range over 14 bars).")
    stop_distance: float = Field(gt=0, description="Stop distance in price units (whole ticks, at least one).")
    target_distance: float = Field(gt=0, description="Target distance in price units (whole ticks, at least one).")
    stop_price: Optional[float] = Field(description="From the decision bar's close; null when the label is skip.")
    target_price: Optional[float] = Field(description="From the decision bar's close; null when the label is skip.")
    max_holding_bars: Optional[int] = Field(description="Time exit in bars; null: the stop, the target or the "
                                                        "session close ends a trade.")
    tick_size: float = Field(gt=0)


class HaltInfo(BaseModel):
    """A halt in force (the kill switch): admin route, ``smc halt``, ``halt_job`` or the circuit breaker."""

    scope: str = Field(description="The symbol halted, or `all`.")
    reason: str
    source: Literal["admin", "cli", "dagster", "breaker"]
    since: str = Field(description="When it was halted (ISO 8601).")


class PredictAnswer(BaseModel):
    """``POST /predict`` 200 (seed 000 §3.3 plus what trading needs)."""

    label: Label = Field(description="What to do: `skip` whenever the top class is below `threshold`.")
    confidence: float = Field(ge=0, le=1, description="The top class's probability.")
    probabilities: Probabilities
    model_version: str = Field(description="The model that answered, e.g. `smc-lora/3` or `local/<folder>`.")
    request_id: str = Field(description="UUID of this answer; the prediction log's key.")
    position_size: float = Field(ge=0, le=1, description="Tier of the answer: 1.0 at or above the full-size "
                                                         "threshold, 0.5 from `threshold`, 0 below or for skip.")
    raw_label: Label = Field(description="The top class before the threshold.")
    threshold: float = Field(ge=0, le=1, description="Entry threshold in force (CONFIDENCE_THRESHOLD, else the one "
                                                     "the model was promoted with, else 0.55).")
    risk: Risk
    processing_time_ms: float = Field(ge=0, description="Time from receipt to the answer inside the service.")
    bars_from_store: int = Field(ge=0, description="Stored bars that completed a request with fewer bars than "
                                                   "the model needs (0 when the request had enough).")
    arm: Optional[Literal["champion", "challenger"]] = Field(
        default=None, description="Only while an A/B test runs (GET /model → `ab_test`): the arm that answered.")
    skip_reason: Optional[Literal["halted"]] = Field(
        default=None, description="Only on a halted answer: trading is halted for this symbol (or all); `label` "
                                  "is skip and `position_size` 0 whatever the model said (`raw_label`).")
    halt: Optional[HaltInfo] = Field(default=None, description="Only on a halted answer: the halt in force.")


class BatchAnswer(BaseModel):
    """``POST /predict_batch`` 200: one answer or one error per item, in order."""

    results: list[Union[PredictAnswer, ItemError]]
    processing_time_ms: float = Field(ge=0)


class BarsAnswer(BaseModel):
    """``POST /bars`` 200: what the upload did (one transaction; idempotent)."""

    symbol: str
    timeframe: str
    received: int = Field(ge=0)
    inserted: int = Field(ge=0, description="New bars stored.")
    unchanged: int = Field(ge=0, description="Bars equal to stored ones (left alone).")
    conflicting: int = Field(ge=0, description="Bars differing from stored ones: kept in `bar_revisions`, never "
                                               "written over the stored bar.")
    ingest_id: int = Field(description="The `ingest_log` row of this upload.")
    first_bar: str = Field(description="Close time of the first bar (ISO 8601).")
    last_bar: str = Field(description="Close time of the last bar (ISO 8601).")


class RiskTermsInfo(BaseModel):
    stop_atr: float
    target_atr: float
    max_holding_bars: Optional[int]
    tick_size: float


class Thresholds(BaseModel):
    half_size: float
    full_size: float


class AbTestInfo(BaseModel):
    """An A/B traffic split in force (README "Safety")."""

    champion: str
    challenger: str
    challenger_share: float = Field(ge=0, lt=1, description="Share of bars the challenger answers.")
    assignment: str = Field(description="How a request's arm is decided (deterministic per bar).")


class InferenceInfo(BaseModel):
    """Which runtime serves the model, and why."""

    backend: Literal["torch", "onnxruntime"]
    reason: str = Field(description="INFERENCE_BACKEND, a package without an ONNX graph, or the measurement at load.")
    threads: int = Field(ge=1, description="Intra-op threads of the runtime, per worker (TORCH_THREADS).")
    torch_ms: Optional[float] = Field(description="CPU ms of one window through PyTorch, measured at load (auto).")
    onnxruntime_ms: Optional[float] = Field(description="The same through ONNX Runtime.")
    max_probability_difference: Optional[float] = Field(
        description="Largest difference between the two runtimes' probabilities on the package's reference "
                    "windows (ONNX Runtime serves only within 1e-5).")


class ModelInfo(BaseModel):
    """``GET /model``: what is served, and what a request must carry for it."""

    model_version: str
    lineage: dict[str, Any] = Field(description="Data, training run, code and registry lineage of the package.")
    required_bars: int = Field(ge=1, description="Bars a request needs in all (context_bars + current_bar), "
                                                 "unless stored bars complete it.")
    sequence_length: int
    lookback: int
    feature_set_version: str
    features: list[str]
    labels: list[Label]
    temperature: float
    timeframe: str = Field(description="The only `metadata.timeframe` accepted.")
    symbols: list[str] = Field(description="The `metadata.symbol` values accepted.")
    risk_terms: RiskTermsInfo
    thresholds: Thresholds
    inference: InferenceInfo
    loaded_at: str
    ab_test: Optional[AbTestInfo] = Field(default=None, description="The A/B split in force, or null.")


class ReloadAnswer(BaseModel):
    status: Literal["reloaded"]
    model_version: str


class HaltRecord(HaltInfo):
    details: dict[str, Any] = Field(default_factory=dict)


class Halts(BaseModel):
    all: Optional[HaltRecord] = Field(description="The halt of every symbol, if any.")
    symbols: dict[str, HaltRecord] = Field(description="Halts of single symbols.")
    source: Literal["database", "local file", "none"] = Field(
        description="`local file`: the database has not answered since start; the last known halts hold.")
    database_error: Optional[str] = Field(description="Why the last read failed; the last known state holds.")
    checked_at: Optional[str]
    pending: int = Field(ge=0, description="Halts made here while the database was away, not yet written to it.")


class HaltRequest(BaseModel):
    """``POST /admin/halt`` and ``/admin/resume``."""

    symbols: Optional[list[str]] = Field(default=None, description="Symbols; absent or empty: all (resume: every "
                                                                   "halt).", examples=[["ES"]])
    reason: str = Field(min_length=1, description="Why; recorded with the halt or resume.",
                        examples=["news spike"])


class HaltAnswer(BaseModel):
    status: Literal["halted", "resumed"]
    persisted: Optional[bool] = Field(default=None, description="Halt: false when the database was away (in force "
                                                                "here, written when it answers).")
    halts: Halts


class Health(BaseModel):
    """``GET /health`` (no key): always 200; `/readyz` is the probe that says ready or not."""

    status: Literal["ok", "loading"]
    model_loaded: bool
    model_version: Optional[str]
    inference_backend: Optional[Literal["torch", "onnxruntime"]] = Field(
        description="The runtime serving the model (GET /model → inference says why).")
    last_reload_error: Optional[str]
    shadow_version: Optional[str]
    ab_version: Optional[str] = Field(default=None, description="An A/B test's challenger, when one runs.")
    halts: Optional[Halts] = Field(default=None, description="The kill switch: halts in force and where the "
                                                             "state was read.")
    storage: Literal["ok", "spooling", "losing rows"] = Field(
        description="`spooling`: the database is away and rows wait on disk; `losing rows`: the spool was full.")
    prediction_log: Optional[dict[str, Any]] = Field(description="The prediction log's writer (null when off).")
    bar_capture: Optional[dict[str, Any]] = Field(description="The bar capture's writer (null when off).")
    worker: Optional[int] = Field(description="Which of the service's worker processes answered (WORKERS).")
    rate_limit: Literal["shared", "per worker", "per worker, Redis unavailable"] = Field(
        description="`shared`: one bucket per key for every worker, in Redis (REDIS_URL); otherwise each worker "
                    "limits on its own.")
    signals: Optional[dict[str, Any]] = Field(default=None, description=(
        "`stream`: `on` (REDIS_URL set; `publisher` is its writer) or `off`; `feed_source` of /signals/stream "
        "(`redis` or `process`), `websocket_clients`, `slow_clients_dropped`."))
    uptime_s: float


class Signal(BaseModel):
    """A served signal, as the Redis Stream, the WebSocket feed and ``GET /signals`` carry it."""

    request_id: str
    symbol: str
    timeframe: str
    bar_time: str = Field(description="Close time of the decision bar (ISO 8601, UTC).")
    label: Label
    raw_label: Label
    confidence: float = Field(ge=0, le=1)
    probabilities: Probabilities
    position_size: float = Field(ge=0, le=1)
    risk: Optional[Risk] = Field(description="The risk block answered (null for signals logged before it was kept).")
    model_version: str
    served_at: str = Field(description="When the service answered (ISO 8601, UTC).")


class SignalPage(BaseModel):
    """``GET /signals``: newest first."""

    signals: list[Signal]
    next_cursor: Optional[str] = Field(description="Pass as `cursor` for the next page; null on the last page.")


class SignalOutcome(BaseModel):
    horizon: str
    realised_label: Label = Field(description="What the market did (the triple-barrier label).")
    barrier: str
    exit_time: str
    return_: Optional[float] = Field(alias="return", description="The label's long log return; null if ambiguous.")
    ambiguous: bool
    realised_return: float = Field(description="direction × position size × return; 0 without a trade.")
    hit: Optional[bool] = Field(description="The realised label equals the served one; null without a trade.")
    computed_at: str


class SignalDetail(Signal):
    """``GET /signals/{request_id}``: the signal and, once its label is known, its outcome."""

    outcome: Optional[SignalOutcome]


class AnalyticsDay(BaseModel):
    model_version: str
    day: str = Field(description="CME trading day of the bar times.")
    signals: int = Field(ge=0)
    trades: int = Field(ge=0, description="Signals long or short with a size > 0.")
    trade_rate: float = Field(ge=0, le=1)
    resolved: int = Field(ge=0, description="Signals whose outcome is known.")
    resolved_trades: int = Field(ge=0)
    hits: int = Field(ge=0)
    hit_rate: Optional[float] = Field(ge=0, le=1, description="hits / resolved_trades; null without one.")
    mean_realised_return: Optional[float] = Field(description="Mean realised return of the resolved trades.")
    total_realised_return: float = Field(description="Sum of realised returns of the resolved signals.")


class SignalAnalytics(BaseModel):
    """``GET /signals/analytics``: per model version and trading day, from the outcomes."""

    since: str
    until: str
    days: list[AnalyticsDay]
