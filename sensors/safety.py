"""The circuit breaker and the A/B test's judge, as Dagster sensors.

Why a sensor: the breaker must act on the live record as soon as it grows, whether the
outcomes were resolved by the ``outcomes`` asset, the performance sensor or itself. Each tick
resolves the serving models' outcomes whose labels are stored (``smc_core.outcomes``), judges
their live trades (``smc_core.safety.check_breaker``), halts a breached scope at once in the
database (the service follows within HALT_POLL_SECONDS) with an ``error`` alert, and requests
``rollback_job`` when the rollback rule holds. It is on by default: a safety device is off
only when someone switches it off.
"""

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from sensors.retrain import TRIGGER_TAG, default_status, serving_champion
from smc_assets.resources import DatabaseResource, TrackingResource
from smc_core.monitoring import MonitoringSettings
from smc_core.safety import SafetySettings, check_breaker

ROLLBACK_JOB = "rollback_job"
AB_REVIEW_JOB = "ab_review_job"


def build_circuit_breaker_sensor(settings: SafetySettings):
    @sensor(
        name="circuit_breaker_sensor",
        job_name=ROLLBACK_JOB,
        minimum_interval_seconds=settings.breaker_interval_s,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Every {settings.breaker_interval_s} s: the serving models' live trades against the limits "
                    f"(daily loss {settings.daily_loss:.2%} per symbol, {settings.consecutive_losses} losses in a row, "
                    f"drawdown {settings.drawdown:.2%}); a breach halts trading and alerts; a drawdown of "
                    f"{settings.rollback_drawdown:.2%} rolls the champion back.",
    )
    def circuit_breaker_sensor(context: SensorEvaluationContext, database: DatabaseResource,
                               tracking: TrackingResource):
        from smc_core.model.package import package_horizon
        from smc_core.outcomes import resolve_outcomes
        from smc_core.promotion import AB, PREVIOUS, decisions
        from smc_core.registry import MODEL_NAME, alias_version, package_path

        champion = serving_champion(context, tracking)
        if isinstance(champion, SensorResult):
            return champion
        model_version, version = champion
        db = database.database()
        serving = {model_version: version}
        challenger = alias_version(AB)
        if challenger is not None:
            serving[f"{MODEL_NAME}/{challenger}"] = challenger
        for name, number in serving.items():
            horizon = package_horizon(package_path(number))
            if horizon is not None:
                resolve_outcomes(db, horizon=horizon, model_versions=[name])
        checks = [check_breaker(db, name, settings, champion=name == model_version) for name in serving]
        for check in checks:
            for scope, alert in zip(check.halted, check.alerts):
                context.log.error(f"HALTED {scope} (alert {alert}): {check.summary()}")
        summary = " | ".join(check.summary() for check in checks)
        reason = checks[0].rollback
        if reason is None:
            return SkipReason(summary)
        if alias_version(PREVIOUS) is None:
            return SkipReason(f"{summary} | rollback due ({reason}) but there is no 'previous' to roll back to")
        promoted = [d["id"] for d in decisions(db) if d["decision"] in ("promoted", "rollback")
                    and d["champion_after"] == version]
        context.log.error(f"rolling back {model_version}: {reason}")
        return RunRequest(run_key=f"breaker-rollback:{version}:{promoted[-1] if promoted else 0}",
                          run_config={"ops": {"rollback_champion": {"config": {"reason": reason}}}},
                          tags={TRIGGER_TAG: "circuit_breaker", "smc/reason": reason[:4000]})

    return circuit_breaker_sensor


def build_ab_test_sensor(settings: SafetySettings, monitoring: MonitoringSettings):
    @sensor(
        name="ab_test_sensor",
        job_name=AB_REVIEW_JOB,
        minimum_interval_seconds=settings.ab_interval_s,
        default_status=default_status(monitoring),
        description=f"While an A/B test runs: once each arm has {settings.ab_min_trades} resolved trades, starts "
                    f"ab_review_job (one-sided Welch t-test at {settings.ab_alpha:g}).",
    )
    def ab_test_sensor(context: SensorEvaluationContext, database: DatabaseResource, tracking: TrackingResource):
        from smc_core.ab_test import review_ab_test
        from smc_core.promotion import ab_state

        tracking.client()
        db = database.database()
        state = ab_state(db)
        if state is None:
            return SkipReason("no A/B test is running")
        verdict, _, challenger = review_ab_test(db, state["version"], settings.ab_min_trades, settings.ab_alpha)
        if verdict.decision == "continue":
            return SkipReason(f"A/B test of {challenger}: {verdict.reason}")
        return RunRequest(run_key=f"ab-review:{state['version']}:{state['decision']['id']}",
                          tags={TRIGGER_TAG: "ab_test_judged", "smc/reason": verdict.reason[:4000]})

    return ab_test_sensor
