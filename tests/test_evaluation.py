"""Purged splits, metrics and the LightGBM baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from smc_core.evaluation.baselines import inverse_frequency_weights, train_lightgbm
from smc_core.evaluation.metrics import class_prior_log_loss, classification_report, log_loss
from smc_core.evaluation.splits import holdout_split, purge, walk_forward_splits

TS = pd.date_range("2024-03-05 14:31", periods=100, freq="min", tz="UTC")
T1 = TS + pd.Timedelta(minutes=5)


def test_holdout_purges_training_labels_that_reach_into_validation():
    split = holdout_split(TS, T1, valid_fraction=0.2)
    assert list(split.test) == list(range(80, 100))
    assert list(split.train) == list(range(0, 75))  # 75..79 end at or after 14:31+80min
    assert split.purged == 5


def test_embargo_drops_training_samples_right_after_the_test_block():
    train = np.arange(100)
    kept, purged, embargoed = purge(train[(train < 40) | (train >= 60)], TS, T1, TS[40], TS[59], pd.Timedelta(minutes=3))
    assert purged == 5 and embargoed == 3
    assert set(kept) == set(range(0, 35)) | set(range(63, 100))


def test_walk_forward_folds_are_ordered_disjoint_and_purged():
    splits = walk_forward_splits(TS, T1, folds=3, min_train_fraction=0.4)
    tests = [set(s.test) for s in splits]
    assert all(not (a & b) for i, a in enumerate(tests) for b in tests[i + 1:])
    for split in splits:
        assert split.train.max() < split.test.min() - 4  # purged by the 5-minute label horizon
    rolling = walk_forward_splits(TS, T1, folds=3, min_train_fraction=0.4, expanding=False)
    assert all(len(s.train) <= 40 for s in rolling)


def test_report_numbers_by_hand():
    probs = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.5, 0.45, 0.05]])
    y = np.array([0, 1, 1, 2, 0])
    report = classification_report(probs, y, threshold=0.55)
    assert report["log_loss"] == pytest.approx(-np.mean(np.log([0.8, 0.3, 0.7, 0.4, 0.5])))
    assert report["accuracy"] == pytest.approx(4 / 5)
    assert report["precision_long"] == pytest.approx(2 / 3) and report["recall_short"] == pytest.approx(1 / 2)
    assert report["trades"] == 3  # 0.8 long, 0.6 long, 0.7 short; 0.5 is below the threshold
    assert report["trade_precision"] == pytest.approx(2 / 3)
    # chance: each trade's direction scored at its share of the labels (long 2/5, short 2/5)
    assert report["trade_chance"] == pytest.approx(0.4)
    assert report["trade_edge"] == pytest.approx(2 / 3 - 0.4)


def test_class_prior_loss_and_weights():
    y_train = np.array([0, 0, 0, 1, 2, 2])
    assert class_prior_log_loss(y_train, np.array([0])) == pytest.approx(-np.log(0.5))
    weights = inverse_frequency_weights(y_train)
    assert weights.mean() == pytest.approx(1.0) and weights[1] > weights[2] > weights[0]
    assert log_loss(np.array([[1.0, 0.0, 0.0]]), np.array([1])) > 20  # clipped, finite


def test_lightgbm_baseline_finds_a_signal_and_not_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6000, 5))
    signal = np.where(x[:, 0] > 0.5, 0, np.where(x[:, 0] < -0.5, 1, 2))
    y = np.where(rng.random(6000) < 0.8, signal, rng.integers(0, 3, 6000))
    model = train_lightgbm(x[:4000], y[:4000], x[4000:], y[4000:])
    learned = log_loss(model.predict_proba(x[4000:]), y[4000:])
    assert learned < class_prior_log_loss(y[:4000], y[4000:]) - 0.2
    noise = rng.integers(0, 3, 6000)
    model = train_lightgbm(x[:4000], noise[:4000], x[4000:], noise[4000:])
    assert log_loss(model.predict_proba(x[4000:]), noise[4000:]) > class_prior_log_loss(noise[:4000], noise[4000:]) - 0.02
