"""Redis for the signal tests: the machine's shared server (a dedicated database number and a
key of each test's own), or a redis-server of the test's own on a free port, which a test may
stop and start again without disturbing anyone."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis
from serving_setup import free_port

SHARED_REDIS = "redis://127.0.0.1:6379/13"
"""Database 13 of the machine's Redis: only these tests use it, each under its own stream key."""


def unique_stream() -> str:
    return f"test:signals:{uuid.uuid4().hex[:12]}"


def drop_stream(url: str, stream: str) -> None:
    client = redis.Redis.from_url(url)
    client.delete(stream, stream + ":dead")
    client.close()


class OwnRedis:
    """A redis-server on a free port with an append-only file, so a stop and a start keep the stream."""

    def __init__(self, directory: Path, port: int | None = None):
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
        self.directory, self.port = directory, port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> "OwnRedis":
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no"],
            stdout=open(self.directory / "redis.log", "a"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_connect_timeout=0.5).ping():
                    return self
            except (redis.ConnectionError, redis.BusyLoadingError):
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start: {(self.directory / 'redis.log').read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: redis-server flushes its append-only file and exits
            self.process.wait(timeout=20)
        self.process = None
