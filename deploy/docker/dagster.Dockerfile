# The Dagster code location: one image for the user-code server, the webserver, the daemon,
# Celery workers, one-shot jobs (`smc db migrate`) and the MLflow tracking server (MLflow and
# psycopg2 are in the project's pinned tree; MLflow's own image has no PostgreSQL driver).
#
#   docker build -f deploy/docker/dagster.Dockerfile -t smc-dagster:latest .
#
# The Bento service has its own image (`bentoml containerize`, options in bento/bentofile.yaml).
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SMC_HOME=/var/lib/smc \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    MLFLOW_DISABLE_TELEMETRY=true \
    MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK=true

# The commit the image was built from (CI passes it): .git stays out of the build context, so
# the packages' lineage records no commit from inside the image; the image label does.
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.source="smc-mlops" org.opencontainers.image.revision="${GIT_COMMIT}"

# libgomp1: LightGBM (the evaluation baseline) links OpenMP.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/smc

# torch first, from PyTorch's CPU index: PyPI's Linux wheel pulls ~3 GB of CUDA libraries.
# 2.13.0+cpu then satisfies requirements.lock's torch==2.13.0 and pip leaves it alone.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

# The pinned tree in its own layer: source edits do not reinstall dependencies. It holds
# dagster-k8s (the Helm chart's K8sRunLauncher, SMC_EXECUTOR=k8s) and dagster-celery.
COPY requirements.lock ./
RUN pip install -r requirements.lock

COPY . .
RUN pip install -c requirements.lock -e . \
    && mkdir -p "$SMC_HOME" "$DAGSTER_HOME"

# The user-code gRPC server by default; the webserver, daemon and workers override the command.
EXPOSE 4000 3000
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "smc_jobs.definitions", "-a", "defs"]
