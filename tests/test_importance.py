"""Feature importance: permutation on validation windows finds the features a model uses and
only those, LightGBM's gain names what the booster split on, and a retrain is compared with the
model before it (which features rose or fell)."""

from __future__ import annotations

import numpy as np
import pytest

from smc_core.evaluation.importance import (FeatureImportance, changes, gain_importance, importance_chart,
                                            importance_markdown, movers, permutation_importance)


def _windows(n: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    numeric = rng.normal(size=(n, 5, 3)).astype(np.float32)
    categorical = rng.integers(0, 3, size=(n, 5, 2))
    return numeric, categorical


def test_permutation_finds_the_features_the_model_reads_and_leaves_the_windows_as_they_were():
    numeric, categorical = _windows()
    target = numeric[:, -1, 0] * 2.0 + (categorical[:, -1, 1] == 2)  # a "model" that reads two features

    def loss(num, cat):
        return float(np.mean((num[:, -1, 0] * 2.0 + (cat[:, -1, 1] == 2) - target) ** 2))

    before = (numeric.copy(), categorical.copy())
    result = permutation_importance(loss, numeric, categorical, ["a", "b", "c"], ["d", "e"], repeats=3, seed=7)
    ranked = result.ranked()
    assert [name for name, _, _ in ranked[:2]] == ["a", "e"]  # a moves the loss by far the most
    assert ranked[0][1] > 5 * ranked[1][1] > 0
    assert {name: value for name, value, _ in ranked[2:]} == {"b": 0.0, "c": 0.0, "d": 0.0}  # never read
    assert result.baseline_loss == 0.0 and result.windows == 400 and result.repeats == 3
    assert all(s > 0 for name, _, s in ranked if name in "ae")  # three different shuffles, three rises
    np.testing.assert_array_equal(numeric, before[0])
    np.testing.assert_array_equal(categorical, before[1])
    again = permutation_importance(loss, numeric, categorical, ["a", "b", "c"], ["d", "e"], repeats=3, seed=7)
    assert again == result  # seeded: the same shuffles, the same figures
    assert FeatureImportance.from_dict(result.as_dict()).ranked() == ranked


def test_bad_arguments_are_named():
    numeric, categorical = _windows(10)
    with pytest.raises(ValueError, match="3 numeric and 2 categorical columns, 2 and 2 names"):
        permutation_importance(lambda n, c: 0.0, numeric, categorical, ["a", "b"], ["d", "e"])
    with pytest.raises(ValueError, match="at least 2 windows, got 1"):
        permutation_importance(lambda n, c: 0.0, numeric[:1], categorical[:1], ["a", "b", "c"], ["d", "e"])
    with pytest.raises(ValueError, match="repeats must be >= 1, got 0"):
        permutation_importance(lambda n, c: 0.0, numeric, categorical, ["a", "b", "c"], ["d", "e"], repeats=0)


def test_lightgbm_gain_names_the_feature_the_booster_splits_on():
    import lightgbm

    rng = np.random.default_rng(1)
    rows = rng.normal(size=(600, 4))
    y = (rows[:, 2] > 0).astype(int)
    booster = lightgbm.train({"objective": "binary", "verbose": -1, "num_threads": 1, "seed": 1},
                             lightgbm.Dataset(rows, y), num_boost_round=20)
    gain = gain_importance(booster, ["w", "x", "y", "z"])
    assert gain.method == "gain" and gain.ranked()[0][0] == "y" and gain.ranked()[0][1] > 10 * gain.ranked()[1][1]
    wrapped = lightgbm.LGBMClassifier(n_estimators=20, verbose=-1, n_jobs=1, random_state=1).fit(rows, y)
    assert gain_importance(wrapped, ["w", "x", "y", "z"]).ranked()[0][0] == "y"  # the scikit-learn wrapper too
    with pytest.raises(ValueError, match="the booster has 4 features, 3 names were given"):
        gain_importance(booster, ["w", "x", "y"])


def test_a_retrain_is_compared_with_the_model_before(tmp_path):
    previous = FeatureImportance("permutation", ("a", "b", "c", "old"), (0.3, 0.2, 0.1, 0.05), (0.0,) * 4)
    current = FeatureImportance("permutation", ("a", "b", "c", "new"), (0.1, 0.05, 0.4, 0.2), (0.01,) * 4)
    by_name = {c.name: c for c in changes(current, previous)}
    assert [c.name for c in changes(current, previous)] == ["c", "new", "a", "b"]
    assert (by_name["c"].previous_rank, by_name["c"].rank, by_name["c"].moved) == (3, 1, 2)
    assert (by_name["b"].moved, by_name["new"].previous_rank, by_name["new"].moved) == (-2, None, None)
    moved = movers(current, previous)
    assert [c.name for c in moved["rose"]] == ["c"] and [c.name for c in moved["fell"]] == ["a", "b"]
    text = importance_markdown(current, previous, "the champion (v3)")
    assert "| 1 | c | 0.40000 | 0.01000 | 3 (+2) |" in text and "| 2 | new | 0.20000 | 0.01000 | new |" in text
    assert "**rose** since the champion (v3): c 3→1" in text and "**fell** since the champion (v3): a 1→3, b 2→4" in text
    first = importance_markdown(current, None, "the champion")
    assert "No earlier model's importance to compare with (the champion)." in first
    chart = importance_chart(current, tmp_path / "chart.png", "test")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
