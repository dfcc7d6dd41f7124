"""Turns feature rows into the model's inputs: normalised numbers, category codes, windows.

Why a spec: the normalisation fitted on the training rows must be applied unchanged in
validation and serving, so everything ``encode`` needs is frozen into ``EncoderSpec`` and
stored as ``encoder.json`` next to the weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import torch

from smc_core.features import FeatureCatalogue

STD_FLOOR = 1e-8
CLIP = 10.0
# Signed directions (-1, 0, +1) are states, not magnitudes: embed them (code = value + 1).
DIRECTION_FEATURES = ("ext_dir", "int_dir")
DIRECTION_CATEGORIES = 3


@dataclass(frozen=True)
class EncoderSpec:
    """Everything ``encode`` needs; JSON round-trips exactly (floats are written with repr precision)."""

    feature_names: tuple[str, ...]
    feature_set_version: str
    sequence_length: int
    lookback: int
    """The catalogue's longest lookback: a request needs sequence_length + lookback - 1 bars."""
    numeric_indices: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    categorical_indices: tuple[int, ...]
    cardinalities: tuple[int, ...]
    categorical_offsets: tuple[int, ...]
    """Added to a raw value to get its code: 1 for directions (-1..1), 0 for catalogue categories."""

    @property
    def n_numeric(self) -> int:
        return len(self.numeric_indices)

    @property
    def n_categorical(self) -> int:
        return len(self.categorical_indices)

    @property
    def required_rows(self) -> int:
        """Bars of context a prediction needs so its last ``sequence_length`` feature rows are complete."""
        return self.sequence_length + self.lookback - 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "EncoderSpec":
        data = json.loads(text)
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})


def fit_encoder(train_rows: np.ndarray, catalogue: FeatureCatalogue, sequence_length: int = 20) -> EncoderSpec:
    """Fit the normalisation on training rows only, so validation and serving never leak into it."""
    rows = _checked_rows(train_rows, len(catalogue.names), catalogue.names)
    if len(rows) == 0:
        raise ValueError("cannot fit the encoder on zero training rows")
    if sequence_length < 1:
        raise ValueError(f"sequence_length must be >= 1, got {sequence_length}")
    numeric, categorical, cardinalities, offsets = [], [], [], []
    for index, spec in enumerate(catalogue.specs):
        if spec.kind == "category":
            categorical.append(index)
            cardinalities.append(len(spec.categories))
            offsets.append(0)
        elif spec.name in DIRECTION_FEATURES:
            categorical.append(index)
            cardinalities.append(DIRECTION_CATEGORIES)
            offsets.append(1)
        else:
            numeric.append(index)
    values = rows[:, numeric]
    std = np.maximum(values.std(axis=0), STD_FLOOR)
    return EncoderSpec(
        feature_names=tuple(catalogue.names), feature_set_version=catalogue.version,
        sequence_length=int(sequence_length), lookback=int(catalogue.max_lookback),
        numeric_indices=tuple(numeric), mean=tuple(float(m) for m in values.mean(axis=0)),
        std=tuple(float(s) for s in std), categorical_indices=tuple(categorical),
        cardinalities=tuple(cardinalities), categorical_offsets=tuple(offsets),
    )


def encode(rows: np.ndarray, spec: EncoderSpec) -> tuple[np.ndarray, np.ndarray]:
    """Rows [n_rows, n_features] -> (numeric float32 [n_rows, n_num], category codes int64 [n_rows, n_cat])."""
    rows = _checked_rows(rows, len(spec.feature_names), spec.feature_names)
    numeric = (rows[:, spec.numeric_indices] - np.asarray(spec.mean)) / np.asarray(spec.std)
    numeric = np.clip(numeric, -CLIP, CLIP).astype(np.float32)
    raw = rows[:, spec.categorical_indices] + np.asarray(spec.categorical_offsets, dtype=np.float64)
    codes = np.rint(raw).astype(np.int64)
    bad = (codes < 0) | (codes >= np.asarray(spec.cardinalities)) | (codes != raw)
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        index = spec.categorical_indices[column]
        raise ValueError(f"row {row}: feature {spec.feature_names[index]!r} = {float(rows[row, index])} is not a known "
                         f"category (expected an integer code below {spec.cardinalities[column]}"
                         f"{' after adding 1' if spec.categorical_offsets[column] else ''})")
    return numeric, codes


def windows(encoded_numeric: np.ndarray, encoded_cat: np.ndarray, ends: np.ndarray,
            L: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``L`` encoded rows ending at each of ``ends`` -> (float32 [N, L, n_num], int64 [N, L, n_cat])."""
    ends = np.asarray(ends, dtype=np.int64).reshape(-1)
    n_rows = len(encoded_numeric)
    if len(encoded_cat) != n_rows:
        raise ValueError(f"numeric rows ({n_rows}) and categorical rows ({len(encoded_cat)}) differ")
    incomplete = np.flatnonzero((ends < L - 1) | (ends >= n_rows))
    if len(incomplete):
        end = int(ends[incomplete[0]])
        raise ValueError(f"window ending at row {end} is incomplete: a window of {L} rows needs an end "
                         f"in [{L - 1}, {n_rows - 1}]")
    rows = ends[:, None] + np.arange(1 - L, 1)
    return torch.from_numpy(encoded_numeric[rows]), torch.from_numpy(encoded_cat[rows])


def _checked_rows(rows: np.ndarray, n_features: int, names) -> np.ndarray:
    """float64 2-D rows with the expected width and no NaN/inf; errors name the row and feature."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != n_features:
        raise ValueError(f"feature rows must have shape [n_rows, {n_features}], got {list(rows.shape)}")
    bad = ~np.isfinite(rows)
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"row {row}: feature {names[column]!r} is {rows[row, column]} (features must be finite; "
                         f"drop warm-up rows before encoding)")
    return rows
