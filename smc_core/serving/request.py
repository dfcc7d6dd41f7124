"""The /predict request (seed 000 §3.2), validated with errors that name the field path.

Why strict: a NinjaTrader strategy trades on the answer, so an impossible bar (NaN, high
below low, unsorted or repeated times) must be refused with the exact place to fix, never
silently repaired. Indicator values the client sends are kept, only to be compared with
the server's own computation (DESIGN §4: counted, never trusted).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Optional, Union

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MAX_PRICE = 1e9     # no futures contract trades above; keeps every derived feature finite
MAX_VOLUME = 1e12
EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(2200, 1, 1, tzinfo=timezone.utc)  # well inside pandas' nanosecond range
CLIENT_INDICATORS = ("ext_dir", "int_dir", "has_fvg_bull", "has_fvg_bear", "has_ob_bull", "has_ob_bear", "atr")

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MICROSECOND = timedelta(microseconds=1)


class Bar(BaseModel):
    """One closed bar; ``time_utc`` is its close time (naive times are taken as UTC)."""

    model_config = ConfigDict(allow_inf_nan=False, extra="ignore")

    time_utc: datetime
    o: float = Field(gt=0, le=MAX_PRICE)
    h: float = Field(gt=0, le=MAX_PRICE)
    l: float = Field(gt=0, le=MAX_PRICE)  # noqa: E741 (the seed's field name)
    c: float = Field(gt=0, le=MAX_PRICE)
    volume: float = Field(ge=0, le=MAX_VOLUME)
    delta: Optional[float] = Field(default=None, ge=-MAX_VOLUME, le=MAX_VOLUME)
    ext_dir: Optional[int] = Field(default=None, ge=-1, le=1)
    int_dir: Optional[int] = Field(default=None, ge=-1, le=1)
    has_fvg_bull: Optional[bool] = None
    has_fvg_bear: Optional[bool] = None
    has_ob_bull: Optional[bool] = None
    has_ob_bear: Optional[bool] = None
    atr: Optional[float] = Field(default=None, ge=0)

    @field_validator("time_utc")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        try:
            utc = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
        except OverflowError:  # e.g. 0001-01-01T00:00+01:00 has no UTC representation
            raise ValueError(f"{value.isoformat()} has no UTC representation") from None
        if not EARLIEST <= utc < LATEST:
            raise ValueError(f"{utc.isoformat()} lies outside {EARLIEST.date()} .. {LATEST.date()}")
        return utc

    @model_validator(mode="after")
    def _consistent(self) -> "Bar":
        if self.h < self.l:
            raise ValueError(f"high {self.h} is below low {self.l}")
        if self.h < max(self.o, self.c) or self.l > min(self.o, self.c):
            raise ValueError(f"open {self.o} and close {self.c} must lie within [low {self.l}, high {self.h}]")
        return self


class Metadata(BaseModel):
    model_config = ConfigDict(extra="ignore")

    symbol: str = Field(min_length=1, max_length=32)
    timeframe: str = Field(min_length=1, max_length=16)
    session: Optional[str] = None
    request_time: Optional[datetime] = None


class PredictRequest(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, extra="ignore")

    context_bars: list[Bar]
    current_bar: Bar
    features: dict[str, Union[float, int, bool, str, None]] = Field(default_factory=dict)
    metadata: Metadata

    @model_validator(mode="after")
    def _ordered(self) -> "PredictRequest":
        bars = self.bars
        for index in range(1, len(bars)):
            if bars[index].time_utc <= bars[index - 1].time_utc:
                where = "current_bar" if index == len(bars) - 1 else f"context_bars[{index}]"
                problem = "repeats" if bars[index].time_utc == bars[index - 1].time_utc else "is earlier than"
                raise ValueError(f"{where}.time_utc {bars[index].time_utc.isoformat()} {problem} the bar before it "
                                 f"({bars[index - 1].time_utc.isoformat()}): bars must be strictly increasing in time")
        return self

    @property
    def bars(self) -> list[Bar]:
        return [*self.context_bars, self.current_bar]

    def columns(self) -> dict[str, np.ndarray | pd.DatetimeIndex]:
        """The bars as the feature code takes them (ts, open, high, low, close, volume, delta)."""
        bars = self.bars
        return {
            "ts": pd.to_datetime(np.array([(b.time_utc - _EPOCH) // _ONE_MICROSECOND for b in bars], dtype="int64"),
                                 unit="us", utc=True).as_unit("ns"),
            "open": np.array([b.o for b in bars], dtype="float64"),
            "high": np.array([b.h for b in bars], dtype="float64"),
            "low": np.array([b.l for b in bars], dtype="float64"),
            "close": np.array([b.c for b in bars], dtype="float64"),
            "volume": np.array([b.volume for b in bars], dtype="float64"),
            "delta": np.array([np.nan if b.delta is None else b.delta for b in bars], dtype="float64"),
        }


class RequestError(Exception):
    """A request that cannot be served: ``status`` (400/422) and the error body's parts."""

    def __init__(self, status: int, error: str, details: dict):
        super().__init__(error)
        self.status, self.error, self.details = status, error, details


def parse_request(payload: object, required_bars: int) -> PredictRequest:
    """A validated request, or RequestError(422) listing every field error with its path."""
    try:
        request = PredictRequest.model_validate(payload)
    except ValidationError as error:
        raise RequestError(422, "request validation failed", {"errors": [
            {"path": field_path(item["loc"]), "message": item["msg"].removeprefix("Value error, ")}
            for item in error.errors(include_url=False)]}) from None
    have = len(request.bars)
    if have < required_bars:
        raise RequestError(422, "too few bars", {"errors": [{
            "path": "context_bars",
            "message": f"{have} bars sent (context_bars + current_bar); the model needs at least {required_bars} "
                       f"(sequence length + longest feature lookback - 1)"}], "minimum_bars": required_bars})
    return request


def field_path(location) -> str:
    """pydantic's ('context_bars', 3, 'h') as context_bars[3].h."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"
