"""The model core on synthetic bars with a planted SMC edge: encoding, training, packaging, serving."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import LlamaConfig, Qwen2Model

from smc_core.calendar import CME_EQUITY
from smc_core.features import CATALOGUE, compute_features
from smc_core.labels import LABELS, Horizon, triple_barrier
from smc_core.model import (BackboneConfig, EncoderSpec, ModelError, Predictor, TrainConfig, batched_logits,
                            build_backbone, encode, expected_calibration_error, finetune_lora, fit_encoder,
                            fit_temperature, load_package, next_bar_targets, pretrain, reliability_diagram,
                            save_package, train_from_scratch, windows)
from smc_core.model.calibration import softmax
from smc_core.model.train import class_weights, weighted_nll
from smc_core.synthetic import SyntheticConfig, generate_bars

L = 20
HORIZON = Horizon(bars=15, up_atr=1.5, down_atr=1.5)


@dataclass
class Data:
    rows: np.ndarray    # complete feature rows (warm-up dropped), catalogue order
    labels: np.ndarray  # label code per row, -1 unknown
    split: int          # rows before it are training rows
    spec: EncoderSpec
    numeric: np.ndarray
    categorical: np.ndarray
    train_ends: np.ndarray
    valid_ends: np.ndarray

    def split_windows(self, ends):
        return (*windows(self.numeric, self.categorical, ends, L), self.labels[ends].astype(np.int64))


@pytest.fixture(scope="module")
def data() -> Data:
    bars = generate_bars(SyntheticConfig(days=12, edge="smc", edge_strength=0.8, seed=1))
    features = compute_features(bars)
    labelled = bars.assign(atr=features["atr"].to_numpy(),
                           session=CME_EQUITY.trading_day_of(bars["ts"]).astype("int64"))
    labels = triple_barrier(labelled, HORIZON, last_session_complete=True)["label"].to_numpy()
    warm_up = CATALOGUE.max_lookback - 1
    rows, labels = features.to_numpy()[warm_up:], labels[warm_up:].astype(np.int64)
    assert np.isfinite(rows).all()
    split = int(len(rows) * 0.75)
    ends = np.arange(L - 1, len(rows))
    ends = ends[labels[ends] >= 0]
    # A training label looks HORIZON.bars ahead: keep those clear of the validation rows.
    train_ends = ends[ends < split - HORIZON.bars]
    valid_ends = ends[ends >= split + L]
    train_ends = np.sort(np.random.default_rng(0).choice(train_ends, 6000, replace=False))  # speed
    spec = fit_encoder(rows[:split], CATALOGUE, L)
    numeric, categorical = encode(rows, spec)
    return Data(rows, labels, split, spec, numeric, categorical, train_ends, valid_ends)


@pytest.fixture(scope="module")
def lora_run(data):
    """Pretrain briefly on next-bar buckets, then LoRA-tune on the labels (the slow part, done once)."""
    rng = np.random.default_rng(1)
    pretrain_ends = np.sort(rng.choice(data.train_ends[data.train_ends + 1 < data.split], 3000, replace=False))
    targets, _ = next_bar_targets(data.rows, CATALOGUE, pretrain_ends)
    base = pretrain(BackboneConfig(), *windows(data.numeric, data.categorical, pretrain_ends, L), targets,
                    spec=data.spec, config=TrainConfig(epochs=1))
    epochs = []
    result = finetune_lora(base, data.spec, data.split_windows(data.train_ends), data.split_windows(data.valid_ends),
                           TrainConfig(epochs=6, patience=2), progress=epochs.append)
    return result, epochs


@pytest.fixture(scope="module")
def package(data, lora_run, tmp_path_factory):
    result, _ = lora_run
    valid = data.split_windows(data.valid_ends)
    with torch.no_grad():
        logits = batched_logits(result.model, valid[0], valid[1]).numpy()
    path = tmp_path_factory.mktemp("packages") / "lora"
    temperature = fit_temperature(logits, valid[2])
    in_memory = save_package(path, result.model, data.spec, BackboneConfig(), temperature,
                             {"run": "test", "feature_set_version": data.spec.feature_set_version},
                             data.rows[:500], reference_probabilities=softmax(logits, temperature))
    return path, in_memory


# --- encoding --------------------------------------------------------------------------

def test_encoder_statistics_come_from_training_rows_only(data):
    altered = data.rows.copy()
    altered[data.split:] *= 3.0
    assert fit_encoder(altered[:data.split], CATALOGUE, L) == data.spec
    train_numeric = data.rows[:data.split, list(data.spec.numeric_indices)]
    assert np.allclose(data.spec.mean, train_numeric.mean(axis=0))
    assert not np.allclose(data.spec.mean, data.rows[:, list(data.spec.numeric_indices)].mean(axis=0))
    varying = train_numeric.std(axis=0) > 0
    encoded = data.numeric[:data.split][:, varying]
    assert np.abs(encoded.mean(axis=0)).max() < 0.05 and np.abs(encoded).max() <= 10.0
    assert data.numeric.dtype == np.float32 and data.categorical.dtype == np.int64


def test_categorical_features_become_codes(data):
    names = list(data.spec.feature_names)
    assert [names[i] for i in data.spec.categorical_indices] == ["ext_dir", "int_dir", "fvg_retest_type"]
    assert data.spec.cardinalities == (3, 3, 4)
    ext_dir = data.rows[:, names.index("ext_dir")]
    assert np.array_equal(data.categorical[:, 0], ext_dir + 1)
    bad = data.rows[:3].copy()
    bad[1, names.index("fvg_retest_type")] = 7
    with pytest.raises(ValueError, match=r"row 1: feature 'fvg_retest_type' = 7\.0"):
        encode(bad, data.spec)


def test_nan_feature_is_refused_with_row_and_name(data):
    rows = data.rows[:50].copy()
    rows[7, CATALOGUE.names.index("rsi_14")] = np.nan
    with pytest.raises(ValueError, match=r"row 7: feature 'rsi_14' is nan"):
        encode(rows, data.spec)
    with pytest.raises(ValueError, match=r"row 7: feature 'rsi_14'"):
        fit_encoder(rows, CATALOGUE, L)


def test_specs_round_trip_through_json_exactly(data):
    restored = EncoderSpec.from_json(data.spec.to_json())
    assert restored == data.spec and restored.mean == data.spec.mean
    config = BackboneConfig(hidden_size=32, rope_theta=5000.5)
    assert BackboneConfig.from_json(config.to_json()) == config
    assert data.spec.required_rows == L + CATALOGUE.max_lookback - 1


def test_windows_must_be_complete(data):
    numeric, categorical = windows(data.numeric, data.categorical, np.array([19, 40]), L)
    assert numeric.shape == (2, L, data.spec.n_numeric) and categorical.shape == (2, L, data.spec.n_categorical)
    assert torch.equal(numeric[1, -1], torch.from_numpy(data.numeric[40]))
    with pytest.raises(ValueError, match="window ending at row 18 is incomplete"):
        windows(data.numeric, data.categorical, np.array([30, 18, 5]), L)


# --- refusals before training ----------------------------------------------------------

def test_single_class_training_set_is_refused_before_training(data):
    train = data.split_windows(data.train_ends[:400])
    train = (train[0], train[1], np.full(400, 1))
    calls = []
    started = time.perf_counter()
    with pytest.raises(ModelError, match=r"single class: all 400 windows are 'short'"):
        train_from_scratch(data.spec, train, data.split_windows(data.valid_ends[:100]), progress=calls.append)
    assert calls == [] and time.perf_counter() - started < 0.5


def test_too_few_windows_are_refused_before_training(data):
    calls = []
    started = time.perf_counter()
    with pytest.raises(ModelError, match=r"150 training \(minimum 200\) and 30 validation \(minimum 50\)"):
        finetune_lora({}, data.spec, data.split_windows(data.train_ends[:150]),
                      data.split_windows(data.valid_ends[:30]), progress=calls.append)
    assert calls == [] and time.perf_counter() - started < 0.5


def test_backbone_checkpoints_are_checked_before_loading(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        build_backbone(checkpoint=tmp_path / "nowhere")
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps(LlamaConfig(hidden_size=64).to_dict()))
    with pytest.raises(ModelError, match="model_type is 'llama', expected 'qwen2'"):
        build_backbone(checkpoint=llama)
    saved = build_backbone(BackboneConfig(hidden_size=32, num_heads=2, num_kv_heads=1))
    saved.save_pretrained(tmp_path / "qwen2")
    loaded = build_backbone(checkpoint=tmp_path / "qwen2")
    assert isinstance(loaded, Qwen2Model)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in saved.state_dict().items())
    with pytest.raises(ModelError, match="hidden_size 32 != 64"):
        build_backbone(BackboneConfig(), checkpoint=tmp_path / "qwen2")


# --- training --------------------------------------------------------------------------

def test_training_is_deterministic_and_trains_every_weight_from_scratch(data):
    def run():
        return train_from_scratch(data.spec, data.split_windows(data.train_ends[:300]),
                                  data.split_windows(data.valid_ends[:100]), TrainConfig(epochs=1))

    first, second = run(), run()
    assert first.n_trainable == sum(p.numel() for p in first.model.parameters()) and not first.lora
    assert all(torch.equal(v, second.model.state_dict()[k]) for k, v in first.model.state_dict().items())


def test_lora_finetuning_learns_the_planted_edge(data, lora_run):
    result, epochs = lora_run
    assert result.lora and [e["epoch"] for e in epochs] == list(range(1, len(epochs) + 1))
    assert set(epochs[0]) == {"epoch", "train_loss", "valid_loss", "seconds"}
    total = sum(p.numel() for p in result.model.parameters())
    assert 0 < result.n_trainable < total  # backbone frozen except the adapter

    valid = data.split_windows(data.valid_ends)
    y = torch.as_tensor(valid[2])
    with torch.no_grad():
        logits = batched_logits(result.model, valid[0], valid[1])
    weights = torch.tensor(result.class_weights)
    assert torch.allclose(weights, class_weights(torch.as_tensor(data.labels[data.train_ends]), 3))
    # The returned weights are the best epoch's.
    assert weighted_nll(logits, y, weights) == pytest.approx(result.best_valid_loss, abs=1e-5)
    assert result.best_valid_loss == pytest.approx(min(e["valid_loss"] for e in epochs))

    frequencies = np.bincount(data.labels[data.train_ends], minlength=3) / len(data.train_ends)
    prior_logits = torch.log(torch.tensor(frequencies, dtype=torch.float32)).expand(len(y), 3)
    assert result.best_valid_loss < weighted_nll(prior_logits, y, weights) - 0.05

    # Where the edge is planted, the model leans its way: long after bullish setups, short after bearish.
    names = CATALOGUE.names
    rows = data.rows[data.valid_ends]
    retest = np.isin(rows[:, names.index("fvg_retest_type")], [1, 2])
    bullish = (rows[:, names.index("has_fvg_bull")] == 1) & retest & (rows[:, names.index("ret_20")] > 0)
    bearish = (rows[:, names.index("has_fvg_bear")] == 1) & retest & (rows[:, names.index("ret_20")] < 0)
    lean = (torch.softmax(logits, 1)[:, 0] - torch.softmax(logits, 1)[:, 1]).numpy()
    assert bullish.sum() > 50 and bearish.sum() > 50
    assert lean[bullish].mean() - lean[bearish].mean() > 0.1, (lean[bullish].mean(), lean[bearish].mean())


def test_next_bar_targets_are_training_quintiles(data):
    targets, edges = next_bar_targets(data.rows, CATALOGUE, data.train_ends)
    assert len(edges) == 4 and np.all(np.diff(edges) >= 0)
    assert np.bincount(targets, minlength=5).min() > 0.1 * len(targets)
    again, same = next_bar_targets(data.rows, CATALOGUE, data.valid_ends[:-1], edges)
    assert np.array_equal(same, edges) and again.max() <= 4
    with pytest.raises(ValueError, match="has no next bar"):
        next_bar_targets(data.rows, CATALOGUE, np.array([len(data.rows) - 1]))


# --- calibration -----------------------------------------------------------------------

def test_temperature_tames_overconfident_logits(tmp_path):
    rng = np.random.default_rng(3)
    honest = rng.normal(size=(4000, 3))
    probabilities = softmax(honest)
    y = np.minimum((rng.random(4000)[:, None] > probabilities.cumsum(axis=1)).sum(axis=1), 2)
    overconfident = 3.0 * honest
    temperature = fit_temperature(overconfident, y)
    assert 2.0 < temperature < 4.5
    before = expected_calibration_error(softmax(overconfident), y)
    after = expected_calibration_error(softmax(overconfident, temperature), y)
    assert after < before / 2, (before, after)
    png = reliability_diagram(softmax(overconfident, temperature), y, tmp_path / "plots" / "rel.png", "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- package and inference -------------------------------------------------------------

def test_package_round_trip_gives_identical_probabilities(data, package):
    path, in_memory = package
    assert {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} == {
        "manifest.json", "model.safetensors", "base.safetensors", "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json", "backbone_config.json", "encoder.json", "calibration.json",
        "labels.json", "lineage.json", "reference.safetensors", "model.onnx"}
    assert json.loads((path / "labels.json").read_text()) == list(LABELS)
    numeric, categorical, _ = data.split_windows(data.valid_ends[:300])
    expected = Predictor(in_memory).predict_proba(numeric, categorical)
    loaded = Predictor.load(path, threads=1)
    probabilities = loaded.predict_proba(numeric, categorical)
    assert np.array_equal(probabilities, expected)
    assert np.allclose(probabilities.sum(axis=1), 1.0) and probabilities.shape == (300, 3)
    assert loaded.package.lineage["run"] == "test"
    assert np.array_equal(loaded.package.reference, data.rows[:500].astype(np.float32))
    assert np.array_equal(loaded.package.reference_probabilities, in_memory.reference_probabilities)
    assert loaded.package.reference_probabilities.shape == (len(data.valid_ends), 3)
    end = int(data.valid_ends[0])
    single = loaded.predict_rows(data.rows[end - 40:end + 1])
    assert np.allclose(single, probabilities[0], atol=1e-6)


def test_adapter_on_base_reproduces_the_merged_model(data, package):
    path, _ = package
    numeric, categorical, _ = data.split_windows(data.valid_ends[:300])
    merged = Predictor.load(path).predict_proba(numeric, categorical)
    unmerged = Predictor.from_adapter(path).predict_proba(numeric, categorical)
    assert np.abs(merged - unmerged).max() < 1e-4


@pytest.mark.parametrize("tamper, message", [
    (lambda p: (p / "calibration.json").unlink(), "calibration.json is missing"),
    (lambda p: _flip_byte(p / "model.safetensors"), "model.safetensors is altered"),
    (lambda p: (p / "extra.safetensors").write_bytes(b"{}"), "extra.safetensors is an unexpected file"),
    (lambda p: (p / "manifest.json").unlink(), "manifest.json is missing"),
])
def test_a_tampered_package_is_refused(package, tmp_path, tamper, message):
    path, _ = package
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    tamper(copy)
    with pytest.raises(ModelError, match=f"model package {copy}: {message}"):
        load_package(copy)


def test_scratch_model_packages_without_adapter(data, tmp_path):
    result = train_from_scratch(data.spec, data.split_windows(data.train_ends[:300]),
                                data.split_windows(data.valid_ends[:100]), TrainConfig(epochs=1))
    saved = save_package(tmp_path / "scratch", result.model, data.spec, BackboneConfig(), 1.0, {}, data.rows[:10])
    numeric, categorical, _ = data.split_windows(data.valid_ends[:64])
    with torch.no_grad():
        direct = torch.softmax(result.model(numeric, categorical), 1).numpy()
    served = Predictor.load(saved.path).predict_proba(numeric, categorical)
    assert np.allclose(served, direct, atol=1e-6)
    with pytest.raises(ModelError, match="has no adapter"):
        Predictor.from_adapter(saved.path)
    with pytest.raises(ModelError, match="not an empty directory"):
        save_package(saved.path, result.model, data.spec, BackboneConfig(), 1.0, {}, data.rows[:10])
    assert Predictor.load(saved.path).package.reference_probabilities is None  # optional: drift skips predictions
    with pytest.raises(ModelError, match="reference probabilities must be finite"):
        save_package(tmp_path / "nan", result.model, data.spec, BackboneConfig(), 1.0, {}, data.rows[:10],
                     reference_probabilities=np.full((5, 3), np.nan))
    with pytest.raises(ModelError, match="outputs but 2 labels"):
        save_package(tmp_path / "other", result.model, data.spec, BackboneConfig(), 1.0, {},
                     data.rows[:10], labels=("up", "down"))


def _flip_byte(file):
    content = bytearray(file.read_bytes())
    content[len(content) // 2] ^= 0x01
    file.write_bytes(bytes(content))


def test_predict_rows_takes_a_frame_only_in_model_column_order(data, package):
    path, _ = package
    end = int(data.valid_ends[0])
    frame = pd.DataFrame(data.rows[end - L + 1:end + 1], columns=CATALOGUE.names)
    predictor = Predictor.load(path)
    assert np.array_equal(predictor.predict_rows(frame), predictor.predict_rows(frame.to_numpy()))
    with pytest.raises(ValueError, match="feature columns differ"):
        predictor.predict_rows(frame[frame.columns[::-1]])
    with pytest.raises(ValueError, match=f"need at least {L} feature rows"):
        predictor.predict_rows(frame.iloc[-5:])
