"""The deployable artifact: the champion's package in the BentoML model store (with its
lineage as labels) and a Bento built around ``bento/service.py``, downstream of promotion."""

import json
import os
import shutil
from pathlib import Path

from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset

from smc_assets.common import checked
from smc_assets.promotion import champion
from smc_core.model import load_package
from smc_core.promotion import CHAMPION
from smc_core.registry import MODEL_NAME, alias_version, package_path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BENTO_NAME = "smc_predictor"
INCLUDE = ["bento/**/*.py", "bento/alerts.yml", "bento/clients/**/*", "smc_core/**/*.py", "sql/*.sql"]


@asset(
    deps=[champion],
    required_resource_keys={"tracking", "model_store"},
    group_name="serving",
    kinds={"bentoml"},
    description="The champion packed into the BentoML model store and a Bento built around bento/service.py.",
)
def bento_artifact(context: AssetExecutionContext) -> MaterializeResult:
    context.resources.tracking.client()
    version = alias_version(CHAMPION)
    if version is None:
        raise Failure(description="no model version has the alias 'champion': promote a model first")
    source = package_path(version)
    package = checked(lambda: load_package(source))  # verified before it is packed
    os.environ.setdefault("BENTOML_HOME", str(Path(context.resources.model_store.root).parent / "bentoml"))
    import bentoml
    from bentoml.bentos import build

    lineage = package.lineage
    labels = {"registered_model": MODEL_NAME, "model_version": str(version),
              "mlflow_run_id": str(lineage.get("mlflow_run_id")), "dagster_run_id": context.run.run_id,
              "feature_set": package.spec.feature_set_version,
              "git_commit": str((lineage.get("code") or {}).get("git_commit"))}
    # BentoML metadata takes no nulls: the lineage travels as its JSON text (it is also in the package)
    with bentoml.models.create(MODEL_NAME, labels=labels, metadata={"lineage_json": json.dumps(lineage)}) as model:
        for file in source.rglob("*"):
            if file.is_file():
                target = Path(model.path) / file.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, target)
    context.log.info(f"packed {MODEL_NAME}/{version} as BentoML model {model.tag}")
    bento = build("bento.service:SmcPredictor", name=BENTO_NAME, include=INCLUDE, models=[str(model.tag)],
                  labels={**labels, "model_tag": str(model.tag)}, build_ctx=str(PROJECT_ROOT),
                  python={"requirements_txt": "requirements.lock", "lock_packages": False})  # relative to build_ctx
    context.log.info(f"built {bento.tag}")
    return MaterializeResult(metadata={
        "bento": str(bento.tag), "model_tag": str(model.tag), "model_version": f"{MODEL_NAME}/{version}",
        "bento_path": MetadataValue.path(str(bento.path)),
        "serve": f"BENTOML_HOME={os.environ['BENTOML_HOME']} MODEL_TAG={model.tag} bentoml serve {bento.tag}",
    })
