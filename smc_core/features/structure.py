"""Causal, finite-memory Smart-Money-Concepts structure features.

Every value at bar ``t`` is a pure function of the bars ``t-W+1 .. t`` (``W`` = ``window``)
and of the scalar ``atr[t]``. Nothing reads a later bar, nothing depends on the length of
the series or on bars older than ``t-W+1``.

How that is guaranteed (and why a row is bit-identical when the service recomputes it
from a short request): for every ``t`` the window routine re-scans the bars ``s .. t``
(``s = t-W+1``) from ``s``, always in the same order and with the same floating-point
operations, and carries nothing from ``t-1`` to ``t`` (its scratch buffers are rewritten
before they are read). The only things evaluated once per series instead of once per
window are bar-local booleans: "bar j is finite" and the swing-pivot flags, each a pure
function of a fixed neighbourhood (bar j; bars p-L .. p+L) that the window routine uses
only when the whole neighbourhood lies inside its window. A comparison of the same bars
gives the same boolean in any series, so this is identical to re-evaluating them per
window. Series of at least ``PARALLEL_MIN_BARS`` bars are cut into chunks of rows that
numba's threads compute concurrently; rows are independent, so values do not change.

Vocabulary used by every definition below (``s = t-W+1`` is the first bar of the window):

* **Swing high of length L at pivot p**: ``high[p] > high[j]`` for the ``L`` bars
  ``j = p-L .. p-1`` (strict) and ``high[p] >= high[j]`` for the ``L`` bars
  ``j = p+1 .. p+L`` (ties after the pivot allowed): of equal highs within L bars of each
  other only the FIRST can be a pivot. **Swing low**: ``low[p] < low[j]`` before, ``low[p] <= low[j]`` after.
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
open/high/low/close/volume, and rows whose ``atr[t]`` is not a finite number > 0 are NaN in
every output (the float64 sentinel; the caller casts).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

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

# Series this long are computed on numba's threads, in chunks of _CHUNK rows (set
# PARALLEL_MIN_BARS to a huge number to stay single-threaded). Values do not depend on it.
PARALLEL_MIN_BARS = 65_536
_CHUNK = 16_384

PB_RETRACE_MIN = 0.382
PB_RETRACE_MAX = 0.786

# Break kinds in the event scratch.
_BOS, _CHOCH = 1, 2


# --------------------------------------------------------------------------- kernels
# The window routine reads the bars of its window only: every access is written
# ``G[row, s + k]`` with a window-local index 0 <= k <= W-1 (k = 0 is bar s = t-W+1,
# k = W-1 is bar t). Inputs are packed into 2-D arrays for speed only: every array handed
# to a numba function costs atomic reference counting, per row.

# rows of the packed bars `G` (shape (5, n))
_O, _H, _L, _C, _V = 0, 1, 2, 3, 4
# rows of the packed pivot flags `F` (shape (4, n), 0/1)
_SH_L, _SL_L, _SH_S, _SL_S = 0, 1, 2, 3
# rows of the per-window scratch `wsuf` (shape (2, W)): suffix min / max of the closes
_SMIN_C, _SMAX_C = 0, 1
# rows of the per-window scratch `wi` (shape (4, 2W)): long-swing break events (bar,
# direction, kind, broken pivot), rewritten for every t
_EV_BAR, _EV_DIR, _EV_KIND, _EV_REF = 0, 1, 2, 3


@njit(cache=True)
def _swing_pivots(h, l, L):
    """Swing-pivot predicates of length L for every bar of a series.

    ``sh[p]`` / ``sl[p]`` is a pure function of the bars ``p-L .. p+L`` (False when they do
    not all exist): it is the same boolean in whatever series or window those bars sit,
    and the window routine uses it only when all of them lie inside its window. Computing
    it once per series is therefore the same as re-evaluating it in every window.
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
def _breaks(G, F, s, wi, W, L1, L2):
    """Scan the window for structure breaks, on long (L1) and short (L2) swings at once.

    For each swing length, the reference high at bar b is the most recent swing high
    confirmed at b-1 or earlier (its pivot p = b-1-L is read when it is confirmed), and a
    bullish break is the first close above it; it is then used up (level +inf). Mirror
    for lows. No break is possible before local bar 2L+1. Long-swing events are recorded
    in order into ``wi`` (bar, direction +1/-1, kind 1 BOS / 2 CHoCH, pivot of the broken
    swing); returns (number of long events, direction of the last long break or 0, local
    bar of the last long break or -1, direction of the last short break or 0). The two
    scans share one loop only for speed; they do not interact.
    """
    ref_h1 = -1
    ref_l1 = -1
    lev_h1 = np.inf
    lev_l1 = -np.inf
    dir1 = 0
    n1 = 0
    lev_h2 = np.inf
    lev_l2 = -np.inf
    dir2 = 0
    b0 = min(2 * L1 + 1, 2 * L2 + 1)
    for b in range(b0, W):
        cb = G[_C, s + b]
        if b >= 2 * L1 + 1:
            p = b - 1 - L1
            fh = F[_SH_L, s + p] != 0
            fl = F[_SL_L, s + p] != 0
            ref_h1 = p if fh else ref_h1
            lev_h1 = G[_H, s + p] if fh else lev_h1
            ref_l1 = p if fl else ref_l1
            lev_l1 = G[_L, s + p] if fl else lev_l1
            if cb > lev_h1:
                wi[_EV_BAR, n1] = b
                wi[_EV_DIR, n1] = 1
                wi[_EV_KIND, n1] = _BOS if dir1 >= 0 else _CHOCH
                wi[_EV_REF, n1] = ref_h1
                n1 += 1
                lev_h1 = np.inf
                dir1 = 1
            if cb < lev_l1:
                wi[_EV_BAR, n1] = b
                wi[_EV_DIR, n1] = -1
                wi[_EV_KIND, n1] = _BOS if dir1 <= 0 else _CHOCH
                wi[_EV_REF, n1] = ref_l1
                n1 += 1
                lev_l1 = -np.inf
                dir1 = -1
        if b >= 2 * L2 + 1:
            p = b - 1 - L2
            fh = F[_SH_S, s + p] != 0
            fl = F[_SL_S, s + p] != 0
            lev_h2 = G[_H, s + p] if fh else lev_h2
            lev_l2 = G[_L, s + p] if fl else lev_l2
            if cb > lev_h2:
                lev_h2 = np.inf
                dir2 = 1
            if cb < lev_l2:
                lev_l2 = -np.inf
                dir2 = -1
    last_bar = wi[_EV_BAR, n1 - 1] if n1 > 0 else -1
    return n1, dir1, last_bar, dir2


@njit(cache=True)
def _order_block_active(G, s, wsuf, W, b, p, bullish):
    """Is the order block of the break at local bar b (broken pivot p) unmitigated at the window end?

    Bullish: the impulse leg starts at m = the latest bar with the lowest low in [p, b];
    the order block is the last down-close candle (close < open) in [p, m]; it is
    mitigated once a bar after b closes below its low. Bearish mirror (latest highest
    high, last up-close candle close > open, mitigated by a close above its high). Needs
    the suffix min / max of the closes in rows _SMIN_C / _SMAX_C for bars > b.
    """
    m = p
    if bullish:
        for j in range(p + 1, b + 1):
            if G[_L, s + j] <= G[_L, s + m]:
                m = j
        for k in range(m, p - 1, -1):
            if G[_C, s + k] < G[_O, s + k]:
                return b + 1 >= W or not wsuf[_SMIN_C, b + 1] < G[_L, s + k]
        return False
    for j in range(p + 1, b + 1):
        if G[_H, s + j] >= G[_H, s + m]:
            m = j
    for k in range(m, p - 1, -1):
        if G[_C, s + k] > G[_O, s + k]:
            return b + 1 >= W or not wsuf[_SMAX_C, b + 1] > G[_H, s + k]
    return False


@njit(cache=True)
def _window_row(G, F, s, wi, wsuf, W, atr_t, long_swing, short_swing, fvg_min_atr, out, t_out):
    """Compute every output for the last bar of one window into ``out[:, t_out]``.

    Reads only ``G[:, s .. s+W-1]`` and ``F[:, s .. s+W-1]`` (pivot flags are used only
    for pivots whose whole neighbourhood lies in the window); ``wi`` / ``wsuf`` are
    scratch rewritten here. The caller has checked that the window is complete and
    finite and that atr_t > 0.
    """
    t = W - 1
    h_t = G[_H, s + t]
    l_t = G[_L, s + t]
    c_t = G[_C, s + t]

    # ---- structure (long swings) and internal direction (short swings)
    n_ev, ext_dir, last_b, int_dir = _breaks(G, F, s, wi, W, long_swing, short_swing)

    bos_bull = 0.0
    bos_bear = 0.0
    choch_bull = 0.0
    choch_bear = 0.0
    for e in range(n_ev - 1, -1, -1):
        if wi[_EV_BAR, e] != t:
            break
        bos = wi[_EV_KIND, e] == _BOS
        if wi[_EV_DIR, e] == 1:
            if bos:
                bos_bull = 1.0
            else:
                choch_bull = 1.0
        else:
            if bos:
                bos_bear = 1.0
            else:
                choch_bear = 1.0

    # order blocks: any long-swing break in the window whose block is unmitigated
    ob_bull = False
    ob_bear = False
    if n_ev > 0:
        mn = np.inf
        mx = -np.inf
        for j in range(t, wi[_EV_BAR, 0], -1):
            cj = G[_C, s + j]
            mn = cj if cj < mn else mn
            mx = cj if cj > mx else mx
            wsuf[_SMIN_C, j] = mn
            wsuf[_SMAX_C, j] = mx
        for e in range(n_ev - 1, -1, -1):
            b = wi[_EV_BAR, e]
            p = wi[_EV_REF, e]
            if wi[_EV_DIR, e] == 1:
                if not ob_bull:
                    ob_bull = _order_block_active(G, s, wsuf, W, b, p, True)
            elif not ob_bear:
                ob_bear = _order_block_active(G, s, wsuf, W, b, p, False)
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
    min_low = np.inf    # min low over (f, t-1]
    max_high = -np.inf  # max high over (f, t-1]
    bull_size = 0.0
    bear_size = 0.0
    has_bull = False
    has_bear = False
    ref_side = 0      # the newest FVG live at the open of t: +1 bull, -1 bear, 0 none
    ref_f = -1
    ref_bot = 0.0
    ref_top = 0.0
    for f in range(t, 1, -1):
        if f <= t - 2:
            lj = G[_L, s + f + 1]
            hj = G[_H, s + f + 1]
            min_low = lj if lj < min_low else min_low
            max_high = hj if hj > max_high else max_high
        if G[_L, s + f] > G[_H, s + f - 2]:
            bot = G[_H, s + f - 2]
            top = G[_L, s + f]
            size = top - bot
            if size >= thr and min_low > bot:
                if ref_side == 0:
                    ref_side = 1
                    ref_f = f
                    ref_bot = bot
                    ref_top = top
                if not has_bull and (f == t or l_t > bot):
                    has_bull = True
                    bull_size = size
                    if has_bear:
                        break
        elif G[_H, s + f] < G[_L, s + f - 2]:
            bot = G[_H, s + f]
            top = G[_L, s + f - 2]
            size = top - bot
            if size >= thr and max_high < top:
                if ref_side == 0:
                    ref_side = -1
                    ref_f = f
                    ref_bot = bot
                    ref_top = top
                if not has_bear and (f == t or h_t < top):
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
            if l_t <= ref_top:
                if c_t > ref_top:
                    retest = 1
                elif c_t >= ref_bot:
                    retest = 2
                else:
                    retest = 3
                pen = (ref_top - l_t) / size
        else:
            if h_t >= ref_bot:
                if c_t < ref_bot:
                    retest = 1
                elif c_t <= ref_top:
                    retest = 2
                else:
                    retest = 3
                pen = (h_t - ref_bot) / size
        if pen < 0.0:
            pen = 0.0
    out[_RETEST, t_out] = retest
    out[_PENETRATION, t_out] = pen

    # ---- short-swing summary: extremes and last pivots
    hmax = -np.inf
    lmin = np.inf
    last_sh = -1
    last_sl = -1
    for p in range(short_swing, W - short_swing):
        if F[_SH_S, s + p] != 0:
            last_sh = p
            hp = G[_H, s + p]
            hmax = hp if hp > hmax else hmax
        if F[_SL_S, s + p] != 0:
            last_sl = p
            lp = G[_L, s + p]
            lmin = lp if lp < lmin else lmin
    out[_DIST_HIGH, t_out] = (hmax - c_t) / atr_t if last_sh >= 0 else 0.0
    out[_DIST_LOW, t_out] = (c_t - lmin) / atr_t if last_sl >= 0 else 0.0

    # ---- mgann leg index (short swings with a pivot after the last long-swing break)
    d = ext_dir
    if d == 0:
        out[_MGANN, t_out] = 0.0
    else:
        r_same = _SH_S if d == 1 else _SL_S
        r_opp = _SL_S if d == 1 else _SH_S
        count = 1
        prev_same = True  # the break itself stands for a swing in direction d
        for p in range(last_b + 1, W - short_swing):
            same = F[r_same, s + p] != 0
            opp = F[r_opp, s + p] != 0
            if opp and same:
                # both on one bar: an up-close/doji candle made its low first
                low_first = G[_C, s + p] >= G[_O, s + p]
                if low_first == (d == 1):   # opposite swing first, then same
                    if prev_same:
                        count += 1
                    prev_same = True
                else:                        # same swing first, then opposite
                    count += 1
                    prev_same = False
            elif opp:
                if prev_same:
                    count += 1
                prev_same = False
            elif same:
                prev_same = True
        out[_MGANN, t_out] = d * count

    # ---- pullback wave strength (short swings, oriented by ext_dir)
    pb_ok = False
    if d != 0:
        # E = last confirmed swing in direction d, O = last opposite swing before E
        p_ext = last_sh if d == 1 else last_sl
        r_opp = _SL_S if d == 1 else _SH_S
        p_org = -1
        for p in range(p_ext - 1, short_swing - 1, -1):
            if F[r_opp, s + p] != 0:
                p_org = p
                break
        if p_ext >= 0 and p_org >= 0:
            if d == 1:
                leg = G[_H, s + p_ext] - G[_L, s + p_org]
                retr = (G[_H, s + p_ext] - c_t) / leg if leg > 0.0 else -1.0
            else:
                leg = G[_H, s + p_org] - G[_L, s + p_ext]
                retr = (c_t - G[_L, s + p_ext]) / leg if leg > 0.0 else -1.0
            if leg > 0.0 and retr >= PB_RETRACE_MIN and retr <= PB_RETRACE_MAX:
                s_imp = 0.0
                for j in range(p_org + 1, p_ext + 1):
                    s_imp += G[_V, s + j]
                s_pb = 0.0
                for j in range(p_ext + 1, t + 1):
                    s_pb += G[_V, s + j]
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
def _prepare(o, h, l, c, v, long_swing, short_swing):
    """Pack the bars into G and compute the bar-local predicates.

    ``finite[j]``: bar j has finite open/high/low/close/volume. ``F``: swing-pivot flags,
    each a pure function of the bars p-L .. p+L.
    """
    n = h.shape[0]
    G = np.empty((5, n), dtype=np.float64)
    F = np.zeros((4, n), dtype=np.int8)
    finite = np.empty(n, dtype=np.bool_)
    for j in range(n):
        G[_O, j] = o[j]
        G[_H, j] = h[j]
        G[_L, j] = l[j]
        G[_C, j] = c[j]
        G[_V, j] = v[j]
        finite[j] = (math.isfinite(o[j]) and math.isfinite(h[j]) and math.isfinite(l[j])
                     and math.isfinite(c[j]) and math.isfinite(v[j]))
    sh, sl = _swing_pivots(h, l, long_swing)
    for j in range(n):
        F[_SH_L, j] = sh[j]
        F[_SL_L, j] = sl[j]
    sh, sl = _swing_pivots(h, l, short_swing)
    for j in range(n):
        F[_SH_S, j] = sh[j]
        F[_SL_S, j] = sl[j]
    return G, F, finite


@njit(cache=True)
def _rows(G, F, finite, atr, W, long_swing, short_swing, fvg_min_atr, out, t_start, t_stop):
    """Rows t_start .. t_stop-1; each one recomputed from its own window only."""
    # Per-window scratch, fully rewritten before it is read (no state between rows).
    wi = np.zeros((4, 2 * W), dtype=np.int64)  # at most two breaks per bar
    wsuf = np.zeros((2, W), dtype=np.float64)
    for t in range(t_start, t_stop):
        s = t - W + 1
        atr_t = atr[t]
        ok = t >= W - 1 and math.isfinite(atr_t) and atr_t > 0.0
        if ok:
            for j in range(s, t + 1):
                if not finite[j]:
                    ok = False
                    break
        if ok:
            _window_row(G, F, s, wi, wsuf, W, atr_t, long_swing, short_swing, fvg_min_atr, out, t)
        else:
            for k in range(_N_OUT):
                out[k, t] = np.nan


@njit(cache=True, parallel=True)
def _rows_parallel(G, F, finite, atr, W, long_swing, short_swing, fvg_min_atr, out, chunk):
    """Same rows as ``_rows`` over the whole series, in chunks spread over threads.

    Rows are independent, so the split changes nothing in any value.
    """
    n = G.shape[1]
    n_chunks = (n + chunk - 1) // chunk
    for i in prange(n_chunks):
        t_start = i * chunk
        t_stop = min(n, t_start + chunk)
        _rows(G, F, finite, atr, W, long_swing, short_swing, fvg_min_atr, out, t_start, t_stop)


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
    OHLCV value in the window, or with ``atr[t]`` not a finite number > 0 are NaN everywhere.
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
    o_, h_, l_, c_, v_, atr_ = arrays
    G, F, finite = _prepare(o_, h_, l_, c_, v_, long_swing, short_swing)
    out = np.empty((_N_OUT, n), dtype=np.float64)
    if n >= PARALLEL_MIN_BARS:
        _rows_parallel(G, F, finite, atr_, window, long_swing, short_swing, fvg_min_atr, out, _CHUNK)
    else:
        _rows(G, F, finite, atr_, window, long_swing, short_swing, fvg_min_atr, out, 0, n)
    return {name: out[k] for k, name in enumerate(SMC_OUTPUTS)}
