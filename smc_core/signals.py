"""The signal stream: every served signal on a Redis Stream, and consumers that handle each once.

Why Redis Streams with consumer groups: a desk runs several strategies, a dashboard, an
alerting bot; each is a consumer group that reads every signal at its own pace, and inside a
group several consumers share the work. Redis keeps a delivered message *pending* until it is
acknowledged, so a consumer that dies loses nothing: another one reclaims what it left
(``XAUTOCLAIM`` after ``claim_idle_ms``).

Exactly once, stated precisely. The stream delivers at least once: a message is acknowledged
only after its handling committed, and the publisher may append a signal twice (a batch whose
reply was lost is sent again). Handling is made idempotent by the *inbox*: the signal's
``request_id`` is inserted into ``signal_inbox (consumer_group, request_id)`` in the same
PostgreSQL transaction as the handler's own writes (the handler receives that connection); a
redelivered or repeated signal finds its id there and the handler is not called again. So
every effect the handler makes in that transaction happens exactly once per (group,
request_id), across crashes and restarts. An effect outside it (an order sent to a broker, a
chat message) is at least once: a crash after the effect and before the commit repeats it;
such a handler must itself be idempotent (e.g. the request id as the client order id).

Message format (one entry per signal): ``request_id``, ``symbol``, ``timeframe`` (to route
without parsing) and ``signal``, the JSON object. Retention is capped by length
(``MAXLEN ~``) and age (``XTRIM MINID ~``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from smc_core.errors import ConfigError
from smc_core.settings import env_number, secret

log = logging.getLogger("smc.signals")

SIGNAL_FIELDS = ("request_id", "symbol", "timeframe", "bar_time", "label", "raw_label", "confidence", "probabilities",
                 "position_size", "risk", "model_version", "served_at")
"""What a signal carries, in the stream, on the WebSocket and from ``GET /signals``."""


@dataclass(frozen=True)
class SignalSettings:
    """Where signals go and how long they are kept (DESIGN §7: REDIS_URL unset → stream off)."""

    redis_url: str | None = None
    stream: str = "smc:signals"
    max_length: int = 1_000_000
    """Entries kept at most (trimmed approximately, ``MAXLEN ~``)."""
    retention_hours: float = 168.0
    """Entries older than this are trimmed (``MINID ~``); 0 keeps them until the length cap."""
    websocket_buffer: int = 256
    """Signals a WebSocket client may have unread before it is disconnected as too slow."""
    claim_idle_ms: int = 30_000
    """A consumer's pending message idle this long is taken over by another consumer."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "SignalSettings":
        env = os.environ if env is None else env
        default = cls()
        stream = env.get("SIGNALS_STREAM", default.stream).strip()
        if not stream:
            raise ConfigError("SIGNALS_STREAM must not be empty")
        return cls(
            redis_url=secret(env, "REDIS_URL"),
            stream=stream,
            max_length=env_number(env, "SIGNALS_MAXLEN", default.max_length, int, 100, 10**9),
            retention_hours=env_number(env, "SIGNALS_RETENTION_HOURS", default.retention_hours, float, 0.0, 24 * 3650),
            websocket_buffer=env_number(env, "SIGNALS_WS_BUFFER", default.websocket_buffer, int, 1, 1_000_000),
            claim_idle_ms=env_number(env, "SIGNALS_CLAIM_IDLE_MS", default.claim_idle_ms, int, 100, 86_400_000),
        )


def connect(url: str, timeout: float = 2.0):
    """A Redis client that fails fast: callers (the publisher's thread, a consumer loop) retry themselves."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                retry=Retry(NoBackoff(), 0), decode_responses=True, health_check_interval=0,
                                socket_keepalive=True)


def stream_entry(signal: dict) -> dict[str, str]:
    return {"request_id": signal["request_id"], "symbol": signal["symbol"], "timeframe": signal["timeframe"],
            "signal": json.dumps(signal, separators=(",", ":"))}


def append_signals(client, settings: SignalSettings, signals: list[dict]) -> None:
    """Append ``signals`` in order in one MULTI/EXEC (all or none), then trim by age."""
    pipe = client.pipeline(transaction=True)
    for signal in signals:
        pipe.xadd(settings.stream, stream_entry(signal), maxlen=settings.max_length, approximate=True)
    if settings.retention_hours > 0:
        oldest_ms = int(time.time() * 1000 - settings.retention_hours * 3_600_000)
        pipe.xtrim(settings.stream, minid=f"{max(oldest_ms, 0)}-0", approximate=True)
    pipe.execute()


def permanent(error: Exception) -> bool:
    """Redis refusing the stream key for good (another type under that name); anything else
    (away, loading, out of memory, unable to persist) passes and is retried."""
    import redis

    return isinstance(error, redis.ResponseError) and str(error).startswith("WRONGTYPE")


class SignalError(ValueError):
    """A stream entry that is not a signal (it is moved to the dead-letter stream, never retried)."""


def parse_entry(fields: dict) -> dict:
    try:
        signal = json.loads(fields["signal"])
    except (KeyError, TypeError, json.JSONDecodeError) as error:
        raise SignalError(f"entry without a JSON `signal` field ({type(error).__name__})") from None
    if not isinstance(signal, dict) or not isinstance(signal.get("request_id"), str) or not signal["request_id"]:
        raise SignalError("signal without a request_id")
    return signal


# --- consumers -----------------------------------------------------------------------------

Handler = Callable[[dict, object], None]
"""``handler(signal, connection)``: its database writes on ``connection`` commit with the inbox row."""


class PostgresInbox:
    """The consumer group's record of handled signals, in PostgreSQL (``signal_inbox``).

    One transaction per batch: insert the batch's request ids (``ON CONFLICT DO NOTHING
    RETURNING`` gives the new ones), call the handler for the new ones only, commit."""

    def __init__(self, database, group: str):
        from smc_core.serving.prediction_log import direct_connection

        self.group = group
        self._connection = direct_connection(database)

    def handle(self, signals: list[tuple[str, dict]], handler: Handler | None) -> list[str]:
        """Store and handle ``(stream_id, signal)`` pairs in one transaction; the request ids that were new."""
        with self._connection.transaction() as conn:
            rows = conn.execute(
                """INSERT INTO signal_inbox (consumer_group, request_id, stream_id, bar_time, symbol, timeframe,
                                             model_version, signal)
                   SELECT %s, r.request_id, r.stream_id, r.bar_time, r.symbol, r.timeframe, r.model_version, r.signal
                   FROM jsonb_to_recordset(%s::jsonb) AS r(request_id text, stream_id text, bar_time timestamptz,
                        symbol text, timeframe text, model_version text, signal jsonb)
                   ON CONFLICT (consumer_group, request_id) DO NOTHING RETURNING request_id""",
                (self.group, json.dumps([{"request_id": s["request_id"], "stream_id": stream_id,
                                          "bar_time": s.get("bar_time"), "symbol": s.get("symbol"),
                                          "timeframe": s.get("timeframe"), "model_version": s.get("model_version"),
                                          "signal": s} for stream_id, s in signals]))).fetchall()
            new = {row[0] for row in rows}
            if handler is not None:
                for _, signal in signals:
                    if signal["request_id"] in new:
                        new.discard(signal["request_id"])  # a signal repeated inside one batch: handled once
                        handler(signal, conn)
            return [row[0] for row in rows]


@dataclass
class ConsumerStats:
    handled: int = 0
    """Signals handled (new request ids)."""
    duplicates: int = 0
    """Deliveries whose request id the inbox already had (redelivered or published twice): acknowledged, not handled."""
    reclaimed: int = 0
    """Messages taken over from a consumer that stopped acknowledging."""
    dead: int = 0
    """Messages moved to the dead-letter stream: not a signal, or the handler failed max_deliveries times."""


class SignalConsumer:
    """One consumer of a consumer group: read, handle through the inbox, acknowledge.

    Order of work per round: this consumer's own pending messages (left by its previous life
    under the same name), then messages idle longer than ``claim_idle_ms`` in any consumer
    (``XAUTOCLAIM``), then new ones (``XREADGROUP >``, blocking up to ``block_ms``). A handler
    failure leaves the batch unacknowledged; each message is then retried alone, and one that
    fails ``max_deliveries`` times goes to ``<stream>:dead`` with the error."""

    def __init__(self, client, settings: SignalSettings, group: str, inbox: PostgresInbox, *,
                 consumer: str | None = None, handler: Handler | None = None, batch: int = 200,
                 block_ms: int = 1000, max_deliveries: int = 5, retry_seconds: float = 1.0):
        self.client, self.settings, self.group, self.inbox = client, settings, group, inbox
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.handler, self.batch, self.block_ms = handler, batch, block_ms
        self.max_deliveries, self.retry_seconds = max_deliveries, retry_seconds
        self.stats = ConsumerStats()
        self._own_pending = True  # after a start, first finish what this name left unacknowledged
        self._claim_from = "0-0"
        self._next_claim = 0.0

    @property
    def dead_letters(self) -> str:
        return self.settings.stream + ":dead"

    def ensure_group(self) -> None:
        """Create the group at the start of the stream (every retained signal) unless it exists."""
        import redis

        try:
            self.client.xgroup_create(self.settings.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def run(self, stop: threading.Event | None = None, limit: int | None = None,
            idle_exit_s: float | None = None) -> ConsumerStats:
        """Consume until ``stop`` is set, ``limit`` signals were handled, or nothing came for ``idle_exit_s``.

        Redis or the database away: logged once, retried every ``retry_seconds``; nothing is acknowledged."""
        stop = stop or threading.Event()
        ready, away, last_message = False, None, time.monotonic()
        while not stop.is_set() and (limit is None or self.stats.handled < limit):
            try:
                if not ready:
                    self.ensure_group()
                    ready = True
                if self.poll():
                    last_message = time.monotonic()
                elif idle_exit_s is not None and time.monotonic() - last_message >= idle_exit_s:
                    break
                if away is not None:
                    log.warning("signal consumer %s: back after %s", self.consumer, away)
                    away = None
            except _unavailable_errors() as error:
                if away is None:
                    log.warning("signal consumer %s: %s: %s; retrying every %.1f s", self.consumer,
                                type(error).__name__, str(error).strip()[:200], self.retry_seconds)
                away = type(error).__name__
                ready = False
                stop.wait(self.retry_seconds)
        return self.stats

    def poll(self) -> int:
        """One round; the number of messages processed (handled, duplicate or dead)."""
        stream = self.settings.stream
        if self._own_pending:
            entries = self._entries(self.client.xreadgroup(self.group, self.consumer, {stream: "0"}, count=self.batch))
            if entries:
                return self._process(entries)
            self._own_pending = False
        if time.monotonic() >= self._next_claim:
            self._claim_from, claimed, _ = self.client.xautoclaim(stream, self.group, self.consumer,
                                                                  self.settings.claim_idle_ms, self._claim_from,
                                                                  count=self.batch)
            claimed = [(i, f) for i, f in claimed if f]  # entries trimmed away meanwhile come back empty
            if self._claim_from in ("0-0", 0, "0"):  # scanned the whole pending list: look again a bit later
                self._next_claim = time.monotonic() + min(self.settings.claim_idle_ms / 1000, 5.0)
            if claimed:
                self.stats.reclaimed += len(claimed)
                log.info("signal consumer %s: reclaimed %d pending message(s)", self.consumer, len(claimed))
                return self._process(claimed)
        entries = self._entries(self.client.xreadgroup(self.group, self.consumer, {stream: ">"}, count=self.batch,
                                                       block=self.block_ms))
        return self._process(entries) if entries else 0

    @staticmethod
    def _entries(response) -> list[tuple[str, dict]]:
        if not response:
            return []
        if isinstance(response, dict):  # RESP3 shape
            return [(i, f) for messages in response.values() for i, f in (messages[0] if messages else [])]
        return [(i, f) for _, messages in response for i, f in messages]

    def _process(self, entries: list[tuple[str, dict]]) -> int:
        signals, dead = [], []
        for stream_id, fields in entries:
            try:
                signals.append((stream_id, parse_entry(fields)))
            except SignalError as error:
                dead.append((stream_id, fields, str(error)))
        for stream_id, fields, reason in dead:
            self._bury(stream_id, fields, reason)
        if signals:
            try:
                self._commit(signals)
            except Exception as error:
                if isinstance(error, _unavailable_errors()):
                    raise
                for pair in signals:  # find the one the handler refuses; the others go through
                    self._one(pair, error)
        return len(entries)

    def _commit(self, signals: list[tuple[str, dict]]) -> None:
        new = self.inbox.handle(signals, self.handler)
        self.client.xack(self.settings.stream, self.group, *[stream_id for stream_id, _ in signals])
        self.stats.handled += len(new)
        self.stats.duplicates += len(signals) - len(new)

    def _one(self, pair: tuple[str, dict], batch_error: Exception) -> None:
        stream_id, signal = pair
        try:
            self._commit([pair])
        except Exception as error:
            if isinstance(error, _unavailable_errors()):
                raise
            pending = self.client.xpending_range(self.settings.stream, self.group, min=stream_id, max=stream_id,
                                                 count=1)
            deliveries = pending[0]["times_delivered"] if pending else self.max_deliveries
            if deliveries >= self.max_deliveries:
                self._bury(stream_id, {"signal": json.dumps(signal)}, f"handler failed {deliveries} times: "
                                                                       f"{type(error).__name__}: {error}")
            else:
                log.warning("signal consumer %s: handler failed on %s (delivery %d of %d): %s", self.consumer,
                            signal["request_id"], deliveries, self.max_deliveries, error)
                self._own_pending = True  # retried from this consumer's pending list next round

    def _bury(self, stream_id: str, fields: dict, reason: str) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(self.dead_letters, {**{k: str(v) for k, v in fields.items()}, "stream_id": stream_id,
                                      "group": self.group, "reason": reason[:500]},
                  maxlen=self.settings.max_length, approximate=True)
        pipe.xack(self.settings.stream, self.group, stream_id)
        pipe.execute()
        self.stats.dead += 1
        log.error("signal consumer %s: message %s moved to %s: %s", self.consumer, stream_id, self.dead_letters, reason)


def _unavailable_errors() -> tuple[type, ...]:
    import psycopg
    import redis

    return (redis.ConnectionError, redis.TimeoutError, OSError, psycopg.OperationalError)


def inbox_request_ids(database, group: str) -> list[str]:
    """Every request id a group's inbox holds, one per handled signal (for audits and tests)."""
    with database.connection() as conn:
        return [row[0] for row in conn.execute("SELECT request_id FROM signal_inbox WHERE consumer_group = %s",
                                                (group,))]


def signal_of(request_id: str, symbol: str, timeframe: str, bar_time, served_at, body: dict) -> dict:
    """The signal of one served answer (SIGNAL_FIELDS), JSON-ready."""
    return {"request_id": request_id, "symbol": symbol, "timeframe": timeframe, "bar_time": bar_time.isoformat(),
            "label": body["label"], "raw_label": body["raw_label"], "confidence": body["confidence"],
            "probabilities": body["probabilities"], "position_size": body["position_size"], "risk": body["risk"],
            "model_version": body["model_version"], "served_at": served_at.isoformat()}


def matches(signal: dict, symbols: Iterable[str] | None, timeframes: Iterable[str] | None) -> bool:
    return (not symbols or signal["symbol"] in symbols) and (not timeframes or signal["timeframe"] in timeframes)
