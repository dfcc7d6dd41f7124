"""The service over HTTPS with a certificate made at test time, its keys read from secret files
(the Docker/Kubernetes convention): /predict answers over TLS to a client that trusts the
certificate, and to nothing else — not in clear text, not to a client that does not trust it."""

from __future__ import annotations

import ssl
import sys
from pathlib import Path

import httpx
import pytest
from serving_setup import ADMIN, KEY, Server, bars, request_for, self_signed_certificate, tiny_package

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bento" / "clients" / "python"))
from smc_client import SmcClient  # noqa: E402


@pytest.fixture(scope="module")
def tls_server(database, tmp_path_factory):
    secrets = tmp_path_factory.mktemp("secrets")
    cert, key = self_signed_certificate(secrets)
    (secrets / "api_key").write_text(KEY + "\n")
    (secrets / "admin_api_key").write_text(ADMIN + "\n")
    package = tiny_package(tmp_path_factory.mktemp("pkg") / "model")
    server = Server({"MODEL_PATH": str(package), "DATABASE_URL": database.url, "SSL_CERTFILE": str(cert),
                     "SSL_KEYFILE": str(key), "API_KEY": "", "ADMIN_API_KEY": "",
                     "API_KEY_FILE": str(secrets / "api_key"), "ADMIN_API_KEY_FILE": str(secrets / "admin_api_key"),
                     "LOG_PREDICTIONS": "false", "CAPTURE_BARS": "false"}, tmp_path_factory.mktemp("home")).wait()
    yield server, cert
    server.stop()


def test_predict_over_https_with_keys_from_secret_files(tls_server, monkeypatch):
    server, cert = tls_server
    assert server.url.startswith("https://")
    payload = request_for(bars(days=3, seed=9), 700)
    answer = server.predict(payload)
    assert answer.status_code == 200 and answer.json()["label"] in {"long", "short", "skip"}
    assert server.predict(payload, key="not-the-key").status_code == 401
    assert server.client.post("/admin/reload", headers={"X-Admin-Key": ADMIN}).status_code == 200
    assert server.client.get("/readyz").status_code == 200

    served = ssl.get_server_certificate(("127.0.0.1", server.port))
    assert ssl.PEM_cert_to_DER_cert(served) == ssl.PEM_cert_to_DER_cert(cert.read_text())

    # the project's Python client (and `smc replay`) trusts a private certificate through SSL_CERT_FILE
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    with SmcClient(server.url, KEY, timeout=10) as client:
        assert client.predict(payload["context_bars"], payload["current_bar"], payload["metadata"]).label in {
            "long", "short", "skip"}


def test_nothing_is_served_in_clear_text_or_to_a_client_that_does_not_trust_the_certificate(tls_server):
    server, _ = tls_server
    payload = request_for(bars(days=3, seed=9), 700)
    with pytest.raises(httpx.TransportError):  # the TLS port does not speak plain HTTP
        httpx.post(f"http://127.0.0.1:{server.port}/predict", json=payload, headers={"X-API-Key": KEY}, timeout=10)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):  # self-signed: not in the CA bundle
        httpx.post(f"{server.url}/predict", json=payload, headers={"X-API-Key": KEY}, timeout=10,
                   verify=ssl.create_default_context())
