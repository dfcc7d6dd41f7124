"""Calibrated probabilities from a model package, for batch scoring and the service.

Why threads=1 by default: this model is so small that thread hand-off dominates; measured
on 2 cores, one window takes ~2 ms with 1 intra-op thread and ~30 ms with 2. The setting
is process-wide, so it is made once, deliberately, when the predictor is created; an ONNX
Runtime session gets the same number of intra-op threads.

Two runtimes, one model: PyTorch always, and ONNX Runtime on the package's exported graph
when ``use_onnx`` was called (the service does when it measures it faster).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from smc_core.model.backbone import BarClassifier, batched_logits
from smc_core.model.calibration import softmax
from smc_core.model.encoding import encode, windows
from smc_core.model.onnx_graph import onnx_logits, onnx_session
from smc_core.model.package import ModelPackage, adapter_model, load_package


class Predictor:
    """A loaded package in eval mode; every call runs under ``torch.inference_mode``."""

    def __init__(self, package: ModelPackage, model: BarClassifier | None = None, threads: int | None = 1,
                 batch_size: int = 1024, device: str | None = None):
        if threads is not None:
            torch.set_num_threads(threads)
        self.package = package
        # CUDA when present (TORCH_DEVICE overrides), CPU otherwise: the same code either way
        self.device = torch.device(device or os.environ.get("TORCH_DEVICE")
                                   or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = (model if model is not None else package.model).to(self.device).eval()
        self.spec = package.spec
        self.temperature = package.temperature
        self.labels = package.labels
        self.batch_size = batch_size
        self.threads = threads or torch.get_num_threads()
        self.session = None
        """An ONNX Runtime session on the package's graph once ``use_onnx`` is called; torch otherwise."""

    @property
    def backend(self) -> str:
        return "torch" if self.session is None else "onnxruntime"

    def onnx(self):
        """A new ONNX Runtime session on the package's graph (None when the package has none)."""
        path = self.package.onnx_path
        return None if path is None else onnx_session(path, self.threads)

    def use_onnx(self, session) -> None:
        """Serve through ``session`` (from ``onnx()``), or through torch again with None."""
        self.session = session

    @classmethod
    def load(cls, path: Path, threads: int = 1) -> "Predictor":
        """Serving: the merged weights of a verified package."""
        return cls(load_package(path), threads=threads)

    @classmethod
    def from_adapter(cls, path: Path, threads: int = 1) -> "Predictor":
        """The unmerged base + LoRA adapter model of the same package (lineage check, not serving)."""
        package = load_package(path)
        return cls(package, model=adapter_model(package), threads=threads)

    def logits(self, numeric_windows, categorical_windows) -> np.ndarray:
        numeric = torch.as_tensor(numeric_windows, dtype=torch.float32)
        categorical = torch.as_tensor(categorical_windows, dtype=torch.int64)
        expected = (self.spec.sequence_length, self.spec.n_numeric, self.spec.n_categorical)
        if (numeric.ndim != 3 or categorical.ndim != 3 or len(numeric) != len(categorical)
                or (numeric.shape[1], numeric.shape[2], categorical.shape[2]) != expected
                or categorical.shape[1] != expected[0]):
            raise ValueError(f"windows must be [N, {expected[0]}, {expected[1]}] numeric and "
                             f"[N, {expected[0]}, {expected[2]}] categorical, got {list(numeric.shape)} "
                             f"and {list(categorical.shape)}")
        if self.session is not None:
            chunks = [onnx_logits(self.session, numeric[i:i + self.batch_size].numpy(),
                                  categorical[i:i + self.batch_size].numpy())
                      for i in range(0, len(numeric), self.batch_size)]
            return np.concatenate(chunks) if chunks else np.empty((0, len(self.labels)), dtype=np.float32)
        with torch.inference_mode():
            return batched_logits(self.model, numeric, categorical, self.batch_size).numpy()

    def predict_proba(self, numeric_windows, categorical_windows) -> np.ndarray:
        """Calibrated class probabilities [N, n_labels]: softmax(logits / T)."""
        return softmax(self.logits(numeric_windows, categorical_windows), self.temperature)

    def single_window_latency_ms(self, repeats: int = 200) -> float:
        """p50 milliseconds of one prediction from raw feature rows (rows of the package's
        reference sample): what the service pays per bar, encoding included.

        Measured as CPU time of this thread (the model runs on one intra-op thread), not wall
        time: on a busy machine wall time measures the other processes, and the latency gate
        would refuse the same model on a loaded box that it passes on a quiet one. Served
        latency under load is watched live (``smc_request_duration_seconds``)."""
        rows = self.package.reference[: self.spec.sequence_length].astype(np.float64)
        if len(rows) < self.spec.sequence_length:
            raise ValueError(f"the reference sample has {len(rows)} rows, fewer than one window")
        self.predict_rows(rows)  # warm-up
        times = []
        for _ in range(repeats):
            started = time.thread_time()
            self.predict_rows(rows)
            times.append((time.thread_time() - started) * 1000)
        return float(np.median(times))

    def predict_rows(self, feature_rows: np.ndarray) -> np.ndarray:
        """Probabilities [n_labels] for the window ending at the last of ``feature_rows`` (raw features).

        A DataFrame must have the model's feature columns in order: a reordered frame would
        otherwise be scored silently with every feature in the wrong slot.
        """
        return self.predict_windows([feature_rows])[0]

    def predict_windows(self, row_windows) -> np.ndarray:
        """Probabilities [N, n_labels] for N windows of raw feature rows, in one forward pass
        (the service's micro-batches); each window is scored on its last ``sequence_length`` rows."""
        return self.predict_proba(*self.encode_windows(row_windows))

    def encode_windows(self, row_windows) -> tuple[torch.Tensor, torch.Tensor]:
        """N windows of raw feature rows -> (float32 [N, L, n_num], int64 [N, L, n_cat]), encoded together."""
        length = self.spec.sequence_length
        tails = []
        for feature_rows in row_windows:
            columns = getattr(feature_rows, "columns", None)
            if columns is not None and list(columns) != list(self.spec.feature_names):
                raise ValueError("feature columns differ from the model's (encoder.json feature_names, in order)")
            rows = np.asarray(feature_rows, dtype=np.float64)
            if rows.ndim != 2 or len(rows) < length:
                raise ValueError(f"need at least {length} feature rows (the window length), got shape "
                                 f"{list(rows.shape)}")
            tails.append(rows[-length:])
        numeric, categorical = encode(np.concatenate(tails), self.spec)
        return (torch.from_numpy(numeric.reshape(len(tails), length, -1)),
                torch.from_numpy(categorical.reshape(len(tails), length, -1)))
