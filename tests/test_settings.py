"""Settings a tool records under SMC_HOME, and the demo's partition range: the Dagster UI's code
location (another process, without the demo's environment) must offer exactly the trading
days the demo loaded."""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from smc_core.errors import ConfigError
from smc_core.settings import Settings, read_home_settings, write_home_settings
from smc_jobs.demo import DemoPlan, partition_range, record_partition_range

ROOT = Path(__file__).resolve().parent.parent


def test_home_settings_are_defaults_under_the_environment(tmp_path):
    write_home_settings(tmp_path, {"SMC_PARTITION_START": "2024-02-01", "SMC_PARTITION_END": "2024-02-29"}, "test")
    settings = Settings.from_env({"SMC_HOME": str(tmp_path)})
    assert (settings.partition_start, settings.partition_end) == (date(2024, 2, 1), date(2024, 2, 29))
    assert Settings.from_env({"SMC_HOME": str(tmp_path), "SMC_PARTITION_START": "2024-02-05"}).partition_start == \
        date(2024, 2, 5)
    assert Settings.from_env({"SMC_HOME": str(tmp_path / "elsewhere")}).partition_end is None

    (tmp_path / "settings.env").write_text("# mine\nLOG_LEVEL=DEBUG\n")
    write_home_settings(tmp_path, {"SMC_PARTITION_END": "2024-03-01"}, "test")
    write_home_settings(tmp_path, {"SMC_PARTITION_END": "2024-03-04"}, "test")
    assert read_home_settings(tmp_path) == {"LOG_LEVEL": "DEBUG", "SMC_PARTITION_END": "2024-03-04"}
    assert (tmp_path / "settings.env").read_text().count("# test") == 1

    with pytest.raises(ConfigError, match="SMC_PARTITION_END=2023-12-29 is before"):
        Settings.from_env({"SMC_HOME": str(tmp_path), "SMC_PARTITION_END": "2023-12-29"})
    (tmp_path / "settings.env").write_text("SMC_PARTITION_START 2024-01-01\n")
    with pytest.raises(ConfigError, match="settings.env:1: expected NAME=value"):
        Settings.from_env({"SMC_HOME": str(tmp_path)})


def test_the_demo_range_covers_history_and_new_regime_and_widens_over_earlier_demos(tmp_path):
    plan = DemoPlan(days=3, new_days=2, start=date(2024, 1, 11))  # Jan 11, 12, 15 (MLK: trading), then 16, 17
    assert record_partition_range(plan, tmp_path) == (date(2024, 1, 11), date(2024, 1, 17))
    assert partition_range(DemoPlan(days=1, loop=False, start=date(2024, 1, 10)), tmp_path) == (
        date(2024, 1, 10), date(2024, 1, 17))


def test_the_ui_code_location_offers_exactly_the_demo_days(tmp_path):
    """A fresh process with only SMC_HOME (as ``make ui`` starts the code location) reads the
    range; a Friday as last day is the edge (its Dagster window runs to Monday)."""
    assert record_partition_range(DemoPlan(days=2, loop=False, start=date(2024, 1, 11)), tmp_path) == (
        date(2024, 1, 11), date(2024, 1, 12))
    script = "from smc_assets.partitions import TRADING_DAYS; print(*TRADING_DAYS.get_partition_keys())"
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "SMC_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}).stdout
    assert out.split() == ["2024-01-11", "2024-01-12"]
