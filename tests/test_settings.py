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
from smc_core.settings import Settings, read_home_settings, resampled_timeframes, write_home_settings
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


# --- secrets from files (Docker and Kubernetes secrets) and the server's options ---------------

def test_a_secret_comes_from_its_variable_or_from_the_file_its_FILE_variable_names(tmp_path):
    from smc_core.serving.runtime import ServiceSettings
    from smc_core.settings import secret

    key_file = tmp_path / "api_key"
    key_file.write_text("from-the-file\n")  # `echo key > file`: the newline is not part of the key
    assert secret({"API_KEY": "from-the-variable"}, "API_KEY") == "from-the-variable"
    assert secret({"API_KEY_FILE": str(key_file)}, "API_KEY") == "from-the-file"
    assert secret({}, "API_KEY") is None and secret({"API_KEY": ""}, "API_KEY") is None
    (tmp_path / "kept").write_text("  spaces kept \n\n")  # only one trailing newline goes
    assert secret({"X_FILE": str(tmp_path / "kept")}, "X") == "  spaces kept \n"

    url_file = tmp_path / "database_url"
    url_file.write_text("postgresql://smc:s3cret@db:5432/smc")
    assert Settings.from_env({"SMC_HOME": str(tmp_path), "DATABASE_URL_FILE": str(url_file)}).database_url == \
        "postgresql://smc:s3cret@db:5432/smc"
    admin_file = tmp_path / "admin_key"
    admin_file.write_text("admin-from-file")
    service = ServiceSettings.from_env({"SMC_HOME": str(tmp_path), "API_KEY_FILE": str(key_file),
                                        "ADMIN_API_KEY_FILE": str(admin_file), "REDIS_URL_FILE": str(url_file)})
    assert (service.api_key, service.admin_api_key) == ("from-the-file", "admin-from-file")
    assert service.redis_url == "postgresql://smc:s3cret@db:5432/smc"  # whatever the file holds

    with pytest.raises(ConfigError, match=r"both API_KEY and API_KEY_FILE are set: use one"):
        secret({"API_KEY": "x", "API_KEY_FILE": str(key_file)}, "API_KEY")
    with pytest.raises(ConfigError, match=r"API_KEY_FILE=.*missing: cannot read the secret file \(No such file"):
        secret({"API_KEY_FILE": str(tmp_path / "missing")}, "API_KEY")
    with pytest.raises(ConfigError, match=r"API_KEY_FILE=.*: cannot read the secret file \(Is a directory"):
        secret({"API_KEY_FILE": str(tmp_path)}, "API_KEY")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match=r"ADMIN_API_KEY_FILE=.*empty: the secret file is empty"):
        ServiceSettings.from_env({"API_KEY": "k", "ADMIN_API_KEY_FILE": str(tmp_path / "empty")})


def test_workers_and_tls_options_are_checked_before_bentoml_starts(tmp_path):
    from serving_setup import self_signed_certificate

    from smc_core.serving.runtime import DEFAULT_WORKERS, ServerOptions

    assert ServerOptions.from_env({}).bentoml_config() == {"workers": DEFAULT_WORKERS,
                                                           "logging": {"access": {"enabled": False}},
                                                           "tracing": {"excluded_urls": [".*"]}}
    assert "tracing" not in ServerOptions.from_env({"TRACING": "1"}).bentoml_config()
    assert ServerOptions.from_env({"WORKERS": "2"}).workers == 2
    for bad in ("0", "two", "65"):
        with pytest.raises(ConfigError, match="WORKERS="):
            ServerOptions.from_env({"WORKERS": bad})

    cert, key = self_signed_certificate(tmp_path)
    tls = ServerOptions.from_env({"SSL_CERTFILE": str(cert), "SSL_KEYFILE": str(key), "WORKERS": "1"})
    assert {k: v for k, v in tls.bentoml_config().items() if k in ("workers", "ssl")} == {"workers": 1, "ssl": {"enabled": True, "certfile": str(cert),
                                                          "keyfile": str(key), "keyfile_password": None}}
    with pytest.raises(ConfigError, match="SSL_CERTFILE and SSL_KEYFILE go together"):
        ServerOptions.from_env({"SSL_CERTFILE": str(cert)})
    with pytest.raises(ConfigError, match=r"SSL_KEYFILE=.*nope: not a readable file"):
        ServerOptions.from_env({"SSL_CERTFILE": str(cert), "SSL_KEYFILE": str(tmp_path / "nope")})
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    _, other_key = self_signed_certificate(other_dir)
    with pytest.raises(ConfigError, match="not a PEM certificate and its private key"):
        ServerOptions.from_env({"SSL_CERTFILE": str(cert), "SSL_KEYFILE": str(other_key)})  # a key of another cert
    with pytest.raises(ConfigError, match="not a PEM certificate and its private key"):
        ServerOptions.from_env({"SSL_CERTFILE": str(key), "SSL_KEYFILE": str(key)})  # a key is no certificate


def test_resampled_timeframes_default_to_5m_on_minute_data_and_are_checked(tmp_path):
    from smc_assets.resources import LandingResource

    home = {"SMC_HOME": str(tmp_path)}
    assert resampled_timeframes("1m", Settings.from_env(home).resampled, "SMC_RESAMPLED") == ("5m",)
    assert resampled_timeframes("1h", None, "SMC_RESAMPLED") == ()
    assert resampled_timeframes("1m", "15m, 1h,15m", "SMC_RESAMPLED") == ("15m", "1h")
    assert resampled_timeframes("1m", "", "SMC_RESAMPLED") == ()
    with pytest.raises(ConfigError, match="SMC_RESAMPLED=5m,30m: 30m cannot be resampled; the database resamples "
                                          "1-minute bars to 5m, 15m, 1h"):
        Settings.from_env({**home, "SMC_RESAMPLED": "5m,30m"})
    with pytest.raises(ConfigError, match="SMC_RESAMPLED=5m needs 1-minute bars, but the base timeframe is 1h"):
        Settings.from_env({**home, "SMC_TIMEFRAME": "1h", "SMC_RESAMPLED": "5m"})
    # a run config that changes only the timeframe gets that timeframe's default, not an error
    assert LandingResource(path=str(tmp_path), timeframe="1h", resampled=None).timeframes == [("1h", False)]
    assert LandingResource(path=str(tmp_path), timeframe="1m", resampled="15m").timeframes == [("1m", False),
                                                                                               ("15m", True)]
    with pytest.raises(ConfigError, match="landing.resampled=2m: 2m cannot be resampled"):
        LandingResource(path=str(tmp_path), resampled="2m").timeframes


def test_model_lines_are_read_from_comma_separated_uris_and_paths(tmp_path):
    from smc_core.serving.runtime import CHAMPION_URI, ServiceSettings

    base = {"SMC_HOME": str(tmp_path), "SMC_DEV_MODE": "1"}
    assert ServiceSettings.from_env(base).model_uris == (CHAMPION_URI,)
    two = ServiceSettings.from_env({**base, "MODEL_URI": "models:/smc-lora@champion, models:/smc-lora-5m-h15@champion"})
    assert two.model_uris == ("models:/smc-lora@champion", "models:/smc-lora-5m-h15@champion")
    paths = ServiceSettings.from_env({**base, "MODEL_PATH": f"{tmp_path / 'a'},{tmp_path / 'b'},"}).model_paths
    assert paths == (tmp_path / "a", tmp_path / "b")
    with pytest.raises(ConfigError, match="MODEL_URI 'smc-lora-5m' must look like models:/<name>@<alias>"):
        ServiceSettings.from_env({**base, "MODEL_URI": "models:/smc-lora@champion,smc-lora-5m"})
