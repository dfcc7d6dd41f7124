"""The deployable artifact: the champion's package in the BentoML model store (with its
lineage as labels) and a Bento built around ``bento/service.py``, downstream of promotion.

The build options live in ``bento/bentofile.yaml``, shared with CI (``deploy/ci/build_bento.py``):
``pack_model`` and ``build_bento`` are the two steps both run."""

import json
import os
import shutil
from pathlib import Path
from typing import Optional

import yaml
from dagster import (AssetExecutionContext, AssetKey, AssetsDefinition, Config, Failure, MaterializeResult,
                     MetadataValue, asset)
from pydantic import Field

from smc_assets.common import checked
from smc_core.lines import MAIN_LINE, ModelLine
from smc_core.model import load_package
from smc_core.promotion import CHAMPION
from smc_core.registry import MODEL_NAME, alias_version, package_path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BENTOFILE = PROJECT_ROOT / "bento" / "bentofile.yaml"


def bento_options(cuda_version: str | None = None) -> dict:
    """The build options of ``bento/bentofile.yaml``; with ``cuda_version`` the image starts from
    BentoML's CUDA base and torch comes from PyPI (its Linux wheel is the CUDA build)."""
    options = yaml.safe_load(BENTOFILE.read_text())
    if cuda_version:
        options["docker"]["cuda_version"] = cuda_version
        options["python"].pop("extra_index_url", None)
    return options


PACKED_PACKAGE = "package"
"""Where the package sits inside its BentoML model folder: BentoML writes its own ``model.yaml``
beside what it stores, and a package refuses files its manifest does not list."""


def pack_model(source: Path, labels: dict, lineage: dict, name: str = MODEL_NAME) -> str:
    """Copy a verified package into the BentoML model store (BENTOML_HOME); return the model tag."""
    import bentoml

    # BentoML metadata takes no nulls: the lineage travels as its JSON text (it is also in the package)
    with bentoml.models.create(name, labels=labels, metadata={"lineage_json": json.dumps(lineage)}) as model:
        for file in source.rglob("*"):
            if file.is_file():
                target = Path(model.path) / PACKED_PACKAGE / file.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, target)
    return str(model.tag)


def build_bento(model_tag: str, labels: dict, cuda_version: str | None = None):
    """Build the Bento around ``model_tag``: its image serves that model (MODEL_TAG) unless told otherwise."""
    from bentoml._internal.bento.build_config import BentoEnvSchema  # the type build() takes for `envs`
    from bentoml.bentos import build

    options = bento_options(cuda_version)
    options["envs"] = [BentoEnvSchema(**env) for env in [*options.get("envs", []),
                                                         {"name": "MODEL_TAG", "value": model_tag}]]
    return build(**options, models=[model_tag], labels={**labels, "model_tag": model_tag},
                 build_ctx=str(PROJECT_ROOT))  # the bentofile's paths are relative to the project root


class BentoConfig(Config):
    cuda_version: Optional[str] = Field(
        default=None, description="CUDA version of the image's base (e.g. '12.8') for GPU serving; empty: CPU image.")


def bento_asset(line: ModelLine = MAIN_LINE) -> AssetsDefinition:
    """``bento_artifact`` of one model line: its champion packed and built into a Bento."""

    @asset(
        key=[*line.key_prefix, "bento_artifact"],
        deps=[AssetKey([*line.key_prefix, "champion"])],
        required_resource_keys={"tracking", "model_store"},
        group_name="serving",
        kinds={"bentoml"},
        description="The champion packed into the BentoML model store and a Bento built around bento/service.py.",
    )
    def bento_artifact(context: AssetExecutionContext, config: BentoConfig) -> MaterializeResult:
        context.resources.tracking.client()
        version = alias_version(CHAMPION, name=line.name)
        if version is None:
            raise Failure(description=f"{line.name} has no version with the alias 'champion': promote one first")
        source = package_path(version, name=line.name)
        package = checked(lambda: load_package(source))  # verified before it is packed
        os.environ.setdefault("BENTOML_HOME", str(Path(context.resources.model_store.root).parent / "bentoml"))
        lineage = package.lineage
        labels = {"registered_model": line.name, "model_version": str(version),
                  "mlflow_run_id": str(lineage.get("mlflow_run_id")), "dagster_run_id": context.run.run_id,
                  "feature_set": package.spec.feature_set_version,
                  "git_commit": str((lineage.get("code") or {}).get("git_commit"))}
        model_tag = pack_model(source, labels, lineage, line.name)
        context.log.info(f"packed {line.name}/{version} as BentoML model {model_tag}")
        bento = build_bento(model_tag, labels, config.cuda_version)
        context.log.info(f"built {bento.tag}")
        return MaterializeResult(metadata={
            "bento": str(bento.tag), "model_tag": model_tag, "model_version": f"{line.name}/{version}",
            "bento_path": MetadataValue.path(str(bento.path)),
            "serve": f"BENTOML_HOME={os.environ['BENTOML_HOME']} MODEL_TAG={model_tag} bentoml serve {bento.tag}",
            "containerize": f"BENTOML_HOME={os.environ['BENTOML_HOME']} bentoml containerize {bento.tag}",
        })

    return bento_artifact


bento_artifact = bento_asset(MAIN_LINE)
