"""The /predict request (seed 000 §3.2), validated with errors that name the field path.

Why strict: a NinjaTrader strategy trades on the answer, so an impossible bar (NaN, high
below low, unsorted or repeated times) must be refused with the exact place to fix, never
silently repaired. Indicator values the client sends are kept, only to be compared with
the server's own computation (DESIGN §4: counted, never trusted).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Annotated, Optional, Union

import numpy as np
import pandas as pd
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError, WithJsonSchema,
                      field_validator, model_validator)

from smc_core.errors import ConfigError
from smc_core.timeframe import off_grid, timeframe_ns

MAX_PRICE = 1e9     # no futures contract trades above; keeps every derived feature finite
MAX_VOLUME = 1e12
EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(2200, 1, 1, tzinfo=timezone.utc)  # well inside pandas' nanosecond range
CLIENT_INDICATORS = ("ext_dir", "int_dir", "has_fvg_bull", "has_fvg_bear", "has_ob_bull", "has_ob_bear", "atr")

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MICROSECOND = timedelta(microseconds=1)
_UTC_NS = pd.DatetimeTZDtype("ns", "UTC")


# Types are strict (a number is a JSON number, a flag a JSON boolean, a time an ISO 8601
# string): what the OpenAPI document says is exactly what is accepted, so a client bug such
# as "h": "4810.25" or "has_fvg_bull": 1 is refused with its path, never coerced.
TIME_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})?$"
_TIME = re.compile(TIME_PATTERN)
Price = Annotated[float, Strict(), Field(gt=0, le=MAX_PRICE)]
Volume = Annotated[float, Strict(), Field(ge=0, le=MAX_VOLUME)]
Direction = Optional[Annotated[int, Strict(), Field(ge=-1, le=1)]]
Flag = Optional[Annotated[bool, Strict()]]


def _time_text(value: object) -> object:
    """Only an ISO 8601 date-time with seconds (pydantic alone would also read 1700000000 or
    "2024-01-02" as times); datetime objects from Python callers pass."""
    if isinstance(value, str) and not _TIME.match(value):
        raise ValueError("an ISO 8601 date-time like 2024-03-05T14:31:00Z is required "
                         "(seconds included; no offset means UTC)")
    if not isinstance(value, (str, datetime)):
        raise ValueError("an ISO 8601 date-time string is required")
    return value


Time = Annotated[datetime, BeforeValidator(_time_text),
                 WithJsonSchema({"type": "string", "pattern": TIME_PATTERN, "examples": ["2024-03-05T14:31:00Z"]})]


class Bar(BaseModel):
    """One closed bar; ``time_utc`` is its close time (naive times are taken as UTC)."""

    model_config = ConfigDict(allow_inf_nan=False, extra="ignore")

    time_utc: Time = Field(description="The bar's close time, ISO 8601 with seconds; without an offset it is "
                                       "taken as UTC. On the model's timeframe grid (a 1m bar closes on a whole "
                                       "minute).")
    o: Price = Field(description="Open price.")
    h: Price = Field(description="High price (at least open, close and low).")
    l: Price = Field(description="Low price (at most open, close and high).")  # noqa: E741 (the seed's field name)
    c: Price = Field(description="Close price.")
    volume: Volume = Field(description="Traded volume.")
    delta: Optional[Annotated[float, Strict(), Field(ge=-MAX_VOLUME, le=MAX_VOLUME)]] = Field(
        default=None, description="Buy minus sell volume; optional.")
    ext_dir: Direction = Field(default=None, description="Client indicator (compared with the server's, counted, "
                                                        "never used): external structure direction -1, 0 or 1.")
    int_dir: Direction = Field(default=None, description="Client indicator: internal structure direction.")
    has_fvg_bull: Flag = Field(default=None, description="Client indicator: a bullish fair value gap is open.")
    has_fvg_bear: Flag = Field(default=None, description="Client indicator: a bearish fair value gap is open.")
    has_ob_bull: Flag = Field(default=None, description="Client indicator: a bullish order block is open.")
    has_ob_bear: Flag = Field(default=None, description="Client indicator: a bearish order block is open.")
    atr: Optional[Annotated[float, Strict(), Field(ge=0)]] = Field(
        default=None, description="Client indicator: ATR (the server computes its own for `risk`).")

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

    symbol: str = Field(min_length=1, max_length=32, description="Instrument root (e.g. ES); one the served "
                                                                 "model serves (GET /model → symbols).")
    timeframe: str = Field(min_length=1, max_length=16, description="Bar timeframe, `<number><s|m|h|d>`; must be "
                                                                    "a served model line's (GET /model → lines); "
                                                                    "it chooses the line.")
    horizon: Optional[str] = Field(default=None, max_length=64,
                                   description="With several model lines for the timeframe, which one: its label "
                                               "horizon, `h15` or in full `h15_u1.5_d1.5` (GET /model → lines); "
                                               "absent: the first line serving the timeframe.")
    session: Optional[str] = Field(default=None, description="Informational (e.g. RTH or ETH).")
    request_time: Optional[Time] = Field(default=None, description="When the client sent the request; "
                                                                   "informational.")


class PredictRequest(BaseModel):
    """``POST /predict`` (seed 000 §3.2): the bars up to the one that just closed, oldest first."""

    model_config = ConfigDict(allow_inf_nan=False, extra="ignore")

    context_bars: list[Bar] = Field(description=(
        "The bars before `current_bar`, oldest first, strictly increasing and contiguous on the model's timeframe. "
        "With `current_bar` the model needs `required_bars` bars in all (GET /model; 49 for the default model: "
        "sequence length 20 + longest feature lookback 30 - 1), so send `required_bars - 1`. Fewer are accepted when "
        "the service can complete them from stored bars of the same series that are contiguous with them (bars of "
        "earlier requests, POST /bars uploads, the bar store): the answer's `bars_from_store` says how many; "
        "otherwise 422 `too few bars` with `missing_bars`."))
    current_bar: Bar = Field(description="The bar that just closed: the decision bar.")
    features: dict[str, Union[float, int, bool, str, None]] = Field(
        default_factory=dict, description="Client-computed features (seed 000 §3.2); accepted, never used: the "
                                          "server computes its own from the bars.")
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
        micros = np.array([(b.time_utc - _EPOCH) // _ONE_MICROSECOND for b in bars], dtype="int64")
        return {  # the index built from its nanosecond values: pd.to_datetime costs ~5x more per request
            "ts": pd.DatetimeIndex((micros * 1000).view("datetime64[ns]"), dtype=_UTC_NS),
            "open": np.array([b.o for b in bars], dtype="float64"),
            "high": np.array([b.h for b in bars], dtype="float64"),
            "low": np.array([b.l for b in bars], dtype="float64"),
            "close": np.array([b.c for b in bars], dtype="float64"),
            "volume": np.array([b.volume for b in bars], dtype="float64"),
            "delta": np.array([np.nan if b.delta is None else b.delta for b in bars], dtype="float64"),
        }


# POST /bars is validated like a file ingest (smc_core.bars.parse_records): a value is read as a
# file's cell would be, so a number may also come as its text; the document says exactly that.
_CELL = WithJsonSchema({"type": ["number", "string"], "description": "A number, or its text as in a file "
                                                                     "(\"4810.25\"); finite."})
_TIME_CELL = WithJsonSchema({"type": "string", "description": "The bar's close time as in a file (ISO 8601; "
                                                              "no offset means UTC).",
                             "examples": ["2024-03-05T14:31:00Z"]})


class UploadBar(BaseModel):
    """One bar of ``POST /bars`` (the /predict bar without indicators). Only describes the body:
    the service validates it like a file ingest (high and low against open and close, volume
    not negative, on the timeframe's grid, no repeated times), every problem named at once."""

    time_utc: Annotated[datetime, _TIME_CELL]
    o: Annotated[float, _CELL]
    h: Annotated[float, _CELL]
    l: Annotated[float, _CELL]  # noqa: E741
    c: Annotated[float, _CELL]
    volume: Annotated[float, _CELL]
    delta: Optional[Annotated[float, _CELL]] = None


class BarsUpload(BaseModel):
    """``POST /bars``: bars of one series (describes the body; see UploadBar)."""

    symbol: str = Field(min_length=1, max_length=32, pattern=r"^[A-Z0-9][A-Z0-9._-]{0,31}$", examples=["ES"])
    timeframe: str = Field(pattern=r"^[1-9][0-9]*[smhd]$", examples=["1m"])
    bars: list[UploadBar] = Field(min_length=1)


class RequestError(Exception):
    """A request that cannot be served: ``status`` (400/422) and the error body's parts."""

    def __init__(self, status: int, error: str, details: dict):
        super().__init__(error)
        self.status, self.error, self.details = status, error, details


def parse_request(payload: object) -> PredictRequest:
    """A validated request, or RequestError(422) listing every field error with its path."""
    return _validated(PredictRequest, payload)


def _validated(model: type[BaseModel], payload: object):
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        raise RequestError(422, "request validation failed", {"errors": [
            {"path": field_path(item["loc"]), "message": item["msg"].removeprefix("Value error, ")}
            for item in error.errors(include_url=False)][:100]}) from None


def check_against_model(request: PredictRequest, stamps_ns: np.ndarray, timeframe: str, width_ns: int,
                        symbols: frozenset[str]) -> None:
    """422 naming the mismatch when a request is not for this model: its timeframe, its bars'
    spacing (a 5-minute chart sent as ``1m``), or a symbol the model does not serve."""
    meta = request.metadata
    try:
        sent = timeframe_ns(meta.timeframe)
    except ConfigError as error:
        raise _mismatch("metadata.timeframe", str(error))
    if sent != width_ns:
        raise _mismatch("metadata.timeframe", f"the model serves {timeframe} bars; this request is for "
                                              f"{meta.timeframe}")
    if meta.symbol not in symbols:
        raise _mismatch("metadata.symbol", f"{meta.symbol!r} is not served by this model: it serves "
                                           f"{', '.join(sorted(symbols))} (ALLOWED_SYMBOLS)")
    width = timedelta(microseconds=width_ns // 1000)
    off = np.flatnonzero(off_grid(stamps_ns, width))
    if len(off):
        i = int(off[0])
        raise _mismatch(_bar_path(i, len(stamps_ns)), f"time_utc {_iso(stamps_ns[i])} is not on the {timeframe} "
                                                       f"bar grid (bars are stamped with their close)")
    if len(stamps_ns) > 1:
        steps = np.diff(stamps_ns)
        uneven = np.flatnonzero(off_grid(steps, width))  # daily bars: session closes, not a fixed grid
        if len(uneven):
            i = int(uneven[0]) + 1
            raise _mismatch(_bar_path(i, len(stamps_ns)), f"is {steps[i - 1] / 60e9:g} min after the bar before it: "
                                                          f"not a whole number of {timeframe} bars")
        typical = width_ns if (steps == width_ns).all() else int(np.median(steps))  # the common case, at no cost
        if typical != width_ns:
            raise _mismatch("context_bars", f"the bars are {typical / 60e9:g} min apart (median): this is not a "
                                            f"{timeframe} series")


def too_few_bars(have: int, from_store: int, required: int) -> RequestError:
    missing = required - have - from_store
    stored = f" and {from_store} contiguous stored bar(s)" if from_store else ""
    return RequestError(422, "too few bars", {"errors": [{
        "path": "context_bars",
        "message": f"{have} bars sent (context_bars + current_bar){stored}; the model needs {required} "
                   f"(sequence length + longest feature lookback - 1): send {missing} more"}],
        "minimum_bars": required, "missing_bars": missing})


def _mismatch(path: str, message: str) -> RequestError:
    return RequestError(422, "request does not match the model", {"errors": [{"path": path, "message": message}]})


def _bar_path(index: int, count: int) -> str:
    return "current_bar.time_utc" if index == count - 1 else f"context_bars[{index}].time_utc"


def _iso(ts_ns) -> str:
    return pd.Timestamp(int(ts_ns), unit="ns", tz="UTC").isoformat()


def field_path(location) -> str:
    """pydantic's ('context_bars', 3, 'h') as context_bars[3].h."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"
