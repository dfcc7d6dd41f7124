"""The service documents itself (issue 19): /docs opened in headless Chromium shows the
project's title, version and the example request, needs nothing from the network, shows no
key field in dev mode, and its example, executed from the page, answers 200; `/` leads there."""

from __future__ import annotations

import json

import pytest
from browser import Browser, chromium_binary
from serving_setup import ROOT, Server, tiny_package

from smc_core.serving.answers import PredictAnswer

EXAMPLE = json.loads((ROOT / "bento" / "clients" / "example_request.json").read_text())


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory):
    """A keyless dev-mode service of an ES 1m model, without a database."""
    package = tiny_package(tmp_path_factory.mktemp("packages") / "smc-test")
    home = tmp_path_factory.mktemp("home")
    running = Server({"MODEL_PATH": str(package), "SMC_DEV_MODE": "1", "API_KEY": "", "ADMIN_API_KEY": "",
                      "DATABASE_URL": "", "LOG_PREDICTIONS": "false", "CAPTURE_BARS": "false"}, home).wait()
    yield running
    running.stop()


def test_the_example_is_a_real_49_bar_request_that_answers_200(dev_server):
    document = dev_server.client.get("/openapi.json").json()
    operation = document["paths"]["/predict"]["post"]
    example = operation["requestBody"]["content"]["application/json"]["examples"]["es-1m"]["value"]
    assert example == EXAMPLE and len(example["context_bars"]) + 1 == 49
    assert example["metadata"] == {"symbol": "ES", "timeframe": "1m", "request_time": "2024-01-02T14:45:00Z",
                                   "session": "RTH"}
    response = dev_server.client.post("/predict", json=example)
    assert response.status_code == 200, response.text
    PredictAnswer.model_validate(response.json())


def test_the_document_describes_the_contract(dev_server):
    document = dev_server.client.get("/openapi.json").json()
    info = document["info"]
    assert info["title"] == "SMC predictor" and info["version"] == "0.1.0"  # pyproject.toml's version
    assert "49 bars" in info["description"] and "dev mode" in info["description"]
    predict = document["paths"]["/predict"]["post"]
    assert set(predict["responses"]) == {"200", "400", "413", "422", "500", "503", "504"}  # no 401/429 without keys
    assert predict["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/PredictAnswer")
    for code in ("400", "413", "422", "500", "503", "504"):
        assert predict["responses"][code]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    schemas = document["components"]["schemas"]
    assert {"risk", "bars_from_store"} <= set(schemas["PredictAnswer"]["required"])
    assert set(schemas["ErrorBody"]["required"]) == {"error", "code", "details"}
    assert schemas["BarsAnswer"]["required"] and schemas["PredictRequest"]["properties"]["context_bars"]
    bars = schemas["PredictRequest"]["properties"]["context_bars"]["description"]
    assert "needs 49 bars in all: send 48 here" in bars and "bars_from_store" in bars
    assert schemas["Metadata"]["properties"]["timeframe"]["enum"] == ["1m"]
    assert schemas["Metadata"]["properties"]["symbol"]["enum"] == ["ES"]
    # dev mode: no key anywhere
    assert "securitySchemes" not in document["components"]
    assert not any("security" in op for item in document["paths"].values() for op in item.values())
    # every route of the app is documented (plus BentoML's probes and metrics)
    assert set(document["paths"]) == {"/predict", "/predict_batch", "/bars", "/model", "/health", "/admin/reload",
                                      "/admin/halt", "/admin/resume", "/signals", "/signals/analytics", "/signals/{request_id}",
                                      "/livez", "/readyz", "/metrics"}


def test_root_leads_to_the_docs(dev_server):
    response = dev_server.client.get("/", follow_redirects=False)
    assert response.status_code in (302, 307) and response.headers["location"] == "/docs"
    redoc = dev_server.client.get("/redoc")
    assert redoc.status_code == 200 and "/docs/assets/redoc.standalone.js" in redoc.text
    assert "cdn" not in redoc.text.lower() and "cdn" not in dev_server.client.get("/docs").text.lower()


@pytest.mark.skipif(chromium_binary() is None, reason="Chromium is not installed (.ci/run installs it)")
def test_docs_page_in_a_browser_shows_the_example_and_runs_it(dev_server, tmp_path):
    browser = Browser(tmp_path / "profile")
    try:
        browser.open(f"{dev_server.url}/")  # the redirect to /docs, as a person arriving would
        browser.wait_for("!!document.querySelector('.info .title')")
        title = browser.evaluate("document.querySelector('.info .title').innerText")
        assert "SMC predictor" in title and "0.1.0" in title
        assert browser.evaluate("!document.querySelector('.btn.authorize')")  # dev mode: no key field
        browser.evaluate("document.querySelector('#operations-predict-predict .opblock-summary-control').click()")
        body = browser.wait_for("(document.querySelector('#operations-predict-predict textarea.body-param__text') "
                                "|| {}).value")
        assert json.loads(body) == EXAMPLE  # the example request, ready to send
        browser.evaluate("document.querySelector('#operations-predict-predict .btn.execute').click()")
        status = browser.wait_for("(document.querySelector('#operations-predict-predict .live-responses-table "
                                  "tbody .response-col_status') || {}).innerText")
        answer = browser.evaluate("document.querySelector('#operations-predict-predict .live-responses-table "
                                  "tbody .response-col_description pre').innerText")
        browser.screenshot(tmp_path / "docs.png")
    finally:
        browser.close()
    assert status.strip() == "200", answer
    PredictAnswer.model_validate(json.loads(answer))
    # offline: every file the page loaded came from the service itself
    fetched = [url for url in browser.requested if not url.startswith("data:")]
    assert fetched and all(url.startswith(dev_server.url) for url in fetched), fetched
    assert f"{dev_server.url}/docs/assets/swagger-ui-bundle.js" in fetched
