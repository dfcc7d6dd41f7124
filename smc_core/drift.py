"""Data and prediction drift between a model's reference sample and live traffic (Evidently).

Why this shape: the drift sensor and the retrain decision need one number they can trust
("is the live feature distribution still the one the model was trained on?") plus the
evidence behind it (which features, which method, which score) and a report a person can
open. Inputs are plain arrays — the package's ``reference`` sample and feature vectors read
from the ``predictions`` table — so this module knows nothing about Dagster, BentoML or
where the rows came from.

One Evidently ``Report`` per call: a ``ValueDrift`` for every feature and, when
probabilities are given on both sides, for ``p_long``, ``p_short``, ``p_skip`` and the
predicted label (argmax). Evidently picks the method from the data unless overridden: with
more than 1000 reference rows numeric columns use the normed Wasserstein distance
(threshold 0.1) and columns with at most 5 distinct values the Jensen-Shannon distance;
with fewer rows K-S, chi-square or Z-test p-values (threshold 0.05). Each column's
drifted/not-drifted decision is Evidently's own (its per-column test), never re-derived.

Columns constant in both samples (unused flags) never reach Evidently: same value on both
sides is "not drifted", different values is "drifted", each with a reason.

Evidently takes seconds to import, so it is imported inside :func:`run_drift` only.
"""

from __future__ import annotations

import logging
import math
import numbers
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from smc_core.errors import ConfigError, SmcError
from smc_core.jsonable import plain

log = logging.getLogger(__name__)

LABELS = ("long", "short", "skip")  # the model's class order, as in smc_core.labels
PROBABILITY_COLUMNS = ("p_long", "p_short", "p_skip")
LABEL_COLUMN = "label"
PREDICTION_COLUMNS = PROBABILITY_COLUMNS + (LABEL_COLUMN,)
CONSTANT_METHOD = "constant"
_PROBABILITY_TOLERANCE = 1e-3


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _number(value) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class DriftInputError(SmcError):
    """The samples given to :func:`run_drift` cannot be compared (shape, values, size)."""


class DriftError(SmcError):
    """Evidently's result could not be read (an Evidently change, not bad input)."""


@dataclass(frozen=True)
class DriftConfig:
    """How drift is decided.

    ``drift_share``: the dataset has drifted when at least this share of the features
    drifted. ``method``/``threshold`` override Evidently's per-column choice for the
    features (any registered stattest name, e.g. ``"ks"``, ``"wasserstein"``, ``"psi"``,
    ``"jensenshannon"``); ``prediction_method``/``prediction_threshold`` do the same for the
    probability columns, and for the predicted label when the method applies to
    categorical data (otherwise the label keeps Evidently's default, which the result
    rows show). ``None`` means Evidently's default. Samples smaller than the minimums are
    refused. Non-finite rows are refused unless ``drop_non_finite`` is set, in which case
    they are dropped and counted.
    """

    drift_share: float = 0.3
    method: str | None = None
    threshold: float | None = None
    prediction_method: str | None = None
    prediction_threshold: float | None = None
    min_current_rows: int = 200
    min_reference_rows: int = 200
    drop_non_finite: bool = False

    def __post_init__(self) -> None:
        share = self.drift_share
        if not _is_real(share) or not (0.0 < float(share) <= 1.0):
            raise ConfigError(f"DriftConfig.drift_share must be a number in (0, 1], got {share!r}")
        for name in ("method", "prediction_method"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"DriftConfig.{name} must be None or an Evidently stattest name "
                                  f"such as 'ks' or 'wasserstein', got {value!r}")
        for name in ("threshold", "prediction_threshold"):
            value = getattr(self, name)
            if value is not None and (not _is_real(value) or not math.isfinite(float(value)) or float(value) <= 0):
                raise ConfigError(f"DriftConfig.{name} must be None or a finite number > 0, got {value!r}")
        for name in ("min_current_rows", "min_reference_rows"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"DriftConfig.{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.drop_non_finite, bool):
            raise ConfigError(f"DriftConfig.drop_non_finite must be True or False, got {self.drop_non_finite!r}")

    def to_dict(self) -> dict:
        return plain(asdict(self))


@dataclass(frozen=True)
class ColumnDrift:
    """One column's verdict. ``score`` is the method's statistic (a p-value for K-S,
    chi-square, Z; a distance for Wasserstein, Jensen-Shannon, PSI…); ``drifted`` is
    Evidently's decision for that method and threshold. ``reason`` explains rows that
    Evidently did not score (constant columns)."""

    column: str
    method: str
    score: float | None
    threshold: float | None
    drifted: bool
    reason: str | None = None
    reference_mean: float | None = None
    current_mean: float | None = None

    def to_dict(self) -> dict:
        return plain(asdict(self))


@dataclass(frozen=True)
class DriftResult:
    """The outcome of :func:`run_drift`; ``summary()`` is what gets stored."""

    features: tuple[ColumnDrift, ...]
    predictions: tuple[ColumnDrift, ...]
    n_features: int
    n_drifted: int
    drifted_share: float
    dataset_drift: bool
    prediction_drift: bool | None  # None: probabilities not given on both sides
    reference_rows: int
    current_rows: int
    reference_prediction_rows: int | None
    current_prediction_rows: int | None
    dropped_reference_rows: int
    dropped_current_rows: int
    label_mix: dict | None
    config: DriftConfig
    evidently_version: str
    notes: tuple[str, ...] = ()
    snapshot: Any = field(default=None, repr=False, compare=False)

    @property
    def drifted_features(self) -> list[str]:
        return [row.column for row in self.features if row.drifted]

    def summary(self) -> dict:
        """Everything but the snapshot, as plain JSON (no numpy types, no NaN)."""
        return plain({
            "n_features": self.n_features,
            "n_drifted": self.n_drifted,
            "drifted_share": self.drifted_share,
            "dataset_drift": self.dataset_drift,
            "drifted_features": self.drifted_features,
            "prediction_drift": self.prediction_drift,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "reference_prediction_rows": self.reference_prediction_rows,
            "current_prediction_rows": self.current_prediction_rows,
            "dropped_reference_rows": self.dropped_reference_rows,
            "dropped_current_rows": self.dropped_current_rows,
            "label_mix": self.label_mix,
            "features": [row.to_dict() for row in self.features],
            "predictions": [row.to_dict() for row in self.predictions],
            "config": self.config.to_dict(),
            "evidently_version": self.evidently_version,
            "notes": list(self.notes),
        })

    def save_html(self, path: str | Path) -> Path:
        """Write Evidently's HTML report (self-contained, a few MB) to ``path``."""
        if self.snapshot is None:
            raise DriftError("this result has no Evidently snapshot to render")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.snapshot.save_html(str(path))  # Evidently writes only when given a str
        return path


def run_drift(reference_features, current_features, feature_names: Sequence[str], *,
              reference_probabilities=None, current_probabilities=None,
              config: DriftConfig = DriftConfig()) -> DriftResult:
    """Compare ``current_features`` (live rows) with ``reference_features`` (training sample).

    Both are [rows, len(feature_names)] in the catalogue order. Probabilities, when given
    on both sides, are [rows, 3] in the order long, short, skip; their row counts need not
    match the feature rows (the package's reference probabilities come from validation
    windows, not from the reference feature sample).
    """
    if not isinstance(config, DriftConfig):
        raise ConfigError(f"config must be a DriftConfig, got {type(config).__name__}")
    names = _feature_names(feature_names)
    reference = _matrix(reference_features, "reference features")
    current = _matrix(current_features, "current features")
    if reference.shape[1] != len(names):
        raise DriftInputError(f"feature_names has {len(names)} names but the reference features have "
                              f"{reference.shape[1]} columns")
    if current.shape[1] != reference.shape[1]:
        raise DriftInputError(f"current features have {current.shape[1]} columns but the reference features have "
                              f"{reference.shape[1]} (feature_names: {len(names)})")
    reference, dropped_reference = _finite_rows(reference, names, "reference features", config)
    current, dropped_current = _finite_rows(current, names, "current features", config)
    _enough(reference, dropped_reference, "reference features", config.min_reference_rows, "min_reference_rows")
    _enough(current, dropped_current, "current features", config.min_current_rows, "min_current_rows")

    notes: list[str] = []
    with_predictions = reference_probabilities is not None and current_probabilities is not None
    reference_p = current_p = None
    if with_predictions:
        reference_p = _probabilities(reference_probabilities, "reference probabilities", config,
                                     config.min_reference_rows, "min_reference_rows")
        current_p = _probabilities(current_probabilities, "current probabilities", config,
                                   config.min_current_rows, "min_current_rows")
    elif reference_probabilities is not None or current_probabilities is not None:
        absent = "reference" if reference_probabilities is None else "current"
        notes.append(f"prediction drift not computed: no {absent} probabilities")

    import evidently  # seconds: kept out of module import (the service imports smc_core)
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    feature_method = _check_method(config.method, "num", "method")
    probability_method = _check_method(config.prediction_method, "num", "prediction_method")
    label_method, label_threshold = config.prediction_method, config.prediction_threshold
    if label_method is not None and not _method_applies(label_method, "cat"):
        notes.append(f"label drift uses Evidently's default method: prediction_method {label_method!r} "
                     "does not apply to categorical data")
        label_method = label_threshold = None
    label_method = _check_method(label_method, "cat", "prediction_method")

    verdicts: dict[str, ColumnDrift] = {}
    metrics = []
    for j, name in enumerate(names):
        constant = _constant_verdict(name, reference[:, j], current[:, j])
        if constant is not None:
            verdicts[name] = constant
        else:
            metrics.append(ValueDrift(column=name, method=feature_method, threshold=config.threshold))

    columns_ref: dict[str, Any] = {name: reference[:, j] for j, name in enumerate(names)}
    columns_cur: dict[str, Any] = {name: current[:, j] for j, name in enumerate(names)}
    label_mix = None
    if with_predictions:
        for p, columns in ((reference_p, columns_ref), (current_p, columns_cur)):
            for k, column in enumerate(PROBABILITY_COLUMNS):
                columns[column] = p[:, k]
            columns[LABEL_COLUMN] = np.asarray(LABELS, dtype=object)[p.argmax(axis=1)]
        label_mix = {side: {label: float(np.mean(columns[LABEL_COLUMN] == label)) for label in LABELS}
                     for side, columns in (("reference", columns_ref), ("current", columns_cur))}
        for column in PREDICTION_COLUMNS:
            constant = _constant_verdict(column, columns_ref[column], columns_cur[column])
            if constant is not None:
                verdicts[column] = constant
            elif column == LABEL_COLUMN:
                metrics.append(ValueDrift(column=column, method=label_method, threshold=label_threshold))
            else:
                metrics.append(ValueDrift(column=column, method=probability_method,
                                          threshold=config.prediction_threshold))

    numerical = list(names) + (list(PROBABILITY_COLUMNS) if with_predictions else [])
    definition = DataDefinition(numerical_columns=numerical,
                                categorical_columns=[LABEL_COLUMN] if with_predictions else [])
    with _quiet():
        current_ds = Dataset.from_pandas(_frame(columns_cur), data_definition=definition)
        reference_ds = Dataset.from_pandas(_frame(columns_ref), data_definition=definition)
        snapshot = Report(metrics, include_tests=True).run(current_ds, reference_ds)  # current first
    verdicts.update(_read_snapshot(snapshot, columns_ref, columns_cur))

    missing = [c for c in numerical + ([LABEL_COLUMN] if with_predictions else []) if c not in verdicts]
    if missing:
        raise DriftError(f"Evidently returned no drift verdict for {', '.join(missing)}")
    features = tuple(verdicts[name] for name in names)
    predictions = tuple(verdicts[c] for c in PREDICTION_COLUMNS) if with_predictions else ()
    n_drifted = sum(row.drifted for row in features)
    share = n_drifted / len(features)
    result = DriftResult(
        features=features, predictions=predictions, n_features=len(features), n_drifted=n_drifted,
        drifted_share=share, dataset_drift=share >= config.drift_share,
        prediction_drift=any(row.drifted for row in predictions) if with_predictions else None,
        reference_rows=len(reference), current_rows=len(current),
        reference_prediction_rows=len(reference_p) if with_predictions else None,
        current_prediction_rows=len(current_p) if with_predictions else None,
        dropped_reference_rows=dropped_reference, dropped_current_rows=dropped_current,
        label_mix=label_mix, config=config, evidently_version=evidently.__version__, notes=tuple(notes),
        snapshot=snapshot,
    )
    log.info("drift: %d/%d features drifted (share %.3f, dataset drift %s), prediction drift %s",
             n_drifted, len(features), share, result.dataset_drift, result.prediction_drift)
    return result


# --- storage ---------------------------------------------------------------------------

_COLUMNS = ("id", "created_at", "model_version", "window_start", "window_end", "reason", "reference_rows",
            "current_rows", "n_features", "n_drifted", "drifted_share", "dataset_drift", "prediction_drift",
            "summary", "html_path")


def store_report(db, result: DriftResult, *, model_version: str, window_start: datetime | None,
                 window_end: datetime | None, html_path: str | Path | None = None, reason: str | None = None) -> int:
    """Insert ``result`` into ``drift_reports``; return the row id.

    ``db`` is a :class:`smc_core.db.Database`. The
    window is the live period the current sample covers; times must carry a time zone.
    """
    from psycopg.types.json import Jsonb

    if not isinstance(result, DriftResult):
        raise ConfigError(f"result must be a DriftResult, got {type(result).__name__}")
    if not isinstance(model_version, str) or not model_version.strip():
        raise ConfigError(f"model_version must be a non-empty string, got {model_version!r}")
    for name, value in (("window_start", window_start), ("window_end", window_end)):
        if value is not None and (not isinstance(value, datetime) or value.tzinfo is None
                                  or value.tzinfo.utcoffset(value) is None):
            raise ConfigError(f"{name} must be a timezone-aware datetime or None, got {value!r}")
    if window_start is not None and window_end is not None and window_start > window_end:
        raise ConfigError(f"window_start {window_start.isoformat()} is after window_end {window_end.isoformat()}")
    with _connection(db) as conn:
        row = conn.execute(
            """INSERT INTO drift_reports (model_version, window_start, window_end, reason, reference_rows,
                                          current_rows, n_features, n_drifted, drifted_share, dataset_drift,
                                          prediction_drift, summary, html_path)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
            (model_version, window_start, window_end, reason, result.reference_rows, result.current_rows,
             result.n_features, result.n_drifted, float(result.drifted_share), bool(result.dataset_drift),
             result.prediction_drift, Jsonb(result.summary()), None if html_path is None else str(html_path)),
        ).fetchone()
    return int(row[0])


def latest_reports(db, model_version: str | None = None, limit: int = 10) -> list[dict]:
    """The newest ``drift_reports`` rows (all models, or one ``model_version``), newest first."""
    if not isinstance(limit, numbers.Integral) or isinstance(limit, bool) or limit < 1:
        raise ConfigError(f"limit must be an integer >= 1, got {limit!r}")
    where, params = ("WHERE model_version = %s", [model_version]) if model_version is not None else ("", [])
    with _connection(db) as conn:
        rows = conn.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM drift_reports {where} ORDER BY created_at DESC, id DESC LIMIT %s",
            (*params, int(limit)),
        ).fetchall()
    return [dict(zip(_COLUMNS, row)) for row in rows]


@contextmanager
def _connection(db) -> Iterator:
    """A connection of ``db`` in one transaction."""
    from smc_core.db import Database

    if not isinstance(db, Database):
        raise ConfigError(f"expected a smc_core.db.Database, got {type(db).__name__}")
    with db.connection() as conn:
        yield conn


# --- input validation ------------------------------------------------------------------

def _feature_names(feature_names) -> list[str]:
    if isinstance(feature_names, str):
        raise DriftInputError("feature_names must be a sequence of names, not one string")
    names = list(feature_names)
    if not names:
        raise DriftInputError("feature_names is empty: nothing to compare")
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise DriftInputError(f"feature_names must be non-empty strings, got {bad[:3]!r}")
    seen: set[str] = set()
    duplicates = sorted({n for n in names if n in seen or seen.add(n)})
    if duplicates:
        raise DriftInputError(f"feature_names has duplicates: {', '.join(duplicates)}")
    clash = sorted(set(names) & set(PREDICTION_COLUMNS))
    if clash:
        raise DriftInputError(f"feature names {', '.join(clash)} are reserved for the prediction columns")
    return names


def _matrix(values, what: str, width: int | None = None) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DriftInputError(f"{what}: not a numeric [rows, columns] array ({exc})") from None
    if array.ndim != 2 or (width is not None and array.shape[1] != width):
        expected = f"[rows, {width}]" if width is not None else "[rows, columns]"
        raise DriftInputError(f"{what}: expected a 2-D array {expected}, got shape {list(array.shape)}")
    return array


def _finite_rows(array: np.ndarray, names: Sequence[str], what: str, config: DriftConfig) -> tuple[np.ndarray, int]:
    finite = np.isfinite(array)
    bad_rows = ~finite.all(axis=1)
    n_bad = int(bad_rows.sum())
    if n_bad == 0:
        return array, 0
    per_column = (~finite).sum(axis=0)
    worst = np.argsort(-per_column, kind="stable")[: min(5, int((per_column > 0).sum()))]
    detail = ", ".join(f"{names[j]}: {int(per_column[j])}" for j in worst)
    more = int((per_column > 0).sum()) - len(worst)
    detail += f", and {more} more columns" if more > 0 else ""
    message = (f"{what}: {n_bad} of {len(array)} rows have NaN or infinite values "
               f"(rows per column — {detail}; first bad row {int(np.flatnonzero(bad_rows)[0])})")
    if not config.drop_non_finite:
        raise DriftInputError(f"{message}; pass DriftConfig(drop_non_finite=True) to drop those rows")
    log.warning("%s; dropped", message)
    return array[~bad_rows], n_bad


def _enough(array: np.ndarray, dropped: int, what: str, minimum: int, setting: str) -> None:
    if len(array) < minimum:
        after = f" after dropping {dropped} non-finite rows" if dropped else ""
        raise DriftInputError(f"{what}: {len(array)} rows{after}, need at least {minimum} (DriftConfig.{setting})")


def _probabilities(values, what: str, config: DriftConfig, minimum: int, setting: str) -> np.ndarray:
    array = _matrix(values, what, width=len(LABELS))
    array, dropped = _finite_rows(array, PROBABILITY_COLUMNS, what, config)
    _enough(array, dropped, what, minimum, setting)
    outside = np.flatnonzero(((array < -_PROBABILITY_TOLERANCE) | (array > 1 + _PROBABILITY_TOLERANCE)).any(axis=1))
    if len(outside):
        row = int(outside[0])
        raise DriftInputError(f"{what}: row {row} has values outside [0, 1] ({array[row].tolist()}); "
                              f"expected probabilities in the order {', '.join(LABELS)}")
    sums = array.sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1.0) > _PROBABILITY_TOLERANCE)
    if len(off):
        raise DriftInputError(f"{what}: {len(off)} rows do not sum to 1 (row {int(off[0])} sums to "
                              f"{float(sums[off[0]]):.6g}); expected probabilities in the order {', '.join(LABELS)}")
    return array


# --- Evidently plumbing ----------------------------------------------------------------

def _method_applies(method: str, kind: str) -> bool:
    from evidently.legacy.calculations.stattests.registry import get_registered_stattest
    from evidently.legacy.core import ColumnType

    try:
        get_registered_stattest(method, ColumnType(kind))
    except ValueError:
        return False
    return True


def _check_method(method: str | None, kind: str, setting: str) -> str | None:
    """``method`` if Evidently knows it for this kind of column, else a ConfigError."""
    if method is None:
        return None
    from evidently.legacy.calculations.stattests.registry import (
        StatTestInvalidFeatureTypeError, StatTestNotFoundError, get_registered_stattest)
    from evidently.legacy.core import ColumnType

    try:
        get_registered_stattest(method, ColumnType(kind))
    except StatTestNotFoundError as exc:
        raise ConfigError(f"DriftConfig.{setting}: {exc}") from None
    except StatTestInvalidFeatureTypeError:
        what = "numerical" if kind == "num" else "categorical"
        raise ConfigError(f"DriftConfig.{setting}: {method!r} does not apply to {what} columns") from None
    return method


def _short_method_names() -> dict[str, str]:
    """Evidently reports auto-chosen methods by display name ('K-S p_value'); map back to
    the registry names a DriftConfig accepts ('ks')."""
    from evidently.legacy.calculations import stattests
    from evidently.legacy.calculations.stattests.registry import StatTest

    return {v.display_name: v.name for v in vars(stattests).values() if isinstance(v, StatTest)}


def _read_snapshot(snapshot, columns_ref: dict, columns_cur: dict) -> dict[str, ColumnDrift]:
    """One ColumnDrift per ValueDrift metric: score from the metric, the decision from its test."""
    short = _short_method_names()
    content = snapshot.dict()
    status_by_metric: dict[str, str] = {}
    for test in content["tests"]:
        metric_id = test.get("metric_config", {}).get("metric_id")
        if metric_id is not None and test.get("id") == "drift":
            status_by_metric[metric_id] = str(getattr(test["status"], "value", test["status"]))
    verdicts: dict[str, ColumnDrift] = {}
    for metric in content["metrics"]:
        config = metric.get("config", {})
        if not str(config.get("type", "")).endswith("ValueDrift"):
            continue
        column = config["column"]
        status = status_by_metric.get(metric["id"])
        if status not in ("SUCCESS", "FAIL"):
            raise DriftError(f"Evidently's drift test for {column} has status {status!r}, expected SUCCESS or FAIL")
        method = str(config.get("method"))
        verdicts[column] = ColumnDrift(
            column=column, method=short.get(method, method), score=_number(metric.get("value")),
            threshold=_number(config.get("threshold")), drifted=status == "FAIL",
            reference_mean=_mean(columns_ref[column]), current_mean=_mean(columns_cur[column]),
        )
    return verdicts


def _constant_verdict(column: str, reference: np.ndarray, current: np.ndarray) -> ColumnDrift | None:
    """A verdict for a column constant in both samples (None when either side varies)."""
    ref_values, cur_values = np.unique(reference), np.unique(current)
    if len(ref_values) != 1 or len(cur_values) != 1:
        return None
    ref_value, cur_value = ref_values[0], cur_values[0]
    same = ref_value == cur_value
    shown = (lambda v: repr(v.item()) if hasattr(v, "item") else repr(v))
    reason = (f"constant in both samples ({shown(ref_value)})" if same else
              f"constant in both samples but changed: reference {shown(ref_value)}, current {shown(cur_value)}")
    return ColumnDrift(column=column, method=CONSTANT_METHOD, score=None, threshold=None, drifted=not same,
                       reason=reason, reference_mean=_mean(reference), current_mean=_mean(current))


def _frame(columns: dict):
    """Columns of different lengths (feature rows vs probability rows) padded with NaN:
    Evidently drops missing values per column before testing it."""
    import pandas as pd

    return pd.DataFrame({name: pd.Series(values) for name, values in columns.items()})


@contextmanager
def _quiet() -> Iterator[None]:
    # Evidently computes a correlation and histograms per column; on a column constant in
    # one sample numpy/scipy warn about 0/0. The verdict does not depend on them.
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


# --- plain values --------------------------------------------------------------------

def _mean(values) -> float | None:
    if values.dtype == object:
        return None
    return _number(np.mean(values))
