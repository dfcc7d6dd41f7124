"""The merged model as an ONNX graph, exported when a package is written and run by ONNX Runtime.

Why: the served model is a few small matrix products per bar, and PyTorch's eager dispatch
costs more than the arithmetic (measured on this 2-core host: ~2 ms torch, ~0.5 ms ONNX
Runtime for one window). The graph is exported from the very weights written to
``model.safetensors`` and checked against them before it is kept, so a package's two
forms answer the same; the service still measures both when it loads a package and serves
through the faster one (``smc_core.serving.engine``).

The export uses TorchScript tracing (``dynamo=False``): it needs only the ``onnx`` package,
no network and no onnxscript, and the traced graph has the batch as its one dynamic axis
(a window's length is fixed by the encoder spec).
"""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smc_core.model.encoding import EncoderSpec
from smc_core.model.errors import ModelError

ONNX_FILE = "model.onnx"
OPSET = 17
PARITY_TOLERANCE = 1e-5
"""Largest difference of a calibrated probability between the two runtimes that is accepted."""
INPUTS = ("numeric", "categorical")


def export_onnx(model: torch.nn.Module, spec: EncoderSpec) -> bytes:
    """The model's forward pass (windows → logits) as ONNX bytes, batch size dynamic."""
    numeric = torch.zeros(2, spec.sequence_length, spec.n_numeric)
    categorical = torch.zeros(2, spec.sequence_length, spec.n_categorical, dtype=torch.int64)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # tracing warns about every shape-dependent branch in the attention-mask code; those shapes
        # (window length) are fixed by the spec, and the parity check below is what guards the graph
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (numeric, categorical), buffer, dynamo=False, opset_version=OPSET,
                          input_names=list(INPUTS), output_names=["logits"],
                          dynamic_axes={"numeric": {0: "batch"}, "categorical": {0: "batch"}, "logits": {0: "batch"}})
    return buffer.getvalue()


def onnx_session(source: Path | bytes, threads: int = 1):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads and none spinning idle.

    Spinning threads would burn the core the event loop needs between requests."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(source if isinstance(source, bytes) else str(source), options,
                                        providers=["CPUExecutionProvider"])


def onnx_logits(session, numeric: np.ndarray, categorical: np.ndarray) -> np.ndarray:
    return session.run(None, {"numeric": np.ascontiguousarray(numeric, dtype=np.float32),
                              "categorical": np.ascontiguousarray(categorical, dtype=np.int64)})[0]


def checked_export(model: torch.nn.Module, spec: EncoderSpec, numeric: np.ndarray, categorical: np.ndarray) -> bytes:
    """Export, then refuse the graph unless its logits match the model's on the given windows."""
    graph = export_onnx(model, spec)
    with torch.inference_mode():
        expected = model(torch.as_tensor(numeric), torch.as_tensor(categorical)).numpy()
    found = onnx_logits(onnx_session(graph), numeric, categorical)
    worst = float(np.abs(found - expected).max())
    if not worst <= PARITY_TOLERANCE:
        raise ModelError(f"the ONNX export differs from the model by {worst:.2e} in a logit (tolerance "
                         f"{PARITY_TOLERANCE:g}); the package would serve two different models")
    return graph


@dataclass(frozen=True)
class BackendTiming:
    """CPU milliseconds (p50, this thread) of one window, per runtime, measured on this host."""

    torch_ms: float
    onnxruntime_ms: float


def time_backends(torch_forward, onnx_forward, repeats: int = 40) -> BackendTiming:
    """Alternate the two so a burst of load on a shared host hits both alike."""
    samples: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
    forwards = {"torch": torch_forward, "onnxruntime": onnx_forward}
    for forward in forwards.values():
        forward()  # first calls allocate
    for _ in range(repeats):
        for name, forward in forwards.items():
            started = time.thread_time()
            forward()
            samples[name].append((time.thread_time() - started) * 1000)
    return BackendTiming(float(np.median(samples["torch"])), float(np.median(samples["onnxruntime"])))
