"""The rate limit shared by several workers through the machine's real Redis, and what happens when
Redis is away: each worker limits on its own, with one warning, and takes the shared bucket back
when Redis answers again (a Redis server of the test's own, on another port, is stopped and started)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
import uuid

import pytest
import redis
from serving_setup import free_port

from smc_core.serving.rate_limit import RateLimiter, SharedRateLimiter, bucket_key

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def api_key():
    key = f"rate-limit-test-{uuid.uuid4()}"
    yield key
    redis.Redis.from_url(REDIS_URL).delete(bucket_key(key))


def _allowed(limiters, key: str, requests: int) -> int:
    """``requests`` calls spread over ``limiters`` in turn, as a load balancer spreads them over workers."""
    return sum(limiters[i % len(limiters)].allow(key) for i in range(requests))


def test_two_workers_share_one_bucket_where_per_process_buckets_admit_twice_the_burst(api_key):
    # rate 0.001/s: no token comes back during the test, so the burst is the whole allowance
    shared = [SharedRateLimiter(REDIS_URL, 0.001, 10) for _ in range(2)]
    assert _allowed(shared, api_key, 40) == 10
    assert all(limiter.outage is None for limiter in shared)
    separate = [RateLimiter(0.001, 10) for _ in range(2)]
    assert _allowed(separate, api_key, 40) == 20  # what two workers admitted before: twice the limit

    stored = redis.Redis.from_url(REDIS_URL)
    assert api_key not in str(stored.keys(f"{bucket_key('')[:14]}*"))  # only a digest of the key is stored
    assert 0 < stored.pttl(bucket_key(api_key)) <= 1000 * (10 / 0.001 + 1)  # a full refill's time: then it is full


def test_the_shared_bucket_refills_like_the_per_process_one(api_key):
    """2 tokens per second, burst 3: three at once, the fourth refused; a second later two more."""
    for limiter in (SharedRateLimiter(REDIS_URL, 2.0, 3), RateLimiter(2.0, 3)):
        key = api_key + type(limiter).__name__
        assert [limiter.allow(key) for _ in range(4)] == [True, True, True, False]
        time.sleep(1.05)  # 2.1 tokens back, one under a third
        assert [limiter.allow(key) for _ in range(3)] == [True, True, False]
        redis.Redis.from_url(REDIS_URL).delete(bucket_key(key))


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_redis_away_means_per_worker_limits_and_one_warning_never_a_failure(api_key, tmp_path, caplog):
    port = free_port()
    limiter = SharedRateLimiter(f"redis://127.0.0.1:{port}/0", 0.001, 3, retry_seconds=0.2)
    with caplog.at_level(logging.WARNING, logger="smc.serving.rate_limit"):
        assert [limiter.allow(api_key) for _ in range(5)] == [True, True, True, False, False]  # its own bucket
        time.sleep(0.3)
        assert limiter.allow(api_key) is False  # Redis tried again, still away: the own bucket, still empty
    assert limiter.outage is not None and "Connection" in limiter.outage
    warnings = [record.message for record in caplog.records]
    assert len(warnings) == 1 and "unavailable" in warnings[0] and "each worker limits on its own" in warnings[0]

    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        own = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                own.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        time.sleep(0.3)  # past retry_seconds
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="smc.serving.rate_limit"):
            # back on the shared bucket, which starts full: three more, then refused
            assert [limiter.allow(api_key) for _ in range(4)] == [True, True, True, False]
        assert limiter.outage is None and "answers again" in caplog.records[0].message
        assert own.exists(bucket_key(api_key))
    finally:
        server.terminate()
        server.wait(timeout=10)
    time.sleep(0.3)
    assert limiter.allow(api_key) is False  # away again: the own bucket (empty since the first round)
    assert limiter.outage is not None
