"""Rate limits per API key: a token bucket in the process, or one bucket in Redis shared by every worker.

Why Redis: with several serving workers (or replicas) a per-process bucket lets each of them
admit the full rate, so N workers admit N times the limit. With ``REDIS_URL`` set, every
worker takes its tokens from the same bucket through one Lua script, which Redis runs
atomically, with Redis's own clock (``TIME``), so workers on machines whose clocks differ
still agree. The semantics are the per-process bucket's exactly: ``burst`` tokens to start
with, ``rate`` tokens per second refilled up to ``burst``, one token per request.

Redis never fails a request: when it does not answer within a few milliseconds the worker
logs a warning once and limits with its own bucket until Redis answers again (checked at
most every ``retry_seconds``), so an outage degrades the limit to per worker, never to 5xx.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time

log = logging.getLogger("smc.serving.rate_limit")

KEY_PREFIX = "smc:ratelimit:"

# KEYS[1] the bucket; ARGV rate (tokens/s), burst, expiry (ms). Returns 1 when a token was taken.
# The state expires once a full refill would have happened anyway: an expired bucket is a full one.
_TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local last = tonumber(state[2])
if tokens == nil or last == nil then
  tokens = burst
  last = now
end
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'ts', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return allowed
"""


class RateLimiter:
    """A token bucket per API key in this process: ``rate`` requests per second, bursts up to ``burst``."""

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


def bucket_key(api_key: str) -> str:
    """The Redis key of ``api_key``'s bucket: a digest, so no key is ever stored in Redis."""
    return KEY_PREFIX + hashlib.sha256(api_key.encode()).hexdigest()[:32]


class SharedRateLimiter:
    """The same bucket kept in Redis for every worker; the per-process bucket while Redis is away."""

    def __init__(self, url: str, rate: float, burst: int, *, timeout_s: float = 0.05, retry_seconds: float = 1.0):
        import redis

        self.rate, self.burst, self.retry_seconds = rate, burst, retry_seconds
        self.fallback = RateLimiter(rate, burst)
        self._errors = (redis.RedisError, OSError)
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                            health_check_interval=0)
        self._script = self._client.register_script(_TOKEN_BUCKET)
        self._expiry_ms = int(1000 * (burst / rate + 1))
        self._retry_at = 0.0
        self._lock = threading.Lock()
        self.outage: str | None = None
        """Why Redis was last found unavailable; None while the shared bucket is in use."""
        self._where = _without_password(url)

    def allow(self, key: str) -> bool:
        if time.monotonic() < self._retry_at:
            return self.fallback.allow(key)
        try:
            allowed = bool(self._script(keys=[bucket_key(key)], args=[self.rate, self.burst, self._expiry_ms]))
        except self._errors as error:
            self._unavailable(error)
            return self.fallback.allow(key)
        if self.outage is not None:
            with self._lock:
                if self.outage is not None:
                    log.warning("rate limit: Redis at %s answers again; the limit is shared by every worker",
                                self._where)
                    self.outage = None
        return allowed

    def _unavailable(self, error: Exception) -> None:
        with self._lock:
            self._retry_at = time.monotonic() + self.retry_seconds
            if self.outage is None:  # once per outage, not once per request
                log.warning("rate limit: Redis at %s is unavailable (%s: %s); each worker limits on its own "
                            "until it answers", self._where, type(error).__name__, str(error).strip()[:200])
            self.outage = f"{type(error).__name__}: {str(error).strip()}"[:300]


def rate_limiter(rate: float, burst: int, redis_url: str | None) -> RateLimiter | SharedRateLimiter:
    """The shared bucket when ``redis_url`` is given (REDIS_URL), else the per-process one."""
    return RateLimiter(rate, burst) if redis_url is None else SharedRateLimiter(redis_url, rate, burst)


def _without_password(url: str) -> str:
    """``url`` as it may appear in a log line."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{':' + str(parts.port) if parts.port else ''}{parts.path}"
