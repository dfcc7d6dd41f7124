"""A typed client for the SMC /predict service (seed 000 §6.2 retry logic).

Three attempts with exponential backoff (100 ms, then 200 ms) on timeouts, connection
errors and 5xx/429 answers; 4xx answers other than 429 are the caller's mistake and are
raised at once with the server's ``{error, code, details}``. Standard library + httpx only,
so a strategy host can vendor this one file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import httpx

RETRY_DELAYS = (0.1, 0.2)
RETRYABLE = {429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Risk:
    """The protective orders to trade with an answer: the server's ATR and the multiples the
    model was evaluated with, in whole ticks (prices only for long/short)."""

    atr: float
    stop_distance: float
    target_distance: float
    stop_price: float | None
    target_price: float | None
    max_holding_bars: int | None
    tick_size: float

    @classmethod
    def from_json(cls, block: dict) -> "Risk":
        return cls(float(block["atr"]), float(block["stop_distance"]), float(block["target_distance"]),
                   block.get("stop_price"), block.get("target_price"), block.get("max_holding_bars"),
                   float(block["tick_size"]))


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float
    probabilities: dict[str, float]
    position_size: float
    model_version: str
    request_id: str
    processing_time_ms: float
    risk: Risk
    bars_from_store: int
    raw: dict

    @classmethod
    def from_json(cls, body: dict) -> "Prediction":
        return cls(body["label"], float(body["confidence"]), dict(body["probabilities"]),
                   float(body.get("position_size", 0.0)), body["model_version"], body["request_id"],
                   float(body["processing_time_ms"]), Risk.from_json(body["risk"]),
                   int(body.get("bars_from_store", 0)), body)


class ServiceError(Exception):
    """The service refused the request (or every attempt failed); ``status`` 0 = no answer."""

    def __init__(self, status: int, error: str, details: Any = None, attempts: int = 1):
        super().__init__(f"{status} {error}" + (f": {details}" if details else ""))
        self.status, self.error, self.details, self.attempts = status, error, details, attempts


class SmcClient:
    def __init__(self, base_url: str, api_key: str, timeout: float = 0.5,
                 retry_delays: Sequence[float] = RETRY_DELAYS, transport: httpx.BaseTransport | None = None):
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers={"X-API-Key": api_key},
                                  transport=transport)
        self.retry_delays = tuple(retry_delays)

    def predict(self, context_bars: list[dict], current_bar: dict, metadata: dict,
                features: dict | None = None) -> Prediction:
        payload = {"context_bars": context_bars, "current_bar": current_bar, "features": features or {},
                   "metadata": metadata}
        return Prediction.from_json(self._post("/predict", payload))

    def predict_payload(self, payload: dict) -> dict:
        """The raw answer for a ready-made seed-000 request body (replays, tools)."""
        return self._post("/predict", payload)

    def upload_bars(self, symbol: str, timeframe: str, bars: list[dict]) -> dict:
        """POST /bars: history or any other feed; returns the inserted / unchanged / conflicting counts."""
        return self._post("/bars", {"symbol": symbol, "timeframe": timeframe, "bars": bars})

    def health(self) -> dict:
        return self._http.get("/health").json()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "SmcClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _post(self, path: str, payload: dict) -> dict:
        last: ServiceError | None = None
        for attempt in range(len(self.retry_delays) + 1):
            if attempt:
                time.sleep(self.retry_delays[attempt - 1])
            try:
                response = self._http.post(path, json=payload)
            except httpx.TransportError as error:  # timeout, refused, reset
                last = ServiceError(0, type(error).__name__, str(error), attempt + 1)
                continue
            if response.status_code == 200:
                return response.json()
            body = _json(response)
            last = ServiceError(response.status_code, body.get("error", response.reason_phrase),
                                body.get("details"), attempt + 1)
            if response.status_code not in RETRYABLE:
                raise last
        raise last


def _json(response: httpx.Response) -> dict:
    try:
        body = response.json()
        return body if isinstance(body, dict) else {}
    except ValueError:
        return {}
