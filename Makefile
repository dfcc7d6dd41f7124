# Two commands matter: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | sha1sum | cut -c1-12)
export SMC_HOME ?= $(CURDIR)/.smc
export DAGSTER_HOME ?= $(SMC_HOME)/dagster

.PHONY: install demo test test-embedded ui mlflow-ui serve serve-live bench-ingest bench-serve clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

demo: install
	$(VENV)/bin/smc demo

# All tests on DATABASE_URL when set (CI: the machine's PostgreSQL), else on the embedded
# server; with DATABASE_URL set, the database tests run a second time on the embedded one
# (all but the slow end-to-end loop, whose database layer the others cover).
# Two workers, one test file each at a time: training runs one torch thread per worker. Files
# start in collection order, the longest first (tests/conftest.py: LONGEST_FIRST).
PYTEST := $(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=12
# The NinjaTrader C# tests need Mono (Debian: mono-devel; .ci/run installs it); without it they are skipped, loudly.
NO_MONO := $(if $(and $(shell command -v mcs),$(shell command -v mono)),,!!! Mono (mcs, mono) not found: the NinjaTrader client and strategy tests (tests/test_ninjatrader.py) are SKIPPED. Install mono-devel.)
test: install
	@$(if $(NO_MONO),echo "$(NO_MONO)" >&2)
	$(PYTEST)
	@$(if $(NO_MONO),echo "$(NO_MONO)" >&2)
	@if [ -n "$$DATABASE_URL" ]; then $(MAKE) --no-print-directory test-embedded; fi

test-embedded: install
	env -u DATABASE_URL $(PYTEST) -m "db and not slow" -q

ui: install
	@$(PY) -c "from pathlib import Path; from smc_jobs.demo import ensure_dagster_home; ensure_dagster_home(Path('$(DAGSTER_HOME)'))"
	$(VENV)/bin/dagster dev -w workspace.yaml

mlflow-ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///$(SMC_HOME)/mlflow.db}" \
		--default-artifact-root "file://$(SMC_HOME)/mlartifacts" --host 127.0.0.1 --port 5000

# `serve`: the latest built Bento with the champion packed in it; `serve-live`: the source,
# following the registry alias (or MODEL_PATH). Both on HOST:PORT (default 127.0.0.1:8000);
# API_KEY and ADMIN_API_KEY must be set, or use `smc serve --dev` for a keyless local service.
serve: install
	$(VENV)/bin/smc serve --bento

serve-live: install
	$(VENV)/bin/smc serve

bench-serve: install
	$(PY) bench/serve.py

bench-ingest: install
	$(PY) bench/ingest.py

clean:
	rm -rf $(VENV) .pytest_cache
