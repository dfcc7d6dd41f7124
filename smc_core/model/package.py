"""The model package: one directory of JSON and safetensors that fully describes a served model.

Why this shape: nothing in it is pickled, so loading a package never executes code, and
``manifest.json`` pins every file's size and sha256, so a truncated copy, a swapped weight
file or a stray extra file is refused instead of silently served.

Layout::

    model.safetensors          merged weights for serving (LoRA folded into the backbone,
                               plus bar projection, category embeddings and head)
    backbone_config.json       BackboneConfig
    encoder.json               EncoderSpec (feature names/order, normalisation, categories)
    calibration.json           {"temperature": T}
    labels.json                ["long", "short", "skip"]
    lineage.json               whatever the caller passes (data, code, runs)
    reference.safetensors      "features": float32 [n, n_features] training feature sample;
                               "probabilities": float32 [m, n_labels] calibrated validation
                               probabilities (optional): the drift reports' baselines
                               (column names in encoder.json) for drift checks
    adapter/adapter_model.safetensors, adapter/adapter_config.json
                               the peft adapter, kept for lineage      } LoRA models only
    base.safetensors           the pretrained backbone the adapter sits on, so the
                               unmerged model can be rebuilt from base + adapter }
    model.onnx                 the merged model as an ONNX graph (protobuf, no code), checked
                               against the merged weights when written; the service runs it
                               with ONNX Runtime when that is faster (optional: older
                               packages have none and are served by PyTorch)
    manifest.json              {"files": {relative path: {"sha256", "bytes"}}}
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from smc_core.labels import LABELS
from smc_core.model.backbone import BackboneConfig, BarClassifier, build_backbone
from smc_core.model.encoding import EncoderSpec
from smc_core.model.encoding import encode, windows
from smc_core.model.errors import ModelError
from smc_core.model.onnx_graph import ONNX_FILE, checked_export

MANIFEST = "manifest.json"
MODEL_WEIGHTS = "model.safetensors"
BASE_WEIGHTS = "base.safetensors"
ADAPTER_DIR = "adapter"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
REFERENCE = "reference.safetensors"
REQUIRED = (MODEL_WEIGHTS, "backbone_config.json", "encoder.json", "calibration.json", "labels.json",
            "lineage.json", REFERENCE)
BODY_WEIGHTS = "body.safetensors"
BASE_REQUIRED = (BODY_WEIGHTS, "backbone_config.json", "encoder.json", "base.json")
PACKAGE_FORMAT = 1


@dataclass
class ModelPackage:
    path: Path
    model: BarClassifier
    """Merged weights, eval mode."""
    spec: EncoderSpec
    backbone_config: BackboneConfig
    temperature: float
    labels: tuple[str, ...]
    lineage: dict
    reference: np.ndarray
    files: dict
    reference_probabilities: np.ndarray | None = None
    """Calibrated probabilities on the validation windows (out of sample), for prediction drift."""

    @property
    def has_adapter(self) -> bool:
        return f"{ADAPTER_DIR}/{ADAPTER_FILES[0]}" in self.files

    @property
    def onnx_path(self) -> Path | None:
        """The merged model's ONNX graph, verified by the manifest; None in packages written before it."""
        return self.path / ONNX_FILE if ONNX_FILE in self.files else None


def save_package(path: Path, model: BarClassifier, spec: EncoderSpec, backbone_config: BackboneConfig,
                 temperature: float, lineage: dict, reference: np.ndarray,
                 labels: tuple[str, ...] = LABELS, reference_probabilities: np.ndarray | None = None) -> ModelPackage:
    """Write a package to ``path`` (which must not exist or be empty); returns it as loaded in memory.

    ``model`` may carry a peft backbone (from ``finetune_lora``): then the adapter and base
    weights are saved too and the served weights are the merge. The package is written to
    a sibling temporary directory and renamed, so ``path`` never holds half a package.
    """
    path = Path(path)
    _check_target(path, "model package")
    reference = np.ascontiguousarray(reference, dtype=np.float32)
    if reference.ndim != 2 or reference.shape[1] != len(spec.feature_names) or len(reference) == 0:
        raise ModelError(f"reference sample must be [n >= 1, {len(spec.feature_names)}], got {list(reference.shape)}")
    reference_tensors = {"features": torch.from_numpy(reference)}
    if reference_probabilities is not None:
        reference_probabilities = np.ascontiguousarray(reference_probabilities, dtype=np.float32)
        if (reference_probabilities.ndim != 2 or reference_probabilities.shape[1] != len(labels)
                or len(reference_probabilities) == 0 or not np.isfinite(reference_probabilities).all()):
            raise ModelError(f"reference probabilities must be finite [m >= 1, {len(labels)}], "
                             f"got {list(reference_probabilities.shape)}")
        reference_tensors["probabilities"] = torch.from_numpy(reference_probabilities)
    if not (np.isfinite(temperature) and temperature > 0):
        raise ModelError(f"temperature must be a finite number > 0, got {temperature!r}")
    try:
        json.dumps(lineage)
    except (TypeError, ValueError) as error:
        raise ModelError(f"lineage must be JSON-serialisable: {error}") from None
    if model.head.out_features != len(labels):
        raise ModelError(f"the model has {model.head.out_features} outputs but {len(labels)} labels were given")

    written = {}

    def write(staging: Path) -> None:
        written["merged"] = _write_weights(staging, model)
        (staging / ONNX_FILE).write_bytes(checked_export(written["merged"], spec, *reference_windows(reference, spec)))
        _write_json(staging / "backbone_config.json", json.loads(backbone_config.to_json()))
        (staging / "encoder.json").write_text(spec.to_json())
        _write_json(staging / "calibration.json", {"temperature": float(temperature)})
        _write_json(staging / "labels.json", list(labels))
        _write_json(staging / "lineage.json", lineage)
        save_file(reference_tensors, str(staging / REFERENCE),
                  metadata={"feature_set_version": spec.feature_set_version})

    files = _write_directory(path, write)
    merged = written["merged"]
    return ModelPackage(path=path, model=merged, spec=spec, backbone_config=backbone_config,
                        temperature=float(temperature), labels=tuple(labels), lineage=lineage,
                        reference=reference, files=files, reference_probabilities=reference_probabilities)


def package_horizon(path: Path) -> str | None:
    """The label horizon a package was trained on (``lineage.json``), e.g. ``h15_u1.5_d1.5``;
    None when its lineage records none. Reads one JSON file, loads no weights."""
    lineage = json.loads((Path(path) / "lineage.json").read_text())
    return (lineage.get("data") or {}).get("horizon")


def load_package(path: Path) -> ModelPackage:
    """Verify the manifest (every file present, unaltered, nothing extra), then build the merged model."""
    path = Path(path)
    files = verify_manifest(path)
    spec = EncoderSpec.from_json((path / "encoder.json").read_text())
    backbone_config = BackboneConfig.from_json((path / "backbone_config.json").read_text())
    labels = tuple(json.loads((path / "labels.json").read_text()))
    reference = _read_weights(path, REFERENCE)
    model = _empty_model(spec, backbone_config, len(labels))
    _load_state(model, _read_weights(path, MODEL_WEIGHTS), path, MODEL_WEIGHTS)
    return ModelPackage(
        path=path, model=model.eval(), spec=spec, backbone_config=backbone_config,
        temperature=float(json.loads((path / "calibration.json").read_text())["temperature"]),
        labels=labels, lineage=json.loads((path / "lineage.json").read_text()),
        reference=reference["features"].numpy(), files=files,
        reference_probabilities=reference["probabilities"].numpy() if "probabilities" in reference else None,
    )


def adapter_model(package: ModelPackage) -> BarClassifier:
    """The unmerged model rebuilt from base weights + adapter (+ the non-backbone modules).

    Serving uses the merged weights; this exists to show that the adapter alone, on the
    recorded base, reproduces them, so the adapter is a faithful lineage record.
    """
    if not package.has_adapter:
        raise ModelError(f"model package {package.path}: it has no adapter (the model was not LoRA-tuned)")
    model = _empty_model(package.spec, package.backbone_config, len(package.labels))
    model.backbone.load_state_dict(_read_weights(package.path, BASE_WEIGHTS))
    model.backbone = PeftModel.from_pretrained(model.backbone, str(package.path / ADAPTER_DIR), is_trainable=False)
    outer = {k: v for k, v in package.model.state_dict().items() if not k.startswith("backbone.")}
    result = model.load_state_dict(outer, strict=False)
    if result.unexpected_keys or any(not k.startswith("backbone.") for k in result.missing_keys):
        raise ModelError(f"model package {package.path}: weights do not fit the adapter model")
    return model.eval()


def verify_manifest(path: Path, required: tuple[str, ...] = REQUIRED) -> dict:
    """The manifest's file table, after checking the directory matches it exactly."""
    if not path.is_dir():
        raise ModelError(f"model package {path}: no such directory")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ModelError(f"model package {path}: {MANIFEST} is missing; refusing to load an unverifiable package")
    try:
        files = json.loads(manifest_path.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ModelError(f"model package {path}: {MANIFEST} is unreadable ({error})") from None
    for name in required:
        if name not in files:
            raise ModelError(f"model package {path}: {name} is missing from {MANIFEST}")
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise ModelError(f"model package {path}: {name} is missing (listed in {MANIFEST})")
        found = _describe(file)
        if found != expected:
            raise ModelError(f"model package {path}: {name} is altered (size {found['bytes']}, sha256 "
                             f"{found['sha256'][:12]}… but the manifest says size {expected.get('bytes')}, "
                             f"sha256 {str(expected.get('sha256'))[:12]}…)")
    extra = sorted(set(_listing(path)) - set(files) - {MANIFEST})
    if extra:
        raise ModelError(f"model package {path}: {extra[0]} is an unexpected file (not in {MANIFEST}); "
                         f"refusing to load a package with unlisted content")
    return files


@dataclass
class BasePackage:
    """A pretrained body (bar projection, category embeddings, backbone; no head) and how it was made."""

    path: Path
    state: dict[str, torch.Tensor]
    spec: EncoderSpec
    """The encoder the body was pretrained with: its feature set must match the fine-tuning data."""
    backbone_config: BackboneConfig
    info: dict
    """Pretraining facts: data range (``trained_until``), windows, epochs, history, checkpoint."""


def save_base(path: Path, state: dict[str, torch.Tensor], spec: EncoderSpec, backbone_config: BackboneConfig,
              info: dict) -> BasePackage:
    """Write a pretrained body as a verified directory (same manifest rules as model packages)."""
    path = Path(path)
    _check_target(path, "base model")

    def write(staging: Path) -> None:
        save_file(_contiguous(state), str(staging / BODY_WEIGHTS))
        _write_json(staging / "backbone_config.json", json.loads(backbone_config.to_json()))
        (staging / "encoder.json").write_text(spec.to_json())
        _write_json(staging / "base.json", info)

    _write_directory(path, write)
    return BasePackage(path, state, spec, backbone_config, info)


def load_base(path: Path) -> BasePackage:
    path = Path(path)
    verify_manifest(path, BASE_REQUIRED)
    return BasePackage(path=path, state=_read_weights(path, BODY_WEIGHTS),
                       spec=EncoderSpec.from_json((path / "encoder.json").read_text()),
                       backbone_config=BackboneConfig.from_json((path / "backbone_config.json").read_text()),
                       info=json.loads((path / "base.json").read_text()))


def reference_windows(reference: np.ndarray, spec: EncoderSpec) -> tuple[np.ndarray, np.ndarray]:
    """Up to 16 windows of a package's reference sample, encoded: what the ONNX graph is checked
    on against the merged weights (when written, and again by the service when it loads it)."""
    length = spec.sequence_length
    numeric, categorical = encode(reference[: length + 15], spec)
    if len(numeric) < length:  # a tiny reference sample: repeat its rows into one window
        repeat = -(-length // len(numeric))
        numeric, categorical = np.tile(numeric, (repeat, 1))[:length], np.tile(categorical, (repeat, 1))[:length]
    ends = np.arange(length - 1, len(numeric))
    return tuple(t.numpy() for t in windows(numeric, categorical, ends, length))


# --- internals -------------------------------------------------------------------------

def _check_target(path: Path, what: str) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ModelError(f"{what} {path}: the target exists and is not an empty directory")


def _write_directory(path: Path, write) -> dict:
    """Run ``write(staging)`` in a sibling temporary directory, add the manifest, rename into place.

    ``path`` therefore never holds half a package; returns the manifest's file table.
    """
    staging = path.parent / f".{path.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        write(staging)
        files = {name: _describe(staging / name) for name in _listing(staging)}
        _write_json(staging / MANIFEST, {"format": PACKAGE_FORMAT, "files": files})
        if path.exists():
            path.rmdir()
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return files


def _write_weights(directory: Path, model: BarClassifier) -> BarClassifier:
    """Save served (merged) weights and, for a peft backbone, adapter + base; return the merged model."""
    merged = copy.deepcopy(model).cpu().eval()
    if isinstance(model.backbone, PeftModel):
        adapter = directory / ADAPTER_DIR
        model.backbone.save_pretrained(str(adapter), safe_serialization=True)
        for file in adapter.iterdir():  # peft also writes a model card; the package is JSON + safetensors
            if file.name not in ADAPTER_FILES:
                file.unlink()
        base = copy.deepcopy(model.backbone).cpu().unload()
        save_file(_contiguous(base.state_dict()), str(directory / BASE_WEIGHTS))
        merged.backbone = merged.backbone.merge_and_unload()
    save_file(_contiguous(merged.state_dict()), str(directory / MODEL_WEIGHTS))
    return merged


def _empty_model(spec: EncoderSpec, backbone_config: BackboneConfig, n_classes: int) -> BarClassifier:
    """A model of the right shape; its random init is discarded, so it must not disturb the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        return BarClassifier(spec.n_numeric, spec.cardinalities, build_backbone(backbone_config), n_classes)


def _read_weights(path: Path, name: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path / name))
    except (SafetensorError, OSError) as error:
        raise ModelError(f"model package {path}: {name} cannot be read ({error})") from None


def _load_state(model: torch.nn.Module, state: dict, path: Path, name: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelError(f"model package {path}: {name} does not fit the configured model: {error}") from None


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def _write_json(file: Path, value) -> None:
    file.write_text(json.dumps(value, indent=1, sort_keys=True))


def _listing(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


def _describe(file: Path) -> dict:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"sha256": digest.hexdigest(), "bytes": file.stat().st_size}
