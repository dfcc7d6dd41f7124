"""Drift between a model's reference sample and live rows (smc_core.drift, Evidently 0.7).

Sizes are the production ones: a 2000-row reference sample of the 52 catalogue features and
a live window of 400 rows. The synthetic columns mimic the catalogue's kinds (binary flags,
directions, small counts, heavy-tailed returns, positive scales, bounded oscillators), so
Evidently chooses its methods as it will on real data.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from smc_core.drift import (ColumnDrift, DriftConfig, DriftInputError, DriftResult, latest_reports, run_drift,
                            store_report)
from smc_core.errors import ConfigError
from smc_core.features import CATALOGUE

NAMES = list(CATALOGUE.names)
N_REF, N_CUR = 2000, 400
FLAGS = {"bos_bull", "bos_bear", "choch_bull", "choch_bear", "has_fvg_bull", "has_fvg_bear", "has_ob_bull",
         "has_ob_bear", "pb_wave_strength_ok", "is_rth"}
CONSTANT = {"delta_is_estimate": 1.0}  # an unused flag: the same value in every row, both samples
SMALL_COUNTS = {"fvg_retest_type": 4, "mgann_leg_index": 5, "confluence_score": 6}
DIRECTIONS = {"ext_dir", "int_dir"}
POSITIVE = {"atr", "range_atr", "rv_10", "rv_20", "atr_pct", "volume_ratio_20"}
BOUNDED = {"rsi_14", "stoch_20", "session_progress", "body_ratio", "upper_wick_ratio", "lower_wick_ratio"}
CONTINUOUS = [n for n in NAMES if n not in FLAGS | set(CONSTANT) | set(SMALL_COUNTS) | DIRECTIONS]
SHIFTED = ["atr", "ret_5", "rsi_14", "z_close_20", "gap_atr", "tod_sin"]  # +1 std
SCALED = ["delta_ratio", "sma_5_20"]  # ×3 spread
RATE_CHANGED = ["has_fvg_bull", "choch_bear"]  # 15 % → 50 % of bars
PLANTED = SHIFTED + SCALED + RATE_CHANGED


def column(name: str, rng: np.random.Generator, n: int) -> np.ndarray:
    if name in CONSTANT:
        return np.full(n, CONSTANT[name])
    if name in FLAGS:
        return (rng.random(n) < (0.7 if name == "is_rth" else 0.15)).astype(float)
    if name in DIRECTIONS:
        return rng.choice([-1.0, 0.0, 1.0], n, p=[0.4, 0.2, 0.4])
    if name in SMALL_COUNTS:
        return rng.integers(0, SMALL_COUNTS[name], n).astype(float)
    if name in POSITIVE:
        return rng.lognormal(0.0, 0.5, n)
    if name in BOUNDED:
        return rng.beta(2.0, 2.0, n) * (100.0 if name in ("rsi_14", "stoch_20") else 1.0)
    if name.startswith("ret_"):
        return rng.standard_t(5, n) * 0.001
    return rng.normal(0.0, 1.0, n)


def market(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.column_stack([column(name, rng, n) for name in NAMES])


def probabilities(rng: np.random.Generator, n: int, bias) -> np.ndarray:
    """Calibrated-looking [long, short, skip] rows; ``bias`` sets the label mix."""
    logits = rng.normal(0.0, 1.0, (n, 3)) + np.asarray(bias)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


SKIP_HEAVY, LONG_HEAVY = (0.0, 0.0, 1.0), (1.5, 0.0, -0.5)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return market(np.random.default_rng(1), N_REF).astype(np.float32)  # as stored in the package


@pytest.fixture(scope="module")
def reference_probabilities() -> np.ndarray:
    return probabilities(np.random.default_rng(2), 1500, SKIP_HEAVY)


@pytest.fixture(scope="module")
def same(reference, reference_probabilities) -> DriftResult:
    """Live rows from the training distribution, and an unchanged label mix."""
    rng = np.random.default_rng(3)
    # 0.2, not Evidently's 0.1: at 400 rows a normed Wasserstein distance ≥ 0.1 happens by
    # chance for ~8 % of columns drawn from the same distribution (~20 % at 300 rows).
    return run_drift(reference, market(rng, N_CUR), NAMES, reference_probabilities=reference_probabilities,
                     current_probabilities=probabilities(rng, N_CUR, SKIP_HEAVY),
                     config=DriftConfig(prediction_threshold=0.2))


def drifted_market(reference: np.ndarray, rng: np.random.Generator, n: int = N_CUR) -> np.ndarray:
    current = market(rng, n)
    std = reference.std(axis=0)
    for name in SHIFTED:
        current[:, NAMES.index(name)] += std[NAMES.index(name)]
    for name in SCALED:
        j = NAMES.index(name)
        current[:, j] = reference[:, j].mean() + 3.0 * (current[:, j] - reference[:, j].mean())
    for name in RATE_CHANGED:
        current[:, NAMES.index(name)] = (rng.random(n) < 0.5).astype(float)
    return current


# --- verdicts --------------------------------------------------------------------------

def test_same_distribution_is_not_dataset_drift(same):
    assert same.n_features == 52 and same.reference_rows == N_REF and same.current_rows == N_CUR
    assert not same.dataset_drift
    assert same.drifted_share < 0.15  # chance flags only (normed Wasserstein ≥ 0.1 on ~8 % of columns)
    assert same.drifted_share == pytest.approx(same.n_drifted / 52)
    assert [row.column for row in same.features] == NAMES
    # Evidently's choice above 1000 reference rows (DESIGN §9): Wasserstein for continuous
    # columns, Jensen-Shannon for those with at most 5 distinct values.
    methods = {row.column: (row.method, row.threshold) for row in same.features}
    assert methods["z_close_20"] == ("wasserstein", 0.1)
    assert methods["has_fvg_bull"] == ("jensenshannon", 0.1)
    assert methods["delta_is_estimate"] == ("constant", None)


def test_shifted_and_scaled_columns_are_flagged(reference):
    result = run_drift(reference, drifted_market(reference, np.random.default_rng(4)), NAMES)
    assert set(PLANTED) <= set(result.drifted_features)
    assert result.n_drifted == len(result.drifted_features) >= len(PLANTED)
    assert result.drifted_share == pytest.approx(result.n_drifted / 52)
    assert result.dataset_drift == (result.drifted_share >= 0.3)
    for row in result.features:
        if row.column in PLANTED:
            assert row.score is not None and row.score >= row.threshold, row


def test_method_override_flags_exactly_the_planted_columns(reference):
    config = DriftConfig(method="ks", threshold=0.001)
    result = run_drift(reference, drifted_market(reference, np.random.default_rng(5)), NAMES, config=config)
    assert sorted(result.drifted_features) == sorted(PLANTED)
    assert result.drifted_share == pytest.approx(len(PLANTED) / 52)
    assert not result.dataset_drift
    tested = [row for row in result.features if row.method != "constant"]
    assert {(row.method, row.threshold) for row in tested} == {("ks", 0.001)}
    shifted = next(row for row in result.features if row.column == "atr")
    assert shifted.score < 1e-10 and shifted.current_mean > shifted.reference_mean  # a p-value now


def test_many_drifted_columns_is_dataset_drift(reference):
    current = market(np.random.default_rng(6), N_CUR)
    moved = CONTINUOUS[:20]
    current[:, [NAMES.index(n) for n in moved]] += 2.0 * reference[:, [NAMES.index(n) for n in moved]].std(axis=0)
    result = run_drift(reference, current, NAMES, config=DriftConfig(drift_share=0.3))
    assert set(moved) <= set(result.drifted_features)
    assert result.drifted_share >= 20 / 52 and result.dataset_drift


def test_prediction_drift_follows_the_label_mix(reference, reference_probabilities, same):
    assert same.prediction_drift is False
    assert [row.column for row in same.predictions] == ["p_long", "p_short", "p_skip", "label"]
    assert not any(row.drifted for row in same.predictions)

    rng = np.random.default_rng(7)
    current = market(rng, N_CUR)
    changed = run_drift(reference, current, NAMES, reference_probabilities=reference_probabilities,
                        current_probabilities=probabilities(rng, N_CUR, LONG_HEAVY),
                        config=DriftConfig(prediction_threshold=0.2))
    assert changed.prediction_drift is True
    rows = {row.column: row for row in changed.predictions}
    assert rows["label"].drifted and rows["label"].method == "jensenshannon"
    assert rows["p_long"].drifted and rows["p_skip"].drifted
    assert changed.label_mix["current"]["long"] > 0.5 > changed.label_mix["reference"]["long"]
    assert changed.reference_prediction_rows == 1500 and changed.current_prediction_rows == N_CUR
    assert not changed.dataset_drift  # the features did not move, only the model's answers


def test_probabilities_on_one_side_only_skip_prediction_drift(reference):
    rng = np.random.default_rng(8)
    result = run_drift(reference, market(rng, N_CUR), NAMES,
                       current_probabilities=probabilities(rng, N_CUR, SKIP_HEAVY))
    assert result.prediction_drift is None and result.predictions == ()
    assert any("no reference probabilities" in note for note in result.notes)


def test_constant_columns_do_not_crash_and_are_reported(reference, same):
    row = next(r for r in same.features if r.column == "delta_is_estimate")
    assert row == ColumnDrift("delta_is_estimate", "constant", None, None, False,
                              "constant in both samples (1.0)", 1.0, 1.0)

    # An unused flag that fires live, a session flag stuck at another value, under a
    # method override that would not accept a constant column.
    current = market(np.random.default_rng(9), N_CUR)
    ref = reference.copy()
    ref[:, NAMES.index("has_ob_bear")] = 0.0
    ref[:, NAMES.index("is_rth")] = 1.0
    current[:, NAMES.index("is_rth")] = 0.0
    result = run_drift(ref, current, NAMES, config=DriftConfig(method="wasserstein"))
    rows = {r.column: r for r in result.features}
    assert rows["has_ob_bear"].drifted and rows["has_ob_bear"].method == "wasserstein"
    assert rows["is_rth"].drifted and rows["is_rth"].method == "constant"
    assert "changed: reference 1.0, current 0.0" in rows["is_rth"].reason
    assert not rows["delta_is_estimate"].drifted


# --- bad input -------------------------------------------------------------------------

def test_shape_errors_name_both_sides(reference):
    current = market(np.random.default_rng(10), N_CUR)
    with pytest.raises(DriftInputError, match=r"current features have 51 columns but the reference features have 52"):
        run_drift(reference, current[:, :51], NAMES)
    with pytest.raises(DriftInputError, match=r"feature_names has 51 names but the reference features have 52"):
        run_drift(reference, current, NAMES[:51])
    with pytest.raises(DriftInputError, match=r"expected a 2-D array"):
        run_drift(reference, current[:, 0], NAMES)
    with pytest.raises(DriftInputError, match=r"current probabilities: expected a 2-D array \[rows, 3\]"):
        run_drift(reference, current, NAMES, reference_probabilities=np.full((300, 3), 1 / 3),
                  current_probabilities=np.full((N_CUR, 2), 0.5))
    with pytest.raises(DriftInputError, match=r"do not sum to 1"):
        run_drift(reference, current, NAMES, reference_probabilities=np.full((300, 3), 0.5),
                  current_probabilities=np.full((N_CUR, 3), 1 / 3))


def test_too_few_rows_names_the_minimum(reference):
    current = market(np.random.default_rng(11), 150)
    with pytest.raises(DriftInputError,
                       match=r"current features: 150 rows, need at least 200 \(DriftConfig.min_current_rows\)"):
        run_drift(reference, current, NAMES)
    with pytest.raises(DriftInputError, match=r"reference features: 120 rows, need at least 500"):
        run_drift(reference[:120], market(np.random.default_rng(11), N_CUR), NAMES,
                  config=DriftConfig(min_reference_rows=500))


def test_non_finite_values_are_refused_or_dropped_when_asked(reference):
    current = market(np.random.default_rng(12), N_CUR)
    current[[3, 17], NAMES.index("rsi_14")] = np.nan
    current[5, NAMES.index("atr")] = np.inf
    with pytest.raises(DriftInputError) as caught:
        run_drift(reference, current, NAMES)
    message = str(caught.value)
    assert "current features: 3 of 400 rows have NaN or infinite values" in message
    assert "rsi_14: 2" in message and "atr: 1" in message and "drop_non_finite=True" in message

    result = run_drift(reference, current, NAMES, config=DriftConfig(drop_non_finite=True))
    assert result.current_rows == 397 and result.dropped_current_rows == 3 and result.dropped_reference_rows == 0

    current[:250, NAMES.index("gap_atr")] = np.nan
    with pytest.raises(DriftInputError, match=r"current features: 150 rows after dropping 250 non-finite rows, "
                                              r"need at least 200"):
        run_drift(reference, current, NAMES, config=DriftConfig(drop_non_finite=True))


@pytest.mark.parametrize("kwargs, message", [
    ({"drift_share": 0.0}, r"drift_share must be a number in \(0, 1\]"),
    ({"drift_share": 1.5}, r"drift_share must be a number in \(0, 1\]"),
    ({"threshold": -0.1}, r"threshold must be None or a finite number > 0"),
    ({"prediction_threshold": float("nan")}, r"prediction_threshold must be None or a finite number > 0"),
    ({"min_current_rows": 0}, r"min_current_rows must be an integer >= 1"),
    ({"min_reference_rows": 10.5}, r"min_reference_rows must be an integer >= 1"),
    ({"method": ""}, r"method must be None or an Evidently stattest name"),
    ({"drop_non_finite": "yes"}, r"drop_non_finite must be True or False"),
])
def test_config_is_validated(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DriftConfig(**kwargs)


def test_unknown_or_inapplicable_method_is_a_config_error(reference):
    current = market(np.random.default_rng(13), N_CUR)
    with pytest.raises(ConfigError, match=r"DriftConfig.method: No stattest found of name nosuch"):
        run_drift(reference, current, NAMES, config=DriftConfig(method="nosuch"))
    with pytest.raises(ConfigError, match=r"'chisquare' does not apply to numerical columns"):
        run_drift(reference, current, NAMES, config=DriftConfig(method="chisquare"))


# --- outputs ---------------------------------------------------------------------------

def _plain_types(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_types(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain_types(v) for v in value)
    return value is None or type(value) in (str, int, float, bool)


def test_summary_is_plain_json(same):
    summary = same.summary()
    assert _plain_types(summary)
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    assert summary["n_features"] == 52 and len(summary["features"]) == 52 and len(summary["predictions"]) == 4
    assert summary["config"]["prediction_threshold"] == 0.2
    assert summary["evidently_version"] == "0.7.23"


def test_save_html_writes_the_evidently_report(same, tmp_path):
    path = same.save_html(tmp_path / "reports" / "drift.html")
    assert path.is_file() and path.stat().st_size > 100_000
    text = path.read_text(encoding="utf-8")
    assert "<html" in text.lower() and "p_skip" in text and "z_close_20" in text


def test_module_import_stays_light():
    # smc_core is imported by the service: Evidently (seconds) must load only when used.
    import subprocess

    code = ("import sys, smc_core.drift; "
            "print(sorted(m for m in ('evidently', 'dagster', 'bentoml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- storage ---------------------------------------------------------------------------

def test_store_and_read_back(database, same):
    end = datetime(2026, 3, 6, 21, 0, tzinfo=timezone.utc)
    first = store_report(database, same, model_version="smc-lora/3", window_start=end - timedelta(days=1),
                         window_end=end, html_path="/tmp/drift.html", reason="scheduled")
    second = store_report(database, same, model_version="smc-lora/4", window_start=None, window_end=None)
    assert second > first

    rows = latest_reports(database, model_version="smc-lora/3")
    assert [r["id"] for r in rows] == [first]
    row = rows[0]
    assert row["window_start"] == end - timedelta(days=1) and row["window_end"] == end
    assert (row["reference_rows"], row["current_rows"], row["n_features"], row["n_drifted"]) == (
        N_REF, N_CUR, 52, same.n_drifted)
    assert row["drifted_share"] == pytest.approx(same.drifted_share)
    assert row["dataset_drift"] is False and row["prediction_drift"] is False
    assert row["summary"] == same.summary()
    assert row["html_path"] == "/tmp/drift.html" and row["reason"] == "scheduled"

    assert [r["id"] for r in latest_reports(database)][:2] == [second, first]
    assert len(latest_reports(database, limit=1)) == 1
    assert latest_reports(database, model_version="nobody/1") == []


def test_store_refuses_naive_or_reversed_windows(database, same):
    naive = datetime(2026, 3, 6, 21, 0)
    with pytest.raises(ConfigError, match=r"window_start must be a timezone-aware datetime"):
        store_report(database, same, model_version="smc-lora/3", window_start=naive, window_end=None)
    end = datetime(2026, 3, 6, 21, 0, tzinfo=timezone.utc)
    with pytest.raises(ConfigError, match=r"is after window_end"):
        store_report(database, same, model_version="smc-lora/3", window_start=end, window_end=end - timedelta(hours=1))
