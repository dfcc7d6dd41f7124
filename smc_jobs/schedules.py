"""Schedules: the weekly retrain, the daily monitoring report, the monthly base model. All are
off until switched on (SMC_AUTOMATION=on, or one click each in the UI)."""

from dagster import DefaultScheduleStatus, ScheduleEvaluationContext, SkipReason, schedule

from sensors.retrain import refresh_requests
from smc_assets.resources import DatabaseResource, LandingResource
from smc_core.monitoring import MonitoringSettings


def _status(settings: MonitoringSettings) -> DefaultScheduleStatus:
    return DefaultScheduleStatus.RUNNING if settings.automation else DefaultScheduleStatus.STOPPED


def build_schedules(settings: MonitoringSettings, *, refresh_job, monitoring_job, base_model_jobs) -> list:
    @schedule(name="weekly_retrain", cron_schedule="0 2 * * 0", execution_timezone="UTC", job=refresh_job,
              default_status=_status(settings),
              description="Sunday 02:00 UTC: reload the newest partitions, then retrain_job (LoRA on the current base, "
                          "gates, promotion, Bento) through retrain_chain_sensor.")
    def weekly_retrain(context: ScheduleEvaluationContext, database: DatabaseResource, landing: LandingResource):
        stamp = context.scheduled_execution_time.strftime("%Y%m%dT%H%MZ")
        requests = refresh_requests(database.database(), landing.timeframe, settings, f"weekly:{stamp}",
                                    "schedule", f"weekly retrain scheduled for {stamp}")
        return requests or SkipReason("no stored bars to retrain on")

    daily_monitoring = _simple("daily_monitoring", "0 6 * * *", monitoring_job, settings,
                               "06:00 UTC daily: resolve live outcomes and write the drift report.")
    monthly_bases = [_simple(job.name.replace("base_model_job", "monthly_base_model"), "0 3 1 * *", job, settings,
                             f"03:00 UTC on the 1st: {job.name} pretrains the backbone again on all stored bars "
                             "(retrains then fine-tune on the new base).") for job in base_model_jobs]
    return [weekly_retrain, daily_monitoring, *monthly_bases]


def _simple(name: str, cron: str, job, settings: MonitoringSettings, description: str):
    from dagster import ScheduleDefinition

    return ScheduleDefinition(name=name, cron_schedule=cron, execution_timezone="UTC", job=job,
                              default_status=_status(settings), description=description)
