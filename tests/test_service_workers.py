"""The service on two BentoML workers (two processes behind one port), as deployed: following the
registry alias, logging every prediction and bar to a real PostgreSQL, the rate limit in the
machine's real Redis. Requests go over fresh connections, so both workers answer them.

- a registry alias move reaches both workers, with no failed request;
- every prediction is logged exactly once, every received bar stored once, no conflict, each
  worker spooling to its own directory;
- ``/metrics`` (Prometheus multiprocess mode) counts the requests of both workers, whichever
  worker answers the scrape, and shows the model both serve;
- ``/admin/reload``, received by one worker, reloads both;
- the rate limit holds across both: the burst is admitted once in total, not once per worker.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import mlflow
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from serving_setup import ADMIN, Server, bars, request_for, tiny_package

from smc_core.registry import TrackingConfig, configure, register_package
from smc_core.serving.rate_limit import bucket_key

pytestmark = pytest.mark.slow

REDIS_URL = "redis://127.0.0.1:6379/0"
BURST, RATE = 200, 0.1  # a tenth of a token per second: the burst is (almost) the whole allowance


@pytest.fixture(scope="module")
def service(database, tmp_path_factory):
    home = tmp_path_factory.mktemp("workers_home")
    configure(TrackingConfig(f"sqlite:///{home / 'mlflow.db'}", (home / "mlartifacts").as_uri()))
    package = tiny_package(tmp_path_factory.mktemp("pkg") / "model")
    versions = []
    for _ in range(2):  # the same weights as two registered versions: a swap shows in model_version
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(package), "model_package")
            versions.append(register_package(run.info.run_id, f"{run.info.artifact_uri}/model_package", alias=None))
    mlflow.MlflowClient().set_registered_model_alias("smc-lora", "champion", versions[0])
    key = f"workers-test-{uuid.uuid4()}"  # a bucket of this run's own in the shared Redis
    server = Server({"WORKERS": "2", "API_KEY": key, "REDIS_URL": REDIS_URL, "DATABASE_URL": database.url,
                     "MODEL_POLL_SECONDS": "0.5", "RATE_LIMIT_PER_SECOND": str(RATE),
                     "RATE_LIMIT_BURST": str(BURST)}, home).wait(timeout=180)
    yield server, key, versions, home
    server.stop()
    redis.Redis.from_url(REDIS_URL).delete(bucket_key(key))


def _fresh(server):
    """A client that opens a new connection for every request (so the kernel spreads them over the workers)."""
    return httpx.Client(base_url=server.url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0))


def _workers_serving(server, seconds: float = 60) -> dict[int, str]:
    """Worker index → model version, from /health over fresh connections, until both workers answered."""
    seen: dict[int, str] = {}
    deadline = time.monotonic() + seconds
    with _fresh(server) as client:
        while time.monotonic() < deadline:
            health = client.get("/health").json()
            seen[health["worker"]] = health["model_version"]
            if len(seen) == 2:
                return seen
    raise AssertionError(f"only workers {sorted(seen)} answered in {seconds} s")


def _metric(text: str, name: str, **labels) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_two_workers_follow_the_alias_log_once_count_together_and_share_the_rate_limit(service, database):
    server, key, (first, second), home = service
    headers = {"X-API-Key": key}
    market = bars(days=3, seed=9)
    payloads = [request_for(market, end) for end in range(600, 660)]
    assert _workers_serving(server) == {1: f"smc-lora/{first}", 2: f"smc-lora/{first}"}

    answered: list[dict] = []
    failures: list[int] = []
    sent: set[str] = set()  # bar times of the requests sent
    lock = threading.Lock()

    def predict(payload):
        with _fresh(server) as client:
            response = client.post("/predict", json=payload, headers=headers)
        with lock:
            sent.update(bar["time_utc"] for bar in payload["context_bars"] + [payload["current_bar"]])
            (answered.append(response.json()) if response.status_code == 200 else failures.append(
                response.status_code))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(predict, payloads[:40]))
    assert failures == [] and {a["model_version"] for a in answered} == {f"smc-lora/{first}"}

    # the alias moves under load: both workers follow, no request fails
    stop = threading.Event()

    def load():
        for payload in payloads[40:]:  # at most 20 requests: the rate limit's budget is for the blast below
            if stop.is_set():
                return
            predict(payload)

    loader = threading.Thread(target=load)
    loader.start()
    moved = time.monotonic()
    mlflow.MlflowClient().set_registered_model_alias("smc-lora", "champion", second)
    while _workers_serving(server) != {1: f"smc-lora/{second}", 2: f"smc-lora/{second}"}:
        assert time.monotonic() - moved < 10, "the alias move did not reach both workers in 10 s"
    reached_both_s = time.monotonic() - moved
    stop.set()
    loader.join()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(predict, payloads[:10]))
    assert failures == [] and reached_both_s < 5
    print(f"alias move reached both workers in {reached_both_s:.2f} s")
    assert [a["model_version"] for a in answered[-10:]] == [f"smc-lora/{second}"] * 10

    # every prediction logged exactly once, every bar stored once
    ids = [a["request_id"] for a in answered]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the background writers' pace
        with database.connection() as conn:
            logged = [row[0] for row in conn.execute("SELECT request_id::text FROM predictions WHERE NOT shadow")]
            stored, distinct = conn.execute("SELECT count(*), count(DISTINCT ts) FROM bars "
                                            "WHERE symbol = 'ES'").fetchone()
            revisions = conn.execute("SELECT count(*) FROM bar_revisions").fetchone()[0]
        if len(logged) >= len(ids) and stored >= len(sent):
            break
        time.sleep(0.5)
    assert sorted(logged) == sorted(ids) and len(set(ids)) == len(ids)
    assert stored == distinct == len(sent) and revisions == 0
    spools = home / "spool"
    assert sorted(p.name for p in (spools / "predictions").iterdir() if p.is_dir()) == ["worker-1", "worker-2"]
    assert not any(spools.rglob("refused"))

    # /metrics sums both workers' counts, whichever worker answers the scrape
    with _fresh(server) as client:
        scrapes = [client.get("/metrics").text for _ in range(6)]
    for text in scrapes:
        assert _metric(text, "smc_requests_total", endpoint="predict", status="200") == len(answered)
        assert sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                   if sample.name == "smc_predictions_total") == len(answered)
        assert _metric(text, "smc_model_info", version=f"smc-lora/{second}") == 1
        assert _metric(text, "smc_model_info", version=f"smc-lora/{first}") == 0
        assert _metric(text, "smc_model_reloads_total", result="ok") == 2  # the alias move, once in each worker

    # /admin/reload reaches one worker; it passes the reload on to the other (reload_notice.py)
    with _fresh(server) as client:
        reloaded = client.post("/admin/reload", headers={"X-Admin-Key": ADMIN})
        assert reloaded.status_code == 200, reloaded.text
        deadline = time.monotonic() + 10
        while _metric(client.get("/metrics").text, "smc_model_reloads_total", result="ok") < 4:
            assert time.monotonic() < deadline, "the reload did not reach the other worker in 10 s"
            time.sleep(0.2)
    print(f"/admin/reload reached both workers in {10 - (deadline - time.monotonic()):.2f} s")
    assert _workers_serving(server) == {1: f"smc-lora/{second}", 2: f"smc-lora/{second}"}

    # the rate limit: a fresh bucket, 300 requests over both workers, the burst admitted once in total
    redis.Redis.from_url(REDIS_URL).delete(bucket_key(key))
    statuses = []
    started = time.monotonic()

    def ask(_):
        with _fresh(server) as client:
            statuses.append(client.get("/model", headers=headers).status_code)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(ask, range(300)))
    refilled = RATE * (time.monotonic() - started)
    assert set(statuses) == {200, 429}
    assert BURST <= statuses.count(200) <= BURST + refilled + 1, (statuses.count(200), refilled)
    print(f"rate limit: {statuses.count(200)} of {len(statuses)} admitted over 2 workers (burst {BURST}, "
          f"{refilled:.2f} tokens refilled meanwhile)")
    with _fresh(server) as client:
        health = [client.get("/health").json() for _ in range(6)]
        text = client.get("/metrics").text
    assert {h["rate_limit"] for h in health} == {"shared"}
    assert _metric(text, "smc_requests_total", endpoint="model", status="429") == statuses.count(429)
