"""The service following the registry alias under continuous load (a promotion, then a rollback,
with 0 failed requests), and the Python client's retries against the real service behind a
connection that fails twice."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
from serving_setup import KEY, Server, bars, request_for, tiny_package

from smc_core.registry import TrackingConfig, configure, register_package

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bento" / "clients" / "python"))
from smc_client import ServiceError, SmcClient  # noqa: E402


@pytest.fixture(scope="module")
def registry_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("swap_home")
    configure(TrackingConfig(f"sqlite:///{home / 'mlflow.db'}", (home / "mlartifacts").as_uri()))
    client = mlflow.MlflowClient()
    versions = []
    for seed in (5, 6):
        package = tiny_package(tmp_path_factory.mktemp("pkg") / "model", seed=seed)
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(package), "model_package")
            versions.append(register_package(run.info.run_id, f"{run.info.artifact_uri}/model_package", alias=None))
    client.set_registered_model_alias("smc-lora", "champion", versions[0])
    server = Server({"MODEL_POLL_SECONDS": "0.2", "LOG_PREDICTIONS": "false", "DATABASE_URL": "",
                     "RATE_LIMIT_PER_SECOND": "100000"}, home).wait()  # 4 clients flat out: not the limit's test
    yield server, versions
    server.stop()


def _until_all(server, payload, version, stop_after: float = 30.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < stop_after:
        if server.predict(payload).json().get("model_version") == f"smc-lora/{version}":
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"version {version} never served")


def test_alias_moves_are_followed_under_load_without_a_failed_request(registry_server):
    server, (first, second) = registry_server
    market = bars(days=3, seed=9)
    payload = request_for(market, 700)
    assert server.predict(payload).json()["model_version"] == f"smc-lora/{first}"
    failures, served, stop = [], [], threading.Event()

    def load():
        with SmcClient(server.url, KEY, timeout=5, retry_delays=()) as client:  # no retries: count every failure
            while not stop.is_set():
                try:
                    served.append(client.predict(payload["context_bars"], payload["current_bar"],
                                                 payload["metadata"]).model_version)
                except ServiceError as error:
                    failures.append(error)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1)
    mlflow.MlflowClient().set_registered_model_alias("smc-lora", "champion", second)
    promoted_in = _until_all(server, payload, second)
    time.sleep(0.5)
    mlflow.MlflowClient().set_registered_model_alias("smc-lora", "champion", first)  # rollback
    rolled_back_in = _until_all(server, payload, first)
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join()
    assert failures == [] and len(served) > 50
    assert {f"smc-lora/{first}", f"smc-lora/{second}"} <= set(served)
    assert promoted_in < 5 and rolled_back_in < 5, (promoted_in, rolled_back_in)
    # after the rollback every answer comes from the restored version
    assert served[-5:] == [f"smc-lora/{first}"] * 5


class FlakyProxy(threading.Thread):
    """Forwards TCP to the service, but closes the first ``failures`` connections at once."""

    def __init__(self, target_port: int, failures: int):
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target_port, self.failures, self.accepted = target_port, failures, 0

    def run(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self.accepted <= self.failures:
                conn.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source, sink):
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.listener.close()


def test_the_client_retries_twice_with_backoff_then_succeeds(registry_server):
    server, _ = registry_server
    proxy = FlakyProxy(server.port, failures=2)
    proxy.start()
    payload = request_for(bars(days=3, seed=9), 700)
    try:
        with SmcClient(f"http://127.0.0.1:{proxy.port}", KEY, timeout=5) as client:
            started = time.monotonic()
            prediction = client.predict(payload["context_bars"], payload["current_bar"], payload["metadata"])
            elapsed = time.monotonic() - started
        assert prediction.label in ("long", "short", "skip") and proxy.accepted == 3
        assert elapsed >= 0.3  # waited 100 ms, then 200 ms
        with SmcClient(f"http://127.0.0.1:{proxy.port}", "wrong", timeout=5) as client:
            with pytest.raises(ServiceError) as refused:
                client.predict(payload["context_bars"], payload["current_bar"], payload["metadata"])
        assert refused.value.status == 401 and refused.value.attempts == 1  # a 4xx is not retried
    finally:
        proxy.close()
