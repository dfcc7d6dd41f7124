"""Causal, finite-memory Smart-Money-Concepts structure features.

Every value at bar ``t`` is a pure function of the bars ``t-W+1 .. t`` (``W`` = ``window``)
and of the scalar ``atr[t]``. Nothing reads a later bar, nothing depends on the length of
the series or on bars older than ``t-W+1``.

How that is guaranteed (and why results are bit-identical when the service recomputes a
row from a short request): for every ``t`` the kernel takes the slice ``[t-W+1, t]`` and
re-scans it from its first bar with exactly the same sequence of floating-point
operations; no state is carried from ``t-1`` to ``t`` (scratch buffers are fully rewritten
for every window). The slice is passed to the per-window routine as its own array, so it
cannot index outside it.

Vocabulary used by every definition below (``s = t-W+1`` is the first bar of the window):

* **Swing high of length L at pivot p**: ``high[p] > high[j]`` for the ``L`` bars
  ``j = p-L .. p-1`` (strict) and ``high[p] >= high[j]`` for the ``L`` bars
  ``j = p+1 .. p+L`` (ties after the pivot allowed). In a run of equal highs the FIRST one
  is the pivot. **Swing low**: ``low[p] < low[j]`` before, ``low[p] <= low[j]`` after.
  A swing is **confirmed at bar p+L** and does not exist before. In the window at ``t``
  only swings with ``p-L >= s`` and ``p+L <= t`` count. One bar can be both a swing high
  and a swing low (outside bar); where an order is needed, an up-close/doji candle
  (``close >= open``) is taken to have made its low first, a down-close candle its high.
* **Structure break** (length L): the bars ``b = s .. t`` are scanned in order. The
  *reference high* is the most recent swing high confirmed before ``b`` (``p+L <= b-1``);
  a **bullish break** happens at ``b`` when ``close[b] > high[ref]`` (strict). A swing can
  be broken once: after the break there is no reference high until a newer swing high is
  confirmed. Bearish mirror: ``close[b] < low[ref]`` with the most recent confirmed swing
  low. A bullish break is a **BOS** if the previous break in the window was bullish or
  there was none, a **CHoCH** if it was bearish (mirror for bearish). The first break in
  a window is therefore always a BOS (finite memory). If both breaks happen on one bar
  (only possible with degenerate data) both are recorded, the bullish one first, so the
  resulting direction is bearish.
* **FVG**: a bullish fair-value gap *forms* at bar ``f`` when ``low[f] > high[f-2]``; zone
  ``[high[f-2], low[f]]``, size ``low[f] - high[f-2]`` (> 0). It counts only when
  ``f-2 >= s`` and ``size >= fvg_min_atr * atr[t]``. It is *filled* by the first later bar
  ``j > f`` with ``low[j] <= high[f-2]``. Bearish mirror: ``high[f] < low[f-2]``, zone
  ``[high[f], low[f-2]]``, filled when a later ``high[j] >= low[f-2]``. At most one FVG
  (bull or bear) can form per bar.

Rows without a full window (``t < W-1``), rows whose window contains a non-finite
open/high/low/close/volume, and rows whose ``atr[t]`` is not finite and > 0 are NaN in
every output (the float64 sentinel; the caller casts).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["SMC_OUTPUTS", "FVG_RETEST_TYPES", "smc_features", "fvg_formations"]

SMC_OUTPUTS: tuple[str, ...] = (
    "ext_dir",
    "int_dir",
    "bos_bull",
    "bos_bear",
    "choch_bull",
    "choch_bear",
    "has_fvg_bull",
    "has_fvg_bear",
    "fvg_bull_size_atr",
    "fvg_bear_size_atr",
    "fvg_retest_type",
    "fvg_penetration_ratio",
    "has_ob_bull",
    "has_ob_bear",
    "mgann_leg_index",
    "pb_wave_strength_ok",
    "confluence_score",
    "dist_swing_high_atr",
    "dist_swing_low_atr",
    "bars_since_break",
)

FVG_RETEST_TYPES = ("none", "wick", "body", "through")  # codes 0..3 of fvg_retest_type

# Column positions in the kernel's output matrix (same order as SMC_OUTPUTS).
_EXT_DIR, _INT_DIR, _BOS_BULL, _BOS_BEAR, _CHOCH_BULL, _CHOCH_BEAR = 0, 1, 2, 3, 4, 5
_HAS_FVG_BULL, _HAS_FVG_BEAR, _FVG_BULL_SIZE, _FVG_BEAR_SIZE = 6, 7, 8, 9
_RETEST, _PENETRATION, _HAS_OB_BULL, _HAS_OB_BEAR = 10, 11, 12, 13
_MGANN, _PB_OK, _CONFLUENCE, _DIST_HIGH, _DIST_LOW, _BARS_SINCE = 14, 15, 16, 17, 18, 19
_N_OUT = 20

PB_RETRACE_MIN = 0.382
PB_RETRACE_MAX = 0.786

# Break event codes in the per-bar scratch arrays.
_NO_EVENT, _BOS, _CHOCH = 0, 1, 2


# --------------------------------------------------------------------------- kernels
# All helpers below take window-local arrays (index 0 = bar t-W+1, index W-1 = bar t).


@njit(cache=True)
def _swing_pivots(h, l, L):
    """Swing-pivot predicates of length L for every bar of a series.

    ``sh[p]`` / ``sl[p]`` is a pure function of the bars ``p-L .. p+L`` (False when they do
    not all exist): it is the same boolean whatever series or window those bars sit in,
    and the window routine uses it only when all of them lie inside its window, so it
    never carries information across windows or from later bars.
    """
    n = h.shape[0]
    sh = np.zeros(n, dtype=np.bool_)
    sl = np.zeros(n, dtype=np.bool_)
    for p in range(L, n - L):
        hp = h[p]
        ok = True
        for j in range(p - L, p):
            if not hp > h[j]:
                ok = False
                break
        if ok:
            for j in range(p + 1, p + L + 1):
                if not hp >= h[j]:
                    ok = False
                    break
        sh[p] = ok
        lp = l[p]
        ok = True
        for j in range(p - L, p):
            if not lp < l[j]:
                ok = False
                break
        if ok:
            for j in range(p + 1, p + L + 1):
                if not lp <= l[j]:
                    ok = False
                    break
        sl[p] = ok
    return sh, sl


@njit(cache=True)
def _breaks(h, l, c, L, sh, sl, ev_bar, ev_dir, ev_kind, ev_ref):
    """Scan the window for structure breaks on swings of length L.

    Records the events in order (bar, direction +1/-1, kind 1 BOS / 2 CHoCH, pivot of the
    broken swing) and returns (number of events, direction of the last break or 0, local
    bar of the last break or -1). No break is possible before local bar 2L+1.
    """
    W = h.shape[0]
    ref_h = -1           # pivot of the reference swing high
    ref_l = -1
    lev_h = np.inf       # its level; +inf once broken or before any (no break possible)
    lev_l = -np.inf
    last_dir = 0
    n_ev = 0
    for b in range(2 * L + 1, W):
        p = b - 1 - L  # pivot confirmed at bar b-1
        fh = sh[p]
        fl = sl[p]
        ref_h = p if fh else ref_h
        lev_h = h[p] if fh else lev_h
        ref_l = p if fl else ref_l
        lev_l = l[p] if fl else lev_l
        cb = c[b]
        if cb > lev_h:
            ev_bar[n_ev] = b
            ev_dir[n_ev] = 1
            ev_kind[n_ev] = _BOS if last_dir >= 0 else _CHOCH
            ev_ref[n_ev] = ref_h
            n_ev += 1
            lev_h = np.inf
            last_dir = 1
        if cb < lev_l:
            ev_bar[n_ev] = b
            ev_dir[n_ev] = -1
            ev_kind[n_ev] = _BOS if last_dir <= 0 else _CHOCH
            ev_ref[n_ev] = ref_l
            n_ev += 1
            lev_l = -np.inf
            last_dir = -1
    last_bar = ev_bar[n_ev - 1] if n_ev > 0 else -1
    return n_ev, last_dir, last_bar


@njit(cache=True)
def _order_block_active(o, h, l, c, b, p, bullish, suf_min_c, suf_max_c):
    """Is the order block of the break at local bar b (broken pivot p) unmitigated at the window end?

    Bullish: the impulse leg starts at m = the latest bar with the lowest low in [p, b];
    the order block is the last down-close candle (close < open) in [p, m]; it is mitigated
    once a bar after b closes below its low. Bearish mirror (highest high, up-close
    candle close > open, mitigated by a close above its high). ``suf_min_c[j]`` /
    ``suf_max_c[j]`` are the min / max close over the window bars j .. W-1.
    """
    W = h.shape[0]
    m = p
    if bullish:
        for j in range(p + 1, b + 1):
            if l[j] <= l[m]:
                m = j
        for k in range(m, p - 1, -1):
            if c[k] < o[k]:
                return b + 1 >= W or not suf_min_c[b + 1] < l[k]
        return False
    else:
        for j in range(p + 1, b + 1):
            if h[j] >= h[m]:
                m = j
        for k in range(m, p - 1, -1):
            if c[k] > o[k]:
                return b + 1 >= W or not suf_max_c[b + 1] > h[k]
        return False


@njit(cache=True)
def _window_row(o, h, l, c, v, atr_t, long_swing, short_swing, fvg_min_atr,
                sh_l, sl_l, sh_s, sl_s, ev_bar, ev_dir, ev_kind, ev_ref,
                iev_bar, iev_dir, iev_kind, iev_ref, suf_min_c, suf_max_c, out, t_out):
    """Compute every output for the last bar of one window into ``out[:, t_out]``.

    All arrays except ``out`` are window-local (index 0 = bar t-W+1, index W-1 = bar t):
    copies of the window's bars and pivot flags, and scratch buffers rewritten here. The
    caller has checked that the window is complete and finite and that atr_t > 0.
    """
    W = h.shape[0]
    t = W - 1

    # ---- structure (long swings) and internal direction (short swings)
    n_ev, ext_dir, last_b = _breaks(h, l, c, long_swing, sh_l, sl_l, ev_bar, ev_dir, ev_kind, ev_ref)
    _, int_dir, _ = _breaks(h, l, c, short_swing, sh_s, sl_s, iev_bar, iev_dir, iev_kind, iev_ref)

    bos_bull = 0.0
    bos_bear = 0.0
    choch_bull = 0.0
    choch_bear = 0.0
    if n_ev > 0 and ev_bar[n_ev - 1] == t:
        for e in range(n_ev - 1, -1, -1):
            if ev_bar[e] != t:
                break
            if ev_dir[e] == 1:
                if ev_kind[e] == _BOS:
                    bos_bull = 1.0
                else:
                    choch_bull = 1.0
            else:
                if ev_kind[e] == _BOS:
                    bos_bear = 1.0
                else:
                    choch_bear = 1.0
    # order blocks: any break in the window whose block is unmitigated (newest first)
    ob_bull = False
    ob_bear = False
    if n_ev > 0:
        mn = np.inf
        mx = -np.inf
        for j in range(t, ev_bar[0], -1):
            cj = c[j]
            mn = cj if cj < mn else mn
            mx = cj if cj > mx else mx
            suf_min_c[j] = mn
            suf_max_c[j] = mx
        for e in range(n_ev - 1, -1, -1):
            if ev_dir[e] == 1:
                if not ob_bull:
                    ob_bull = _order_block_active(o, h, l, c, ev_bar[e], ev_ref[e], True,
                                                  suf_min_c, suf_max_c)
            elif not ob_bear:
                ob_bear = _order_block_active(o, h, l, c, ev_bar[e], ev_ref[e], False,
                                              suf_min_c, suf_max_c)
            if ob_bull and ob_bear:
                break

    out[_EXT_DIR, t_out] = ext_dir
    out[_INT_DIR, t_out] = int_dir
    out[_BOS_BULL, t_out] = bos_bull
    out[_BOS_BEAR, t_out] = bos_bear
    out[_CHOCH_BULL, t_out] = choch_bull
    out[_CHOCH_BEAR, t_out] = choch_bear
    out[_BARS_SINCE, t_out] = (t - last_b) if last_b >= 0 else W
    out[_HAS_OB_BULL, t_out] = 1.0 if ob_bull else 0.0
    out[_HAS_OB_BEAR, t_out] = 1.0 if ob_bear else 0.0

    # ---- fair-value gaps: newest to oldest, with running extremes of the bars in
    # (f, t-1]; a gap is live at the open of t if those bars did not fill it, active at
    # the close of t if bar t did not fill it either. The scan stops once the newest
    # active gap of both sides is known: the reference gap (newest live at the open of t)
    # is never older than an active one, so it is known by then too.
    thr = fvg_min_atr * atr_t
    lt = l[t]
    ht = h[t]
    min_low = np.inf    # min low over (f, t-1]
    max_high = -np.inf  # max high over (f, t-1]
    bull_size = 0.0
    bear_size = 0.0
    has_bull = False
    has_bear = False
    ref_side = 0      # the most recent FVG live at the open of t: +1 bull, -1 bear, 0 none
    ref_f = -1
    ref_bot = 0.0
    ref_top = 0.0
    for f in range(t, 1, -1):
        if f <= t - 2:
            lj = l[f + 1]
            hj = h[f + 1]
            min_low = lj if lj < min_low else min_low
            max_high = hj if hj > max_high else max_high
        if l[f] > h[f - 2]:
            bot = h[f - 2]
            top = l[f]
            size = top - bot
            if size >= thr and min_low > bot:
                if ref_side == 0:
                    ref_side = 1
                    ref_f = f
                    ref_bot = bot
                    ref_top = top
                if not has_bull and (f == t or lt > bot):
                    has_bull = True
                    bull_size = size
                    if has_bear:
                        break
        elif h[f] < l[f - 2]:
            bot = h[f]
            top = l[f - 2]
            size = top - bot
            if size >= thr and max_high < top:
                if ref_side == 0:
                    ref_side = -1
                    ref_f = f
                    ref_bot = bot
                    ref_top = top
                if not has_bear and (f == t or ht < top):
                    has_bear = True
                    bear_size = size
                    if has_bull:
                        break
    out[_HAS_FVG_BULL, t_out] = 1.0 if has_bull else 0.0
    out[_HAS_FVG_BEAR, t_out] = 1.0 if has_bear else 0.0
    out[_FVG_BULL_SIZE, t_out] = bull_size / atr_t
    out[_FVG_BEAR_SIZE, t_out] = bear_size / atr_t

    retest = 0
    pen = 0.0
    if ref_side != 0 and ref_f < t:
        size = ref_top - ref_bot
        if ref_side == 1:
            if l[t] <= ref_top:
                if c[t] > ref_top:
                    retest = 1
                elif c[t] >= ref_bot:
                    retest = 2
                else:
                    retest = 3
                pen = (ref_top - l[t]) / size
        else:
            if h[t] >= ref_bot:
                if c[t] < ref_bot:
                    retest = 1
                elif c[t] <= ref_top:
                    retest = 2
                else:
                    retest = 3
                pen = (h[t] - ref_bot) / size
        if pen < 0.0:
            pen = 0.0
    out[_RETEST, t_out] = retest
    out[_PENETRATION, t_out] = pen

    # ---- short-swing summary: extremes, last pivots (for the pullback and distances)
    hmax = -np.inf
    lmin = np.inf
    last_sh = -1
    last_sl = -1
    for p in range(short_swing, W - short_swing):
        if sh_s[p]:
            last_sh = p
            if h[p] > hmax:
                hmax = h[p]
        if sl_s[p]:
            last_sl = p
            if l[p] < lmin:
                lmin = l[p]
    out[_DIST_HIGH, t_out] = (hmax - c[t]) / atr_t if last_sh >= 0 else 0.0
    out[_DIST_LOW, t_out] = (c[t] - lmin) / atr_t if last_sl >= 0 else 0.0

    # ---- mgann leg index (short swings since the last long-swing break)
    d = ext_dir
    if d == 0:
        out[_MGANN, t_out] = 0.0
    else:
        count = 1
        prev_same = True  # the break itself stands for a swing in direction d
        for p in range(last_b + 1, W - short_swing):
            hi = sh_s[p]
            lo = sl_s[p]
            if not (hi or lo):
                continue
            opp = lo if d == 1 else hi
            same = hi if d == 1 else lo
            if opp and same:
                # both on one bar: an up-close/doji candle made its low first
                low_first = c[p] >= o[p]
                opp_first = low_first if d == 1 else not low_first
                if opp_first:
                    if prev_same:
                        count += 1
                    prev_same = True
                else:
                    count += 1
                    prev_same = False
            elif opp:
                if prev_same:
                    count += 1
                prev_same = False
            else:
                prev_same = True
        out[_MGANN, t_out] = d * count

    # ---- pullback wave strength (short swings, oriented by ext_dir)
    pb_ok = False
    if d != 0:
        # E = last confirmed swing in direction d, O = last opposite swing before E
        p_ext = last_sh if d == 1 else last_sl
        p_org = -1
        if p_ext >= 0:
            for p in range(p_ext - 1, -1, -1):
                if (sl_s[p] if d == 1 else sh_s[p]):
                    p_org = p
                    break
        if p_org >= 0:
            if d == 1:
                leg = h[p_ext] - l[p_org]
                retr = (h[p_ext] - c[t]) / leg if leg > 0.0 else -1.0
            else:
                leg = h[p_org] - l[p_ext]
                retr = (c[t] - l[p_ext]) / leg if leg > 0.0 else -1.0
            if leg > 0.0 and retr >= PB_RETRACE_MIN and retr <= PB_RETRACE_MAX:
                s_imp = 0.0
                for j in range(p_org + 1, p_ext + 1):
                    s_imp += v[j]
                s_pb = 0.0
                for j in range(p_ext + 1, t + 1):
                    s_pb += v[j]
                pb_ok = s_pb / (t - p_ext) < s_imp / (p_ext - p_org)
    out[_PB_OK, t_out] = 1.0 if pb_ok else 0.0

    # ---- confluence
    if d == 0:
        out[_CONFLUENCE, t_out] = 0.0
    else:
        n_ok = 0
        if int_dir == d:
            n_ok += 1
        if (has_bull if d == 1 else has_bear):
            n_ok += 1
        if (ob_bull if d == 1 else ob_bear):
            n_ok += 1
        if ref_side == d and (retest == 1 or retest == 2):
            n_ok += 1
        if pb_ok:
            n_ok += 1
        out[_CONFLUENCE, t_out] = n_ok / 5.0


@njit(cache=True)
def _smc_kernel(o, h, l, c, v, atr, window, long_swing, short_swing, fvg_min_atr):
    n = h.shape[0]
    W = window
    out = np.empty((_N_OUT, n), dtype=np.float64)
    # Bar-local predicates, each a pure function of a fixed neighbourhood of its bar.
    finite = np.empty(n, dtype=np.bool_)
    for j in range(n):
        finite[j] = (math.isfinite(o[j]) and math.isfinite(h[j]) and math.isfinite(l[j])
                     and math.isfinite(c[j]) and math.isfinite(v[j]))
    gsh_l, gsl_l = _swing_pivots(h, l, long_swing)
    gsh_s, gsl_s = _swing_pivots(h, l, short_swing)
    # Window-local copies and scratch, fully rewritten for every t (no state carried).
    wo = np.empty(W, dtype=np.float64)
    wh = np.empty(W, dtype=np.float64)
    wl = np.empty(W, dtype=np.float64)
    wc = np.empty(W, dtype=np.float64)
    wv = np.empty(W, dtype=np.float64)
    sh_l = np.zeros(W, dtype=np.bool_)
    sl_l = np.zeros(W, dtype=np.bool_)
    sh_s = np.zeros(W, dtype=np.bool_)
    sl_s = np.zeros(W, dtype=np.bool_)
    # break events (at most two per bar): bar, direction, kind, broken pivot
    ev_bar = np.zeros(2 * W, dtype=np.int64)
    ev_dir = np.zeros(2 * W, dtype=np.int64)
    ev_kind = np.zeros(2 * W, dtype=np.int64)
    ev_ref = np.zeros(2 * W, dtype=np.int64)
    iev_bar = np.zeros(2 * W, dtype=np.int64)
    iev_dir = np.zeros(2 * W, dtype=np.int64)
    iev_kind = np.zeros(2 * W, dtype=np.int64)
    iev_ref = np.zeros(2 * W, dtype=np.int64)
    suf_min_c = np.zeros(W, dtype=np.float64)
    suf_max_c = np.zeros(W, dtype=np.float64)
    for t in range(n):
        s = t - W + 1
        atr_t = atr[t]
        ok = t >= W - 1 and math.isfinite(atr_t) and atr_t > 0.0
        if ok:
            for j in range(s, t + 1):
                if not finite[j]:
                    ok = False
                    break
        if not ok:
            for k in range(_N_OUT):
                out[k, t] = np.nan
            continue
        for k in range(W):
            j = s + k
            wo[k] = o[j]
            wh[k] = h[j]
            wl[k] = l[j]
            wc[k] = c[j]
            wv[k] = v[j]
            # pivots count only with p-L >= s and p+L <= t
            in_l = k >= long_swing and k <= W - 1 - long_swing
            in_s = k >= short_swing and k <= W - 1 - short_swing
            sh_l[k] = gsh_l[j] and in_l
            sl_l[k] = gsl_l[j] and in_l
            sh_s[k] = gsh_s[j] and in_s
            sl_s[k] = gsl_s[j] and in_s
        _window_row(wo, wh, wl, wc, wv, atr_t, long_swing, short_swing, fvg_min_atr,
                    sh_l, sl_l, sh_s, sl_s, ev_bar, ev_dir, ev_kind, ev_ref,
                    iev_bar, iev_dir, iev_kind, iev_ref, suf_min_c, suf_max_c, out, t)
    return out


@njit(cache=True)
def _fvg_formations_kernel(h, l):
    n = h.shape[0]
    bull = np.zeros(n, dtype=np.bool_)
    bear = np.zeros(n, dtype=np.bool_)
    for f in range(2, n):
        if l[f] > h[f - 2]:
            bull[f] = True
        elif h[f] < l[f - 2]:
            bear[f] = True
    return bull, bear


# --------------------------------------------------------------------------- public API


def _as_1d(name: str, x) -> np.ndarray:
    arr = np.ascontiguousarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {arr.shape}")
    return arr


def fvg_formations(high, low) -> tuple[np.ndarray, np.ndarray]:
    """Bars where a fair-value gap is formed (= confirmed), without any size filter or window.

    ``bull[f]`` is True when ``low[f] > high[f-2]`` and ``bear[f]`` when
    ``high[f] < low[f-2]`` (``f >= 2``; bars 0 and 1 are False). The gap is known at the
    close of bar ``f`` (the third candle), which is the bar used by ``smc_features``.
    Returns two boolean arrays of the input length.
    """
    h = _as_1d("high", high)
    lo = _as_1d("low", low)
    if h.shape[0] != lo.shape[0]:
        raise ValueError(f"high and low must have equal length, got {h.shape[0]} and {lo.shape[0]}")
    return _fvg_formations_kernel(h, lo)


def smc_features(open, high, low, close, volume, atr, *, window=30, long_swing=5,
                 short_swing=2, fvg_min_atr=0.0) -> dict[str, np.ndarray]:
    """Causal SMC structure features; each row depends only on its last ``window`` bars and ``atr[t]``.

    Parameters: float64 1-D arrays of equal length; ``window`` W (> 2*long_swing+1 and
    > 2*short_swing+1), swing lengths (>= 1), ``fvg_min_atr`` (>= 0, minimum FVG size in
    units of ``atr[t]``). Returns ``{name: float64 array of the input length}`` for every
    name in ``SMC_OUTPUTS``. Rows without a full window (t < W-1), with a non-finite
    OHLCV value in the window, or with ``atr[t]`` not finite and > 0 are NaN everywhere.
    Definitions of swings, breaks and FVGs: see the module docstring. Outputs:

    * ``ext_dir`` (+1/-1/0): direction of the last structure break in the window on long
      swings (``long_swing``); 0 if no break.
    * ``int_dir`` (+1/-1/0): the same on short swings (``short_swing``).
    * ``bos_bull`` / ``bos_bear`` / ``choch_bull`` / ``choch_bear`` (0/1): 1 when that
      long-swing break happens at bar t itself (as scanned in the window ending at t).
    * ``has_fvg_bull`` / ``has_fvg_bear`` (0/1): an FVG of that side formed in the window
      (``f-2 >= s``, size filter with ``atr[t]``) is not filled by any bar in ``(f, t]``
      (active at the close of t; a gap formed at t is active at t).
    * ``fvg_bull_size_atr`` / ``fvg_bear_size_atr`` (ATR units, >= 0): size of the most
      recently formed active FVG of that side divided by ``atr[t]``; 0 if none.
    * ``fvg_retest_type`` (code 0..3 of ``FVG_RETEST_TYPES``): reference FVG = the most
      recently formed FVG of either side that is live at the OPEN of bar t (not filled by
      bars in ``(f, t-1]``; so a gap that bar t fills is still the reference at t). Bull
      zone ``[bot, top] = [high[f-2], low[f]]``: 0 if none, if ``f == t`` or if
      ``low[t] > top``; else 1 *wick* if ``close[t] > top``, 2 *body* if
      ``bot <= close[t] <= top``, 3 *through* if ``close[t] < bot``. Bear zone
      ``[high[f], low[f-2]]`` mirror: touch is ``high[t] >= bot``; 1 if ``close < bot``,
      2 if inside (edges inclusive), 3 if ``close > top``.
    * ``fvg_penetration_ratio`` (>= 0): for that reference FVG, bull
      ``max(0, (top - low[t]) / size)``, bear ``max(0, (high[t] - bot) / size)``;
      0 = touched the near edge (or no touch / no reference / f == t), 1 = reached the far
      edge (which fills the gap), > 1 beyond.
    * ``has_ob_bull`` (0/1): for some bullish long-swing break at bar b in the window
      (broken pivot p), the order block — the last down-close candle (close < open) in
      ``[p, m]`` where m is the latest bar with the lowest low in ``[p, b]`` (start of the
      impulse leg) — exists and no bar in ``(b, t]`` closed below its low.
      ``has_ob_bear`` mirror (highest high, last up-close candle, close above its high).
    * ``mgann_leg_index`` (signed integer): 0 if ``ext_dir == 0``; else
      ``d * (1 + R)`` where d = ext_dir, b = bar of the last long-swing break and R = the
      number of swing runs of the opposite type in the pivot-ordered sequence of
      confirmed short swings with pivot in ``(b, t]`` (a run = opposite swings not
      separated by a same-direction swing; the break counts as a same-direction swing).
      1 = the impulse leg that broke structure, 2 = the next impulse after a confirmed
      pullback, …
    * ``pb_wave_strength_ok`` (0/1): for d = ext_dir != 0, E = the last confirmed short
      swing in direction d (swing high for d=+1), O = the last opposite short swing with a
      pivot before E; leg = ``|price(E) - price(O)|`` (> 0); retracement
      ``(high[E] - close[t]) / leg`` (d=+1) or ``(close[t] - low[E]) / leg`` (d=-1) in
      ``[0.382, 0.786]`` AND mean volume of bars ``(E, t]`` < mean volume of bars
      ``(O, E]``. 0 otherwise.
    * ``confluence_score`` (0..1, multiples of 0.2): 0 if ext_dir == 0, else the mean of
      [int_dir == d], [FVG active on side d], [OB active on side d], [retest type wick or
      body of a reference FVG on side d], [pb_wave_strength_ok].
    * ``dist_swing_high_atr``: ``(max high of confirmed short swing highs in the window
      - close[t]) / atr[t]``; 0 if no swing high. ``dist_swing_low_atr``:
      ``(close[t] - min low of confirmed short swing lows) / atr[t]``; 0 if none.
    * ``bars_since_break``: ``t - b`` for the last long-swing break b in the window (0 on
      the break bar); ``window`` if none.
    """
    names = ("open", "high", "low", "close", "volume", "atr")
    arrays = [_as_1d(nm, x) for nm, x in zip(names, (open, high, low, close, volume, atr))]
    n = arrays[0].shape[0]
    for nm, arr in zip(names, arrays):
        if arr.shape[0] != n:
            raise ValueError(
                f"all inputs must have equal length: open has {n} bars but {nm} has {arr.shape[0]}"
            )
    for nm, val in (("window", window), ("long_swing", long_swing), ("short_swing", short_swing)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)):
            raise ValueError(f"{nm} must be an integer, got {val!r}")
    window, long_swing, short_swing = int(window), int(long_swing), int(short_swing)
    if long_swing < 1 or short_swing < 1:
        raise ValueError(
            f"long_swing and short_swing must be >= 1, got long_swing={long_swing}, short_swing={short_swing}"
        )
    if window <= 2 * long_swing + 1:
        raise ValueError(
            f"window must be > 2*long_swing+1 = {2 * long_swing + 1} (room to confirm and break "
            f"a long swing), got window={window}"
        )
    if window <= 2 * short_swing + 1:
        raise ValueError(
            f"window must be > 2*short_swing+1 = {2 * short_swing + 1}, got window={window}"
        )
    fvg_min_atr = float(fvg_min_atr)
    if not (math.isfinite(fvg_min_atr) and fvg_min_atr >= 0.0):
        raise ValueError(f"fvg_min_atr must be finite and >= 0, got {fvg_min_atr}")
    out = _smc_kernel(*arrays, window, long_swing, short_swing, fvg_min_atr)
    return {name: out[k] for k, name in enumerate(SMC_OUTPUTS)}
