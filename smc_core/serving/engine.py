"""Serving without a web framework: the model slot with atomic swaps, the registry follower,
the runtime a model is served through, predictions from validated requests (one forward
pass for a micro-batch), and the client-indicator comparison.

Why a slot: a request takes one reference to the loaded model at its start and uses only
that, so a swap (one attribute assignment) never mixes two models within a request and
never waits for requests in flight; the old model is freed when its last request ends.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from smc_core.errors import ConfigError, SmcError
from smc_core.features import CATALOGUE, feature_matrix
from smc_core.instruments import serving_instrument
from smc_core.model import Predictor, load_package
from smc_core.model.onnx_graph import PARITY_TOLERANCE, time_backends
from smc_core.model.package import reference_windows
from smc_core.policy import PolicyConfig
from smc_core.risk import RiskTerms
from smc_core.serving.request import CLIENT_INDICATORS, PredictRequest, RequestError
from smc_core.timeframe import timeframe_ns

log = logging.getLogger("smc.serving")

ATR_TOLERANCE = 1e-6
_ATR = CATALOGUE.names.index("atr")
BACKENDS = ("auto", "torch", "onnxruntime")
_COMPARED = frozenset(CLIENT_INDICATORS).intersection(CATALOGUE.names)


@dataclass(frozen=True)
class ModelTerms:
    """What a model accepts and what its answers tell the strategy to trade."""

    timeframe: str
    """The bar timeframe it was trained on (``lineage.json``), e.g. ``1m``."""
    width_ns: int
    symbols: frozenset[str]
    """Symbols it serves: ALLOWED_SYMBOLS, else those it was trained on."""
    risk: RiskTerms
    horizon: str | None = None
    """The labels' horizon it was trained on (``lineage.json``), e.g. ``h15_u1.5_d1.5``: with the
    timeframe, the model line it belongs to."""

    @classmethod
    def of(cls, lineage: dict, allowed_symbols: frozenset[str] | None, risk: RiskTerms) -> "ModelTerms":
        data = lineage.get("data") or {}
        timeframe = data.get("timeframe")
        if not timeframe:
            raise SmcError("the package's lineage.json names no data.timeframe: requests could not be checked "
                           "against it (retrain, or add it)")
        symbols = allowed_symbols if allowed_symbols is not None else frozenset(data.get("symbols") or ())
        if not symbols:
            raise ConfigError("the package's lineage names no symbols: set ALLOWED_SYMBOLS to the symbols to serve")
        return cls(timeframe, timeframe_ns(timeframe), symbols, risk,
                   data.get("horizon"))

    def has_horizon(self, asked: str) -> bool:
        """``asked`` names this model's horizon: in full (``h15_u1.5_d1.5``) or by its bars (``h15``)."""
        return self.horizon is not None and (asked == self.horizon or self.horizon.split("_")[0] == asked)


@dataclass(frozen=True)
class Inference:
    """Which runtime serves a model, and why: shown in /model and /health."""

    backend: str
    """``torch`` or ``onnxruntime``."""
    reason: str
    threads: int
    """Intra-op threads of the runtime (TORCH_THREADS)."""
    torch_ms: float | None = None
    """CPU ms of one window through each runtime, measured when the model was loaded (``auto``)."""
    onnxruntime_ms: float | None = None
    max_probability_difference: float | None = None
    """Largest difference between the runtimes' probabilities on the package's reference windows."""


def choose_backend(predictor: Predictor, wanted: str = "auto") -> Inference:
    """Serve through ONNX Runtime when the package has a graph that answers like torch (within
    1e-5 on its reference windows) and, for ``auto``, when it is faster on this host; else torch.

    A package written before ONNX export has no graph and is served by torch."""
    if wanted not in BACKENDS:
        raise ConfigError(f"INFERENCE_BACKEND {wanted!r} is not one of {', '.join(BACKENDS)}")
    threads = predictor.threads
    if wanted == "torch":
        return Inference("torch", "INFERENCE_BACKEND=torch", threads)
    if predictor.package.onnx_path is None:
        return Inference("torch", "the package has no ONNX graph (written before model.onnx)", threads)
    try:
        session = predictor.onnx()
    except ImportError as error:
        return Inference("torch", f"onnxruntime is not installed ({error})", threads)
    numeric, categorical = reference_windows(predictor.package.reference, predictor.spec)
    expected = predictor.predict_proba(numeric, categorical)
    predictor.use_onnx(session)
    difference = float(np.abs(predictor.predict_proba(numeric, categorical) - expected).max())
    if not difference <= PARITY_TOLERANCE:
        predictor.use_onnx(None)
        return Inference("torch", f"the ONNX graph's probabilities differ from torch's by {difference:.2e}", threads,
                         max_probability_difference=difference)
    if wanted == "onnxruntime":
        return Inference("onnxruntime", "INFERENCE_BACKEND=onnxruntime", threads,
                         max_probability_difference=difference)
    def one_window(through):
        def run():
            predictor.use_onnx(through)
            predictor.predict_proba(numeric[:1], categorical[:1])
        return run

    timing = time_backends(one_window(None), one_window(session))
    faster = timing.onnxruntime_ms < timing.torch_ms
    predictor.use_onnx(session if faster else None)
    return Inference("onnxruntime" if faster else "torch", "measured faster on this host at load", threads,
                     timing.torch_ms, timing.onnxruntime_ms, difference)


@dataclass
class LoadedModel:
    predictor: Predictor
    version: str
    """``<registered name>/<version>`` (DESIGN §5), or ``local/<directory>`` for a MODEL_PATH package."""
    path: Path
    entry_threshold: float | None
    """The threshold the version was promoted with (registry tag), if any."""
    terms: ModelTerms
    inference: Inference
    loaded_at: float = field(default_factory=time.time)

    @property
    def required_bars(self) -> int:
        return self.predictor.spec.required_rows


def load_model(path: Path, version: str, entry_threshold: float | None = None, threads: int = 1,
               allowed_symbols: frozenset[str] | None = None, risk: RiskTerms | None = None,
               backend: str = "auto") -> LoadedModel:
    """Load, verify, choose its runtime and warm up a package; anything wrong raises before it could serve.

    ``risk``: the terms recorded when the version was promoted; a package served by path
    (not promoted) trades the project's default terms."""
    predictor = Predictor(load_package(Path(path)), threads=threads)
    terms = ModelTerms.of(predictor.package.lineage, allowed_symbols, risk or RiskTerms())
    spec = predictor.spec
    if spec.feature_set_version != CATALOGUE.version or tuple(spec.feature_names) != tuple(CATALOGUE.names):
        raise SmcError(f"model {version} was trained on feature set {spec.feature_set_version}; this service "
                       f"computes {CATALOGUE.version}: it cannot be served")
    inference = choose_backend(predictor, backend)
    rows = predictor.package.reference[: spec.sequence_length].astype(np.float64)
    for _ in range(3):  # warm-up: first calls allocate and pick kernels
        probabilities = predictor.predict_rows(rows)
    if not (np.isfinite(probabilities).all() and abs(probabilities.sum() - 1) < 1e-6):
        raise SmcError(f"model {version} returned invalid probabilities on its own reference sample")
    log.info("model %s served by %s (%s)", version, inference.backend, inference.reason)
    return LoadedModel(predictor, version, Path(path), entry_threshold, terms, inference)


class ModelSlot:
    """The model being served, swapped atomically; remembers the last failed reload."""

    def __init__(self):
        self._lock = threading.Lock()
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self.reloads = 0
        self.failed_reloads = 0

    def swap(self, model: LoadedModel) -> None:
        with self._lock:
            self.current = model
            self.last_error = None
            self.reloads += 1
        log.info("serving %s from %s", model.version, model.path)

    def fail(self, message: str) -> None:
        with self._lock:
            self.last_error = message
            self.failed_reloads += 1
        log.error("reload refused, still serving %s: %s", self.current.version if self.current else "nothing",
                  message)

    def clear(self) -> None:
        with self._lock:
            model, self.current = self.current, None
        if model is not None:
            log.info("stopped serving %s", model.version)

    def replace_with(self, load: Callable[[], LoadedModel]) -> bool:
        """Load a candidate and swap it in; on any error keep the current model and record why."""
        try:
            model = load()
        except Exception as error:  # a broken package must never take the service down
            self.fail(f"{type(error).__name__}: {error}")
            return False
        self.swap(model)
        return True


class AliasFollower(threading.Thread):
    """Polls the registry alias and swaps in its version when it changes (rollback included)."""

    def __init__(self, slot: ModelSlot, resolve: Callable[[], str | None], load: Callable[[str], LoadedModel],
                 interval: float = 2.0, clear_when_unset: bool = False,
                 on_swap: Callable[[bool], None] | None = None):
        super().__init__(name="alias-follower", daemon=True)
        self.slot, self.resolve, self.load, self.interval = slot, resolve, load, interval
        self.clear_when_unset = clear_when_unset
        """Shadow: an alias that was removed means stop. Champion: keep serving what we have."""
        self.on_swap = on_swap
        """Told whether each attempted swap succeeded (the reload metrics)."""
        self._stop = threading.Event()
        self._refused: str | None = None
        self._loaded: str | None = None
        """The registered version in the slot (the slot's own says ``<name>/<version>``)."""

    def check(self) -> None:
        try:
            version = self.resolve()
        except Exception as error:  # registry down: keep serving, say so in /health
            self.slot.last_error = f"registry unreachable: {error}"
            return
        if version is None and self.clear_when_unset:
            self.slot.clear()
            self._loaded = None
            return
        if version is None or version == self._loaded or version == self._refused:
            return
        swapped = self.slot.replace_with(lambda: self.load(version))
        self._refused = None if swapped else version  # do not retry a broken version every tick
        self._loaded = version if swapped else self._loaded
        if self.on_swap is not None:
            self.on_swap(swapped)

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Prediction:
    body: dict
    features: np.ndarray
    """The feature vector of the current bar, as logged."""
    mismatches: dict[str, int]


@dataclass
class Prepared:
    """A checked request with its features, ready for the forward pass."""

    request: PredictRequest
    columns: dict
    rows: np.ndarray
    """Feature rows of every bar: the stored bars completing the request first, then the request's."""
    window: np.ndarray
    """The last ``sequence_length`` rows: what the model reads."""
    from_store: int


def prepare(request: PredictRequest, columns: dict, sequence_length: int, from_store: int = 0) -> Prepared:
    """Features from the request's bars (the training code, on the symbol's session calendar);
    422 naming the bar when the window the model reads has an undefined feature."""
    rows = feature_matrix(columns, calendar=serving_instrument(request.metadata.symbol).calendar())
    stored = len(rows) - len(request.bars)  # bars completed from the store come first
    window = rows[-sequence_length:]
    bad = np.argwhere(~np.isfinite(window))
    if len(bad):  # degenerate bars (e.g. a flat, zero-range stretch) leave a feature undefined
        row, column = (int(i) for i in bad[0])
        position = len(rows) - sequence_length + row - stored
        where = ("current_bar" if position == len(request.bars) - 1 else f"context_bars[{position}]" if position >= 0
                 else "context_bars (the stored bars completing the request)")
        raise RequestError(422, "bars cannot be used", {"errors": [{
            "path": where,
            "message": f"feature {CATALOGUE.names[column]!r} is undefined at this bar; the model needs it finite"}]})
    return Prepared(request, columns, rows, window, from_store)


def forward(model: LoadedModel, batch: list[Prepared]) -> np.ndarray:
    """Calibrated probabilities [N, n_labels] of N prepared requests in one forward pass."""
    return model.predictor.predict_windows([prepared.window for prepared in batch])


def predict(request: PredictRequest, model: LoadedModel, policy: PolicyConfig, started: float,
            request_id: str | None = None, columns: dict | None = None) -> Prediction:
    """One request on its own: features, calibrated probabilities, the tier, and the risk block."""
    columns = request.columns() if columns is None else columns
    prepared = prepare(request, columns, model.predictor.spec.sequence_length)
    return answer(prepared, model, policy, forward(model, [prepared])[0], started, request_id)


def answer(prepared: Prepared, model: LoadedModel, policy: PolicyConfig, probabilities: np.ndarray, started: float,
           request_id: str | None = None) -> Prediction:
    """The body from the model's probabilities: the tier, and the risk block from the server's own ATR."""
    request, columns, rows = prepared.request, prepared.columns, prepared.rows
    stored = len(rows) - len(request.bars)
    labels = model.predictor.labels
    best = int(np.argmax(probabilities))
    confidence = float(probabilities[best])
    size = policy.size_fraction(confidence) if labels[best] != "skip" else 0.0
    label = labels[best] if size > 0 else "skip"
    body = {
        "label": label,
        "confidence": confidence,
        "probabilities": {name: float(p) for name, p in zip(labels, probabilities)},
        "model_version": model.version,
        "request_id": request_id or str(uuid.uuid4()),
        "position_size": size,
        "raw_label": labels[best],
        "threshold": policy.half_threshold,
        "risk": model.terms.risk.for_symbol(request.metadata.symbol).block(float(columns["close"][-1]),
                                                                           float(rows[-1, _ATR]), label),
        "processing_time_ms": (time.perf_counter() - started) * 1000,
    }
    return Prediction(body, rows[-1], compare_indicators(request, rows[stored:]))


def compare_indicators(request: PredictRequest, rows: np.ndarray) -> dict[str, int]:
    """Per indicator, how many client-sent values differ from the server's (where it has one)."""
    names = CATALOGUE.names
    mismatches: dict[str, int] = {}
    for position, bar in enumerate(request.bars):
        for name in _COMPARED.intersection(bar.model_fields_set):  # most clients send none
            sent = getattr(bar, name)
            if sent is None:
                continue
            ours = rows[position, names.index(name)]
            if np.isfinite(ours) and not _same(float(sent), ours, name):
                mismatches[name] = mismatches.get(name, 0) + 1
    for name, sent in request.features.items():
        if name in names and isinstance(sent, (int, float)):  # bools too; text values are not comparable
            ours = rows[-1, names.index(name)]
            if np.isfinite(ours) and not _same(float(sent), ours, name):
                mismatches[name] = mismatches.get(name, 0) + 1
    return mismatches


def _same(sent: float, ours: float, name: str) -> bool:
    if name == "atr":
        return abs(sent - ours) <= ATR_TOLERANCE * max(1.0, abs(ours))
    return sent == ours
