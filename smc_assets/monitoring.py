"""After deployment: what the live model's calls turned into (``outcomes``) and whether its
inputs still look like its training data (``drift_report``). Both read the service's
prediction log; the sensors in ``sensors/`` run the same smc_core code on their own ticks."""

from pathlib import Path

from dagster import (AssetExecutionContext, AssetKey, AssetObservation, AssetsDefinition, Failure, MaterializeResult,
                     MetadataValue, asset)

from smc_assets.common import checked
from smc_assets.labels import labels
from smc_core.lines import MAIN_LINE, ModelLine, is_line_model
from smc_core.model import load_package
from smc_core.model.package import package_horizon
from smc_core.monitoring import MonitoringSettings, check_drift, latest_prediction_time
from smc_core.outcomes import live_summary, refresh_live_metrics, resolve_outcomes
from smc_core.promotion import CHAMPION
from smc_core.registry import MODEL_NAME, alias_version, package_path


@asset(
    deps=[labels],
    required_resource_keys={"database", "tracking"},
    group_name="monitoring",
    kinds={"postgres"},
    description="Every logged prediction scored against its triple-barrier label once the horizon has passed; "
                "live hit rate, skip rate, return, Sharpe and calibration per model version and day.",
)
def outcomes(context: AssetExecutionContext) -> MaterializeResult:
    db = context.resources.database.database()
    context.resources.tracking.client()
    horizons = _served_horizons(db)
    if not horizons:
        raise Failure(description="no logged predictions of a registered model yet: serve a champion first")
    added = pending = 0
    for horizon, versions in sorted(horizons.items()):
        batch = checked(lambda: resolve_outcomes(db, horizon=horizon, model_versions=versions))
        added, pending = added + batch.added, pending + batch.pending
        context.log.info(f"{horizon}: {batch.added} outcomes resolved, {batch.pending} still pending")
    metrics = refresh_live_metrics(db)
    summaries = [live_summary(db, version, shadow=shadow)
                 for version, shadow in sorted({(v, s) for v, s in zip(metrics["model_version"], metrics["shadow"])})]
    return MaterializeResult(metadata={
        "resolved": added, "pending": pending,
        "live_metrics": MetadataValue.md(_summary_table(summaries)),
        **({"champion_hit_rate": _champion_value(summaries, "hit_rate")} if summaries else {}),
    })


def drift_report_asset(line: ModelLine = MAIN_LINE) -> AssetsDefinition:
    """``drift_report`` of one model line's champion (an added line's: ``line_5m_h15/drift_report``)."""

    key = AssetKey([*line.key_prefix, "drift_report"])

    @asset(
        key=key,
        required_resource_keys={"database", "tracking", "model_store"},
        group_name="monitoring",
        kinds={"evidently"},
        output_required=False,
        description=f"Evidently drift of {line.name}'s champion's newest live predictions against the reference "
                    "sample in its package; stored in drift_reports with an HTML report. Nothing serving yet, or "
                    "too few live predictions: an observation says so, and the run goes on.",
    )
    def drift_report(context: AssetExecutionContext):
        settings = MonitoringSettings.from_env()
        db = context.resources.database.database()
        context.resources.tracking.client()
        version = alias_version(CHAMPION, name=line.name)
        check, model_version = None, None
        if version is None:
            why = f"{line.name} has no version with the alias 'champion': nothing is serving"
        else:
            model_version = f"{line.name}/{version}"
            if latest_prediction_time(db, model_version) is None:
                why = f"{model_version} has served no predictions yet"
            else:
                reports = reports_dir(context.resources.model_store.root)
                check = checked(lambda: check_drift(
                    db, load_package(package_path(version, name=line.name)), model_version, settings, reports,
                    reason=f"drift_report asset, run {context.run.run_id}"))
                why = check.reason
        if check is None or check.result is None:  # a state, not a failure: a new line serves little at first
            context.log.info(f"no drift report for {line.name}: {why}")
            yield AssetObservation(asset_key=key, description=f"not measured: {why}",
                                   metadata={"not_measured": why, "model_version": model_version or "none"})
            return
        result = check.result
        rows = sorted(result.features, key=lambda row: (not row.drifted, row.column))
        table = ["| feature | method | score | threshold | drifted |", "|---|---|---|---|---|"]
        table += [f"| {row.column} | {row.method} | {_fmt(row.score)} | {_fmt(row.threshold)} | "
                  f"{'yes' if row.drifted else 'no'} |" for row in rows]
        yield MaterializeResult(metadata={
            "model_version": model_version, "report_id": check.report_id, "drifted": check.drifted,
            "drifted_share": result.drifted_share, "n_drifted": result.n_drifted,
            "prediction_drift": "not measured" if result.prediction_drift is None else str(result.prediction_drift),
            "summary": check.reason, "report_html": MetadataValue.path(str(check.html_path)),
            "features": MetadataValue.md("\n".join(table)),
            "window": MetadataValue.json({"start": check.window.start.isoformat(), "end": check.window.end.isoformat(),
                                          "rows": len(check.window)}),
        })

    return drift_report


drift_report = drift_report_asset(MAIN_LINE)


def reports_dir(model_store_root: str) -> Path:
    """Drift reports live beside the model store, under SMC_HOME."""
    return Path(model_store_root).parent / "reports"


def _served_horizons(db) -> dict[str, list[str]]:
    """Label horizon → the registered versions (``name/version``) of every model line with logged
    predictions (each is resolved against the labels of its own timeframe)."""
    with db.connection() as connection:
        versions = [row[0] for row in connection.execute("SELECT DISTINCT model_version FROM predictions").fetchall()]
    horizons: dict[str, list[str]] = {}
    for model_version in versions:
        name, _, number = model_version.partition("/")
        if not is_line_model(name) or not number.isdigit():
            continue  # local packages served by path have no registry lineage
        horizon = package_horizon(package_path(number, name=name))
        if horizon:
            horizons.setdefault(horizon, []).append(model_version)
    return horizons


def _summary_table(summaries: list[dict]) -> str:
    lines = ["| model | shadow | days | predictions | trades | hit rate | skip rate | return | Sharpe | log loss | ECE |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s['model_version']} | {'yes' if s['shadow'] else 'no'} | {s['days']} | {s['predictions']} | "
                     f"{s['trades']} | {_fmt(s['hit_rate'])} | {_fmt(s['skip_rate'])} | {_fmt(s['realised_return'])} | "
                     f"{_fmt(s['sharpe'])} | {_fmt(s['log_loss'])} | {_fmt(s['ece'])} |")
    return "\n".join(lines)


def _champion_value(summaries: list[dict], key: str) -> float:
    version = alias_version(CHAMPION)
    for s in summaries:
        if s["model_version"] == f"{MODEL_NAME}/{version}" and not s["shadow"] and s[key] is not None:
            return float(s[key])
    return float("nan")


def _fmt(value) -> str:
    return "–" if value is None or value != value else f"{value:.4f}"
