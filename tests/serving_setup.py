"""A small trained model package and /predict requests built from real bars: what the serving
tests and the service benchmark share."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pandas as pd

from smc_core.model.pipeline import train_small_package
from smc_core.serving.replay import request_payload
from smc_core.synthetic import SyntheticConfig, generate_bars
from smc_jobs.local import terminate


def bars(days: int = 3, seed: int = 5) -> pd.DataFrame:
    return generate_bars(SyntheticConfig(days=days, edge="smc", edge_strength=0.9, seed=seed))


def tiny_package(path: Path, days: int = 3, seed: int = 5, bars_frame: pd.DataFrame | None = None) -> Path:
    """A real LoRA package trained for one epoch on synthetic bars (seconds, not minutes)."""
    train_small_package(path, {"ES": bars(days, seed) if bars_frame is None else bars_frame}, epochs=1)
    return path


def request_for(frame: pd.DataFrame, end: int, count: int = 49, symbol: str = "ES") -> dict:
    """The seed-000 request for the ``count`` bars ending at row ``end`` (the last is current_bar)."""
    return request_payload(frame.iloc[end - count + 1: end + 1], symbol, "1m")


ROOT = Path(__file__).resolve().parent.parent
KEY, ADMIN = "test-key", "test-admin-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``bentoml serve`` of the service; one worker unless ``env`` says WORKERS, HTTPS when it names
    SSL_CERTFILE (the client then trusts that certificate only)."""

    def __init__(self, env: dict, home: Path):
        self.port = free_port()
        self.url = f"{'https' if env.get('SSL_CERTFILE') else 'http'}://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "MODEL_URI", "DATABASE_URL")}
        # BENTOML_HOME of its own: BentoML empties its Prometheus multiprocess folder there when a
        # server starts, which hid the metrics of every server started before it from /metrics
        full_env.update({"API_KEY": KEY, "ADMIN_API_KEY": ADMIN, "SMC_HOME": str(home), "TIMEOUT_MS": "5000",
                         "WORKERS": "1",
                         "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
                         "BENTOML_HOME": str(home / "bentoml"), **env})
        self.log = open(home / f"server-{self.port}.log", "w")
        self.process = subprocess.Popen([str(Path(sys.executable).parent / "bentoml"), "serve",
                                         "bento.service:SmcPredictor", "--port", str(self.port), "--host", "127.0.0.1"],
                                        cwd=ROOT, env=full_env, stdout=self.log, stderr=subprocess.STDOUT)
        self.verify = ssl.create_default_context(cafile=env["SSL_CERTFILE"]) if env.get("SSL_CERTFILE") else True
        self.client = httpx.Client(base_url=self.url, timeout=30, verify=self.verify)

    def wait(self, ready: bool = True, timeout: float = 90) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {Path(self.log.name).read_text()[-3000:]}")
            try:
                health = self.client.get("/health")
                if health.status_code == 200 and (health.json()["model_loaded"] or not ready):
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server not up in {timeout}s: {Path(self.log.name).read_text()[-3000:]}")

    def predict(self, payload, key=KEY, **kwargs):
        return self.client.post("/predict", json=payload, headers={"X-API-Key": key} if key else {}, **kwargs)

    def stop(self):
        self.client.close()
        terminate(self.process)
        self.log.close()


class DatabaseProxy:
    """A TCP forwarder in front of PostgreSQL. ``cut()`` refuses new connections and resets every
    open one, which is what a client sees when the server stops; ``restore()`` listens again on
    the same port. The machine's shared server is never touched."""

    def __init__(self, url: str):
        import psycopg

        info = psycopg.conninfo.conninfo_to_dict(url)
        self.target = (info.get("host") or "127.0.0.1", int(info.get("port") or 5432))
        self.port = free_port()
        self.url = psycopg.conninfo.make_conninfo(url, host="127.0.0.1", port=str(self.port))
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    def restore(self) -> "DatabaseProxy":
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread, which lets go of the port
            except OSError:
                pass
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:  # shutdown first: close() alone leaves a socket open under a thread blocked in recv
            for step in (lambda: sock.shutdown(socket.SHUT_RDWR), sock.close):
                try:
                    step()
                except OSError:
                    pass

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = self._connect_upstream()
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _connect_upstream(self) -> socket.socket:
        host, port = self.target
        if host.startswith("/"):  # a Unix-socket directory (the embedded server): libpq's socket file there
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.settimeout(5)
            upstream.connect(f"{host}/.s.PGSQL.{port}")
        else:
            upstream = socket.create_connection((host, port), timeout=5)
        upstream.settimeout(None)
        return upstream

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.close()
                except OSError:
                    pass


def self_signed_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A certificate for ``host`` (its IP address as subject alternative name) and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
