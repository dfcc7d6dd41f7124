"""MLflow tracking under SMC_HOME with absolute artifact locations, versions and aliases."""

from __future__ import annotations

import os

import mlflow

from smc_core import registry
from smc_core.settings import Settings


def test_versions_and_aliases_live_under_smc_home_whatever_the_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = Settings.from_env({"SMC_HOME": str(tmp_path / "home")})
    config = registry.TrackingConfig.from_settings(settings)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # MLflow must not write relative to the cwd
    experiment = registry.configure(config)
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "manifest.json").write_text("{}")
    versions = []
    for _ in range(2):
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_artifacts(str(package), artifact_path=registry.PACKAGE_ARTIFACT)
        versions.append(registry.register_package(run.info.run_id, f"{run.info.artifact_uri}/{registry.PACKAGE_ARTIFACT}",
                                                  name="test-model"))
    assert versions == ["1", "2"]
    assert registry.alias_version("challenger", name="test-model") == "2"
    assert registry.alias_version("champion", name="test-model") is None
    local = registry.package_path("1", name="test-model")
    assert (local / "manifest.json").exists()
    assert str(local).startswith(str(tmp_path / "home"))
    assert os.listdir(elsewhere) == []
