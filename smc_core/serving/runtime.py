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
import ssl
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import orjson
import pandas as pd

from smc_core.ab_test import CHALLENGER_ARM, CHAMPION_ARM, SHADOW_ARM, arm_bucket
from smc_core.errors import ConfigError, SmcError
from smc_core.features import CATALOGUE
from smc_core.ingest import check_symbol, refresh_resampled, write_live_bars
from smc_core.policy import PolicyConfig
from smc_core.serving.bar_capture import BarBook, CaptureStats, LiveBar, bar_values, bar_writer, load_recent
from smc_core.serving.engine import (BACKENDS, AliasFollower, LoadedModel, ModelSlot, Prepared, answer, forward,
                                     load_model, prepare)
from smc_core.serving.halts import HaltSwitch, halted_answer
from smc_core.serving.prediction_log import WRITE_TIMEOUT_S, prediction_row, prediction_writer
from smc_core.serving.request import (PredictRequest, RequestError, check_against_model, parse_request,
                                      too_few_bars)
from smc_core.serving.rate_limit import rate_limiter
from smc_core.serving.reload_notice import ReloadNotice
from smc_core.serving.signals import SignalHub
from smc_core.serving.spool import DurableWriter, claim_spool
from smc_core.settings import Settings, env_flag, env_number, secret
from smc_core.signals import SignalSettings, signal_of
from smc_core.timeframe import format_timeframe, parse_timeframe, timeframe_ns

log = logging.getLogger("smc.serving")
CHAMPION_URI = "models:/smc-lora@champion"


@dataclass(frozen=True)
class ServerOptions:
    """How BentoML runs the service: worker processes and TLS. Read when ``bento/service.py`` is
    imported (BentoML takes them from the service's decorator), so they need no key to be read."""

    workers: int | str
    """WORKERS: processes serving requests, or ``cpu_count`` (the cores the container may use)."""
    ssl_certfile: Path | None
    ssl_keyfile: Path | None
    ssl_keyfile_password: str | None
    access_log: bool = False
    """ACCESS_LOG: BentoML's own access line per request, beside the service's JSON request log
    (which carries the same facts and more); off by default: a synchronous write per request."""
    tracing: bool = False
    """TRACING: BentoML's OpenTelemetry span per request (exported where BentoML's tracing options
    say); off by default: building spans that go nowhere cost ~15 % of the event loop's time."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "ServerOptions":
        env = os.environ if env is None else env
        workers = env.get("WORKERS", "").strip() or DEFAULT_WORKERS
        if workers != "cpu_count":
            workers = env_number({"WORKERS": workers}, "WORKERS", None, int, 1, 64)
        certfile, keyfile = (Path(env[name]).expanduser().resolve() if env.get(name) else None
                             for name in ("SSL_CERTFILE", "SSL_KEYFILE"))
        options = cls(workers, certfile, keyfile, secret(env, "SSL_KEYFILE_PASSWORD"),
                      env_flag(env, "ACCESS_LOG", False), env_flag(env, "TRACING", False))
        options.check_tls()
        return options

    @property
    def tls(self) -> bool:
        return self.ssl_certfile is not None

    def check_tls(self) -> None:
        """A certificate without its key, an unreadable file or a key that does not match: a ConfigError
        now, naming the variable, rather than workers that die one after the other."""
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ConfigError("SSL_CERTFILE and SSL_KEYFILE go together: set both (HTTPS) or neither (HTTP)")
        if not self.tls:
            return
        for name, path in (("SSL_CERTFILE", self.ssl_certfile), ("SSL_KEYFILE", self.ssl_keyfile)):
            if not path.is_file() or not os.access(path, os.R_OK):
                raise ConfigError(f"{name}={path}: not a readable file")
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self.ssl_certfile, self.ssl_keyfile,
                                                                     self.ssl_keyfile_password)
        except ssl.SSLError as error:
            raise ConfigError(f"SSL_CERTFILE={self.ssl_certfile} with SSL_KEYFILE={self.ssl_keyfile}: not a PEM "
                              f"certificate and its private key ({error.reason or error})") from None

    def bentoml_config(self) -> dict:
        """The ``@bentoml.service`` options these settings stand for."""
        config: dict = {"workers": self.workers, "logging": {"access": {"enabled": self.access_log}}}
        if not self.tracing:  # no span at all
            config["tracing"] = {"excluded_urls": [".*"]}
        if self.tls:
            config["ssl"] = {"enabled": True, "certfile": str(self.ssl_certfile), "keyfile": str(self.ssl_keyfile),
                             "keyfile_password": self.ssl_keyfile_password}
        return config


DEFAULT_WORKERS = 1
"""One worker unless told otherwise. Two workers answered 1.17x / 1.23x / 1.33x the requests per
second of one at concurrency 1 / 8 / 32 on the 2-core machine (README, Benchmarks), but each
worker keeps its own bar book: a short request is completed from stored bars only by a worker
that saw (or has since loaded) the bars before it. Set WORKERS=cpu_count when requests carry
all the bars the model needs and REDIS_URL shares the rate limit."""


@dataclass(frozen=True)
class ServiceSettings:
    """DESIGN §7, read once at start; a bad value stops the service with its name."""

    model_paths: tuple[Path, ...]
    """MODEL_PATH: model packages served as they are, one per model line (comma-separated); empty:
    the registry (MODEL_URI)."""
    model_uris: tuple[str, ...]
    """MODEL_URI: ``models:/<name>@<alias>`` of each model line served (comma-separated), each
    followed through its aliases (champion, shadow, A/B)."""
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
    """Intra-op threads of the model's runtime (torch or ONNX Runtime), per worker."""
    inference_backend: str
    """auto (the faster on this host, measured at load), torch or onnxruntime."""
    micro_batch_size: int
    """Most /predict requests run together in one forward pass."""
    micro_batch_wait_ms: float
    """How long a batch that already has company waits for more (a lone request never waits)."""
    log_predictions: bool
    shadow_alias: str | None
    capture_bars: bool
    """Keep every bar a caller sends (``bars``, source ``live``)."""
    allowed_symbols: frozenset[str] | None
    """ALLOWED_SYMBOLS; None: the symbols in the served model's lineage."""
    spool_dir: Path
    spool_max_bytes: int
    """Per writer (bars, predictions): beyond it, rows are lost (counted and alerted)."""
    upload_max_bytes: int
    upload_max_bars: int
    halt_poll_seconds: float
    """How often the kill switch reads the halts in force (a halt takes effect within this)."""
    halt_file: Path
    """The last known halts, kept across restarts while the database is away."""
    ab_alias: str | None
    """Registry alias of an A/B test's challenger (None: no A/B split)."""
    redis_url: str | None
    """REDIS_URL: the rate limit is shared by every worker through it; None: each worker limits alone."""
    server: ServerOptions

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "ServiceSettings":
        env = os.environ if env is None else env
        dev = env.get("SMC_DEV_MODE", "").lower() in {"1", "true", "yes"}
        settings = cls(
            model_paths=tuple(Path(p.strip()).expanduser().resolve()
                              for p in env.get("MODEL_PATH", "").split(",") if p.strip()),
            model_uris=_model_uris(env.get("MODEL_URI") or CHAMPION_URI),
            host=env.get("HOST", "127.0.0.1"),
            port=env_number(env, "PORT", 8000, int, 1, 65535),
            api_key=secret(env, "API_KEY"),
            admin_api_key=secret(env, "ADMIN_API_KEY"),
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
            inference_backend=_choice(env, "INFERENCE_BACKEND", "auto", BACKENDS),
            micro_batch_size=env_number(env, "MICRO_BATCH_SIZE", 16, int, 1, 1024),
            micro_batch_wait_ms=env_number(env, "MICRO_BATCH_WAIT_MS", 0.0, float, 0.0, 1000.0),
            log_predictions=env.get("LOG_PREDICTIONS", "true").lower() not in {"0", "false", "no"},
            shadow_alias=None if env.get("SHADOW_ALIAS", "shadow").lower() in {"", "off", "none"}
            else env.get("SHADOW_ALIAS", "shadow"),
            capture_bars=env_flag(env, "CAPTURE_BARS", True),
            allowed_symbols=_symbols(env.get("ALLOWED_SYMBOLS", "")),
            spool_dir=Path(env.get("SPOOL_DIR") or Settings.from_env(env).smc_home / "spool").expanduser().resolve(),
            spool_max_bytes=env_number(env, "SPOOL_MAX_MB", 256, int, 1, 1_000_000) * 1024 * 1024,
            upload_max_bytes=env_number(env, "UPLOAD_MAX_BYTES", 32_000_000, int, 1_000, 1_000_000_000),
            upload_max_bars=env_number(env, "UPLOAD_MAX_BARS", 200_000, int, 1, 10_000_000),
            halt_poll_seconds=env_number(env, "HALT_POLL_SECONDS", 1.0, float, 0.1, 60.0),
            halt_file=Path(env.get("HALT_STATE_FILE") or Settings.from_env(env).smc_home / "halts.json")
            .expanduser().resolve(),
            ab_alias=None if env.get("AB_ALIAS", "ab").lower() in {"", "off", "none"} else env.get("AB_ALIAS", "ab"),
            redis_url=secret(env, "REDIS_URL"),
            server=ServerOptions.from_env(env),
        )
        if not dev and not (settings.api_key and settings.admin_api_key):
            raise ConfigError("API_KEY and ADMIN_API_KEY must be set (or SMC_DEV_MODE=1 for a keyless local service)")
        if settings.api_key and settings.api_key == settings.admin_api_key:
            raise ConfigError("ADMIN_API_KEY must differ from API_KEY")
        return settings


class ModelLine:
    """One model line the service serves (DESIGN §6): a (timeframe, horizon) with its own model, from
    a package path or a registered model followed through its aliases, each in a slot of its own:
    the champion that answers, the shadow that is logged beside it, an A/B test's challenger."""

    def __init__(self, source: Path | str):
        self.source = source
        self.slot, self.shadow, self.ab = ModelSlot(), ModelSlot(), ModelSlot()
        self.followers: list[AliasFollower] = []

    @property
    def registered(self) -> tuple[str, str] | None:
        """(registered name, alias) of a registry line; None for a package path."""
        return None if isinstance(self.source, Path) else _parse_alias_uri(self.source)

    def serves(self, width_ns: int, horizon: str | None) -> bool:
        model = self.slot.current
        return (model is not None and model.terms.width_ns == width_ns
                and (horizon is None or model.terms.has_horizon(horizon)))

    def describe(self) -> dict:
        model = self.slot.current
        return {"source": str(self.source), "timeframe": model.terms.timeframe if model else None,
                "horizon": model.terms.horizon if model else None, "model_version": model.version if model else None,
                "shadow_version": self.shadow.current.version if self.shadow.current else None,
                "ab_version": self.ab.current.version if self.ab.current else None,
                "last_reload_error": self.slot.last_error}


class Runtime:
    def __init__(self, settings: ServiceSettings, metrics=None, database=None, worker: int | None = None,
                 signal_settings: SignalSettings | None = None):
        """``worker``: this process's index among the service's workers (BentoML's), which keeps its spool."""
        self.settings = settings
        self.signal_settings = SignalSettings.from_env() if signal_settings is None else signal_settings
        self.signals: SignalHub | None = None
        self.metrics = metrics
        self.worker = worker
        self.lines = [ModelLine(path) for path in settings.model_paths] or [ModelLine(uri)
                                                                           for uri in settings.model_uris]
        """The model lines served, in the configured order; a request goes to the first whose model
        serves its timeframe (and horizon, when it names one)."""
        self._ab_shares: dict[str, float] = {}
        self.halts = HaltSwitch(self._db, settings.halt_file, settings.halt_poll_seconds, on_change=self._halts_changed)
        self.limiter = rate_limiter(settings.rate_limit_per_second, settings.rate_limit_burst, settings.redis_url)
        self._database = database
        self._migrated = database is not None
        self._db_lock = threading.Lock()
        self.log: DurableWriter | None = None
        self.capture: DurableWriter | None = None
        self.capture_stats = CaptureStats()
        self.book = BarBook()
        self.started_at = time.time()
        self._lost_unreported = 0
        self._warmed: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._housekeeping = threading.Thread(target=self._keep_house, name="housekeeping", daemon=True)
        self.reload_notice = ReloadNotice(settings.spool_dir / "reload-request")
        """/admin/reload, passed on to the service's other workers (smc_core/serving/reload_notice.py)."""

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> "Runtime":
        """Load the first model (MODEL_PATH, else the registry alias) and start the background work."""
        _warm_up_features()
        self.halts.start()
        spool, limit = self.settings.spool_dir, self.settings.spool_max_bytes
        if self.settings.log_predictions:  # each worker its own spool: see claim_spool
            self.log = prediction_writer(self._db, claim_spool(spool / "predictions", limit, self.worker),
                                         on_drop=self._lost).start()
        if self.settings.capture_bars:
            self.capture = bar_writer(self._db, claim_spool(spool / "bars", limit, self.worker), self.capture_stats,
                                      on_conflict=self._conflicts, on_drop=self._lost).start()
        self.signals = SignalHub(self.signal_settings, spool, limit, on_drop=self._lost, worker=self.worker).start()
        if not self.settings.model_paths:
            from smc_core.registry import TrackingConfig, configure

            configure(TrackingConfig.from_settings(Settings.from_env()))
        for line in self.lines:
            self._start_line(line)
        self._halts_changed(self.halts.state)
        self._record_model()
        self._housekeeping.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.halts.stop()
        for line in self.lines:
            for follower in line.followers:
                follower.stop()
        for writer in (self.log, self.capture):
            if writer is not None:
                writer.stop(5)
        if self.signals is not None:
            self.signals.stop(5)

    def _start_line(self, line: ModelLine) -> None:
        """Load a line's package, or its registered champion, shadow and A/B challenger, and follow them."""
        if line.registered is None:
            line.slot.replace_with(lambda: self._load_path(line.source))
            return
        name, alias = line.registered
        line.followers.append(self._follow(line.slot, name, alias, on_swap=lambda ok: self._record_model(reloaded=ok)))
        if self.settings.shadow_alias:
            line.followers.append(self._follow(line.shadow, name, self.settings.shadow_alias, clear_when_unset=True))
        if self.settings.ab_alias:
            line.followers.append(self._follow(line.ab, name, self.settings.ab_alias, clear_when_unset=True,
                                               load=lambda version: self._load_ab(name, version)))

    @property
    def slot(self) -> ModelSlot:
        """The first line's champion slot (the only one when one line is served)."""
        return self.lines[0].slot

    @property
    def shadow(self) -> ModelSlot:
        return self.lines[0].shadow

    @property
    def ab(self) -> ModelSlot:
        return self.lines[0].ab

    @property
    def ready(self) -> bool:
        """Every configured line has a model to answer with."""
        return all(line.slot.current is not None for line in self.lines)

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

    def model(self, line: ModelLine | None = None) -> LoadedModel:
        line = line or self.lines[0]
        model = line.slot.current
        if model is None:
            raise RequestError(503, "no model loaded yet", {"last_error": line.slot.last_error,
                                                            "line": str(line.source)})
        return model

    def line_for(self, payload: object) -> ModelLine:
        """The line a /predict payload goes to: the first whose model serves its
        ``metadata.timeframe`` (and ``metadata.horizon``: ``h15`` or the full name, when given).
        With one line, that line: its own checks then name any mismatch."""
        if len(self.lines) == 1:
            return self.lines[0]
        metadata = payload.get("metadata") if isinstance(payload, dict) else None
        timeframe = metadata.get("timeframe") if isinstance(metadata, dict) else None
        horizon = metadata.get("horizon") if isinstance(metadata, dict) else None
        if not isinstance(timeframe, str):  # parse_request names what is wrong with the payload
            return next((line for line in self.lines if line.slot.current is not None), self.lines[0])
        if horizon is not None and not isinstance(horizon, str):
            raise _invalid("metadata.horizon", "a label horizon such as h15 (or its full name, h15_u1.5_d1.5)")
        try:
            width = timeframe_ns(timeframe)
        except ConfigError as error:
            raise _invalid("metadata.timeframe", str(error)) from None
        for line in self.lines:
            if line.serves(width, horizon):
                return line
        waiting = [str(line.source) for line in self.lines if line.slot.current is None]
        if waiting:
            raise RequestError(503, "no model loaded yet", {"lines_loading": waiting})
        served = ", ".join(f"{m.terms.timeframe} ({m.terms.horizon})" for m in (line.slot.current for line in self.lines))
        same_timeframe = any(line.serves(width, None) for line in self.lines)
        path = "metadata.horizon" if horizon is not None and same_timeframe else "metadata.timeframe"
        asked = f"{timeframe} ({horizon})" if horizon is not None else timeframe
        raise RequestError(422, "request does not match the model", {"errors": [{
            "path": path, "message": f"no model line serves {asked}: this service serves {served}"}]})

    def predict_payload(self, payload: object, started: float) -> dict:
        """One /predict request: its answer, or RequestError."""
        outcome = self.predict_many([(payload, started)])[0]
        if isinstance(outcome, RequestError):
            raise outcome
        return outcome

    def predict_many(self, requests: Sequence[tuple[object, float]]) -> list[dict | RequestError]:
        """Several /predict requests (payload, start time) with one forward pass per model: a
        micro-batch. Each is checked, routed (model line, A/B arm), its bars kept and its answer
        logged on its own, and a refused one never fails the others; the outcomes come back in order."""
        outcomes: list[dict | RequestError | None] = [None] * len(requests)
        groups: dict[str, tuple[LoadedModel, ModelLine, list[tuple[int, Prepared, float, str | None]]]] = {}
        for index, (payload, started) in enumerate(requests):
            try:
                line = self.line_for(payload)
                prepared, model, arm = self._prepare(payload, self.model(line), line)
            except RequestError as error:
                outcomes[index] = error
                continue
            groups.setdefault(model.version, (model, line, []))[2].append((index, prepared, started, arm))
        served: dict[int, tuple[ModelLine, LoadedModel, list[tuple[Prepared, str]]]] = {}
        for model, line, items in groups.values():
            policy = self.policy(model)
            for (index, prepared, started, arm), probabilities in zip(
                    items, _forward(model, [item[1] for item in items])):
                if isinstance(probabilities, RequestError):
                    outcomes[index] = probabilities
                    continue
                request_id = str(uuid.uuid4())
                prediction = answer(prepared, model, policy, probabilities, started, request_id)
                body = prediction.body
                body["bars_from_store"] = prepared.from_store
                if arm is not None:
                    body["arm"] = arm
                halt = self.halts.applying_to(prepared.request.metadata.symbol)
                if halt is not None:
                    halted_answer(body, halt)
                self._observe(prepared.request, model, prediction, shadow=False, arm=arm or CHAMPION_ARM,
                              halted=halt is not None)
                outcomes[index] = body
                champion = line.slot.current or model
                served.setdefault(id(line), (line, champion, []))[2].append((prepared, request_id))
        for line, champion, items in served.values():
            self._shadow_predict(line, champion, items)
        return outcomes

    def _prepare(self, payload: object, champion: LoadedModel, line: ModelLine
                 ) -> tuple[Prepared, LoadedModel, str | None]:
        """Validate a /predict payload against its line's champion, keep its bars, route it (A/B),
        complete it from the store when short, and compute its features."""
        request, columns, from_store, model, arm = self.validate(payload, champion, line)
        try:
            return prepare(request, columns, model.predictor.spec.sequence_length, from_store), model, arm
        except RequestError:
            raise
        except SmcError as error:  # bars the feature code refuses (it names the row)
            raise RequestError(422, "bars cannot be used", {"errors": [{"path": "context_bars",
                                                                        "message": str(error)}]}) from None
        except Exception as error:
            log.exception("feature computation failed")
            raise RequestError(500, "model failure", {"type": type(error).__name__}) from None

    def validate(self, payload: object, champion: LoadedModel, line: ModelLine | None = None
                 ) -> tuple[PredictRequest, dict, int, LoadedModel, str | None]:
        """The request, its bar columns (completed from stored bars when short), how many were
        stored, and the model and A/B arm it is routed to; its bars are kept even when it cannot
        be served."""
        request = parse_request(payload)
        sent = request.columns()
        terms = champion.terms
        check_against_model(request, sent["ts"].asi8, terms.timeframe, terms.width_ns, terms.symbols)
        symbol = request.metadata.symbol
        self._keep_bars(symbol, terms.timeframe, sent, "live:predict")
        model, arm = self._route(request, champion, line or self.lines[0])
        columns, from_store = self._complete(sent, symbol, terms.timeframe, model.required_bars)
        return request, columns, from_store, model, arm

    def _shadow_predict(self, line: ModelLine, model: LoadedModel, served: list[tuple[Prepared, str]]) -> None:
        """The line's shadow model on its served requests, in one forward pass; logged, never answered."""
        shadow = line.shadow.current
        if shadow is None or shadow.version == model.version or not served:
            return
        try:
            policy, started = self.policy(shadow), time.perf_counter()
            for (prepared, request_id), probabilities in zip(served, forward(shadow, [p for p, _ in served])):
                self._observe(prepared.request, shadow, answer(prepared, shadow, policy, probabilities, started,
                                                               request_id), shadow=True)
        except Exception:  # the shadow never affects the answer
            log.exception("shadow prediction failed")

    def upload_bars(self, payload: object) -> dict:
        """POST /bars: many bars of one series, validated like a file, stored in one transaction."""
        from smc_core.bars import parse_records

        if not isinstance(payload, dict):
            raise _invalid("body", "an object with symbol, timeframe and bars is required")
        symbol, timeframe, records = payload.get("symbol"), payload.get("timeframe"), payload.get("bars")
        try:
            check_symbol(symbol if isinstance(symbol, str) else "")
        except ConfigError as error:
            raise _invalid("symbol", str(error)) from None
        if self.settings.allowed_symbols is not None and symbol not in self.settings.allowed_symbols:
            raise _invalid("symbol", f"{symbol!r} is not in ALLOWED_SYMBOLS "
                                     f"({', '.join(sorted(self.settings.allowed_symbols))})")
        try:
            width = parse_timeframe(timeframe if isinstance(timeframe, str) else "")
        except ConfigError as error:
            raise _invalid("timeframe", str(error)) from None
        if not isinstance(records, list) or not records:
            raise _invalid("bars", "a non-empty list of bars (time_utc, o, h, l, c, volume, optional delta)")
        if len(records) > self.settings.upload_max_bars:
            raise RequestError(413, "too many bars", {"max_bars": self.settings.upload_max_bars,
                                                      "received": len(records)})
        parsed = parse_records(records, "bars", width)
        if parsed.rejections:
            raise RequestError(422, "bars rejected; nothing was stored", {
                "rejected": len(parsed.rejections),
                "errors": [{"path": f"bars[{r.line}]", "message": r.reason} for r in parsed.rejections[:100]]})
        timeframe = format_timeframe(width)
        try:
            with self._db().connection(timeout=WRITE_TIMEOUT_S) as conn:
                counts = write_live_bars(conn, symbol, timeframe, parsed.frame, "live:upload")
        except Exception as error:
            log.warning("POST /bars: database unavailable: %s", error)
            raise RequestError(503, "database unavailable; nothing was stored, send the bars again",
                               {"reason": type(error).__name__}) from None
        try:
            with self._db().connection(timeout=WRITE_TIMEOUT_S) as conn:
                refresh_resampled(conn, timeframe, parsed.frame["ts"].iloc[0], parsed.frame["ts"].iloc[-1])
        except Exception as error:
            log.warning("POST /bars: bars stored, resampled timeframes not refreshed: %s", error)
            raise RequestError(503, "the bars were stored but the resampled timeframes were not refreshed; "
                               "send the bars again (stored ones come back unchanged)",
                               {"reason": type(error).__name__, "ingest_id": counts.ingest_id}) from None
        frame = parsed.frame
        self.book.observe(symbol, timeframe, pd.DatetimeIndex(frame["ts"]).as_unit("ns").asi8,
                       bar_values(*(frame[c].to_numpy() for c in ("open", "high", "low", "close", "volume",
                                                                    "delta"))))
        if counts.conflicting:
            self._conflicts(counts.conflicting)
        return {"symbol": symbol, "timeframe": timeframe, "received": len(records), "inserted": counts.inserted,
                "unchanged": counts.unchanged, "conflicting": counts.conflicting, "ingest_id": counts.ingest_id,
                "first_bar": frame["ts"].iloc[0].isoformat(), "last_bar": frame["ts"].iloc[-1].isoformat()}

    def admin_halt(self, payload: object) -> dict:
        """POST /admin/halt ``{"symbols": [...] (absent or empty: all), "reason": "..."}``: every answer
        for those symbols is ``skip`` from now on, in this process at once and in every service
        following the database within HALT_POLL_SECONDS."""
        symbols, reason = _halt_request(payload)
        persisted = self.halts.halt(symbols, reason, "admin")
        return {"status": "halted", "persisted": persisted, "halts": self.halts.health()}

    def admin_resume(self, payload: object) -> dict:
        """POST /admin/resume ``{"symbols": [...] (absent or empty: every halt), "reason": "..."}``."""
        symbols, reason = _halt_request(payload)
        try:
            self.halts.resume(symbols, reason, "admin")
        except Exception as error:
            log.warning("resume refused, the database is unavailable: %s", error)
            raise RequestError(503, "database unavailable; a resume needs it, the halts stay in force",
                               {"reason": type(error).__name__}) from None
        return {"status": "resumed", "halts": self.halts.health()}

    def read(self, query):
        """``query(connection)`` on a pooled connection (the signal history); 503 when the database is away."""
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            with self._db().connection(timeout=WRITE_TIMEOUT_S) as conn:
                return query(conn)
        except (psycopg.OperationalError, PoolTimeout, SmcError) as error:
            log.warning("signal history: database unavailable: %s", error)
            raise RequestError(503, "database unavailable", {"reason": type(error).__name__}) from None

    def policy(self, model: LoadedModel) -> PolicyConfig:
        threshold = self.settings.confidence_threshold
        if threshold is None:
            threshold = model.entry_threshold if model.entry_threshold is not None else 0.55
        return PolicyConfig(half_threshold=threshold, full_threshold=max(threshold, self.settings.full_threshold))

    def reload(self, announce: bool = True) -> dict:
        """Admin: load every line's configured model again (or its alias's current version), then
        swap; a line whose new model is refused keeps its previous one. ``announce``: tell the
        service's other workers to do the same (they reload with False)."""
        refused = []
        for line in self.lines:
            if line.registered is None:
                ok = line.slot.replace_with(lambda: self._load_path(line.source))
            else:
                name, alias = line.registered
                version = _alias_version(name, alias)
                if version is None:
                    raise RequestError(409, f"the registry has no {name}@{alias}", {})
                ok = line.slot.replace_with(lambda: self._load_registered(name, version))
            self._record_model(reloaded=ok)
            if not ok:
                refused.append(line)
        if announce:
            self.reload_notice.announce()
        if refused:
            line = refused[0]
            raise RequestError(409, "reload refused; the previous model keeps serving",
                               {"reason": line.slot.last_error, "line": str(line.source),
                                "serving": line.slot.current.version if line.slot.current else None})
        return {"status": "reloaded", "model_version": self.slot.current.version,
                "lines": [line.slot.current.version for line in self.lines]}

    def health(self) -> dict:
        current = self.slot.current
        writers = {"prediction_log": self.log, "bar_capture": self.capture}
        storage = {name: writer.health() if writer else None for name, writer in writers.items()}
        if storage["bar_capture"] is not None:
            storage["bar_capture"].update(inserted=self.capture_stats.inserted,
                                          unchanged=self.capture_stats.unchanged,
                                          conflicting=self.capture_stats.conflicting)
        publisher = self.signals.publisher if self.signals is not None else None
        lost = sum(w.stats.dropped for w in (*writers.values(), publisher) if w)
        spooled = sum(w.spool.rows for w in (*writers.values(), publisher) if w)
        return {"status": "ok" if self.ready else "loading", "model_loaded": current is not None,
                "model_version": current.version if current else None,
                "inference_backend": current.inference.backend if current else None,
                "last_reload_error": self.slot.last_error,
                "shadow_version": self.shadow.current.version if self.shadow.current else None,
                "ab_version": self.ab.current.version if self.ab.current else None,
                "lines": [line.describe() for line in self.lines], "halts": self.halts.health(),
                "storage": "losing rows" if lost else "spooling" if spooled else "ok",
                **storage, "worker": self.worker, "rate_limit": self._rate_limit_scope(),
                "signals": self.signals.health() if self.signals is not None else None,
                "uptime_s": round(time.time() - self.started_at, 1)}

    def model_info(self) -> dict:
        """The first line's model, and every line served (``lines``: each one's model as here)."""
        first = self._model_info(self.lines[0])
        others = [self._model_info(line) for line in self.lines[1:] if line.slot.current is not None]
        return {**first, "lines": [first, *others]}

    def _model_info(self, line: ModelLine) -> dict:
        model = self.model(line)
        spec = model.predictor.spec
        policy = self.policy(model)
        terms = model.terms
        return {"model_version": model.version, "lineage": model.predictor.package.lineage,
                "required_bars": spec.required_rows, "sequence_length": spec.sequence_length,
                "lookback": spec.lookback, "feature_set_version": spec.feature_set_version,
                "features": list(spec.feature_names), "labels": list(model.predictor.labels),
                "temperature": model.predictor.temperature,
                "timeframe": terms.timeframe, "horizon": terms.horizon, "source": str(line.source),
                "symbols": sorted(terms.symbols),
                "risk_terms": {"stop_atr": terms.risk.stop_atr, "target_atr": terms.risk.target_atr,
                               "max_holding_bars": terms.risk.max_holding_bars, "tick_size": terms.risk.tick_size},
                "thresholds": {"half_size": policy.half_threshold, "full_size": policy.full_threshold},
                "inference": asdict(model.inference),
                "loaded_at": datetime.fromtimestamp(model.loaded_at, timezone.utc).isoformat(),
                "ab_test": self._ab_info(line, model)}

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every received bar and logged prediction so far is in the database (and every signal in Redis)."""
        publisher = self.signals.publisher if self.signals is not None else None
        return all(writer.flush(timeout) for writer in (self.log, self.capture, publisher) if writer is not None)

    # --- internals ---------------------------------------------------------------------

    def _complete(self, sent: dict, symbol: str, timeframe: str, required: int) -> tuple[dict, int]:
        """The request's bars, preceded by stored bars of the same series when it has too few."""
        have = len(sent["ts"])
        if have >= required:
            return sent, 0
        stored = self.book.before(symbol, timeframe, int(sent["ts"].asi8[0]), required - have)
        if len(stored) < required - have:
            raise too_few_bars(have, len(stored), required)
        values = np.array([v for _, v in stored], dtype="float64")  # delta None → NaN
        stamps = pd.to_datetime(np.array([ts for ts, _ in stored], dtype="int64"), unit="ns", utc=True)
        columns = {"ts": stamps.append(sent["ts"])}
        for i, name in enumerate(("open", "high", "low", "close", "volume", "delta")):
            columns[name] = np.concatenate([values[:, i], sent[name]])
        return columns, len(stored)

    def _keep_bars(self, symbol: str, timeframe: str, sent: dict, source: str) -> None:
        """Remember the request's bars; the ones the store may not have go to the bar writer."""
        stamps = sent["ts"].asi8
        values = bar_values(sent["open"], sent["high"], sent["low"], sent["close"], sent["volume"], sent["delta"])
        needed = self.book.observe(symbol, timeframe, stamps, values)
        if self.capture is not None:
            for i in needed:
                self.capture.submit(LiveBar(symbol, timeframe, int(stamps[i]), *values[i], source))

    def _db(self):
        """The database, made once and migrated once (a failed migration is retried by the next
        caller; the halt switch polls every second and must not open a pool per attempt)."""
        with self._db_lock:
            if self._database is None:
                from smc_core.db import Database

                self._database = Database.from_settings(Settings.from_env())
            if not self._migrated:
                from smc_core.migrations import migrate

                migrate(self._database)
                self._migrated = True
        return self._database

    def _load_path(self, path: Path) -> LoadedModel:
        return load_model(path, f"local/{path.name}", threads=self.settings.torch_threads,
                          allowed_symbols=self.settings.allowed_symbols, backend=self.settings.inference_backend)

    def _follow(self, slot: ModelSlot, name: str, alias: str, clear_when_unset: bool = False,
                load=None, on_swap=None) -> AliasFollower:
        """Load ``name@alias`` into ``slot`` now, then keep following the alias in the background."""
        load = load or (lambda version: self._load_registered(name, version))

        def resolve() -> str | None:  # named as LoadedModel.version, so an unchanged alias is not reloaded
            version = _alias_version(name, alias)
            return None if version is None else f"{name}/{version}"

        follower = AliasFollower(slot, resolve, lambda served: load(served.rsplit("/", 1)[1]),
                                 self.settings.poll_seconds, clear_when_unset)
        follower.check()
        follower.on_swap = on_swap  # swaps after the first load count as reloads
        follower.start()
        return follower

    def _load_registered(self, name: str, version: str) -> LoadedModel:
        from smc_core.promotion import entry_threshold_of, risk_terms_of
        from smc_core.registry import package_path

        return load_model(package_path(version, name=name), f"{name}/{version}", entry_threshold_of(version, name),
                          threads=self.settings.torch_threads, allowed_symbols=self.settings.allowed_symbols,
                          risk=risk_terms_of(version, name), backend=self.settings.inference_backend)

    def _observe(self, request: PredictRequest, model: LoadedModel, prediction, shadow: bool,
                 arm: str = CHAMPION_ARM, halted: bool = False) -> None:
        body = prediction.body
        if self.metrics is not None and not shadow:
            self.metrics.prediction(body, prediction.mismatches)
        now = datetime.now(timezone.utc)
        if self.signals is not None and not shadow:
            self.signals.served(signal_of(body["request_id"], request.metadata.symbol, model.terms.timeframe,
                                          request.current_bar.time_utc, now, body))
        if self.log is not None:
            probabilities = body["probabilities"]
            self.log.submit(prediction_row({
                "ts": request.current_bar.time_utc, "request_id": body["request_id"], "shadow": shadow,
                "logged_at": now, "symbol": request.metadata.symbol,
                "timeframe": model.terms.timeframe, "model_version": model.version, "label": body["label"],
                "raw_label": body["raw_label"], "confidence": body["confidence"], "p_long": probabilities["long"],
                "p_short": probabilities["short"], "p_skip": probabilities["skip"],
                "position_size": body["position_size"], "latency_ms": body["processing_time_ms"],
                "features": prediction.features.astype(np.float64), "feature_set": CATALOGUE.version,
                "arm": SHADOW_ARM if shadow else arm, "halted": halted, "risk": body["risk"]}))

    # --- safety: the kill switch and the A/B split ------------------------------------------

    def _halts_changed(self, state) -> None:
        if self.metrics is not None and hasattr(self.metrics, "halts"):
            self.metrics.halts(state)

    def _route(self, request: PredictRequest, champion: LoadedModel, line: ModelLine
               ) -> tuple[LoadedModel, str | None]:
        """The line's A/B split (``smc_core.ab_test``): the challenger answers the bars whose bucket
        falls below its share; arm None when no test runs. A request the challenger cannot serve
        (its symbols, timeframe) stays with the champion."""
        challenger = line.ab.current
        if challenger is None or challenger.version == champion.version:
            return champion, None
        metadata = request.metadata
        if metadata.symbol not in challenger.terms.symbols or challenger.terms.timeframe != champion.terms.timeframe:
            return champion, CHAMPION_ARM
        bucket = arm_bucket(metadata.symbol, champion.terms.timeframe, request.current_bar.time_utc)
        if bucket < self._ab_shares.get(challenger.version, 0.0):
            return challenger, CHALLENGER_ARM
        return champion, CHAMPION_ARM

    def _load_ab(self, name: str, version: str) -> LoadedModel:
        from smc_core.promotion import ab_share_of

        share = ab_share_of(version, name)
        if share is None:
            raise SmcError(f"{name}/{version} has the A/B alias but no traffic share tag (start the test with "
                           "smc_core.promotion.start_ab_test)")
        model = self._load_registered(name, version)
        self._ab_shares[model.version] = share
        return model

    def _ab_info(self, line: ModelLine, champion: LoadedModel) -> dict | None:
        from smc_core.ab_test import ASSIGNMENT

        challenger = line.ab.current
        if challenger is None or challenger.version == champion.version:
            return None
        return {"champion": champion.version, "challenger": challenger.version,
                "challenger_share": self._ab_shares.get(challenger.version, 0.0), "assignment": ASSIGNMENT}

    def _lost(self, count: int, reason: str) -> None:
        self._lost_unreported += count
        if self.metrics is not None:
            self.metrics.rows_lost(count)

    def _conflicts(self, count: int) -> None:
        if self.metrics is not None:
            self.metrics.bar_conflicts(count)

    def _keep_house(self) -> None:
        """Every second: reload when another worker received /admin/reload; warm the bar book for the
        served series, report lost rows as an alert."""
        while not self._stop.wait(1.0):
            if self.reload_notice.pending():
                try:
                    self.reload(announce=False)
                    log.info("reloaded: another worker of this service received /admin/reload")
                except Exception as error:  # refused (409) or the registry away: this worker keeps its model
                    log.warning("reload asked by another worker failed, the current model keeps serving: %s %s",
                                error, getattr(error, "details", ""))
            try:
                self._warm_book()
                self._report_losses()
            except Exception as error:  # the database may be away; try again next round
                log.debug("housekeeping: %s", error)

    def _warm_book(self) -> None:
        for model in (line.slot.current for line in self.lines):
            if model is None:
                continue
            for symbol in sorted(model.terms.symbols):
                key = (symbol, model.terms.timeframe)
                if key not in self._warmed:
                    loaded = load_recent(self._db(), self.book, symbol, model.terms.timeframe, 4 * model.required_bars)
                    self._warmed.add(key)
                    log.info("bar book: %d stored %s %s bars loaded", loaded, symbol, model.terms.timeframe)

    def _report_losses(self) -> None:
        lost = self._lost_unreported
        if not lost:
            return
        from smc_core.alerts import raise_alert

        raise_alert(self._db(), "rows_lost", "service storage",
                    f"{lost} received bar(s), prediction row(s) or signal(s) were lost: the spool under "
                    f"{self.settings.spool_dir} was full (SPOOL_MAX_MB) while the database (or Redis) was "
                    f"unavailable",
                    {"rows": lost, "spool_dir": str(self.settings.spool_dir)}, severity="error")
        self._lost_unreported -= lost

    def _rate_limit_scope(self) -> str:
        if self.settings.redis_url is None:
            return "per worker"
        return "per worker, Redis unavailable" if self.limiter.outage else "shared"

    def _record_model(self, reloaded: bool | None = None) -> None:
        if self.metrics is not None:
            self.metrics.model([line.slot.current.version for line in self.lines if line.slot.current], reloaded)


def _forward(model: LoadedModel, batch: list[Prepared]) -> list:
    """Probabilities per prepared request, one forward pass for all; when it fails, each is tried
    alone, so a request that breaks the model gets its 500 and the others their answers."""
    if not batch:
        return []
    try:
        return list(forward(model, batch))
    except Exception:
        if len(batch) == 1:
            log.exception("prediction failed")
            return [RequestError(500, "model failure", {"type": "forward"})]
    return [outcome for prepared in batch for outcome in _forward(model, [prepared])]


def _choice(env, name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name, default).strip().lower() or default
    if value not in allowed:
        raise ConfigError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
    return value


def _invalid(path: str, message: str) -> RequestError:
    return RequestError(422, "request validation failed", {"errors": [{"path": path, "message": message}]})


def _halt_request(payload: object) -> tuple[list[str] | None, str]:
    from smc_core.safety import scopes_of

    if not isinstance(payload, dict):
        raise _invalid("body", 'an object {"symbols": [...], "reason": "..."} is required (no symbols: all)')
    symbols, reason = payload.get("symbols"), payload.get("reason")
    if symbols is not None and (not isinstance(symbols, list) or not all(isinstance(x, str) for x in symbols)):
        raise _invalid("symbols", "a list of symbols (absent or empty: every symbol)")
    if not isinstance(reason, str) or not reason.strip():
        raise _invalid("reason", "say why (it is recorded with the halt)")
    try:
        scopes_of(symbols)
    except ConfigError as error:
        raise _invalid("symbols", str(error)) from None
    return symbols or None, reason.strip()


def _symbols(text: str) -> frozenset[str] | None:
    names = frozenset(part.strip() for part in text.split(",") if part.strip())
    for name in names:
        check_symbol(name)
    return names or None


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
    """orjson first (several times faster on bar lists); the standard parser for what orjson
    refuses but JSON as Python reads it accepts (NaN, huge integers), so that such a body gets
    the 422 naming its field rather than a 400, and for the error message of a malformed one."""
    if len(body) > limit:
        raise RequestError(413, "request body too large", {"limit_bytes": limit, "received_bytes": len(body)})
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RequestError(400, "malformed JSON", {"message": str(error)}) from None



def _model_uris(text: str) -> tuple[str, ...]:
    """MODEL_URI's comma-separated ``models:/<name>@<alias>``, each checked."""
    uris = tuple(part.strip() for part in text.split(",") if part.strip())
    for uri in uris:
        _parse_alias_uri(uri)
    return uris


def _parse_alias_uri(uri: str) -> tuple[str, str]:
    """``models:/<name>@<alias>`` → (name, alias)."""
    if not uri.startswith("models:/") or "@" not in uri:
        raise ConfigError(f"MODEL_URI {uri!r} must look like models:/<name>@<alias> (e.g. {CHAMPION_URI})")
    name, alias = uri.removeprefix("models:/").split("@", 1)
    return name, alias


def _alias_version(name: str, alias: str) -> str | None:
    from smc_core.registry import alias_version

    return alias_version(alias, name=name)
