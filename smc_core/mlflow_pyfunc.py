"""The model package as an MLflow pyfunc model, for ``mlflow.pyfunc.load_model`` and the
``mlflow models`` tooling (the BentoML service loads the package itself).

Logged as "models from code": MLflow keeps this file's source and runs it at load time, so
nothing is pickled (DESIGN §5). Input: consecutive raw feature rows of one series, the
package's feature columns (``encoder.json``); output: the calibrated probabilities of the
window ending at each row, NaN for the first ``sequence_length - 1`` rows (no full window).
Loading needs this project importable (``pip install -e .``).
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

PACKAGE = "package"  # the artifact key of the package directory


class PackageModel(PythonModel):
    def load_context(self, context) -> None:
        from smc_core.model import Predictor, load_package

        self.predictor = Predictor(load_package(Path(context.artifacts[PACKAGE])))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return window_probabilities(self.predictor, model_input)


def window_probabilities(predictor, rows: pd.DataFrame) -> pd.DataFrame:
    """Probabilities of the window ending at each row of ``rows`` (NaN before the first full one)."""
    from smc_core.model import encode, windows

    spec = predictor.spec
    values = rows[list(spec.feature_names)].to_numpy(dtype=np.float64)
    length = spec.sequence_length
    out = np.full((len(values), len(predictor.labels)), np.nan)
    ends = np.arange(length - 1, len(values))
    if len(ends):
        numeric, categorical = encode(values, spec)
        out[ends] = predictor.predict_proba(*windows(numeric, categorical, ends, length))
    return pd.DataFrame(out, columns=list(predictor.labels), index=rows.index)


mlflow.models.set_model(PackageModel())
