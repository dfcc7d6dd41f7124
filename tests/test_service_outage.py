"""The prediction log's database refuses connections mid-load: /predict keeps answering every
request, the rows that cannot be written wait in the spool, and every one is written on recovery."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from serving_setup import KEY, Server, bars, request_for, tiny_package


@pytest.fixture(scope="module")
def server(database, tmp_path_factory):
    package = tiny_package(tmp_path_factory.mktemp("pkg") / "model")
    running = Server({"MODEL_PATH": str(package), "DATABASE_URL": database.url,
                      "RATE_LIMIT_PER_SECOND": "100000"},  # the load here must not meet the per-key limit
                     tmp_path_factory.mktemp("home")).wait()
    yield running
    running.stop()


def _set_connections(admin_url: str, name: str, allowed: bool) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
            sql.Identifier(name), sql.SQL("true" if allowed else "false")))
        if not allowed:  # and cut every open connection, as a stopped server would
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                         "AND pid <> pg_backend_pid()", (name,))


def test_predict_is_unaffected_when_the_database_stops_mid_load(server, database, admin_url):
    payloads = [request_for(bars(days=3, seed=9), end) for end in range(600, 640)]
    statuses, stop = [], threading.Event()

    def load(offset: int) -> None:
        i = offset
        while not stop.is_set():
            statuses.append(server.predict(payloads[i % len(payloads)]).status_code)
            i += 1

    threads = [threading.Thread(target=load, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    name = conninfo_to_dict(database.url)["dbname"]
    try:
        time.sleep(2)
        written_before = server.client.get("/health").json()["prediction_log"]["written"]
        _set_connections(admin_url, name, allowed=False)
        time.sleep(4)
        during = server.client.get("/health").json()["prediction_log"]
        _set_connections(admin_url, name, allowed=True)
        time.sleep(3)
    finally:
        _set_connections(admin_url, name, allowed=True)
        stop.set()
        for thread in threads:
            thread.join()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until nothing waits: neither on disk nor in the writer's queue
        pending = server.client.get("/health").json()["prediction_log"]
        if not pending["spool_rows"] and not pending["queued"]:
            break
        time.sleep(0.5)
    after = server.client.get("/health").json()["prediction_log"]
    assert statuses and set(statuses) == {200}, set(statuses)
    assert written_before > 0 and during["spooled"] > 0
    assert after["dropped"] == 0 and after["spool_rows"] == 0
    with psycopg.connect(database.url) as conn:  # the fixture's pooled connections were terminated above
        logged = conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
    assert logged == len(statuses)  # every answer is in the log: nothing was lost
