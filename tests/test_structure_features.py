"""SMC structure features: hand-built bars, an independent reference, causality/replay, and
the public ``smartmoneyconcepts`` library (skipped when it is not importable)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from smc_core.features import structure
from smc_core.features.structure import (
    FVG_RETEST_TYPES,
    SMC_OUTPUTS,
    fvg_formations,
    smc_features,
)

WICK, BODY, THROUGH = (FVG_RETEST_TYPES.index(k) for k in ("wick", "body", "through"))


# ----------------------------------------------------------------------------- helpers

def bars_from_closes(closes, first_open, pad=0.1):
    """Bars whose open is the previous close and whose wicks stick out ``pad`` beyond the body."""
    c = np.asarray(closes, dtype=np.float64)
    o = np.empty_like(c)
    o[0] = first_open
    o[1:] = c[:-1]
    h = np.maximum(o, c) + pad
    lo = np.minimum(o, c) - pad
    v = np.full_like(c, 100.0)
    return o, h, lo, c, v


def random_bars(n, seed, tick=None):
    r = np.random.default_rng(seed)
    c = 100 + np.cumsum(r.normal(0, 1, n))
    o = np.r_[c[0], c[:-1]] + r.normal(0, 0.2, n)
    h = np.maximum(o, c) + np.abs(r.normal(0, 0.5, n))
    lo = np.minimum(o, c) - np.abs(r.normal(0, 0.5, n))
    if tick:  # tick-rounded prices: lots of equal highs/lows (tie rules)
        o, h, lo, c = (np.round(x / tick) * tick for x in (o, h, lo, c))
    v = r.uniform(100, 1000, n).round()
    tr = np.r_[h[0] - lo[0], np.maximum(h[1:], c[:-1]) - np.minimum(lo[1:], c[:-1])]
    atr = np.convolve(tr, np.ones(14) / 14)[:n]
    atr[:13] = np.nan
    return o, h, lo, c, v, atr


def as_matrix(feats):
    return np.column_stack([feats[k] for k in SMC_OUTPUTS])


# --------------------------------------------------------------- independent reference
# A deliberately plain re-implementation of the documented definitions, one window at a
# time, with lists and sets instead of the kernel's running scans.

def reference_row(o, h, lo, c, v, atr_t, long_swing, short_swing, fvg_min_atr):
    W = len(h)
    t = W - 1

    def pivots(L):
        highs = [p for p in range(L, W - L)
                 if all(h[p] > h[j] for j in range(p - L, p)) and all(h[p] >= h[j] for j in range(p + 1, p + L + 1))]
        lows = [p for p in range(L, W - L)
                if all(lo[p] < lo[j] for j in range(p - L, p)) and all(lo[p] <= lo[j] for j in range(p + 1, p + L + 1))]
        return highs, lows

    def breaks(L):
        highs, lows = pivots(L)
        events, last, used_h, used_l = [], 0, set(), set()
        for b in range(W):
            confirmed_h = [p for p in highs if p + L <= b - 1]
            if confirmed_h:
                p = max(confirmed_h)
                if p not in used_h and c[b] > h[p]:
                    events.append((b, 1, "BOS" if last >= 0 else "CHOCH", p))
                    used_h.add(p)
                    last = 1
            confirmed_l = [p for p in lows if p + L <= b - 1]
            if confirmed_l:
                p = max(confirmed_l)
                if p not in used_l and c[b] < lo[p]:
                    events.append((b, -1, "BOS" if last <= 0 else "CHOCH", p))
                    used_l.add(p)
                    last = -1
        return events, last

    events, ext_dir = breaks(long_swing)
    _, int_dir = breaks(short_swing)
    row = {k: 0.0 for k in SMC_OUTPUTS}
    row["ext_dir"], row["int_dir"] = float(ext_dir), float(int_dir)
    for b, d, kind, _p in events:
        if b == t:
            row[("bos_" if kind == "BOS" else "choch_") + ("bull" if d == 1 else "bear")] = 1.0
    last_b = events[-1][0] if events else None
    row["bars_since_break"] = float(t - last_b) if events else float(W)

    def ob_active(b, p, d):
        seg = range(p, b + 1)
        if d == 1:
            m = max(j for j in seg if lo[j] == min(lo[k] for k in seg))
            cands = [k for k in range(p, m + 1) if c[k] < o[k]]
            return bool(cands) and all(not c[j] < lo[max(cands)] for j in range(b + 1, W))
        m = max(j for j in seg if h[j] == max(h[k] for k in seg))
        cands = [k for k in range(p, m + 1) if c[k] > o[k]]
        return bool(cands) and all(not c[j] > h[max(cands)] for j in range(b + 1, W))

    ob = {d: any(ob_active(b, p, d) for b, dd, _k, p in events if dd == d) for d in (1, -1)}
    row["has_ob_bull"], row["has_ob_bear"] = float(ob[1]), float(ob[-1])

    gaps = []  # (f, side, bottom, top)
    for f in range(2, W):
        if lo[f] > h[f - 2]:
            gaps.append((f, 1, h[f - 2], lo[f]))
        elif h[f] < lo[f - 2]:
            gaps.append((f, -1, h[f], lo[f - 2]))
    gaps = [g for g in gaps if g[3] - g[2] >= fvg_min_atr * atr_t]

    def filled(g, upto):
        f, side, bot, top = g
        if side == 1:
            return any(lo[j] <= bot for j in range(f + 1, upto + 1))
        return any(h[j] >= top for j in range(f + 1, upto + 1))

    active = {d: [g for g in gaps if g[1] == d and not filled(g, t)] for d in (1, -1)}
    row["has_fvg_bull"], row["has_fvg_bear"] = float(bool(active[1])), float(bool(active[-1]))
    for d, key in ((1, "fvg_bull_size_atr"), (-1, "fvg_bear_size_atr")):
        if active[d]:
            g = max(active[d])
            row[key] = (g[3] - g[2]) / atr_t
    live = [g for g in gaps if not filled(g, t - 1)]
    ref = max(live) if live else None
    retest, pen = 0, 0.0
    if ref is not None and ref[0] < t:
        f, side, bot, top = ref
        if side == 1 and lo[t] <= top:
            retest = WICK if c[t] > top else (BODY if c[t] >= bot else THROUGH)
            pen = max(0.0, (top - lo[t]) / (top - bot))
        elif side == -1 and h[t] >= bot:
            retest = WICK if c[t] < bot else (BODY if c[t] <= top else THROUGH)
            pen = max(0.0, (h[t] - bot) / (top - bot))
    row["fvg_retest_type"], row["fvg_penetration_ratio"] = float(retest), pen

    highs, lows = pivots(short_swing)
    row["dist_swing_high_atr"] = (max(h[p] for p in highs) - c[t]) / atr_t if highs else 0.0
    row["dist_swing_low_atr"] = (c[t] - min(lo[p] for p in lows)) / atr_t if lows else 0.0

    d = ext_dir
    if d != 0:
        seq = []
        for p in range(last_b + 1, W):
            is_h, is_l = p in highs, p in lows
            if is_h and is_l:
                seq += ["L", "H"] if c[p] >= o[p] else ["H", "L"]
            elif is_h:
                seq.append("H")
            elif is_l:
                seq.append("L")
        opp = "L" if d == 1 else "H"
        runs = sum(1 for i, x in enumerate(seq) if x == opp and (i == 0 or seq[i - 1] != opp))
        row["mgann_leg_index"] = float(d * (1 + runs))

    pb_ok = False
    ext_list, opp_list = (highs, lows) if d == 1 else (lows, highs)
    if d != 0 and ext_list:
        e = max(ext_list)
        before = [p for p in opp_list if p < e]
        if before:
            org = max(before)
            leg = h[e] - lo[org] if d == 1 else h[org] - lo[e]
            if leg > 0:
                retr = (h[e] - c[t]) / leg if d == 1 else (c[t] - lo[e]) / leg
                if 0.382 <= retr <= 0.786:
                    pb_ok = sum(v[e + 1:t + 1]) / (t - e) < sum(v[org + 1:e + 1]) / (e - org)
    row["pb_wave_strength_ok"] = float(pb_ok)

    if d != 0:
        ticks = [int_dir == d, bool(active[d]), ob[d],
                 ref is not None and ref[1] == d and retest in (WICK, BODY), pb_ok]
        row["confluence_score"] = sum(ticks) / 5.0
    return np.array([row[k] for k in SMC_OUTPUTS])


def reference_features(o, h, lo, c, v, atr, window, long_swing=5, short_swing=2, fvg_min_atr=0.0):
    n = len(h)
    out = np.full((n, len(SMC_OUTPUTS)), np.nan)
    for t in range(window - 1, n):
        s = t - window + 1
        win = [x[s:t + 1] for x in (o, h, lo, c, v)]
        if not (np.isfinite(atr[t]) and atr[t] > 0 and all(np.isfinite(x).all() for x in win)):
            continue
        out[t] = reference_row(*(list(map(float, x)) for x in win), float(atr[t]),
                               long_swing, short_swing, fvg_min_atr)
    return out


# ------------------------------------------------------------------- hand-built bars

def structure_bars():
    """Down to a swing low at 19, up to a swing high at 29, pullback to a low at 36, a
    bullish break at 44, top at 46, then down through the low of 36 at bar 57."""
    closes = ([120.0 - i for i in range(20)]            # 0..19: 120 -> 101
              + [102.0 + i for i in range(10)]          # 20..29: 102 -> 111
              + [110.0 - i for i in range(7)]           # 30..36: 110 -> 104
              + [105.0 + i for i in range(10)]          # 37..46: 105 -> 114
              + [113.0 - i for i in range(13)])         # 47..59: 113 -> 101
    o, h, lo, c, v = bars_from_closes(closes, first_open=120.5)
    return o, h, lo, c, v, np.ones_like(c)


def test_swing_exists_only_from_its_confirmation_bar():
    o, h, lo, c, v, atr = structure_bars()
    f = smc_features(o, h, lo, c, v, atr, window=40)
    # the top at bar 46 (high 114.1, tied by bar 47: the first of equal highs is the pivot)
    assert h[46] == h[47] == pytest.approx(114.1)
    # short swing (L=2): confirmed at bar 48; before that the highest swing high is bar 29's
    assert f["dist_swing_high_atr"][47] == pytest.approx(h[29] - c[47])
    assert f["dist_swing_high_atr"][48] == pytest.approx(h[46] - c[48])
    # long swing (L=5) of bar 29 (high 111.1) is confirmed at 34; the first close above it
    # afterwards (bar 44, close 112) is the bullish break
    assert c[43] < h[29] < c[44]
    # the series known at bar 47 gives the same reading: bar 47 never saw bar 48
    g = smc_features(*(x[:48] for x in (o, h, lo, c, v, atr)), window=40)
    assert g["dist_swing_high_atr"][47] == f["dist_swing_high_atr"][47]
    # the long swing of bar 46 (confirmed at 51) is never broken: closes only fall after it
    assert f["bos_bull"][45:].sum() == 0 and f["choch_bull"][45:].sum() == 0


def test_bos_choch_and_order_block_on_exact_bars():
    o, h, lo, c, v, atr = structure_bars()
    f = smc_features(o, h, lo, c, v, atr, window=40)
    rows = np.arange(len(c))
    assert np.isnan(f["ext_dir"][:39]).all()            # no full window yet
    assert rows[f["bos_bull"] == 1].tolist() == [44]
    assert rows[f["choch_bear"] == 1].tolist() == [57]
    assert not (f["choch_bull"] == 1).any() and not (f["bos_bear"] == 1).any()
    assert f["ext_dir"][39:44].tolist() == [0] * 5
    assert f["ext_dir"][44:57].tolist() == [1] * 13
    assert f["ext_dir"][57] == -1
    assert f["bars_since_break"][43] == 40 and f["bars_since_break"][44] == 0
    assert f["bars_since_break"][56] == 12 and f["bars_since_break"][57] == 0
    # bullish order block of the break at 44: the impulse starts at the lowest low in
    # [29, 44] (bars 36/37 tie at 103.9: the later one, 37); the last down-close candle in
    # [29, 37] is bar 36, zone [103.9, 105.1]. Active from the break until a close below
    # 103.9: bar 57 closes at 103.
    assert c[36] < o[36] and lo[36] == pytest.approx(103.9)
    assert f["has_ob_bull"][39:44].tolist() == [0] * 5
    assert f["has_ob_bull"][44:57].tolist() == [1] * 13
    assert f["has_ob_bull"][57] == 0
    # bearish order block of the CHoCH at 57: last up-close candle before the highest high
    # (bars 46/47 tie at 114.1 -> 47): bar 46, not mitigated
    assert f["has_ob_bear"][56] == 0 and f["has_ob_bear"][57] == 1
    # leg count: the impulse that broke is leg 1; the top at 46 (a swing in the same
    # direction) does not start a new leg; the CHoCH restarts the count downwards
    assert f["mgann_leg_index"][44:57].tolist() == [1] * 13
    assert f["mgann_leg_index"][57] == -1 and f["mgann_leg_index"][43] == 0


def test_choch_needs_the_previous_break_in_the_window():
    # with window 30 the bullish break at 44 (its swing at 29 starts at 24) has left the
    # window of bar 57, so the same bearish break is a plain BOS: finite memory.
    o, h, lo, c, v, atr = structure_bars()
    f = smc_features(o, h, lo, c, v, atr, window=30)
    assert f["bos_bull"][44] == 1
    assert f["bos_bear"][57] == 1 and f["choch_bear"][57] == 0


def fvg_bars():
    """A flat preamble, a bullish FVG formed at bar 32 (zone [100.5, 101.5]) that is
    retested by wick (34), body (35) and filled through (36); then a bearish FVG formed at
    bar 40 (zone [98.8, 99.8]) retested by wick (42) and violated through (43)."""
    flat = [(100.0, 100.5, 99.5, 100.0)] * 30
    rest = [  # open, high, low, close
        (100.0, 100.5, 99.5, 100.4),    # 30  bar f-2 of the bullish gap: high 100.5
        (100.4, 102.8, 100.3, 102.6),   # 31  impulse
        (102.6, 103.2, 101.5, 103.0),   # 32  low 101.5 > 100.5: bullish FVG formed
        (103.0, 103.8, 102.0, 103.5),   # 33  away from the zone
        (103.5, 103.6, 101.2, 102.0),   # 34  wick into the zone, close above: wick
        (102.0, 102.2, 100.8, 101.0),   # 35  close inside the zone: body
        (101.0, 101.3, 100.0, 100.2),   # 36  low <= 100.5 fills it, close below: through
        (100.2, 100.9, 99.9, 100.3),    # 37  nothing live any more
        (100.3, 100.5, 99.8, 100.2),    # 38  bar f-2 of the bearish gap: low 99.8
        (100.2, 100.3, 97.8, 98.0),     # 39  impulse down
        (98.0, 98.8, 97.2, 97.5),       # 40  high 98.8 < 99.8: bearish FVG formed
        (97.5, 97.9, 96.8, 97.0),       # 41  away from the zone
        (97.0, 99.0, 96.9, 98.0),       # 42  wick into the zone, close below: wick
        (98.0, 100.1, 97.9, 99.9),      # 43  high >= 99.8 fills it, close above: through
        (99.9, 100.0, 98.9, 99.7),      # 44  (low below high[42]: no new gap)
        (99.7, 99.9, 99.4, 99.6),       # 45
    ]
    o, h, lo, c = (np.array([b[i] for b in flat + rest]) for i in range(4))
    return o, h, lo, c, np.full_like(c, 100.0), np.ones_like(c)


def test_fvg_formation_retests_and_fill_on_exact_bars():
    o, h, lo, c, v, atr = fvg_bars()
    bull, bear = fvg_formations(h, lo)
    assert np.flatnonzero(bull).tolist() == [32]
    assert np.flatnonzero(bear).tolist() == [40]
    f = smc_features(o, h, lo, c, v, atr)
    rows = range(29, 46)
    assert [f["has_fvg_bull"][t] for t in rows] == [0, 0, 0, 1, 1, 1, 1, 0] + [0] * 9
    assert [f["has_fvg_bear"][t] for t in rows] == [0] * 11 + [1, 1, 1, 0, 0, 0]
    assert f["fvg_bull_size_atr"][32] == 1.0 and f["fvg_bull_size_atr"][36] == 0.0
    assert f["fvg_bear_size_atr"][40] == pytest.approx(1.0) and f["fvg_bear_size_atr"][43] == 0.0
    # retests: 32 is the formation bar (0 although its low sits on the zone's top)
    assert [f["fvg_retest_type"][t] for t in range(32, 38)] == [0, 0, WICK, BODY, THROUGH, 0]
    assert [f["fvg_retest_type"][t] for t in range(40, 46)] == [0, 0, WICK, THROUGH, 0, 0]
    pen = f["fvg_penetration_ratio"]
    assert pen[33] == 0.0
    assert pen[34] == pytest.approx(0.3) and pen[35] == pytest.approx(0.7) and pen[36] == pytest.approx(1.5)
    assert pen[42] == pytest.approx(0.2) and pen[43] == pytest.approx(1.3)
    assert pen[37] == 0.0


def test_fvg_size_filter_uses_atr_at_t():
    o, h, lo, c, v, atr = fvg_bars()
    f = smc_features(o, h, lo, c, v, atr, fvg_min_atr=1.5)   # gaps are ~1 ATR: filtered
    assert not (f["has_fvg_bull"] == 1).any() and not (f["has_fvg_bear"] == 1).any()
    assert (f["fvg_retest_type"][29:] == 0).all()
    g = smc_features(o, h, lo, c, v, atr * 0.5, fvg_min_atr=1.5)  # 1.0 >= 0.75
    assert g["has_fvg_bull"][32] == 1


# ----------------------------------------------------------------- reference, contract

@pytest.mark.parametrize("seed,tick", [(1, None), (2, None), (3, 0.25), (4, 0.5)])
def test_matches_independent_reference(seed, tick):
    o, h, lo, c, v, atr = random_bars(260, seed, tick)
    got = as_matrix(smc_features(o, h, lo, c, v, atr))
    want = reference_features(o, h, lo, c, v, atr, 30)
    bad = ~((got == want) | (np.isnan(got) & np.isnan(want)))
    rows, cols = np.nonzero(bad)
    assert not bad.any(), [(int(r), SMC_OUTPUTS[k], got[r, k], want[r, k]) for r, k in zip(rows[:5], cols[:5])]


def test_reference_with_other_parameters():
    o, h, lo, c, v, atr = random_bars(200, 9, 0.25)
    got = as_matrix(smc_features(o, h, lo, c, v, atr, window=24, long_swing=3, short_swing=1, fvg_min_atr=0.3))
    want = reference_features(o, h, lo, c, v, atr, 24, 3, 1, 0.3)
    assert np.array_equal(got, want, equal_nan=True)


def test_every_output_is_exercised_on_random_bars():
    o, h, lo, c, v, atr = random_bars(3000, 5)
    f = smc_features(o, h, lo, c, v, atr)
    valid = ~np.isnan(f["ext_dir"])
    assert valid[29:].all() and not valid[:29].any()
    for k in SMC_OUTPUTS:
        assert f[k].dtype == np.float64 and f[k].shape == c.shape
        assert len(np.unique(f[k][valid])) > 1, k
    assert set(np.unique(f["fvg_retest_type"][valid])) == {0, 1, 2, 3}
    assert set(np.unique(f["confluence_score"][valid])) <= {0, 0.2, 0.4, 0.6, 0.8, 1.0}


def test_causal_prefix_and_window_replay_are_bit_identical():
    rewritten = 0
    W = 30
    for seed in (11, 12, 13, 14):
        o, h, lo, c, v, atr = random_bars(400, seed, 0.25 if seed % 2 else None)
        full = as_matrix(smc_features(o, h, lo, c, v, atr))
        r = np.random.default_rng(seed)
        cuts = sorted(set(r.integers(W, 400, 25).tolist()) | {W, W + 1, 399})
        for k in cuts:  # the series as it was known at bar k-1
            part = as_matrix(smc_features(*(x[:k] for x in (o, h, lo, c, v, atr))))
            same = np.array_equal(part, full[:k], equal_nan=True)
            rewritten += 0 if same else int((part != full[:k]).any(axis=1).sum())
            assert np.array_equal(part[-1], full[k - 1], equal_nan=True)
        for t in range(W - 1, 400):  # the service: exactly the W bars ending at t
            alone = as_matrix(smc_features(*(x[t - W + 1:t + 1] for x in (o, h, lo, c, v, atr))))
            assert np.isnan(alone[:-1]).all()
            if not np.array_equal(alone[-1], full[t], equal_nan=True):
                rewritten += 1
    print(f"rewritten readings: {rewritten}")
    assert rewritten == 0


def test_bars_outside_the_window_do_not_matter():
    o, h, lo, c, v, atr = random_bars(300, 21)
    base = as_matrix(smc_features(o, h, lo, c, v, atr))
    t, W = 200, 30
    o2, h2, lo2, c2, v2 = (x.copy() for x in (o, h, lo, c, v))
    for x in (o2, h2, lo2, c2):          # wreck everything before the window of t ...
        x[:t - W + 1] += 37.0
    o2[t + 1:] = np.nan                   # ... and make every later bar invalid
    moved = as_matrix(smc_features(o2, h2, lo2, c2, v2, atr))
    assert np.array_equal(moved[t], base[t], equal_nan=True)
    assert np.isnan(moved[t + 1:]).all()  # windows holding a non-finite bar are NaN


def test_parallel_chunks_give_identical_rows():
    o, h, lo, c, v, atr = random_bars(1000, 31, 0.25)
    serial = as_matrix(smc_features(o, h, lo, c, v, atr))
    G, F, finite = structure._prepare(o, h, lo, c, v, 5, 2)
    out = np.empty((len(SMC_OUTPUTS), len(c)))
    structure._rows_parallel(G, F, finite, atr, 30, 5, 2, 0.0, out, 37)
    assert np.array_equal(out.T, serial, equal_nan=True)


def test_invalid_rows_are_nan():
    o, h, lo, c, v, atr = random_bars(120, 3)
    atr[80] = 0.0
    v[100] = np.inf
    f = as_matrix(smc_features(o, h, lo, c, v, atr))
    assert np.isnan(f[:29]).all() and np.isnan(f[80]).all()
    assert np.isnan(f[100:]).all()             # every window from 100 on holds bar 100
    assert not np.isnan(f[99]).any() and not np.isnan(f[79]).any()


def test_validation_errors():
    o, h, lo, c, v, atr = random_bars(50, 1)
    with pytest.raises(ValueError, match="equal length"):
        smc_features(o, h, lo, c[:-1], v, atr)
    with pytest.raises(ValueError, match="long_swing"):
        smc_features(o, h, lo, c, v, atr, window=11, long_swing=5)
    with pytest.raises(ValueError, match="1-D"):
        smc_features(o.reshape(5, 10), h, lo, c, v, atr)
    with pytest.raises(ValueError, match="fvg_min_atr"):
        smc_features(o, h, lo, c, v, atr, fvg_min_atr=-1)
    assert smc_features(o, h, lo, c, v, atr, window=12, long_swing=5)["ext_dir"].shape == (50,)


# --------------------------------------------------------- public library comparison

def test_fvg_formations_match_smartmoneyconcepts_shifted_by_one_bar():
    os.environ.setdefault("SMC_CREDIT", "0")  # the library prints a banner on import otherwise
    smc_lib = pytest.importorskip("smartmoneyconcepts")
    pd = pytest.importorskip("pandas")
    for seed, tick in ((1, None), (2, 0.25), (3, 0.5)):
        o, h, lo, c, v, _atr = random_bars(600, seed, tick)
        df = pd.DataFrame({"open": o, "high": h, "low": lo, "close": c, "volume": v})
        lib = smc_lib.smc.fvg(df)["FVG"].to_numpy()
        bull, bear = fvg_formations(h, lo)
        # the library marks the MIDDLE candle i of the three, using bar i+1 (look-ahead)
        lib_bull_confirmed = np.zeros(len(c), dtype=bool)
        lib_bear_confirmed = np.zeros(len(c), dtype=bool)
        lib_bull_confirmed[1:] = lib[:-1] == 1
        lib_bear_confirmed[1:] = lib[:-1] == -1
        # ... and also requires the middle candle to close in the gap's direction
        middle_up = np.zeros(len(c), dtype=bool)
        middle_down = np.zeros(len(c), dtype=bool)
        middle_up[1:] = c[:-1] > o[:-1]
        middle_down[1:] = c[:-1] < o[:-1]
        assert np.array_equal(lib_bull_confirmed, bull & middle_up)
        assert np.array_equal(lib_bear_confirmed, bear & middle_down)
        assert lib_bull_confirmed.sum() > 0 and lib_bear_confirmed.sum() > 0
        # look-ahead: at the last bar of a prefix the library can never mark the middle
        # candle, while the full series can mark that same bar once bar i+1 is known
        i = int(np.flatnonzero(lib == 1)[0])
        prefix = smc_lib.smc.fvg(df.iloc[: i + 1].reset_index(drop=True))["FVG"].to_numpy()
        assert np.isnan(prefix[i]) and lib[i] == 1
        assert bull[i + 1]  # ours: known at the close of bar i+1, from bars i-1 and i+1 only

    # the candle-colour filter on its own: a bullish gap around a down-close middle candle
    o = np.array([99.5, 101.0, 100.8, 101.2])
    c = np.array([99.8, 100.8, 101.2, 101.0])
    h = np.array([100.0, 101.5, 101.6, 101.4])
    lo = np.array([99.4, 99.9, 100.5, 100.9])
    bull, _bear = fvg_formations(h, lo)
    lib = smc_lib.smc.fvg(pd.DataFrame({"open": o, "high": h, "low": lo, "close": c}))["FVG"].to_numpy()
    assert bull.tolist() == [False, False, True, False]    # low[2] 100.5 > high[0] 100.0
    assert np.isnan(lib).all()                             # middle candle 1 closed down
