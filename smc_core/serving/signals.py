"""Served signals leave the process: the Redis Stream publisher and the WebSocket feed.

Why this shape: ``/predict`` must never wait for Redis or a WebSocket client. The request path
only builds the signal and puts it on a bounded queue (``served``). With ``REDIS_URL`` set,
the publisher is a ``DurableWriter`` like the prediction log: a background thread appends
batches to the stream, and while Redis is away the batches wait in the same kind of disk
spool and are published, in order, when it returns. The WebSocket feed then reads the stream
(``StreamTail``), so every worker's clients see every worker's signals. Without ``REDIS_URL``
the feed is fed by this process directly and ``/health`` says the stream is off.

A WebSocket client gets its own queue on the event loop; one that does not keep up (its
connection takes no more data while ``SIGNALS_WS_BUFFER`` signals wait) is disconnected with a
close reason, and never slows the others or the compute thread (delivery is one
``call_soon_threadsafe`` per signal, each signal encoded once for all clients). The
connection's kernel send buffer is bounded (``FEED_SEND_BUFFER_BYTES``): Linux would otherwise
let it grow to 4 MiB, thousands of signals a client that stopped reading swallows unnoticed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Awaitable, Callable

from smc_core.serving.spool import DurableWriter, claim_spool
from smc_core.signals import SignalSettings, append_signals, connect, permanent

log = logging.getLogger("smc.serving.signals")

SLOW_CLIENT_CODE = 1008
"""WebSocket close code of a client dropped for not reading (policy violation)."""

FEED_SEND_BUFFER_BYTES = 64 * 1024
"""Kernel send buffer of a WebSocket feed connection (Linux doubles it for its bookkeeping).
Left alone it grows with the connection up to ``tcp_wmem``'s maximum (4 MiB by default), some
7,000 signals a client that stopped reading would take in before its queue began to fill;
64 KiB is still minutes of signals for a client that reads."""

SLOW_CLOSE_GRACE_S = 10.0
"""A dropped client's close frame waits behind what it has not read; if it has not made room
for it by then, the connection is cut without one."""


class Subscription:
    """One WebSocket client's filter and queue; lives on the event loop that serves it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, symbols: frozenset[str], timeframes: frozenset[str],
                 buffer: int):
        self.loop, self.symbols, self.timeframes, self.buffer = loop, symbols, timeframes, buffer
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.too_slow = asyncio.Event()
        self.send_waiting = False
        """True while a send waits for the connection to take data (the client is not reading)."""

    def wants(self, symbol: str, timeframe: str) -> bool:
        return (not self.symbols or symbol in self.symbols) and (not self.timeframes or timeframe in self.timeframes)

    def offer(self, text: str) -> None:
        """On the loop: queue the signal, or mark the client too slow (it is then disconnected).

        Too slow: ``buffer`` signals wait while the connection takes nothing. A burst larger
        than the buffer (the stream catching up after a Redis outage) is no reason: a client
        that reads gets it all at the next turn of the loop."""
        if self.too_slow.is_set():
            return
        if self.send_waiting and self.queue.qsize() >= self.buffer:
            self.too_slow.set()
            return
        self.queue.put_nowait(text)

    @property
    def close_reason(self) -> str:
        return f"too slow: {self.buffer} signals unread (SIGNALS_WS_BUFFER)"


class SignalFeed:
    """Fan-out of signals to the WebSocket subscriptions of this process."""

    def __init__(self, buffer: int):
        self.buffer = buffer
        self._subscriptions: set[Subscription] = set()
        self._lock = threading.Lock()
        self.slow_clients_dropped = 0
        self.on_first_subscriber: Callable[[], None] | None = None

    def subscribe(self, symbols: frozenset[str], timeframes: frozenset[str]) -> Subscription:
        """Call on the event loop that will read the subscription."""
        subscription = Subscription(asyncio.get_running_loop(), symbols, timeframes, self.buffer)
        with self._lock:
            self._subscriptions.add(subscription)
            first = len(self._subscriptions) == 1
        if first and self.on_first_subscriber is not None:
            self.on_first_subscriber()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            present = subscription in self._subscriptions
            self._subscriptions.discard(subscription)
        if present and subscription.too_slow.is_set():
            self.slow_clients_dropped += 1

    @property
    def clients(self) -> int:
        return len(self._subscriptions)

    def publish(self, text: str, symbol: str, timeframe: str) -> None:
        """From any thread: hand the encoded signal to every subscription that wants it, never waiting."""
        with self._lock:
            targets = [s for s in self._subscriptions if s.wants(symbol, timeframe)]
        by_loop: dict[asyncio.AbstractEventLoop, list[Subscription]] = {}
        for subscription in targets:
            by_loop.setdefault(subscription.loop, []).append(subscription)
        for loop, subscriptions in by_loop.items():
            try:
                loop.call_soon_threadsafe(_offer_all, subscriptions, text)
            except RuntimeError:  # that loop has closed (shutdown): nobody left to tell
                pass


def _offer_all(subscriptions: list[Subscription], text: str) -> None:
    for subscription in subscriptions:
        subscription.offer(text)


async def pump(subscription: Subscription, send_text: Callable[[str], Awaitable[None]],
               client_gone: Callable[[], Awaitable[None]]) -> bool:
    """Send the subscription's signals until the client leaves (False) or falls behind (True).

    A send blocked on a client that stopped reading is abandoned as soon as it is found too slow."""
    async def send_all() -> None:
        while True:
            text = await subscription.queue.get()
            subscription.send_waiting = True
            try:
                await send_text(text)
            finally:
                subscription.send_waiting = False

    tasks = {asyncio.ensure_future(send_all()), asyncio.ensure_future(subscription.too_slow.wait()),
             asyncio.ensure_future(client_gone())}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return subscription.too_slow.is_set()


async def serve_client(feed: SignalFeed, symbols: frozenset[str], timeframes: frozenset[str],
                       send_text: Callable[[str], Awaitable[None]], client_gone: Callable[[], Awaitable[None]],
                       close: Callable[[int, str], Awaitable[None]], local: tuple | None, peer: tuple | None) -> None:
    """One WebSocket client of the feed, from subscription to goodbye.

    A client that falls behind stops receiving at once (and is counted as dropped); it gets the
    close frame with the reason once it reads again, or is cut off after ``SLOW_CLOSE_GRACE_S``."""
    connection = connection_socket(local, peer)
    if connection is not None:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, FEED_SEND_BUFFER_BYTES)
    subscription = feed.subscribe(symbols, timeframes)
    try:
        if await pump(subscription, send_text, client_gone):
            feed.unsubscribe(subscription)
            try:
                await asyncio.wait_for(close(SLOW_CLIENT_CODE, subscription.close_reason), SLOW_CLOSE_GRACE_S)
            except Exception as error:  # it took not even the close frame: cut the connection
                log.info("signal feed: %s dropped without a close frame (%s)", peer, type(error).__name__)
                if connection is not None:
                    connection.shutdown(socket.SHUT_RDWR)
    finally:
        feed.unsubscribe(subscription)
        if connection is not None:
            connection.close()


def connection_socket(local: tuple | None, peer: tuple | None) -> socket.socket | None:
    """This process's TCP socket from ``local`` to ``peer`` (host, port), as a descriptor of our own.

    ASGI hands an application no socket, yet the feed must bound a connection's kernel send
    buffer and cut a connection that no longer reads; the socket is found among this process's
    descriptors by its two addresses. None when not found (the queue still bounds the client)."""
    if not local or not peer:
        return None
    wanted = ((str(local[0]), int(local[1])), (str(peer[0]), int(peer[1])))
    directory = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
    try:
        descriptors = [int(name) for name in os.listdir(directory)]
    except OSError:
        return None
    for descriptor in descriptors:
        try:
            if directory == "/proc/self/fd" and not os.readlink(f"{directory}/{descriptor}").startswith("socket:"):
                continue
            copy = os.dup(descriptor)
        except OSError:  # closed meanwhile
            continue
        try:
            candidate = socket.socket(fileno=copy)
        except OSError:  # not a socket
            os.close(copy)
            continue
        try:
            if candidate.type == socket.SOCK_STREAM and (candidate.getsockname()[:2],
                                                         candidate.getpeername()[:2]) == wanted:
                return candidate
        except OSError:  # a listening or unconnected socket
            pass
        candidate.close()
    return None


def parse_filter(text: str | None) -> frozenset[str]:
    """``ES,NQ`` → {"ES", "NQ"}; empty: everything."""
    return frozenset(part.strip() for part in (text or "").split(",") if part.strip())


class StreamTail:
    """Feeds the WebSocket feed from the Redis Stream while anyone is subscribed.

    Reads from where it stood (new signals only, from the first subscription on); a signal
    appended twice (a publisher batch sent again after a lost reply) is passed on once."""

    def __init__(self, settings: SignalSettings, feed: SignalFeed, remembered: int = 10_000):
        self.settings, self.feed = settings, feed
        self._client = connect(settings.redis_url, timeout=5.0)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._remembered = remembered
        self._last_id: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="signal-stream-tail", daemon=True)
        feed.on_first_subscriber = self._wake.set

    def start(self) -> "StreamTail":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.feed.clients:
                self._last_id = None  # nobody listening: nothing to read; start at the end when someone comes
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                if self._last_id is None:
                    self._last_id = self._stream_end()
                response = self._client.xread({self.settings.stream: self._last_id}, count=500, block=1000)
                self.last_error = None
            except Exception as error:  # Redis away: the publisher spools meanwhile; read on when it is back
                if self.last_error is None:
                    log.warning("signal feed: cannot read %s: %s", self.settings.stream, error)
                self.last_error = f"{type(error).__name__}: {error}"[:300]
                self._stop.wait(1.0)
                continue
            for _, messages in response or []:
                for stream_id, fields in messages:
                    self._last_id = stream_id
                    request_id = fields.get("request_id")
                    if request_id in self._seen:
                        continue
                    self._seen[request_id] = None
                    if len(self._seen) > self._remembered:
                        self._seen.popitem(last=False)
                    if "signal" in fields:
                        self.feed.publish(fields["signal"], fields.get("symbol", ""), fields.get("timeframe", ""))

    def _stream_end(self) -> str:
        """The id of the newest entry now ("0-0" before the first signal): reading goes on from there."""
        import redis

        try:
            return self._client.xinfo_stream(self.settings.stream)["last-generated-id"]
        except redis.ResponseError:  # no such key yet
            return "0-0"


class SignalHub:
    """The service's signal outlets: the stream publisher (REDIS_URL) and the WebSocket feed."""

    def __init__(self, settings: SignalSettings, spool_dir: Path, spool_max_bytes: int,
                 on_drop: Callable[[int, str], None] | None = None, worker: int | None = None):
        self.settings = settings
        self.feed = SignalFeed(settings.websocket_buffer)
        self.publisher: DurableWriter | None = None
        self.tail: StreamTail | None = None
        if settings.redis_url:
            client = connect(settings.redis_url)
            self.publisher = DurableWriter("signal-stream", partial(append_signals, client, settings),
                                           claim_spool(spool_dir / "signals", spool_max_bytes, worker),
                                           encode=_same, decode=_same,
                                           is_permanent=permanent, on_drop=on_drop, target="Redis")
            self.tail = StreamTail(settings, self.feed)

    def start(self) -> "SignalHub":
        for part in (self.publisher, self.tail):
            if part is not None:
                part.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self.tail is not None:
            self.tail.stop()
        if self.publisher is not None:
            self.publisher.stop(timeout)

    def served(self, signal: dict) -> None:
        """On the request path: one non-blocking hand-over, nothing else."""
        if self.publisher is not None:
            self.publisher.submit(signal)
        elif self.feed.clients:
            self.feed.publish(json.dumps(signal, separators=(",", ":")), signal["symbol"], signal["timeframe"])

    def health(self) -> dict:
        return {"stream": "on" if self.publisher is not None else "off",
                "stream_key": self.settings.stream if self.publisher is not None else None,
                "feed_source": "redis" if self.tail is not None else "process",
                "publisher": self.publisher.health() if self.publisher is not None else None,
                "feed_error": self.tail.last_error if self.tail is not None else None,
                "websocket_clients": self.feed.clients, "slow_clients_dropped": self.feed.slow_clients_dropped}


def _same(signal: dict) -> dict:
    return signal
