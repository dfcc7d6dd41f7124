"""Everything the /predict service does, independent of the web framework serving it.

The BentoML service (``bento/service.py``) and the FastAPI peer of the latency benchmark
both delegate here, so the contract (DESIGN §6) is implemented once: settings, keys and
rate limits, request parsing, the model slot and its registry follower, the prediction
log, metrics and the error bodies ``{error, code, details}``.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from smc_core.errors import ConfigError, SmcError
from smc_core.features import CATALOGUE
from smc_core.policy import PolicyConfig
from smc_core.serving.engine import AliasFollower, LoadedModel, ModelSlot, load_model, predict
from smc_core.serving.prediction_log import PredictionLog
from smc_core.serving.request import PredictRequest, RequestError, parse_request
from smc_core.settings import env_number

log = logging.getLogger("smc.serving")
CHAMPION_URI = "models:/smc-lora@champion"


@dataclass(frozen=True)
class ServiceSettings:
    """DESIGN §7, read once at start; a bad value stops the service with its name."""

    model_path: Path | None
    model_uri: str
    host: str
    port: int
    api_key: str | None
    admin_api_key: str | None
    dev_mode: bool
    confidence_threshold: float | None
    full_threshold: float
    timeout_ms: float
    max_batch_size: int
    max_body_bytes: int
    rate_limit_per_second: float
    rate_limit_burst: int
    poll_seconds: float
    torch_threads: int
    log_predictions: bool
    shadow_alias: str | None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "ServiceSettings":
        env = os.environ if env is None else env
        dev = env.get("SMC_DEV_MODE", "").lower() in {"1", "true", "yes"}
        settings = cls(
            model_path=Path(env["MODEL_PATH"]).expanduser().resolve() if env.get("MODEL_PATH") else None,
            model_uri=env.get("MODEL_URI", CHAMPION_URI),
            host=env.get("HOST", "127.0.0.1"),
            port=env_number(env, "PORT", 8000, int, 1, 65535),
            api_key=env.get("API_KEY") or None,
            admin_api_key=env.get("ADMIN_API_KEY") or None,
            dev_mode=dev,
            confidence_threshold=(env_number(env, "CONFIDENCE_THRESHOLD", 0.55, float, 0.0, 1.0)
                                  if env.get("CONFIDENCE_THRESHOLD") else None),
            full_threshold=env_number(env, "FULL_SIZE_THRESHOLD", 0.70, float, 0.0, 1.0),
            timeout_ms=env_number(env, "TIMEOUT_MS", 100.0, float, 1.0, 60_000.0),
            max_batch_size=env_number(env, "MAX_BATCH_SIZE", 64, int, 1, 10_000),
            max_body_bytes=env_number(env, "MAX_BODY_BYTES", 1_000_000, int, 1_000, 100_000_000),
            rate_limit_per_second=env_number(env, "RATE_LIMIT_PER_SECOND", 100.0, float, 0.01, 1e6),
            rate_limit_burst=env_number(env, "RATE_LIMIT_BURST", 200, int, 1, 10**6),
            poll_seconds=env_number(env, "MODEL_POLL_SECONDS", 2.0, float, 0.1, 3600.0),
            torch_threads=env_number(env, "TORCH_THREADS", 1, int, 1, 256),
            log_predictions=env.get("LOG_PREDICTIONS", "true").lower() not in {"0", "false", "no"},
            shadow_alias=None if env.get("SHADOW_ALIAS", "shadow").lower() in {"", "off", "none"}
            else env.get("SHADOW_ALIAS", "shadow"),
        )
        if not dev and not (settings.api_key and settings.admin_api_key):
            raise ConfigError("API_KEY and ADMIN_API_KEY must be set (or SMC_DEV_MODE=1 for a keyless local service)")
        if settings.api_key and settings.api_key == settings.admin_api_key:
            raise ConfigError("ADMIN_API_KEY must differ from API_KEY")
        return settings


class RateLimiter:
    """A token bucket per API key: ``rate`` requests per second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            allowed = tokens >= 1
            self._buckets[key] = (tokens - 1 if allowed else tokens, now)
        return allowed


class Runtime:
    def __init__(self, settings: ServiceSettings, metrics=None, database=None):
        self.settings = settings
        self.metrics = metrics
        self.slot = ModelSlot()
        self.shadow = ModelSlot()
        self.limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
        self._database = database
        self.follower: AliasFollower | None = None
        self.shadow_follower: AliasFollower | None = None
        self.log: PredictionLog | None = None
        self.started_at = time.time()

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> "Runtime":
        """Load the first model (MODEL_PATH, else the registry alias) and start the background work."""
        _warm_up_features()
        if self.settings.log_predictions:
            self.log = PredictionLog(self._db, on_drop=self._count_drop).start()
        if self.settings.model_path is not None:
            self.slot.replace_with(lambda: load_model(self.settings.model_path, f"local/{self.settings.model_path.name}",
                                                      threads=self.settings.torch_threads))
        else:
            from smc_core.registry import TrackingConfig, configure
            from smc_core.settings import Settings

            configure(TrackingConfig.from_settings(Settings.from_env()))
            name, alias = _parse_alias_uri(self.settings.model_uri)
            self.follower = self._follow(self.slot, name, alias)
            if self.settings.shadow_alias:
                self.shadow_follower = self._follow(self.shadow, name, self.settings.shadow_alias, clear_when_unset=True)
        self._record_model()
        return self

    def stop(self) -> None:
        for follower in (self.follower, self.shadow_follower):
            if follower is not None:
                follower.stop()
        if self.log is not None:
            self.log.flush(5)
            self.log.stop()

    @property
    def ready(self) -> bool:
        return self.slot.current is not None

    # --- requests ----------------------------------------------------------------------

    def authorize(self, key: str | None, admin: bool = False) -> str:
        """The caller's key if it may call this endpoint; 401 otherwise (constant-time compare)."""
        expected = self.settings.admin_api_key if admin else self.settings.api_key
        if self.settings.dev_mode and expected is None:
            return "dev"
        if not key or expected is None or not hmac.compare_digest(key.encode(), expected.encode()):
            raise RequestError(401, "missing or invalid API key",
                               {"header": "X-API-Key" if not admin else "X-Admin-Key"})
        if not self.limiter.allow(key):
            raise RequestError(429, "rate limit exceeded", {"limit_per_second": self.settings.rate_limit_per_second,
                                                            "burst": self.settings.rate_limit_burst})
        return key

    def model(self) -> LoadedModel:
        model = self.slot.current
        if model is None:
            raise RequestError(503, "no model loaded yet", {"last_error": self.slot.last_error})
        return model

    def predict_payload(self, payload: object, started: float) -> dict:
        model = self.model()
        request = parse_request(payload, model.required_bars)
        request_id = str(uuid.uuid4())
        try:
            prediction = predict(request, model, self.policy(model), started, request_id)
        except RequestError:
            raise
        except SmcError as error:  # bars the feature code refuses (it names the row)
            raise RequestError(422, "bars cannot be used", {"errors": [{"path": "context_bars",
                                                                        "message": str(error)}]}) from None
        except Exception as error:
            log.exception("prediction failed")
            raise RequestError(500, "model failure", {"type": type(error).__name__}) from None
        self._observe(request, model, prediction, shadow=False)
        shadow = self.shadow.current
        if shadow is not None and shadow.version != model.version:
            try:
                self._observe(request, shadow, predict(request, shadow, self.policy(shadow), time.perf_counter(),
                                                       request_id), shadow=True)
            except Exception:  # the shadow never affects the answer
                log.exception("shadow prediction failed")
        return prediction.body

    def policy(self, model: LoadedModel) -> PolicyConfig:
        threshold = self.settings.confidence_threshold
        if threshold is None:
            threshold = model.entry_threshold if model.entry_threshold is not None else 0.55
        return PolicyConfig(half_threshold=threshold, full_threshold=max(threshold, self.settings.full_threshold))

    def reload(self) -> dict:
        """Admin: load the configured model again (or the alias's current version), then swap."""
        if self.settings.model_path is not None:
            path = self.settings.model_path
            ok = self.slot.replace_with(lambda: load_model(path, f"local/{path.name}",
                                                           threads=self.settings.torch_threads))
        else:
            name, alias = _parse_alias_uri(self.settings.model_uri)
            version = _alias_version(name, alias)
            if version is None:
                raise RequestError(409, f"the registry has no {name}@{alias}", {})
            ok = self.slot.replace_with(lambda: self._load_registered(name, version))
        self._record_model(reloaded=ok)
        if not ok:
            raise RequestError(409, "reload refused; the previous model keeps serving",
                               {"reason": self.slot.last_error, "serving": self.slot.current.version
                                if self.slot.current else None})
        return {"status": "reloaded", "model_version": self.slot.current.version}

    def health(self) -> dict:
        current = self.slot.current
        return {"status": "ok" if current else "loading", "model_loaded": current is not None,
                "model_version": current.version if current else None, "last_reload_error": self.slot.last_error,
                "shadow_version": self.shadow.current.version if self.shadow.current else None,
                "prediction_log": {"written": self.log.written, "dropped": self.log.dropped} if self.log else None,
                "uptime_s": round(time.time() - self.started_at, 1)}

    def model_info(self) -> dict:
        model = self.model()
        spec = model.predictor.spec
        policy = self.policy(model)
        return {"model_version": model.version, "lineage": model.predictor.package.lineage,
                "required_bars": spec.required_rows, "sequence_length": spec.sequence_length,
                "lookback": spec.lookback, "feature_set_version": spec.feature_set_version,
                "features": list(spec.feature_names), "labels": list(model.predictor.labels),
                "temperature": model.predictor.temperature,
                "thresholds": {"half_size": policy.half_threshold, "full_size": policy.full_threshold},
                "loaded_at": datetime.fromtimestamp(model.loaded_at, timezone.utc).isoformat()}

    # --- internals ---------------------------------------------------------------------

    def _db(self):
        if self._database is None:
            from smc_core.db import Database
            from smc_core.migrations import migrate
            from smc_core.settings import Settings

            self._database = Database.from_settings(Settings.from_env())
            migrate(self._database)
        return self._database

    def _follow(self, slot: ModelSlot, name: str, alias: str, clear_when_unset: bool = False) -> AliasFollower:
        """Load ``name@alias`` into ``slot`` now, then keep following the alias in the background."""
        follower = AliasFollower(slot, lambda: _alias_version(name, alias),
                                 lambda version: self._load_registered(name, version), self.settings.poll_seconds,
                                 clear_when_unset)
        follower.check()
        follower.start()
        return follower

    def _load_registered(self, name: str, version: str) -> LoadedModel:
        from smc_core.promotion import entry_threshold_of
        from smc_core.registry import package_path

        return load_model(package_path(version, name=name), f"{name}/{version}", entry_threshold_of(version, name),
                          threads=self.settings.torch_threads)

    def _observe(self, request: PredictRequest, model: LoadedModel, prediction, shadow: bool) -> None:
        body = prediction.body
        if self.metrics is not None and not shadow:
            self.metrics.prediction(body, prediction.mismatches)
        if self.log is not None:
            probabilities = body["probabilities"]
            self.log.submit({
                "ts": request.current_bar.time_utc, "request_id": body["request_id"], "shadow": shadow,
                "logged_at": datetime.now(timezone.utc), "symbol": request.metadata.symbol,
                "timeframe": request.metadata.timeframe, "model_version": model.version, "label": body["label"],
                "raw_label": body["raw_label"], "confidence": body["confidence"], "p_long": probabilities["long"],
                "p_short": probabilities["short"], "p_skip": probabilities["skip"],
                "position_size": body["position_size"], "latency_ms": body["processing_time_ms"],
                "features": [float(v) for v in prediction.features], "feature_set": CATALOGUE.version})

    def _count_drop(self, count: int, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.log_dropped(count)

    def _record_model(self, reloaded: bool | None = None) -> None:
        if self.metrics is not None:
            self.metrics.model(self.slot.current.version if self.slot.current else None, reloaded)


def _warm_up_features() -> None:
    """Run the feature kernels (numba, cached on disk) once before the first request rather than in it."""
    import numpy as np
    import pandas as pd

    from smc_core.features import compute_features

    close = 5000 + np.cumsum(np.random.default_rng(0).normal(0, 1, 120)).round(2)
    compute_features(pd.DataFrame({
        "ts": pd.date_range("2024-03-05 14:31", periods=120, freq="min", tz="UTC"), "open": close,
        "high": close + 0.5, "low": close - 0.5, "close": close, "volume": 100.0, "delta": np.nan}))


def error_body(error: RequestError) -> dict:
    return {"error": error.error, "code": error.status, "details": error.details}


def parse_json(body: bytes, limit: int) -> object:
    if len(body) > limit:
        raise RequestError(413, "request body too large", {"limit_bytes": limit, "received_bytes": len(body)})
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RequestError(400, "malformed JSON", {"message": str(error)}) from None


def _parse_alias_uri(uri: str) -> tuple[str, str]:
    """``models:/<name>@<alias>`` → (name, alias)."""
    if not uri.startswith("models:/") or "@" not in uri:
        raise ConfigError(f"MODEL_URI {uri!r} must look like models:/<name>@<alias> (e.g. {CHAMPION_URI})")
    name, alias = uri.removeprefix("models:/").split("@", 1)
    return name, alias


def _alias_version(name: str, alias: str) -> str | None:
    from smc_core.registry import alias_version

    return alias_version(alias, name=name)
