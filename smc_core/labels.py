"""Triple-barrier labels (López de Prado) for intraday futures bars.

Why: the model is trained to say whether, entering at a bar's close, price would reach a
profit target before a stop (long), the reverse (short), or neither (skip). The barriers
scale with ATR so a label means the same in quiet and busy hours, and day traders are
flat at the session close, so no label ever looks past the last bar of its own session.

Conventions (bars are stamped with their close time, entry is at close[t]):
  * bars t+1 .. t+H of t's session are scanned; the first bar that reaches a barrier
    decides. A bar touching both barriers gives "skip" ("both_same_bar") because the
    order inside a minute bar is unknown, and its ``ret`` is NaN (no exit price is known).
  * gap open: a bar that opens at or beyond a barrier exits at its open, not at the
    barrier price (the barrier was jumped, a stop would have filled there). Its open is
    its first trade, so that barrier came first even when the bar later touches the other.
  * H bars observed with no touch: "time", exit at close[t+H]; "skip" unless
    ``min_move_atr`` > 0 and |close[t+H] - close[t]| >= min_move_atr * atr[t].
  * the session ended (its last bar is in the data) before H bars: "skip"
    ("session_end"), exit at the session's last close. An entry on the session's last
    bar has nothing to trade: "skip"/"session_end" with t1 = ts[t] and ret 0.
  * a session that runs into the last row of the frame may not be finished (unless the
    caller says it is), so when it has fewer than H bars after t and no touch, the label
    is unknown (-1); so is any bar
    whose ATR is not finite (warm-up). Unknown rows have t1 NaT and ret NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numba import njit

from smc_core.errors import ConfigError

LABELS = ("long", "short", "skip")  # codes 0, 1, 2: the model's class order
UNKNOWN = -1
BARRIERS = ("up", "down", "time", "session_end", "both_same_bar", "unknown")
REQUIRED_COLUMNS = ("ts", "open", "high", "low", "close", "atr", "session")

_LONG, _SHORT, _SKIP = 0, 1, 2
_UP, _DOWN, _TIME, _SESSION_END, _BOTH, _UNKNOWN_BARRIER = range(6)


@dataclass(frozen=True)
class Horizon:
    """Barriers of one labelling: H bars, profit/loss distances in ATRs of the entry bar."""

    bars: int = 15
    up_atr: float = 1.5
    down_atr: float = 1.5
    min_move_atr: float = 0.0

    def __post_init__(self):
        if not isinstance(self.bars, (int, np.integer)) or self.bars < 1:
            raise ConfigError(f"Horizon.bars must be an integer >= 1, got {self.bars!r}")
        for field in ("up_atr", "down_atr"):
            value = getattr(self, field)
            if not np.isfinite(value) or value <= 0:
                raise ConfigError(f"Horizon.{field} must be a finite number > 0, got {value!r}")
        if not np.isfinite(self.min_move_atr) or self.min_move_atr < 0:
            raise ConfigError(f"Horizon.min_move_atr must be a finite number >= 0, got {self.min_move_atr!r}")

    @property
    def name(self) -> str:
        """Stable key such as ``h15_u1.5_d1.5`` (``_m0.25`` appended only when min_move_atr > 0)."""
        name = f"h{int(self.bars)}_u{_number(self.up_atr)}_d{_number(self.down_atr)}"
        if self.min_move_atr > 0:
            name += f"_m{_number(self.min_move_atr)}"
        return name


def _number(value: float) -> str:
    """Shortest round-trip text, so equal floats always give the same key: 1.5, 2.0, 0.1."""
    return repr(float(value))


def triple_barrier(bars: pd.DataFrame, horizon: Horizon, *, last_session_complete: bool = False) -> pd.DataFrame:
    """Label every bar; columns label (int8), t1 (UTC), ret (long log return), barrier (category).

    ``last_session_complete`` says the frame's last session is over (its last row is the
    session's last bar), so its undecided tail ends at the close instead of being unknown.
    """
    missing = [column for column in REQUIRED_COLUMNS if column not in bars.columns]
    if missing:
        raise ConfigError(f"bars lack column(s) {', '.join(missing)}; need {', '.join(REQUIRED_COLUMNS)}")
    ts = pd.DatetimeIndex(bars["ts"])
    if ts.tz is None:
        raise ConfigError("bars.ts must be timezone-aware (UTC close times)")
    ts = ts.tz_convert("UTC").as_unit("ns")
    stamps = ts.asi8
    if len(stamps) and (ts.hasnans or np.any(np.diff(stamps) <= 0)):
        raise ConfigError("bars.ts must be strictly increasing without NaT")
    session, _ = pd.factorize(bars["session"], use_na_sentinel=True)
    if np.any(session < 0):
        raise ConfigError("bars.session has missing values")
    if np.any(np.diff(session) < 0):  # factorize numbers by first appearance
        raise ConfigError("bars.session ids must be contiguous: a session reappears after another began")

    def column(name):
        return np.ascontiguousarray(bars[name].to_numpy(dtype=np.float64))

    label, barrier, exit_row, ret = _label_kernel(
        column("open"), column("high"), column("low"), column("close"), column("atr"),
        session.astype(np.int64), int(horizon.bars), float(horizon.up_atr), float(horizon.down_atr),
        float(horizon.min_move_atr), bool(last_session_complete),
    )
    known = exit_row >= 0
    t1 = np.where(known, stamps[np.where(known, exit_row, 0)], np.iinfo(np.int64).min)
    return pd.DataFrame(
        {
            "label": label,
            "t1": pd.DatetimeIndex(t1.view("M8[ns]")).tz_localize("UTC"),
            "ret": ret,
            "barrier": pd.Categorical.from_codes(barrier, categories=list(BARRIERS)),
        },
        index=bars.index,
    )


def label_counts(labels: pd.DataFrame) -> dict:
    """Rows per label name plus "unknown", as plain ints for asset metadata."""
    codes = labels["label"].to_numpy()
    counts = {name: int(np.count_nonzero(codes == code)) for code, name in enumerate(LABELS)}
    counts["unknown"] = int(np.count_nonzero(codes == UNKNOWN))
    return counts


SESSION_END_WARNING = 0.30
"""Share of known labels forced to "skip" by the session close above which a horizon is too
long for the session: the labels then say "the session ended" more than anything about price.
(The last H bars of a session can only end there unless a barrier is touched, so the share is
about H / bars per session: 1 % for 15 one-minute bars, 65 % for 15 hourly bars on CME.)"""


def session_end_share(labels: pd.DataFrame) -> float:
    """Share of known labels whose outcome was the session close (a forced skip)."""
    known = labels["label"].to_numpy() != UNKNOWN
    if not known.any():
        return 0.0
    return float((labels["barrier"].to_numpy()[known] == "session_end").mean())


def horizon_fit(horizon: Horizon, bars_per_session: float, share: float) -> str | None:
    """A warning when ``horizon`` is long for the session (``share`` of forced session-end skips
    above SESSION_END_WARNING), else None."""
    if share <= SESSION_END_WARNING:
        return None
    return (f"horizon {horizon.name}: {share:.0%} of the known labels are forced skips at the session close "
            f"(more than {SESSION_END_WARNING:.0%}): {horizon.bars} bars against a session of about "
            f"{bars_per_session:.0f} bars; use a shorter horizon (labels config horizons.bars) for this timeframe")


@njit(cache=True)
def _label_kernel(open_, high, low, close, atr, session, horizon_bars, up_atr, down_atr, min_move_atr,
                  last_session_complete):
    """One pass per entry bar over at most H following bars.

    Why a loop: the first touching bar ends the scan, which vectorised code cannot express
    without materialising an n x H window; O(n*H) compiled is ~tens of ms for 1M bars.
    """
    n = close.shape[0]
    label = np.full(n, UNKNOWN, np.int8)
    barrier = np.full(n, _UNKNOWN_BARRIER, np.int8)
    exit_row = np.full(n, -1, np.int64)
    ret = np.full(n, np.nan)

    # Last row of each bar's session within the data, and whether it is known to be the
    # session's end (a later row belongs to another session) or just the end of the frame.
    session_last = np.empty(n, np.int64)
    for i in range(n - 1, -1, -1):
        if i == n - 1 or session[i + 1] != session[i]:
            session_last[i] = i
        else:
            session_last[i] = session_last[i + 1]

    for t in range(n):
        width = atr[t]
        if not np.isfinite(width):
            continue
        entry = close[t]
        upper = entry + up_atr * width
        lower = entry - down_atr * width
        last = session_last[t]
        stop = min(t + horizon_bars, last)
        decided = False
        for j in range(t + 1, stop + 1):
            price = open_[j]
            if price >= upper:  # gapped over the profit barrier: filled at the open
                label[t], barrier[t] = _LONG, _UP
            elif price <= lower:  # gapped through the stop: filled at the open
                label[t], barrier[t] = _SHORT, _DOWN
            else:
                touched_up = high[j] >= upper
                touched_down = low[j] <= lower
                if touched_up and touched_down:
                    label[t], barrier[t], price = _SKIP, _BOTH, np.nan
                elif touched_up:
                    label[t], barrier[t], price = _LONG, _UP, upper
                elif touched_down:
                    label[t], barrier[t], price = _SHORT, _DOWN, lower
                else:
                    continue
            exit_row[t] = j
            ret[t] = np.log(price / entry)
            decided = True
            break
        if decided:
            continue
        if stop == t + horizon_bars:  # H bars seen (also when bar t+H closes the session)
            move = close[stop] - entry
            label[t], barrier[t] = _SKIP, _TIME
            if min_move_atr > 0 and abs(move) >= min_move_atr * width:
                label[t] = _LONG if move > 0 else _SHORT
        elif last < n - 1 or last_session_complete:  # the session ended inside the horizon: flat at its close
            label[t], barrier[t] = _SKIP, _SESSION_END
        else:  # the session runs into the last row and may not be finished
            continue
        exit_row[t] = stop
        ret[t] = np.log(close[stop] / entry)
    return label, barrier, exit_row, ret
