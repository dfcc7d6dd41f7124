"""Shared fixtures: a real PostgreSQL per test module, on DATABASE_URL or the embedded server, and
the tiny trained model package the serving tests load."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

# The suite never reads a developer's state: SMC_HOME (default ./.smc, where `make demo` records
# its partition range in settings.env, read by every process as defaults) is a fresh folder per
# test process, set before any project module reads the settings.
os.environ["SMC_HOME"] = tempfile.mkdtemp(prefix="smc-test-home-")
atexit.register(shutil.rmtree, os.environ["SMC_HOME"], ignore_errors=True)

import psycopg
import pytest
from psycopg import sql

from smc_core.db import Database, create_database, normalise_url, start_embedded, with_database
from smc_core.migrations import migrate


LONGEST_FIRST = ("test_loop.py", "test_walkthrough.py", "test_gate_decisions.py", "test_live_loop.py",
                 "test_model_pipeline.py", "test_backfill.py", "test_signal_service.py", "test_celery_executor.py",
                 "test_safety_live.py", "test_distributed_training.py", "test_service_workers.py", "test_sensors.py",
                 "test_model_lines.py")
"""The test files that take minutes, longest first (``make test`` prints the slowest tests).

Why: xdist hands whole files to its two workers in collection order (``--no-loadscope-reorder``
in the Makefile; its default puts the files with most tests first, which left these few-test,
long files to run one by one at the end while the other worker idled). Started first, they
run beside the many short files."""


def pytest_collection_modifyitems(items):
    # Tests using the database fixtures are the ones `make test` repeats on the embedded server.
    for item in items:
        if {"database", "admin_url", "empty_database"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.db)
    missing = [name for name in LONGEST_FIRST if not (Path(__file__).parent / name).exists()]
    if missing:  # a renamed file would silently lose its early start
        raise pytest.UsageError(f"tests/conftest.py LONGEST_FIRST names files that do not exist: {missing}")
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def pytest_configure(config):
    config.addinivalue_line("markers", "db: uses a real PostgreSQL (configured or embedded)")


@pytest.fixture(scope="session")
def admin_url(tmp_path_factory) -> str:
    """A URL with rights to create databases: DATABASE_URL, or an embedded server."""
    configured = os.environ.get("DATABASE_URL")
    if configured:
        return normalise_url(configured)
    home = tmp_path_factory.mktemp("embedded-pg")
    return start_embedded(home / "pgdata", database="postgres")


def _fresh_database(admin_url: str, label: str) -> str:
    name = "smc_t_" + re.sub(r"[^a-z0-9]+", "_", label.lower())[-30:] + "_" + uuid.uuid4().hex[:8]
    create_database(admin_url, name)
    return name


def _drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def empty_database(admin_url, request):
    """A fresh, unmigrated database for this test module."""
    name = _fresh_database(admin_url, Path(request.module.__file__).stem)
    db = Database(with_database(admin_url, name))
    yield db
    db.close()
    _drop_database(admin_url, name)


@pytest.fixture(scope="module")
def database(empty_database) -> Database:
    """A fresh, migrated database for this test module."""
    migrate(empty_database)
    return empty_database


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """A small model package trained for real (tests/serving_setup.py: tiny_package), one per module."""
    from serving_setup import tiny_package

    return tiny_package(tmp_path_factory.mktemp("pkg") / "model")
