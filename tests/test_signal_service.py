"""Signals beyond the caller, through the real BentoML service (issue 14's acceptance):

* 10,000 signals published under load while `smc signals consume` is SIGKILLed twice and
  restarted (under a new name, so what it left pending must be reclaimed): its sink holds every
  request id exactly once; a WebSocket client fed from the stream receives all of them in order;
* a Redis of the test's own stopped for 30 s under load: 0 failed /predict, every signal of the
  outage reaches the consumer afterwards, and the stream holds them in the order served;
* the WebSocket feed without REDIS_URL: two clients receive every signal in order, filters and
  keys hold, a client that stops reading is disconnected with a close reason, and /predict p99
  with that client stuck is compared with p99 without it in the same run;
* the REST history on a replayed day: filters, cursor pagination, one signal with its outcome.

The WebSocket and REST tests share one server (``feed_server``): the feed's load is served
from the market's second day, the replayed day is the first, and the history is read up to its
end, so neither test sees the other's signals whichever runs first.
"""

from __future__ import annotations

import base64
import json
import os
import signal as signals_os
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
import redis
from serving_setup import KEY, ROOT, Server, bars, request_for
from signal_setup import SHARED_REDIS, OwnRedis, drop_stream, unique_stream
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from smc_core.signals import inbox_request_ids

CONTEXT = 49
OUTAGE_S = 30.0
DAY_BARS = 1380
"""1-minute bars of one synthetic trading day (23 hours): the market's second day starts at this row."""


@pytest.fixture(scope="module")
def market():
    return bars(days=2, seed=9)


@pytest.fixture(scope="module")
def feed_server(package, database, tmp_path_factory):
    """The service without REDIS_URL (the feed from its own process), logging predictions."""
    server = Server({"MODEL_PATH": str(package), "DATABASE_URL": database.url, "RATE_LIMIT_PER_SECOND": "100000",
                     "CAPTURE_BARS": "false", "SIGNALS_WS_BUFFER": "64", "TIMEOUT_MS": "60000"},
                    tmp_path_factory.mktemp("feed")).wait(timeout=300)
    yield server
    server.stop()


def requests_of(market: pd.DataFrame, count: int, first: int = 0) -> list[dict]:
    """``count`` /predict requests cycling over the market's bars from row ``first`` (each answer is a new signal)."""
    ends = range(first + CONTEXT - 1, len(market))
    distinct = [request_for(market, end, CONTEXT) for end in ends[:count]]
    return [distinct[i % len(distinct)] for i in range(count)]


class Consumer:
    """`smc signals consume` as its own process, as an operator runs it."""

    def __init__(self, env: dict, group: str, name: str, log_dir):
        self.log = open(log_dir / f"consumer-{name}.log", "w")
        self.process = subprocess.Popen([sys.executable, "-m", "smc_jobs.cli", "signals", "consume", "--group", group,
                                         "--consumer", name], cwd=ROOT, env={**os.environ, **env},
                                        stdout=self.log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        self.process.send_signal(signals_os.SIGKILL)
        self.process.wait(10)
        self.log.close()

    def stop(self) -> dict:
        """Ctrl-C: it prints what it did as one JSON line."""
        self.process.send_signal(signals_os.SIGINT)
        self.process.wait(20)
        self.log.close()
        lines = [line for line in open(self.log.name).read().splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}


class FeedClient:
    """A WebSocket client on its own thread, keeping every message it receives."""

    def __init__(self, url: str, query: str = "", key: str | None = KEY, **options):
        headers = {"X-API-Key": key} if key else {}
        self.connection = ws_connect(url.replace("http", "ws") + "/signals/stream" + query, additional_headers=headers,
                                     compression=None, open_timeout=10, **options)
        self.received: list[dict] = []
        self.closed: ConnectionClosed | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while True:
                self.received.append(json.loads(self.connection.recv()))
        except ConnectionClosed as closed:
            self.closed = closed

    def wait_for(self, count: int, timeout: float = 60.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline and self.closed is None:
            time.sleep(0.05)
        return [message["request_id"] for message in self.received]

    def close(self) -> None:
        self.connection.close()
        self._thread.join(5)


def wait_published(server: Server, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        publisher = server.client.get("/health").json()["signals"]["publisher"]
        if publisher["queued"] == 0 and publisher["spool_rows"] == 0:
            return publisher
        time.sleep(0.2)
    raise AssertionError(f"signals still waiting after {timeout}s: {publisher}")


def wait_inbox(database, group: str, count: int, timeout: float = 120.0) -> list[str]:
    deadline = time.monotonic() + timeout
    ids = inbox_request_ids(database, group)
    while len(ids) < count and time.monotonic() < deadline:
        time.sleep(0.25)
        ids = inbox_request_ids(database, group)
    return ids


@pytest.mark.slow
def test_ten_thousand_signals_reach_a_consumer_killed_twice_exactly_once(package, market, database, tmp_path):
    stream, group = unique_stream(), "desk"
    env = {"REDIS_URL": SHARED_REDIS, "SIGNALS_STREAM": stream, "DATABASE_URL": database.url,
           "SIGNALS_CLAIM_IDLE_MS": "1000", "LOG_LEVEL": "INFO"}
    server = Server({**env, "MODEL_PATH": str(package), "RATE_LIMIT_PER_SECOND": "100000",
                     "LOG_PREDICTIONS": "false", "CAPTURE_BARS": "false"}, tmp_path).wait(timeout=300)
    consumers = [Consumer(env, group, "first", tmp_path)]
    watcher = FeedClient(server.url)
    payloads = requests_of(market, 10_000)
    served: list[str] = []
    kills_at = [2_000, 5_000]

    def kill_and_restart() -> None:  # SIGKILL mid-stream, twice; each successor has a new name
        for number, threshold in enumerate(kills_at, 2):
            while len(inbox_request_ids(database, group)) < threshold:
                time.sleep(0.05)
            consumers[-1].kill()
            consumers.append(Consumer(env, group, f"restart-{number}", tmp_path))

    killer = threading.Thread(target=kill_and_restart, daemon=True)
    try:
        killer.start()
        for start in range(0, len(payloads), 50):
            response = server.client.post("/predict_batch", json={"requests": payloads[start:start + 50]},
                                          headers={"X-API-Key": KEY})
            assert response.status_code == 200
            results = response.json()["results"]
            assert all("request_id" in r for r in results), results[:2]
            served.extend(r["request_id"] for r in results)
        publisher = wait_published(server)
        killer.join(180)
        ids = wait_inbox(database, group, len(served), timeout=180)
        streamed = watcher.wait_for(len(served))
    finally:
        last = consumers[-1].stop() if consumers[-1].process.poll() is None else {}
        watcher.close()
        server.stop()
        drop_stream(SHARED_REDIS, stream)
    assert len(served) == len(set(served)) == 10_000
    assert not killer.is_alive() and len(consumers) == 3  # killed twice, restarted twice
    assert len(ids) == len(set(ids)) == 10_000 and set(ids) == set(served)  # every request id, exactly once
    assert publisher["written"] == 10_000 and publisher["dropped"] == 0
    assert streamed == served  # the WebSocket feed (read from the stream): all, in the order served
    print(f"\nlast consumer: {last}")


@pytest.mark.slow
def test_a_30_second_redis_outage_fails_no_request_and_loses_no_signal(package, market, database, tmp_path):
    redis_server = OwnRedis(tmp_path / "redis").start()
    group = "outage"
    env = {"REDIS_URL": redis_server.url, "SIGNALS_STREAM": "signals", "DATABASE_URL": database.url,
           "SIGNALS_CLAIM_IDLE_MS": "1000"}
    server = Server({**env, "MODEL_PATH": str(package), "RATE_LIMIT_PER_SECOND": "100000",
                     "LOG_PREDICTIONS": "false", "CAPTURE_BARS": "false"}, tmp_path).wait(timeout=300)
    consumer = Consumer(env, group, "steady", tmp_path)
    payloads = requests_of(market, 960)
    pace = len(payloads) / (OUTAGE_S * 1.6)
    statuses, served, window = [], [], {}
    during_outage: list[str] = []
    try:
        started = time.monotonic()
        for count, payload in enumerate(payloads):
            time.sleep(max(0.0, started + count / pace - time.monotonic()))
            if count == len(payloads) // 4:
                redis_server.stop()
                window["stop"] = time.monotonic()
            if "stop" in window and "back" not in window and time.monotonic() - window["stop"] >= OUTAGE_S:
                window["health"] = server.client.get("/health").json()["signals"]
                redis_server.start()
                window["back"] = time.monotonic()
            response = server.predict(payload)
            statuses.append(response.status_code)
            if response.status_code == 200:
                served.append(response.json()["request_id"])
                if "stop" in window and "back" not in window:
                    during_outage.append(served[-1])
        publisher = wait_published(server, timeout=180)
        ids = wait_inbox(database, group, len(served), timeout=180)
        stream = redis.Redis.from_url(redis_server.url, decode_responses=True)
        in_stream = [fields["request_id"] for _, fields in stream.xrange("signals")]
        stream.close()
    finally:
        consumer.stop()
        server.stop()
        redis_server.stop()
    assert window["back"] - window["stop"] >= OUTAGE_S
    assert statuses == [200] * len(payloads)  # 0 failed /predict
    assert window["health"]["publisher"]["spool_rows"] > 0 and window["health"]["publisher"]["last_error"]
    assert len(during_outage) > 0.5 * OUTAGE_S * pace
    assert publisher["dropped"] == 0
    assert set(during_outage) <= set(ids) and sorted(ids) == sorted(served)  # all delivered after, once each
    assert in_stream == served  # published in the order served
    print(f"\n{len(served)} /predict, all 200; {len(during_outage)} signals served while Redis was down "
          f"{window['back'] - window['stop']:.1f} s (spool rows then: {window['health']['publisher']['spool_rows']}); "
          f"{len(ids)} in the consumer's inbox, once each")


class StuckClient:
    """A WebSocket client that completes the handshake on a socket with a tiny receive buffer
    and then reads nothing, until ``close_frame`` reads what was sent up to the close frame."""

    def __init__(self, server: Server):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", server.port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /signals/stream HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                           f"X-API-Key: {KEY}\r\n\r\n").encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):  # byte by byte: not one byte of the frames behind it
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def _exactly(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def close_frame(self, timeout: float = 20.0) -> tuple[int, str] | None:
        """(code, reason) of the server's close frame, after the signals it had buffered; None without one."""
        self.sock.settimeout(timeout)
        try:
            while True:
                first, second = self._exactly(2)
                length = second & 0x7F
                if length == 126:
                    length = int.from_bytes(self._exactly(2), "big")
                elif length == 127:
                    length = int.from_bytes(self._exactly(8), "big")
                payload = self._exactly(length)
                if first & 0x0F == 0x8:
                    return int.from_bytes(payload[:2], "big"), payload[2:].decode()
        except (EOFError, OSError):
            return None
        finally:
            self.sock.close()


class Load:
    """Rounds of one /predict_batch of 20 (the signal flow) and 10 single /predict calls, whose
    latencies are the measure; sequential, so a single call never waits behind a batch."""

    def __init__(self, server: Server, payloads: list[dict]):
        self.server, self.payloads, self.served = server, payloads, []
        self._next = 0

    def _take(self, count: int) -> list[dict]:
        chosen = [self.payloads[(self._next + k) % len(self.payloads)] for k in range(count)]
        self._next += count
        return chosen

    def round(self) -> list[float]:
        batch = self.server.client.post("/predict_batch", json={"requests": self._take(20)},
                                        headers={"X-API-Key": KEY})
        assert batch.status_code == 200
        self.served.extend(r["request_id"] for r in batch.json()["results"])
        latencies = []
        for payload in self._take(10):
            started = time.perf_counter()
            response = self.server.predict(payload)
            latencies.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200
            self.served.append(response.json()["request_id"])
        return latencies


def test_the_websocket_feed_serves_in_order_and_drops_a_stuck_client(feed_server, market):
    server = feed_server
    clients: list[FeedClient] = []
    try:
        health = server.client.get("/health").json()["signals"]
        assert (health["stream"], health["feed_source"], health["publisher"]) == ("off", "process", None)
        refused = ws_connect(server.url.replace("http", "ws") + "/signals/stream", compression=None)
        with pytest.raises(ConnectionClosed) as no_key:
            refused.recv()
        assert no_key.value.rcvd.code == 4401 and "API key" in no_key.value.rcvd.reason
        first = FeedClient(server.url)
        second = FeedClient(server.url, "?symbol=ES,NQ&timeframe=1m")
        other = FeedClient(server.url, "?symbol=NQ")
        clients.extend((first, second, other))
        load = Load(server, requests_of(market, 300, first=DAY_BARS))
        time.sleep(0.5)
        baseline = [ms for _ in range(25) for ms in load.round()]
        stuck = StuckClient(server)
        with_stuck, dropped_after, rounds = [], None, 0
        while rounds < 25 or dropped_after is None:  # the same load again, at least until the stuck client is dropped
            with_stuck.extend(load.round())
            rounds += 1
            if dropped_after is None and server.client.get("/health").json()["signals"]["slow_clients_dropped"]:
                dropped_after = len(load.served)
                closing = stuck.close_frame()  # it reads again now: what it had buffered, then the close frame
            assert rounds < 200, "the stuck client was never dropped"
        dropped = server.client.get("/health").json()["signals"]
        got_first, got_second = first.wait_for(len(load.served)), second.wait_for(len(load.served))
        time.sleep(0.5)
        assert other.received == []  # filtered: no NQ signal was served
    finally:
        for client in clients:
            client.close()
    assert got_first == load.served and got_second == load.served  # every signal, in order, to both
    assert dropped["slow_clients_dropped"] == 1 and dropped["websocket_clients"] == 3  # the readers stay
    assert closing is not None and closing[0] == 1008 and "too slow: 64 signals unread" in closing[1], closing
    p99_base, p99_stuck = np.percentile(baseline, 99), np.percentile(with_stuck, 99)
    print(f"\n/predict p99 without a stuck client {p99_base:.2f} ms, with one {p99_stuck:.2f} ms "
          f"(p50 {np.median(baseline):.2f} / {np.median(with_stuck):.2f}; {len(load.served)} signals; the stuck "
          f"client dropped by signal {dropped_after})")
    # criterion: the stuck client adds at most half of the baseline p99 plus 2 ms (noise of a shared 2-core machine)
    assert p99_stuck <= 1.5 * p99_base + 2.0


def test_the_signal_history_of_a_replayed_day(feed_server, market, database):
    server = feed_server
    day = market.iloc[:DAY_BARS]
    assert day["ts"].iloc[-1] - day["ts"].iloc[0] < pd.Timedelta(hours=23)
    day_end = (day["ts"].iloc[-1] + pd.Timedelta(minutes=1)).isoformat()
    answers = {}
    # the day replayed through /predict_batch, bar by bar in order
    ends = list(range(CONTEXT - 1, len(day)))
    for start in range(0, len(ends), 50):
        chunk = ends[start:start + 50]
        response = server.client.post("/predict_batch", json={"requests": [request_for(day, end, CONTEXT)
                                                                           for end in chunk]},
                                      headers={"X-API-Key": KEY})
        assert response.status_code == 200
        for end, answer in zip(chunk, response.json()["results"]):
            answers[answer["request_id"]] = (day["ts"].iloc[end], answer)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        log = server.client.get("/health").json()["prediction_log"]
        if log["queued"] == 0 and log["spool_rows"] == 0:
            break
        time.sleep(0.2)
    headers = {"X-API-Key": KEY}

    def pages(**params) -> list[dict]:
        found, cursor = [], None
        while True:
            query = {**params, **({"cursor": cursor} if cursor else {})}
            page = server.client.get("/signals", params=query, headers=headers)
            assert page.status_code == 200, page.text
            found.extend(page.json()["signals"])
            cursor = page.json()["next_cursor"]
            if cursor is None:
                return found

    newest_first = sorted(answers, key=lambda rid: answers[rid][0], reverse=True)
    everything = pages(limit=137, until=day_end)
    assert [s["request_id"] for s in everything] == newest_first
    sample = everything[10]
    answer = answers[sample["request_id"]][1]
    assert {k: sample[k] for k in ("label", "confidence", "probabilities", "position_size", "risk",
                                   "model_version")} == {k: answer[k] for k in ("label", "confidence",
                                                                                "probabilities", "position_size",
                                                                                "risk", "model_version")}
    longs = [rid for rid in newest_first if answers[rid][1]["label"] == "long"]
    assert [s["request_id"] for s in pages(label="long", limit=50, until=day_end)] == longs
    assert pages(symbol="NQ") == []
    assert len(pages(symbol="ES", timeframe="1m", limit=1000, until=day_end)) == len(answers)
    assert len(pages(model_version=answer["model_version"], limit=1000, until=day_end)) == len(answers)
    assert pages(model_version="other/1") == []
    since, until = day["ts"].iloc[200], day["ts"].iloc[300]
    window = pages(since=since.isoformat(), until=until.isoformat())
    assert [s["request_id"] for s in window] == [rid for rid in newest_first if since <= answers[rid][0] < until]
    assert len(window) == 100

    rid = newest_first[-1]
    one = server.client.get(f"/signals/{rid}", headers=headers).json()
    assert one["request_id"] == rid and one["outcome"] is None
    with database.connection() as conn:
        conn.execute("SELECT smc_prepare_time_range('prediction_outcomes', %s, %s)", (answers[rid][0],) * 2)
        conn.execute(
            """INSERT INTO prediction_outcomes (ts, request_id, shadow, symbol, timeframe, model_version, horizon,
                   realised_label, barrier, t1, ret, ambiguous, direction, position_size, realised_return, hit)
               VALUES (%s, %s, false, 'ES', '1m', %s, 'h15_u1.5_d1.5', 1, 'down', %s, -0.002, false, 0, 0, 0, NULL)""",
            (answers[rid][0], rid, answer["model_version"], answers[rid][0] + timedelta(minutes=15)))
    known = server.client.get(f"/signals/{rid}", headers=headers).json()["outcome"]
    assert (known["realised_label"], known["barrier"], known["return"]) == ("short", "down", -0.002)
    assert server.client.get("/signals/no-such-id", headers=headers).status_code == 404
    assert server.client.get("/signals").status_code == 401
    bad = server.client.get("/signals", params={"limit": "5000", "label": "buy"}, headers=headers)
    assert bad.status_code == 422 and {e["path"] for e in bad.json()["details"]["errors"]} == {"query.limit",
                                                                                              "query.label"}
    first_day = str(pd.Timestamp(day["ts"].iloc[-1]).date())
    analytics = server.client.get("/signals/analytics", params={"since": "2020-01-01", "until": first_day},
                                  headers=headers).json()
    assert sum(d["signals"] for d in analytics["days"]) == len(answers)
    assert sum(d["resolved"] for d in analytics["days"]) == 1
