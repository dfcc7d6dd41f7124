"""The signal stream's parts on the machine's real Redis (database 13, a key per test) and real
PostgreSQL: the publisher keeps order and caps retention by length and age, waits on disk while
Redis is away; consumers reclaim what a dead consumer left, recognise a signal delivered twice,
and dead-letter one the handler keeps refusing. The history and analytics queries against
hand computations."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from psycopg.types.json import Jsonb
from signal_setup import SHARED_REDIS, OwnRedis, drop_stream, unique_stream

from smc_core.serving import signal_history
from smc_core.serving.request import RequestError
from smc_core.serving.signals import SignalHub
from smc_core.signals import (PostgresInbox, SignalConsumer, SignalSettings, append_signals, connect,
                              inbox_request_ids, parse_entry)

T0 = datetime(2024, 3, 5, 15, 0, tzinfo=timezone.utc)


def signal(i: int, symbol: str = "ES") -> dict:
    return {"request_id": f"req-{i:05d}-{uuid.uuid4().hex[:6]}", "symbol": symbol, "timeframe": "1m",
            "bar_time": (T0 + timedelta(minutes=i)).isoformat(), "label": "long", "raw_label": "long",
            "confidence": 0.8, "probabilities": {"long": 0.8, "short": 0.1, "skip": 0.1}, "position_size": 1.0,
            "risk": {"atr": 1.0}, "model_version": "smc-lora/1", "served_at": T0.isoformat()}


@pytest.fixture
def settings():
    chosen = SignalSettings(redis_url=SHARED_REDIS, stream=unique_stream(), claim_idle_ms=300)
    yield chosen
    drop_stream(SHARED_REDIS, chosen.stream)


def stream_ids(client, stream: str) -> list[str]:
    return [fields["request_id"] for _, fields in client.xrange(stream)]


def test_the_publisher_keeps_order_and_caps_the_stream_by_length_and_age(settings, tmp_path):
    client = connect(SHARED_REDIS)
    client.xadd(settings.stream, {"request_id": "ancient", "signal": "{}"}, id="1000-0")  # 1970: past any retention
    capped = dataclasses.replace(settings, max_length=100)
    hub = SignalHub(capped, tmp_path / "spool", 10**7).start()
    sent = [signal(i) for i in range(1000)]
    for item in sent:
        hub.served(item)
    assert hub.publisher.flush(20)
    hub.stop()
    kept = stream_ids(client, settings.stream)
    assert "ancient" not in kept  # trimmed by age (MINID)
    assert 100 <= len(kept) < 300  # trimmed by length, approximately (MAXLEN ~ frees whole nodes)
    assert kept == [item["request_id"] for item in sent[-len(kept):]]  # the newest, in order
    assert hub.publisher.stats.written == 1000 and hub.publisher.stats.dropped == 0


def test_signals_wait_on_disk_while_redis_is_away_and_follow_in_order(tmp_path):
    server = OwnRedis(tmp_path / "redis")  # not started yet: Redis is away
    settings = SignalSettings(redis_url=server.url, stream="signals")
    hub = SignalHub(settings, tmp_path / "spool", 10**7).start()
    hub.publisher.retry_seconds = 0.2
    sent = [signal(i) for i in range(300)]
    try:
        for item in sent[:200]:
            hub.served(item)
        deadline = time.monotonic() + 20
        while hub.publisher.spool.rows < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        health = hub.health()
        assert health["publisher"]["spool_rows"] == 200 and health["publisher"]["last_error"]
        server.start()
        for item in sent[200:]:
            hub.served(item)
        assert hub.publisher.flush(30)
        assert stream_ids(connect(server.url), "signals") == [item["request_id"] for item in sent]
        assert hub.publisher.stats.dropped == 0
    finally:
        hub.stop()
        server.stop()


def test_a_full_spool_loses_signals_counted(tmp_path):
    lost = []
    settings = SignalSettings(redis_url="redis://127.0.0.1:1/0", stream="signals")  # nothing listens on port 1
    hub = SignalHub(settings, tmp_path / "spool", 2_000, on_drop=lambda n, why: lost.append(n)).start()
    for i in range(50):
        hub.served(signal(i))
    deadline = time.monotonic() + 20
    while hub.publisher.pending() and hub.publisher.spool.rows + sum(lost) < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    hub.stop(0.5)
    assert sum(lost) > 0 and hub.publisher.stats.dropped == sum(lost)
    assert hub.publisher.spool.rows + sum(lost) == 50  # every signal either waits on disk or is counted lost


def test_each_signal_is_handled_once_despite_a_dead_consumer_and_repeats(settings, database):
    client = connect(SHARED_REDIS)
    sent = [signal(i) for i in range(300)]
    append_signals(client, settings, sent)
    append_signals(client, settings, sent[100:120])  # a publisher batch sent twice (its reply was lost)
    group = f"g-{uuid.uuid4().hex[:6]}"
    inbox = PostgresInbox(database, group)
    dead = SignalConsumer(client, settings, group, inbox, consumer="dies")
    dead.ensure_group()
    # it reads 50 and dies before handling them; it reads 30 more, commits them and dies before acknowledging
    client.xreadgroup(group, "dies", {settings.stream: ">"}, count=50)
    committed = client.xreadgroup(group, "dies", {settings.stream: ">"}, count=30)[0][1]
    inbox.handle([(i, parse_entry(f)) for i, f in committed], None)
    survivor = SignalConsumer(client, settings, group, inbox, consumer="survives", block_ms=100)
    stats = survivor.run(idle_exit_s=1.5)
    ids = inbox_request_ids(database, group)
    assert sorted(ids) == sorted(item["request_id"] for item in sent)  # every one, once
    assert stats.reclaimed == 80  # XAUTOCLAIM took over what "dies" left pending
    assert stats.duplicates == 30 + 20 and stats.handled == 300 - 30
    assert client.xpending(settings.stream, group)["pending"] == 0


def test_the_handler_effect_commits_with_the_inbox_and_a_refused_signal_is_dead_lettered(settings, database):
    client = connect(SHARED_REDIS)
    sent = [signal(i) for i in range(40)]
    append_signals(client, settings, sent)
    poison = sent[7]["request_id"]
    group = f"g-{uuid.uuid4().hex[:6]}"
    with database.connection() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS handled_orders (request_id text, group_name text)")

    def handler(item: dict, conn) -> None:
        if item["request_id"] == poison:
            raise ValueError("this strategy refuses it")
        conn.execute("INSERT INTO handled_orders VALUES (%s, %s)", (item["request_id"], group))

    consumer = SignalConsumer(client, settings, group, PostgresInbox(database, group), consumer="c1", handler=handler,
                              block_ms=100, max_deliveries=3)
    stats = consumer.run(idle_exit_s=1.5)
    with database.connection() as conn:
        orders = [r[0] for r in conn.execute("SELECT request_id FROM handled_orders WHERE group_name = %s", (group,))]
    expected = sorted(item["request_id"] for item in sent if item["request_id"] != poison)
    assert sorted(orders) == expected and sorted(inbox_request_ids(database, group)) == expected
    assert stats.dead == 1
    buried = client.xrange(settings.stream + ":dead")
    assert len(buried) == 1 and poison in buried[0][1]["signal"] and "refuses it" in buried[0][1]["reason"]
    assert client.xpending(settings.stream, group)["pending"] == 0


def test_a_consumer_waits_for_redis_and_goes_on(tmp_path, database):
    server = OwnRedis(tmp_path / "redis").start()
    settings = SignalSettings(redis_url=server.url, stream="signals", claim_idle_ms=300)
    group = "outage"
    consumer = SignalConsumer(connect(server.url), settings, group, PostgresInbox(database, group), block_ms=100,
                              retry_seconds=0.2)
    stop = threading.Event()
    worker = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    sent = [signal(i) for i in range(20)]
    try:
        worker.start()
        append_signals(connect(server.url), settings, sent[:10])
        server.stop()
        time.sleep(1.0)
        server.start()
        append_signals(connect(server.url), settings, sent[10:])
        deadline = time.monotonic() + 20
        while len(inbox_request_ids(database, group)) < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        worker.join(10)
        server.stop()
    assert sorted(inbox_request_ids(database, group)) == sorted(item["request_id"] for item in sent)


# --- the history and its analytics ----------------------------------------------------------

def _prediction(conn, ts, request_id, version, label, size, shadow=False):
    conn.execute("SELECT smc_prepare_time_range('predictions', %s, %s)", (ts, ts))
    conn.execute(
        """INSERT INTO predictions (ts, request_id, shadow, logged_at, symbol, timeframe, model_version, label,
               raw_label, confidence, p_long, p_short, p_skip, position_size, latency_ms, features, feature_set, risk)
           VALUES (%s, %s, %s, %s, 'NQ', '5m', %s, %s, %s, 0.8, 0.8, 0.1, 0.1, %s, 3.0, '{}', 'test', %s)""",
        (ts, request_id, shadow, ts, version, label, label if label != "skip" else "long", size,
         Jsonb({"atr": 2.5, "stop_price": None})))


def _outcome(conn, ts, request_id, version, direction, size, realised_label, realised_return, hit):
    conn.execute("SELECT smc_prepare_time_range('prediction_outcomes', %s, %s)", (ts, ts))
    conn.execute(
        """INSERT INTO prediction_outcomes (ts, request_id, shadow, symbol, timeframe, model_version, horizon,
               realised_label, barrier, t1, ret, ambiguous, direction, position_size, realised_return, hit)
           VALUES (%s, %s, false, 'NQ', '5m', %s, 'h15_u1.5_d1.5', %s, 'up', %s, 0.01, false, %s, %s, %s, %s)""",
        (ts, request_id, version, realised_label, ts + timedelta(minutes=15), direction, size, realised_return, hit))


def test_analytics_equal_a_hand_computation(database):
    # Two CME trading days of NQ 5m under two versions. 2024-03-06's session opens 2024-03-05 23:00 UTC
    # (17:00 CST): a bar closing at 23:30 UTC on the 5th belongs to the 6th.
    d5, d6 = datetime(2024, 3, 5, 15, 0, tzinfo=timezone.utc), datetime(2024, 3, 5, 23, 30, tzinfo=timezone.utc)
    rows = [  # (ts, id, version, label, size, outcome: (direction, realised label, realised return, hit) or None)
        (d5, "a1", "m/1", "long", 1.0, (1, 0, 0.02, True)),
        (d5 + timedelta(minutes=5), "a2", "m/1", "short", 0.5, (-1, 0, -0.01, False)),
        (d5 + timedelta(minutes=10), "a3", "m/1", "skip", 0.0, (0, 2, 0.0, None)),
        (d5 + timedelta(minutes=15), "a4", "m/1", "long", 1.0, None),  # not resolved yet
        (d6, "b1", "m/1", "long", 1.0, (1, 0, 0.03, True)),
        (d5, "c1", "m/2", "short", 1.0, (-1, 1, 0.04, True)),
    ]
    with database.connection() as conn:
        for ts, rid, version, label, size, outcome in rows:
            _prediction(conn, ts, rid, version, label, size)
            if outcome:
                direction, realised, ret, hit = outcome
                _outcome(conn, ts, rid, version, direction, size, realised, ret, hit)
        _prediction(conn, d5, "shadow-1", "m/3", "long", 1.0, shadow=True)  # a shadow answer is no signal
        result = signal_history.analytics(conn, {"since": "2024-03-05", "until": "2024-03-06"})
    by_key = {(d["model_version"], d["day"]): d for d in result["days"]}
    assert set(by_key) == {("m/1", "2024-03-05"), ("m/1", "2024-03-06"), ("m/2", "2024-03-05")}
    day = by_key[("m/1", "2024-03-05")]
    # 4 signals, 3 trades (a1, a2, a4), resolved a1 a2 a3, resolved trades a1 a2, one hit (a1)
    assert (day["signals"], day["trades"], day["resolved"], day["resolved_trades"], day["hits"]) == (4, 3, 3, 2, 1)
    assert day["trade_rate"] == pytest.approx(0.75) and day["hit_rate"] == pytest.approx(0.5)
    assert day["mean_realised_return"] == pytest.approx((0.02 - 0.01) / 2)
    assert day["total_realised_return"] == pytest.approx(0.01)
    late = by_key[("m/1", "2024-03-06")]
    assert (late["signals"], late["hit_rate"], late["mean_realised_return"]) == (1, 1.0, pytest.approx(0.03))
    with database.connection() as conn:
        only = signal_history.analytics(conn, {"since": "2024-03-05", "until": "2024-03-05", "model_version": "m/2"})
        detail = signal_history.get_signal(conn, "a2")
        pending = signal_history.get_signal(conn, "a4")
        with pytest.raises(RequestError) as missing:
            signal_history.get_signal(conn, "shadow-1")
    assert [(d["model_version"], d["day"], d["hit_rate"]) for d in only["days"]] == [("m/2", "2024-03-05", 1.0)]
    assert detail["outcome"]["realised_label"] == "long" and detail["outcome"]["hit"] is False
    assert detail["risk"] == {"atr": 2.5, "stop_price": None} and detail["position_size"] == 0.5
    assert pending["outcome"] is None and missing.value.status == 404


def test_query_parameters_are_checked_by_name():
    with pytest.raises(RequestError) as bad:
        signal_history.SignalQuery.from_params({"label": "buy", "since": "yesterday", "limit": "0", "colour": "red",
                                                "cursor": "???"})
    paths = {error["path"] for error in bad.value.details["errors"]}
    assert bad.value.status == 422 and paths == {"query.label", "query.since", "query.limit", "query.colour",
                                                 "query.cursor"}
    with pytest.raises(RequestError) as naive:
        signal_history.SignalQuery.from_params({"until": "2024-03-05T10:00:00"})
    assert "no UTC offset" in naive.value.details["errors"][0]["message"]
