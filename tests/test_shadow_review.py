"""The shadow review decides both ways: the verdict function on hand-made live records, then the
``shadow_review`` asset run by Dagster on live outcomes resolved from the real ``labels`` and
``predictions`` tables, refusing a worse shadow and promoting a better one.

The replayed sessions are 60 one-minute bars whose triple-barrier label and long return are
written by hand, so every realised return below is a sum worked out in the comment next to it
(``realised_return = direction × position size × ret``, see ``smc_core.outcomes``). The bar
return R = 2⁻¹⁰ (≈ 0.098 %) is exact in binary, so those sums are exact too: 60 R = 0.0586.
"""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from dagster import DagsterInstance, materialize
from serving_setup import tiny_package

from smc_assets.promotion import shadow_review
from smc_assets.resources import DatabaseResource, TrackingResource
from smc_core.model.package import package_horizon
from smc_core.promotion import decisions, promote, shadow_verdict, start_shadow
from smc_core.registry import TrackingConfig, alias_version, configure, register_package
from smc_core.serving.prediction_log import COLUMNS, write_predictions
from smc_core.store import write_labels

MIN_TRADES = 50
BARS = 60
R = 2.0 ** -10


def live(trades: int, realised_return: float, hits: int) -> dict:
    """The fields of a ``live_summary`` record the verdict reads."""
    return {"trades": trades, "realised_return": realised_return, "hit_rate": hits / trades if trades else None}


@pytest.mark.parametrize("shadow, champion, promoted, ending", [
    (live(60, 0.0120, 33), live(60, 0.0150, 36), False, "the shadow made less live"),
    (live(60, 0.0180, 39), live(60, 0.0150, 36), True, "the shadow made at least as much live"),
    (live(60, 0.0150, 36), live(60, 0.0150, 36), True, "the shadow made at least as much live"),
    (live(60, -0.0050, 28), live(60, -0.0100, 25), True, "the shadow made at least as much live"),
    (live(60, -0.0101, 25), live(60, -0.0100, 25), False, "the shadow made less live"),
], ids=["worse", "better", "equal", "loses less", "loses more"])
def test_the_verdict_promotes_a_shadow_that_made_at_least_as_much_and_refuses_one_that_made_less(
        shadow, champion, promoted, ending):
    passed, reason = shadow_verdict(shadow, champion, MIN_TRADES)
    assert passed is promoted and reason.endswith(ending)


def test_the_verdict_states_both_records_and_needs_enough_shadow_trades():
    passed, reason = shadow_verdict(live(60, 0.0120, 33), live(58, 0.0150, 36), MIN_TRADES)
    assert not passed and reason == ("shadow return +0.0120 over 60 trades (hit rate 55.0%) vs champion +0.0150 over "
                                     "58 trades (hit rate 62.1%): the shadow made less live")
    passed, reason = shadow_verdict(live(49, 0.0900, 49), live(60, 0.0150, 36), MIN_TRADES)  # far better, too few
    assert not passed and reason == "49 resolved shadow trades, fewer than the 50 needed to judge it live"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Three registered versions of one real (tiny) package: the champion and two shadows."""
    home = tmp_path_factory.mktemp("shadow-review")
    config = TrackingConfig(f"sqlite:///{home / 'mlflow.db'}", (home / "artifacts").as_uri())
    configure(config)
    package = tiny_package(home / "package")
    versions = []
    for _ in range(3):
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(package), "model_package")
            versions.append(register_package(run.info.run_id, f"{run.info.artifact_uri}/model_package", alias=None))
    return config, versions, package_horizon(package)


def replay(database, horizon: str, start: str, labels: list[tuple[int, float]], served: dict[str, tuple]) -> None:
    """Write a session of labels (code, long return) and what each model version served on it:
    ``served`` maps "<version>" or "<version> shadow" to one (label, position size) per bar."""
    ts = pd.date_range(start, periods=BARS, freq="min", tz="UTC")
    frame = pd.DataFrame({"ts": ts, "label": [code for code, _ in labels], "t1": ts + pd.Timedelta(minutes=15),
                          "ret": [ret for _, ret in labels], "barrier": ["upper"] * BARS})
    write_labels(database, "ES", "1m", horizon, frame, ts[0] - pd.Timedelta(minutes=1), ts[-1])
    rows = []
    for who, answers in served.items():
        version, shadow = who.split()[0], who.endswith("shadow")
        for i, (label, size) in enumerate(answers):
            probabilities = {"long": (0.8, 0.1, 0.1), "short": (0.1, 0.8, 0.1)}[label]
            values = {"ts": ts[i], "request_id": f"{start}-{i}", "shadow": shadow, "logged_at": ts[i],
                      "symbol": "ES", "timeframe": "1m", "model_version": f"smc-lora/{version}", "label": label,
                      "raw_label": label, "confidence": 0.8, "p_long": probabilities[0], "p_short": probabilities[1],
                      "p_skip": probabilities[2], "position_size": size, "latency_ms": 1.0, "features": [0.0],
                      "feature_set": "test", "arm": "shadow" if shadow else "champion", "halted": False,
                      "risk": None}
            rows.append(tuple(values[c] for c in COLUMNS))
    with database.connection() as conn:
        write_predictions(conn, rows)


def review(database, config: TrackingConfig):
    resources = {"database": DatabaseResource(url=database.url),
                 "tracking": TrackingResource(tracking_uri=config.tracking_uri, artifact_root=config.artifact_root)}
    result = materialize([shadow_review], resources=resources, instance=DagsterInstance.ephemeral())
    assert result.success
    return {k: v.value for k, v in result.asset_materializations_for_node("shadow_review")[0].metadata.items()}


def test_the_review_refuses_a_worse_shadow_then_promotes_a_better_one(database, registry, monkeypatch):
    monkeypatch.setenv("SMC_MIN_TRADES", str(MIN_TRADES))
    config, (champion, worse, better), horizon = registry
    promote(database, champion, "test champion")
    until = pd.Timestamp.now(tz="UTC")

    # a trending session (every bar's long return +R): the champion is long throughout at full size,
    # 60 R = +0.0586; the shadow turns short halfway, 30 R − 30 R = +0.0000
    start_shadow(database, worse, "gates passed (test)", until=until)
    replay(database, horizon, "2024-03-05 15:00", [(0, R)] * BARS, {
        champion: [("long", 1.0)] * BARS,
        f"{worse} shadow": [("long", 1.0)] * 30 + [("short", 1.0)] * 30})
    verdict = review(database, config)
    assert verdict["verdict"] == "refused"
    assert verdict["reason"] == ("shadow return +0.0000 over 60 trades (hit rate 50.0%) vs champion +0.0586 over 60 "
                                 "trades (hit rate 100.0%): the shadow made less live")
    assert (alias_version("champion"), alias_version("shadow"), alias_version("previous")) == (champion, None, None)
    refused = decisions(database)[-1]
    assert (refused["version"], refused["decision"], refused["champion_after"]) == (worse, "refused", champion)
    assert (refused["metrics"]["shadow"]["realised_return"], refused["metrics"]["champion"]["realised_return"]) == (
        0.0, 60 * R)

    # a session that rises for 30 bars, then falls for 30 (long return −R, label short): the
    # champion stays long, 30 R − 30 R = +0.0000; the shadow follows it, 60 R = +0.0586
    start_shadow(database, better, "gates passed (test)", until=until)
    replay(database, horizon, "2024-03-06 15:00", [(0, R)] * 30 + [(1, -R)] * 30, {
        champion: [("long", 1.0)] * BARS,
        f"{better} shadow": [("long", 1.0)] * 30 + [("short", 1.0)] * 30})
    verdict = review(database, config)
    assert verdict["verdict"] == "promoted" and verdict["champion_before"] == f"smc-lora/{champion}"
    assert verdict["reason"] == ("shadow return +0.0586 over 60 trades (hit rate 100.0%) vs champion +0.0000 over 60 "
                                 "trades (hit rate 50.0%): the shadow made at least as much live")
    assert (alias_version("champion"), alias_version("shadow"), alias_version("previous")) == (better, None, champion)
    assert (verdict["shadow_live"]["realised_return"], verdict["champion_live"]["realised_return"]) == (60 * R, 0.0)
    promoted = decisions(database)[-1]
    assert (promoted["version"], promoted["decision"], promoted["champion_before"], promoted["champion_after"]) == (
        better, "promoted", champion, better)
