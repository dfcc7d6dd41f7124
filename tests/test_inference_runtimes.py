"""The two runtimes of one model and the micro-batch, on a real trained package: the ONNX graph
written with the package answers like the merged weights, the service serves through ONNX
Runtime only when it does (and, on ``auto``, only when it measured it faster), older packages
keep serving through torch, and requests run together answer exactly as they do alone."""

from __future__ import annotations

import hashlib
import json
import shutil
import time

import numpy as np
import pytest
import torch
from serving_setup import bars, request_for

from smc_core.features import compute_features
from smc_core.model import Predictor, encode, load_package, windows
from smc_core.model.onnx_graph import ONNX_FILE, export_onnx
from smc_core.serving.engine import choose_backend, load_model
from smc_core.serving.request import RequestError
from smc_core.serving.runtime import Runtime, ServiceSettings


@pytest.fixture(scope="module")
def market():
    return bars(days=2, seed=11)


def _windows(package, market, count=300):
    """Encoded windows of real bars, as the service builds them."""
    predictor = Predictor.load(package)
    rows = compute_features(market)[list(predictor.spec.feature_names)].dropna().to_numpy()
    numeric, categorical = encode(rows, predictor.spec)
    length = predictor.spec.sequence_length
    return windows(numeric, categorical, np.arange(length - 1, length - 1 + count), length)


def _rewrite_manifest(path):
    """What a package writer of that content would have written (an older package, or another graph)."""
    files = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.name != "manifest.json"):
        data = file.read_bytes()
        files[file.relative_to(path).as_posix()] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (path / "manifest.json").write_text(json.dumps({"format": 1, "files": files}, indent=1, sort_keys=True))


def test_the_package_carries_an_onnx_graph_that_answers_like_the_merged_weights(package, market):
    loaded = load_package(package)
    assert ONNX_FILE in loaded.files and loaded.onnx_path == package / ONNX_FILE  # listed, so verified on load
    numeric, categorical = _windows(package, market)
    by_torch = Predictor.load(package)
    by_onnx = Predictor.load(package)
    by_onnx.use_onnx(by_onnx.onnx())
    assert (by_torch.backend, by_onnx.backend) == ("torch", "onnxruntime")
    expected = by_torch.predict_proba(numeric, categorical)
    found = by_onnx.predict_proba(numeric, categorical)
    assert found.shape == (300, 3) and np.abs(found - expected).max() <= 1e-5
    assert np.array_equal(found.argmax(axis=1), expected.argmax(axis=1))


def test_the_runtime_is_chosen_by_setting_by_measurement_and_only_when_it_agrees(package, tmp_path):
    assert choose_backend(Predictor.load(package), "torch").backend == "torch"
    chosen = choose_backend(Predictor.load(package), "onnxruntime")
    assert chosen.backend == "onnxruntime" and chosen.max_probability_difference <= 1e-5
    auto = load_model(package, "local/runtimes", backend="auto")
    measured = auto.inference
    assert measured.torch_ms > 0 and measured.onnxruntime_ms > 0
    assert measured.backend == ("onnxruntime" if measured.onnxruntime_ms < measured.torch_ms else "torch")
    assert auto.predictor.backend == measured.backend

    # a graph of other weights (a wrong export) is never served, whatever the setting asks
    other = tmp_path / "other-graph"
    shutil.copytree(package, other)
    model = load_package(package).model
    with torch.no_grad():
        model.head.bias.add_(torch.tensor([1.0, -1.0, 0.0]))
    (other / ONNX_FILE).write_bytes(export_onnx(model, load_package(package).spec))
    _rewrite_manifest(other)
    refused = load_model(other, "local/other", backend="onnxruntime")
    assert refused.inference.backend == "torch" and refused.predictor.backend == "torch"
    assert "differ" in refused.inference.reason and refused.inference.max_probability_difference > 1e-5

    # a package written before the ONNX export keeps serving through torch
    older = tmp_path / "older"
    shutil.copytree(package, older)
    (older / ONNX_FILE).unlink()
    _rewrite_manifest(older)
    served = load_model(older, "local/older", backend="auto")
    assert served.inference.backend == "torch" and "no ONNX graph" in served.inference.reason


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_requests_run_together_answer_as_they_do_alone(package, market, backend, tmp_path):
    settings = ServiceSettings.from_env({"SMC_DEV_MODE": "1", "LOG_PREDICTIONS": "false", "CAPTURE_BARS": "false",
                                         "SMC_HOME": str(tmp_path)})
    runtime = Runtime(settings)
    runtime.slot.swap(load_model(package, "local/runtimes", backend=backend))
    assert runtime.slot.current.inference.backend == backend
    payloads = [request_for(market, end) for end in range(200, 800, 50)]
    broken = request_for(market, 500)
    broken["current_bar"]["h"] = 1.0
    payloads.insert(3, broken)
    alone = []
    for payload in payloads:
        try:
            alone.append(runtime.predict_payload(payload, time.perf_counter()))
        except RequestError as error:
            alone.append(error)
    together = runtime.predict_many([(payload, time.perf_counter()) for payload in payloads])
    assert isinstance(together[3], RequestError) and together[3].status == 422 and isinstance(alone[3], RequestError)
    served = [(a, b) for a, b in zip(alone, together) if not isinstance(a, RequestError)]
    assert len(served) == len(payloads) - 1
    for one, batched in served:
        assert batched["label"] == one["label"] and batched["raw_label"] == one["raw_label"]
        assert max(abs(batched["probabilities"][k] - one["probabilities"][k]) for k in one["probabilities"]) <= 1e-6
        assert batched["risk"] == one["risk"] and batched["request_id"] != one["request_id"]
