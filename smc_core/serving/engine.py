"""Serving without a web framework: the model slot with atomic swaps, the registry follower,
one prediction from a validated request, and the client-indicator comparison.

Why a slot: a request takes one reference to the loaded model at its start and uses only
that, so a swap (one attribute assignment) never mixes two models within a request and
never waits for requests in flight; the old model is freed when its last request ends.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import timedelta
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from smc_core.errors import ConfigError, SmcError
from smc_core.features import CATALOGUE, feature_matrix
from smc_core.instruments import serving_instrument
from smc_core.model import Predictor, load_package
from smc_core.policy import PolicyConfig
from smc_core.risk import RiskTerms
from smc_core.serving.request import CLIENT_INDICATORS, PredictRequest, RequestError
from smc_core.timeframe import parse_timeframe

log = logging.getLogger("smc.serving")

ATR_TOLERANCE = 1e-6
_ATR = CATALOGUE.names.index("atr")


@dataclass(frozen=True)
class ModelTerms:
    """What a model accepts and what its answers tell the strategy to trade."""

    timeframe: str
    """The bar timeframe it was trained on (``lineage.json``), e.g. ``1m``."""
    width_ns: int
    symbols: frozenset[str]
    """Symbols it serves: ALLOWED_SYMBOLS, else those it was trained on."""
    risk: RiskTerms

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
        return cls(timeframe, parse_timeframe(timeframe) // timedelta(microseconds=1) * 1000, symbols, risk)


@dataclass
class LoadedModel:
    predictor: Predictor
    version: str
    """``<registered name>/<version>`` (DESIGN §5), or ``local/<directory>`` for a MODEL_PATH package."""
    path: Path
    entry_threshold: float | None
    """The threshold the version was promoted with (registry tag), if any."""
    terms: ModelTerms
    loaded_at: float = field(default_factory=time.time)

    @property
    def required_bars(self) -> int:
        return self.predictor.spec.required_rows


def load_model(path: Path, version: str, entry_threshold: float | None = None, threads: int = 1,
               allowed_symbols: frozenset[str] | None = None, risk: RiskTerms | None = None) -> LoadedModel:
    """Load, verify and warm up a package; anything wrong raises before it could serve.

    ``risk``: the terms recorded when the version was promoted; a package served by path
    (not promoted) trades the project's default terms."""
    predictor = Predictor(load_package(Path(path)), threads=threads)
    terms = ModelTerms.of(predictor.package.lineage, allowed_symbols, risk or RiskTerms())
    spec = predictor.spec
    if spec.feature_set_version != CATALOGUE.version or tuple(spec.feature_names) != tuple(CATALOGUE.names):
        raise SmcError(f"model {version} was trained on feature set {spec.feature_set_version}; this service "
                       f"computes {CATALOGUE.version}: it cannot be served")
    rows = predictor.package.reference[: spec.sequence_length].astype(np.float64)
    for _ in range(3):  # warm-up: first calls allocate and pick kernels
        probabilities = predictor.predict_rows(rows)
    if not (np.isfinite(probabilities).all() and abs(probabilities.sum() - 1) < 1e-6):
        raise SmcError(f"model {version} returned invalid probabilities on its own reference sample")
    return LoadedModel(predictor, version, Path(path), entry_threshold, terms)


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
                 interval: float = 2.0, clear_when_unset: bool = False):
        super().__init__(name="alias-follower", daemon=True)
        self.slot, self.resolve, self.load, self.interval = slot, resolve, load, interval
        self.clear_when_unset = clear_when_unset
        """Shadow: an alias that was removed means stop. Champion: keep serving what we have."""
        self._stop = threading.Event()
        self._refused: str | None = None

    def check(self) -> None:
        try:
            version = self.resolve()
        except Exception as error:  # registry down: keep serving, say so in /health
            self.slot.last_error = f"registry unreachable: {error}"
            return
        current = self.slot.current.version if self.slot.current else None
        if version is None and self.clear_when_unset:
            self.slot.clear()
            return
        if version is None or version == current or version == self._refused:
            return
        if not self.slot.replace_with(lambda: self.load(version)):
            self._refused = version  # do not retry a broken version every tick
        else:
            self._refused = None

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


def predict(request: PredictRequest, model: LoadedModel, policy: PolicyConfig, started: float,
            request_id: str | None = None, columns: dict | None = None) -> Prediction:
    """Features from the request's bars (the training code), calibrated probabilities, the tier,
    and the risk block from the server's own ATR."""
    columns = request.columns() if columns is None else columns
    instrument = serving_instrument(request.metadata.symbol)
    rows = feature_matrix(columns, calendar=instrument.calendar())
    stored = len(rows) - len(request.bars)  # bars completed from the store come first
    length = model.predictor.spec.sequence_length
    window = rows[-length:]
    bad = np.argwhere(~np.isfinite(window))
    if len(bad):  # degenerate bars (e.g. a flat, zero-range stretch) leave a feature undefined
        row, column = (int(i) for i in bad[0])
        position = len(rows) - length + row - stored
        where = ("current_bar" if position == len(request.bars) - 1 else f"context_bars[{position}]" if position >= 0
                 else "context_bars (the stored bars completing the request)")
        raise RequestError(422, "bars cannot be used", {"errors": [{
            "path": where,
            "message": f"feature {CATALOGUE.names[column]!r} is undefined at this bar; the model needs it finite"}]})
    probabilities = model.predictor.predict_rows(window)
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
        "risk": model.terms.risk.for_symbol(instrument.symbol).block(float(columns["close"][-1]),
                                                                     float(rows[-1, _ATR]), label),
        "processing_time_ms": (time.perf_counter() - started) * 1000,
    }
    return Prediction(body, rows[-1], compare_indicators(request, rows[stored:]))


def compare_indicators(request: PredictRequest, rows: np.ndarray) -> dict[str, int]:
    """Per indicator, how many client-sent values differ from the server's (where it has one)."""
    names = CATALOGUE.names
    mismatches: dict[str, int] = {}
    for position, bar in enumerate(request.bars):
        for name in CLIENT_INDICATORS:
            sent = getattr(bar, name)
            if sent is None or name not in names:
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
