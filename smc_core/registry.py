"""MLflow tracking and the model registry, configured so nothing depends on the cwd.

MLflow resolves relative artifact locations against the current directory (DESIGN §3),
so the tracking store and the artifact root are always absolute paths under SMC_HOME
unless MLFLOW_TRACKING_URI says otherwise. Registry stages are deprecated: the lineage
uses aliases (``challenger``, ``champion``, ``previous``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from smc_core.settings import Settings, secret

EXPERIMENT = "smc"
MODEL_NAME = "smc-lora"
PACKAGE_ARTIFACT = "model_package"
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
"""MLflow 3 opens an experiment with this tag in its model-training view (runs, metrics, models),
not the GenAI one (traces, evaluations)."""

# Offline machines: no pip resolution when logging, no telemetry calls.
os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@dataclass(frozen=True)
class TrackingConfig:
    tracking_uri: str
    artifact_root: str
    experiment: str = EXPERIMENT

    @classmethod
    def from_settings(cls, settings: Settings) -> "TrackingConfig":
        home = settings.smc_home
        uri = secret(os.environ, "MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"
        return cls(uri, (home / "mlartifacts").as_uri())


def configure(config: TrackingConfig) -> str:
    """Point MLflow at ``config`` and make sure the experiment exists with an absolute
    artifact root; return the experiment id."""
    import mlflow

    if config.tracking_uri.startswith("sqlite:///"):
        Path(config.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(config.tracking_uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(config.experiment)
    if experiment is None:
        experiment_id = client.create_experiment(config.experiment, artifact_location=config.artifact_root,
                                                 tags=EXPERIMENT_KIND)
    else:
        experiment_id = experiment.experiment_id
        for key, value in EXPERIMENT_KIND.items():
            if experiment.tags.get(key) != value:  # an experiment made before the tag existed
                client.set_experiment_tag(experiment_id, key, value)
    # active too: a bare mlflow.start_run() would otherwise use experiment 0, whose artifact
    # root is ./mlruns relative to wherever the process happens to run
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def register_package(run_id: str, artifact_uri: str, *, name: str = MODEL_NAME, alias: str | None = "challenger",
                     tags: dict[str, str] | None = None) -> str:
    """Register the package logged under ``artifact_uri`` as a new version of ``name``;
    point ``alias`` at it; return the version."""
    import mlflow

    client = mlflow.MlflowClient()
    if not _exists(client, name):
        client.create_registered_model(name, description="SMC LoRA classifier (long / short / skip).")
    version = client.create_model_version(name, source=artifact_uri, run_id=run_id, tags=tags or {})
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def log_pyfunc_model(package_dir: Path, *, name: str = "model") -> str:
    """Log the package under ``package_dir`` as an MLflow pyfunc model of the active run (models
    from code: ``smc_core/mlflow_pyfunc.py``, nothing pickled); returns its ``models:/`` URI.

    Requirements are stated, not inferred: inference would load the model in a subprocess and
    ask the package index, which an offline machine cannot."""
    from importlib.metadata import version

    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    from smc_core import mlflow_pyfunc
    from smc_core.model import Predictor, load_package

    predictor = Predictor(load_package(Path(package_dir)), threads=None)
    length = predictor.spec.sequence_length
    sample = pd.DataFrame(predictor.package.reference[: length + 1].astype("float64"),
                          columns=list(predictor.spec.feature_names))
    signature = infer_signature(sample, mlflow_pyfunc.window_probabilities(predictor, sample))
    logged = mlflow.pyfunc.log_model(
        name=name, python_model=mlflow_pyfunc.__file__, artifacts={mlflow_pyfunc.PACKAGE: str(package_dir)},
        signature=signature, input_example=sample, pip_requirements=[f"{p}=={version(p)}" for p in _PYFUNC_REQUIREMENTS])
    return logged.model_uri


_PYFUNC_REQUIREMENTS = ("mlflow", "torch", "transformers", "peft", "safetensors", "numpy", "pandas")


def alias_version(alias: str, *, name: str = MODEL_NAME) -> str | None:
    """The version an alias points at, or None when it is not set."""
    import mlflow

    client = mlflow.MlflowClient()
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def run_dicts(version: str, *artifact_paths: str, name: str = MODEL_NAME) -> list[dict | None]:
    """JSON artifacts of the run that made ``name`` version ``version``, in order (None for one that
    run did not log, e.g. a model trained before it was logged)."""
    import mlflow

    run_id = mlflow.MlflowClient().get_model_version(name, version).run_id
    found = []
    for path in artifact_paths:
        try:
            found.append(mlflow.artifacts.load_dict(f"runs:/{run_id}/{path}"))
        except (mlflow.exceptions.MlflowException, OSError):
            found.append(None)
    return found


def package_path(version: str, *, name: str = MODEL_NAME) -> Path:
    """A local directory holding the package of ``name`` version ``version``."""
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}"))


def _exists(client, name: str) -> bool:
    import mlflow

    try:
        client.get_registered_model(name)
        return True
    except mlflow.exceptions.MlflowException:
        return False
