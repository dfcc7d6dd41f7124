"""How a retrain is started, whoever starts it (drift, performance decay, the weekly schedule).

A retrain is two steps because Dagster runs one partitions definition per run:
1. ``market_data_job`` runs for the newest trading days of every symbol (bars, features and
   labels reloaded, so the last labels see the bars that came after them), each tagged with
   the retrain episode and the reason;
2. once every one of those runs has succeeded, ``retrain_chain_sensor`` requests one
   ``retrain_job`` run with the same tags: LoRA on the current base, evaluation, gates,
   promotion, Bento. The service picks a new champion up by itself.
The run keys are the episode, so a repeated tick never starts a second retrain.
"""

import copy
import json
import time

from dagster import (DagsterRunStatus, DefaultSensorStatus, RunRequest, RunsFilter, SensorEvaluationContext,
                     SensorResult, SkipReason, sensor)

from smc_assets.partitions import bar_partition_key
from smc_assets.resources import DatabaseResource, TrackingResource
from smc_core.db import Database
from smc_core.lines import MAIN_LINE, ModelLine
from smc_core.monitoring import Episode, MonitoringSettings, episode_id, newest_trading_days

REFRESH_JOB = "market_data_job"
RETRAIN_JOB = "retrain_job"
EPISODE_TAG = "smc/retrain_episode"
REASON_TAG = "smc/reason"
TRIGGER_TAG = "smc/trigger"
LINE_TAG = "smc/model_line"
"""The registered model of the line whose monitoring started an episode (only that line then
retrains); absent (the weekly schedule): every line retrains."""
_FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


def serving_champion(context: SensorEvaluationContext, tracking: TrackingResource, line: ModelLine = MAIN_LINE):
    """(``<name>/<version>``, registry version) of the line's model serving now, or the SensorResult a
    monitoring sensor returns when nothing serves. The package itself is fetched
    (``registry.package_path``) only by the sensors that need it, when they need it."""
    from smc_core.registry import alias_version

    tracking.client()  # configures MLflow for this process
    version = alias_version("champion", name=line.name)
    if version is None:
        return SensorResult(skip_reason=SkipReason(f"no champion of {line.name}: nothing is serving"),
                            cursor=context.cursor)
    return f"{line.name}/{version}", version


def sensor_name(name: str, line: ModelLine) -> str:
    """``drift_sensor``; an added line's ends in its slug (``drift_sensor_5m_h15``)."""
    return line.suffixed(name)


def default_status(settings: MonitoringSettings) -> DefaultSensorStatus:
    """Everything automatic is off until switched on (SMC_AUTOMATION=on, or in the UI)."""
    return DefaultSensorStatus.RUNNING if settings.automation else DefaultSensorStatus.STOPPED


def refresh_requests(db: Database, timeframe: str, settings: MonitoringSettings, episode: str, trigger: str,
                     reason: str, line: ModelLine | None = None) -> list[RunRequest]:
    """Step 1 of a retrain: one market-data run per newest (symbol, trading day); ``line``: the
    model line whose monitoring asks (only it retrains), None: every line."""
    tags = {EPISODE_TAG: episode, TRIGGER_TAG: trigger, REASON_TAG: reason[:4000],
            **({LINE_TAG: line.name} if line is not None else {})}
    requests = []
    for symbol, days in newest_trading_days(db, timeframe, settings.refresh_days).items():
        for day in days:
            key = bar_partition_key(symbol, day)
            requests.append(RunRequest(run_key=f"{episode}|{key}", job_name=REFRESH_JOB, partition_key=key, tags=tags))
    return requests


def retrain_job_name(line: ModelLine) -> str:
    """``retrain_job``; an added model line's ends in its slug (``retrain_job_5m_h15``)."""
    return line.suffixed(RETRAIN_JOB)


def retrain_run_config(settings: MonitoringSettings, line: ModelLine = MAIN_LINE) -> dict:
    """SMC_RETRAIN_CONFIG's run config with the sliding window (``recent_days``) filled in; an added
    line's steps carry its prefix, so the same config is given to them."""
    config = copy.deepcopy(settings.retrain_config or {})
    config["ops"] = ops = {line.step(step): value for step, value in config.get("ops", {}).items()}
    ops.setdefault(line.step("lora_model"), {}).setdefault("config", {}).setdefault("recent_days", settings.retrain_days)
    return config


def fire(context: SensorEvaluationContext, kind: str, condition: bool, version: str, reason: str,
         db: Database, timeframe: str, settings: MonitoringSettings, state: dict, quiet: str,
         line: ModelLine = MAIN_LINE) -> SensorResult:
    """One tick of a trigger sensor: advance its episode and, when it fires, start a retrain.

    ``state`` is the decoded cursor (the episode is kept under ``episode``); ``quiet`` is the
    skip reason shown in the UI when nothing fires.
    """
    now = time.time()
    episode, run_key = Episode.from_json(state.get("episode")).step(
        condition, episode_id(kind, version, now), now, settings.cooldown_hours * 3600)
    state = {**state, "episode": episode.to_json()}
    if run_key is None:
        why = quiet if not condition else f"{reason} (episode {episode.active} already triggered; cooldown " \
                                          f"{settings.cooldown_hours:g} h)"
        return SensorResult(skip_reason=SkipReason(why), cursor=json.dumps(state, sort_keys=True))
    requests = refresh_requests(db, timeframe, settings, run_key, kind, reason, line)
    if not requests:
        return SensorResult(skip_reason=SkipReason(f"{reason}, but no stored bars to retrain on"),
                            cursor=json.dumps(state, sort_keys=True))
    context.log.warning(f"{kind}: {reason} → retrain episode {run_key} ({len(requests)} market-data runs first)")
    return SensorResult(run_requests=requests, cursor=json.dumps(state, sort_keys=True))


def build_retrain_chain_sensor(settings: MonitoringSettings, lines: tuple[ModelLine, ...] = (MAIN_LINE,), jobs=None,
                               minimum_interval_seconds: int = 30):
    """``jobs``: the retrain jobs of ``lines`` when there is more than the main line (``line_jobs``)."""
    retrain_jobs = [retrain_job_name(line) for line in lines]

    @sensor(
        name="retrain_chain_sensor",
        job_name=None if jobs else RETRAIN_JOB,
        jobs=jobs or None,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status(settings),
        description="Starts every model line's retrain job (retrain_job, retrain_job_<line>) once every market-data "
                    "run of a retrain episode has succeeded.",
    )
    def retrain_chain_sensor(context: SensorEvaluationContext):
        done = set(json.loads(context.cursor)) if context.cursor else set()
        instance = context.instance
        episodes = next((values for key, values in instance.get_run_tags(tag_keys=[EPISODE_TAG]) if key == EPISODE_TAG),
                        set())
        requests, waiting = [], []
        for episode in sorted(set(episodes) - done):
            runs = instance.get_runs(filters=RunsFilter(tags={EPISODE_TAG: episode}))
            if any(run.job_name in retrain_jobs for run in runs):
                done.add(episode)
                continue
            refresh = [run for run in runs if run.job_name == REFRESH_JOB]
            if any(run.status not in _FINISHED for run in refresh):
                waiting.append(episode)
                continue
            done.add(episode)
            failed = [run.run_id for run in refresh if run.status != DagsterRunStatus.SUCCESS]
            if failed:
                context.log.error(f"retrain episode {episode} abandoned: market-data run(s) {', '.join(failed)} failed")
                continue
            tags = {key: value for key, value in refresh[0].tags.items()
                    if key in (EPISODE_TAG, TRIGGER_TAG, REASON_TAG, LINE_TAG)}
            asking = tags.get(LINE_TAG)
            requests += [RunRequest(run_key=episode if line.main else f"{episode}|{line.slug}",
                                    job_name=retrain_job_name(line), tags=tags,
                                    run_config=retrain_run_config(settings, line))
                         for line in lines if asking is None or asking == line.name]
        cursor = json.dumps(sorted(done))
        if requests:
            return SensorResult(run_requests=requests, cursor=cursor)
        why = f"waiting for the market-data runs of {', '.join(waiting)}" if waiting else "no retrain episode pending"
        return SensorResult(skip_reason=SkipReason(why), cursor=cursor)

    return retrain_chain_sensor


SHADOW_REVIEW_JOB = "shadow_review_job"


def build_shadow_sensor(settings: MonitoringSettings, minimum_interval_seconds: int = 300):
    @sensor(
        name="shadow_sensor",
        job_name=SHADOW_REVIEW_JOB,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status(settings),
        description="When a model's shadow period has ended, starts shadow_review_job (live record vs the champion "
                    "decides promotion).",
    )
    def shadow_sensor(context: SensorEvaluationContext, database: DatabaseResource, tracking: TrackingResource):
        import pandas as pd

        from smc_core.promotion import shadow_state

        tracking.client()
        state = shadow_state(database.database())
        if state is None:
            return SkipReason("no model is in shadow")
        until = pd.Timestamp(state["until"])
        if pd.Timestamp.now(tz="UTC") < until:
            return SkipReason(f"version {state['version']} is in shadow until {until}")
        return RunRequest(run_key=f"shadow-review:{state['version']}:{state['decision']['id']}",
                          tags={TRIGGER_TAG: "shadow_period_end"})

    return shadow_sensor
