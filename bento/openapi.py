"""The service's OpenAPI document and its docs pages (Swagger UI at /docs, ReDoc at /redoc).

Why a document built here rather than FastAPI's default: the routes read the raw request
(auth, then the body limit, then JSON, then validation inside the time budget), so FastAPI
cannot infer their bodies; the routes declare their responses next to themselves
(``responses``, ``request_body``) and this module adds the request models, the key schemes
in force (none in dev mode), what the served model accepts (timeframe, symbols, bars), the
example request and BentoML's own probes. The pages load Swagger UI and ReDoc from the
``fastapi-offline`` package's files, served by the app itself: no CDN, so they work offline.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from smc_core.serving.answers import ErrorBody
from smc_core.serving.answers import HaltRequest
from smc_core.serving.request import BarsUpload, PredictRequest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_FILE = Path(__file__).resolve().parent / "clients" / "example_request.json"
REF = "#/components/schemas/{model}"
ASSETS_URL = "/docs/assets"


class Project(NamedTuple):
    title: str
    version: str
    summary: str


def project() -> Project:
    """Title, version and summary from the package metadata (pyproject.toml when not installed, as in a Bento)."""
    try:
        meta = metadata.metadata("smc-mlops")
        version, summary = meta["Version"], meta["Summary"]
    except metadata.PackageNotFoundError:
        import tomllib

        try:
            table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
            version, summary = table["version"], table["description"]
        except (OSError, KeyError):
            version, summary = "unknown", ""
    return Project("SMC predictor", version, summary)


def assets_dir() -> Path:
    """Swagger UI and ReDoc bundles shipped by the pinned ``fastapi-offline`` package."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).resolve().parent / "static"


def example_request() -> dict:
    """A real 49-bar ES 1m request (synthetic market, seed 9, 2024-01-02 13:57–14:45 UTC)."""
    return json.loads(EXAMPLE_FILE.read_text())


ERRORS = {
    400: "Malformed JSON: `details.message` is the parser's.",
    401: "Missing or wrong key: `details.header` names the header expected.",
    404: "No served signal has this request id.",
    409: "Reload refused (a broken or incompatible package, or no registry version under the alias): the previous "
         "model keeps serving; `details.reason`.",
    413: "Body over MAX_BODY_BYTES (UPLOAD_MAX_BYTES for /bars), or more items than MAX_BATCH_SIZE / "
         "UPLOAD_MAX_BARS: the limit is in `details`.",
    422: "The request cannot be served as sent; `details.errors[]` names each field path and what is wrong.",
    429: "Over RATE_LIMIT_PER_SECOND for this key (a token bucket of RATE_LIMIT_BURST): retry later.",
    500: "Unexpected failure (of the model, or of the service): no traceback; `details.type` for a model failure.",
    503: "Not ready: no model loaded yet (`details.last_error`).",
    504: "Not answered within the time budget (TIMEOUT_MS; 120 s for /bars): an answer that late is of no use "
         "to a strategy, so none is given.",
}

PREDICT_422 = (
    "The request cannot be served as sent (`details.errors[]`: path and reason):\n"
    "- `request validation failed`: a schema error or an impossible value: a missing field, a wrong type, NaN or "
    "infinity, high below low, open/close outside [low, high], negative volume, bars not strictly increasing in "
    "time;\n"
    "- `request does not match the model`: a timeframe other than the model's, bars not spaced like it (a 5-minute "
    "chart sent as `1m`), a time off its grid, a symbol it does not serve;\n"
    "- `too few bars`: fewer than `required_bars` and the store cannot complete them (`details.minimum_bars`, "
    "`details.missing_bars`);\n"
    "- `bars cannot be used`: a feature is undefined at a bar (the path names it).")


def responses(*codes: int, **texts: str) -> dict:
    """OpenAPI responses for these statuses, each with the error body ``{error, code, details}``."""
    return {code: {"model": ErrorBody, "description": texts.get(f"e{code}", ERRORS[code])} for code in codes}


def request_body(schema: dict, example: dict | None = None, key: str | None = "ApiKey") -> dict:
    """``openapi_extra`` of a route that reads its JSON body itself (the route still validates it)."""
    content: dict = {"schema": schema}
    if example is not None:
        content["examples"] = {"es-1m": {"summary": "49 closed ES 1m bars", "value": example}}
    return {"requestBody": {"required": True, "content": {"application/json": content}}, **security(key)}


def security(key: str | None) -> dict:
    return {"security": [{key: []}]} if key else {}


DESCRIPTION = """\
{summary}

NinjaTrader strategies call `POST /predict` on every closed bar with the bars up to that bar;
the answer says long, short or skip, how big, and where the stop and target are.

**Keys.** {keys}

**Bars.** A request carries the bars up to the one that just closed (`current_bar`), oldest
first, contiguous on the model's timeframe. {bars} With fewer bars, the service completes
the request from stored bars of the same series when they are contiguous with it (bars of
earlier requests, `POST /bars` uploads, the bar store), and says so in `bars_from_store`;
otherwise it answers 422 `too few bars` naming how many are missing. Every bar received is
kept (the live bar store).

**Errors.** Every refusal has the body `{{error, code, details}}`: 400 malformed JSON, 401 key,
413 too large, 422 not servable as sent (each field path named), 429 rate limit, 500 model
failure (no traceback), 503 not ready, 504 over the time budget (`TIMEOUT_MS`).

**Operations.** `/health` (no key), BentoML's `/livez`, `/readyz` and `/metrics`
(Prometheus), `GET /model` (what is served and what a request needs).
"""


def _served(model: dict | None) -> str:
    if model is None:
        return "No model is loaded yet (`GET /model` answers 503 until one is)."
    text = (f"The served model `{model['model_version']}` takes `{model['timeframe']}` bars of "
            f"{', '.join(f'`{s}`' for s in model['symbols'])} and needs **{model['required_bars']} bars** in all: "
            f"`current_bar` and {model['required_bars'] - 1} `context_bars` (`GET /model` says so for any model).")
    others = (model.get("lines") or [model])[1:]
    if others:
        text += (" Other model lines, chosen by `metadata.timeframe` (and `metadata.horizon`): "
                 + "; ".join(f"`{line['model_version']}` for `{line['timeframe']}` bars ({line['horizon']}), "
                             f"{line['required_bars']} bars" for line in others) + ".")
    return text


def _schemas(*models: type[BaseModel]) -> dict:
    schemas: dict = {}
    for model in models:
        schema = model.model_json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


INFRA = {
    "/livez": ("BentoML's liveness probe (no key).", {"200": "The process is alive."}),
    "/readyz": ("BentoML's readiness probe (no key): ready once a verified, warmed-up model is loaded.",
                {"200": "Ready.", "503": "Not ready: no model loaded yet."}),
    "/metrics": ("Prometheus metrics (no key): `smc_*` (requests, latency, answers by label and model version, "
                 "confidence, reloads, lost rows, bar conflicts) and BentoML's `bentoml_*`.",
                 {"200": "Prometheus text format."}),
}


def document(app, proj: Project, settings, model: dict | None, max_batch: int, max_upload_bars: int) -> dict:
    """The OpenAPI document for the routes of ``app`` as this service is configured and serving now."""
    keys_in_force = {"ApiKey": settings.api_key is not None or not settings.dev_mode,
                     "AdminKey": settings.admin_api_key is not None or not settings.dev_mode}
    keys = ("Send `X-API-Key` (and `X-Admin-Key` for `/admin/*`); `/health` and the probes need none."
            if keys_in_force["ApiKey"] else
            "None: this service runs in dev mode (`SMC_DEV_MODE=1` without `API_KEY`); never expose it.")
    doc = get_openapi(title=proj.title, version=proj.version, routes=app.routes,
                      summary="Long / short / skip for the bar that just closed, with the stop and target to trade.",
                      description=DESCRIPTION.format(summary=proj.summary, keys=keys, bars=_served(model)),
                      tags=[{"name": "predict", "description": "What strategies call."},
                            {"name": "bars", "description": "The live bar store."},
                            {"name": "signals", "description": "Served signals: history, outcomes, analytics. Live: "
                                                               "the WebSocket `/signals/stream` and the Redis Stream."},
                            {"name": "operations", "description": "Model, health, probes, metrics, admin."}])
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(_schemas(PredictRequest, BarsUpload, HaltRequest))
    _describe_model(schemas, model)
    schemes = {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                          "description": "API_KEY: /predict, /predict_batch, /bars, /model."},
               "AdminKey": {"type": "apiKey", "in": "header", "name": "X-Admin-Key",
                            "description": "ADMIN_API_KEY: /admin/*."}}
    schemes = {name: scheme for name, scheme in schemes.items() if keys_in_force[name]}
    if schemes:
        doc["components"]["securitySchemes"] = schemes
    for path, item in doc["paths"].items():
        for operation in item.values():
            operation["security"] = [s for s in operation.get("security", []) if set(s) <= set(schemes)]
            if not operation["security"]:
                operation.pop("security")
                operation["responses"].pop("401", None)
                operation["responses"].pop("429", None)  # the rate limit is per key
    batch = doc["paths"]["/predict_batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    batch["properties"]["requests"]["maxItems"] = max_batch
    schemas["BarsUpload"]["properties"]["bars"]["maxItems"] = max_upload_bars
    for path, (text, answers) in INFRA.items():
        media = "text/plain"
        doc["paths"][path] = {"get": {"tags": ["operations"], "summary": text.split(" (")[0].rstrip("."),
                                      "description": text, "operationId": path.strip("/"),
                                      "responses": {code: {"description": what, "content": {media: {
                                          "schema": {"type": "string"}}}} for code, what in answers.items()}}}
    return doc


def _describe_model(schemas: dict, model: dict | None) -> None:
    """What the served model accepts, in the request schema: its timeframe, symbols and bar count."""
    if model is None:
        return
    metadata_props = schemas["Metadata"]["properties"]
    lines = model.get("lines") or [model]
    metadata_props["timeframe"]["enum"] = list(dict.fromkeys(line["timeframe"] for line in lines))
    metadata_props["symbol"]["enum"] = sorted({symbol for line in lines for symbol in line["symbols"]})
    bars = schemas["PredictRequest"]["properties"]["context_bars"]
    bars["description"] += (f" The served model ({model['model_version']}) needs {model['required_bars']} bars in "
                            f"all: send {model['required_bars'] - 1} here.")


def swagger_page(proj: Project, openapi_url: str = "/openapi.json"):
    from fastapi.openapi.docs import get_swagger_ui_html

    return get_swagger_ui_html(
        openapi_url=openapi_url, title=f"{proj.title} {proj.version} — API",
        swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js", swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
        swagger_ui_parameters={"deepLinking": True, "displayRequestDuration": True, "defaultModelsExpandDepth": 0,
                               "tryItOutEnabled": True, "validatorUrl": None})


def redoc_page(proj: Project, openapi_url: str = "/openapi.json"):
    from fastapi.openapi.docs import get_redoc_html

    return get_redoc_html(openapi_url=openapi_url, title=f"{proj.title} {proj.version} — API",
                          redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
                          redoc_favicon_url=f"{ASSETS_URL}/favicon.png", with_google_fonts=False)
