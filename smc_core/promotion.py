"""Champion promotion, refusal and rollback: registry aliases moved and every decision recorded.

Aliases: ``challenger`` (newest trained), ``champion`` (trading), ``previous`` (the
champion before it, the rollback target), ``shadow`` (a gated challenger answering the same
requests as the champion, logged but never returned, until its live record decides), ``ab`` (a gated
challenger answering a share of live requests in an A/B test, ``smc_core.ab_test``). A decision is a
``model_promotions`` row with
the gate statistics and the Dagster run id, written whether or not anything moved.

A refusal is a decision like a promotion, not an error: besides its row it is written where
people look, the registry version's description, tags on the version and on its MLflow run
(``smc.decision``, ``smc.failed_gates``) and an ``info`` alert.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from smc_core.alerts import raise_alert
from smc_core.db import Database
from smc_core.errors import SmcError
from smc_core.jsonable import plain
from smc_core.registry import MODEL_NAME, alias_version
from smc_core.risk import RiskTerms

CHAMPION, PREVIOUS, CHALLENGER, SHADOW, AB = "champion", "previous", "challenger", "shadow", "ab"
AB_SHARE_TAG = "smc.ab_share"
ENTRY_THRESHOLD_TAG = "entry_threshold"
DECISION_TAG, FAILED_GATES_TAG, REASON_TAG = "smc.decision", "smc.failed_gates", "smc.decision_reason"
_TAG_LIMIT = 5000  # the value length every MLflow store accepts


@dataclass(frozen=True)
class GateVerdict:
    """What the gates say about one challenger: passed only when every required gate ran and
    passed. ``failed`` maps each failing gate to the reason text it gave."""

    failed: dict[str, str]

    @property
    def passed(self) -> bool:
        return not self.failed

    @property
    def reason(self) -> str:
        if self.passed:
            return "all gates passed"
        return "failed gates: " + "; ".join(f"{name}: {why}" for name, why in self.failed.items())


def judge(gates: list[dict], required: tuple[str, ...]) -> GateVerdict:
    """The verdict on gate results (``GateResult.as_dict()`` rows). A required gate without a
    result fails: a gate never passes by default."""
    results = {gate["name"]: gate for gate in gates}
    failed = {name: "no result: the gate was not evaluated" for name in required if name not in results}
    failed |= {gate["name"]: gate["reason"] for gate in gates if not gate["passed"]}
    return GateVerdict({name: failed[name] for name in [*required, *results] if name in failed})


class PromotionError(SmcError):
    """A promotion or rollback that cannot be carried out (nothing to roll back to, say)."""


def record_decision(db: Database, decision: str, version: str, reason: str, *, champion_before: str | None,
                    champion_after: str | None, gates: list[dict] | None = None, metrics: dict | None = None,
                    dagster_run_id: str | None = None, name: str = MODEL_NAME) -> int:
    with db.connection() as conn:
        row = conn.execute(
            """INSERT INTO model_promotions (model_name, version, decision, champion_before, champion_after, reason,
                                             gates, metrics, dagster_run_id)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
            (name, version, decision, champion_before, champion_after, reason, _json(gates or []),
             _json(metrics or {}), dagster_run_id),
        ).fetchone()
    return int(row[0])


def promote(db: Database, version: str, reason: str, *, entry_threshold: float | None = None,
            gates: list[dict] | None = None, metrics: dict | None = None, dagster_run_id: str | None = None,
            name: str = MODEL_NAME, risk: RiskTerms | None = None) -> str | None:
    """``previous`` ← current champion, ``champion`` ← ``version``; returns the old champion.
    ``risk``: the stop/target terms the version was evaluated with, which its answers carry."""
    import mlflow

    client = mlflow.MlflowClient()
    before = alias_version(CHAMPION, name=name)
    _record_terms(client, name, version, entry_threshold, risk)
    if before is not None and before != version:
        client.set_registered_model_alias(name, PREVIOUS, before)
    client.set_registered_model_alias(name, CHAMPION, version)
    record_decision(db, "promoted", version, reason, champion_before=before, champion_after=version, gates=gates,
                    metrics=metrics, dagster_run_id=dagster_run_id, name=name)
    annotate(version, "promoted", reason + (f" (previous champion: version {before})" if before else ""),
             dagster_run_id=dagster_run_id, name=name)
    return before


def start_shadow(db: Database, version: str, reason: str, *, until, entry_threshold: float | None = None,
                 gates: list[dict] | None = None, metrics: dict | None = None, dagster_run_id: str | None = None,
                 name: str = MODEL_NAME, risk: RiskTerms | None = None) -> None:
    """Gates passed, promotion deferred: ``shadow`` ← ``version`` until ``until`` (a UTC time)."""
    import mlflow

    client = mlflow.MlflowClient()
    _record_terms(client, name, version, entry_threshold, risk)
    client.set_registered_model_alias(name, SHADOW, version)
    champion = alias_version(CHAMPION, name=name)
    record_decision(db, "shadow", version, reason, champion_before=champion, champion_after=champion, gates=gates,
                    metrics={**(metrics or {}), "shadow_until": until.isoformat()}, dagster_run_id=dagster_run_id,
                    name=name)
    annotate(version, "shadow", f"{reason} (until {until.isoformat()})", dagster_run_id=dagster_run_id, name=name)


def start_ab_test(db: Database, version: str, share: float, reason: str, *, entry_threshold: float | None = None,
                  gates: list[dict] | None = None, metrics: dict | None = None, dagster_run_id: str | None = None,
                  name: str = MODEL_NAME, risk: RiskTerms | None = None) -> None:
    """Gates passed, promotion decided live: ``ab`` ← ``version``, answering ``share`` of the
    requests (version tag ``smc.ab_share``, which the service reads) until the A/B rule decides."""
    import mlflow

    from smc_core.ab_test import ASSIGNMENT

    if not 0 < share < 1:
        raise PromotionError(f"an A/B share must be in (0, 1), got {share}")
    client = mlflow.MlflowClient()
    _record_terms(client, name, version, entry_threshold, risk)
    client.set_model_version_tag(name, version, AB_SHARE_TAG, str(share))
    client.set_registered_model_alias(name, AB, version)
    champion = alias_version(CHAMPION, name=name)
    record_decision(db, "ab_test", version, reason, champion_before=champion, champion_after=champion, gates=gates,
                    metrics={**(metrics or {}), "ab_share": share, "assignment": ASSIGNMENT},
                    dagster_run_id=dagster_run_id, name=name)
    annotate(version, "ab_test", f"{reason} ({share:.0%} of requests)", dagster_run_id=dagster_run_id, name=name)


def ab_share_of(version: str, name: str = MODEL_NAME) -> float | None:
    """The traffic share an A/B test gave ``version`` (None: never in one)."""
    import mlflow

    tags = mlflow.MlflowClient().get_model_version(name, version).tags
    return float(tags[AB_SHARE_TAG]) if AB_SHARE_TAG in tags else None


def _record_terms(client, name: str, version: str, entry_threshold: float | None, risk: RiskTerms | None) -> None:
    """What the service trades with this version: its entry threshold and risk terms, as version tags."""
    if entry_threshold is not None:
        client.set_model_version_tag(name, version, ENTRY_THRESHOLD_TAG, str(entry_threshold))
    for key, value in (risk.to_tags() if risk is not None else {}).items():
        client.set_model_version_tag(name, version, key, value)


def shadow_state(db: Database, name: str = MODEL_NAME) -> dict | None:
    """The model in shadow now: version, since, until and the decision that started it; None if none."""
    state = _trial_state(db, SHADOW, "shadow", name)
    return None if state is None else {**state, "until": state["decision"]["metrics"]["shadow_until"]}


def ab_state(db: Database, name: str = MODEL_NAME) -> dict | None:
    """The challenger in an A/B test now: version, since, share and the decision that started it; None if none."""
    state = _trial_state(db, AB, "ab_test", name)
    return None if state is None else {**state, "share": float(state["decision"]["metrics"]["ab_share"])}


def _trial_state(db: Database, alias: str, decision_name: str, name: str) -> dict | None:
    version = alias_version(alias, name=name)
    if version is None:
        return None
    started = [d for d in decisions(db, name) if d["decision"] == decision_name and d["version"] == version]
    if not started:
        raise PromotionError(f"{name}: version {version} has the alias {alias!r} but no {decision_name} decision "
                             "was recorded")
    return {"version": version, "since": started[-1]["decided_at"], "decision": started[-1]}


def shadow_verdict(shadow_live: dict, champion_live: dict, min_trades: int) -> tuple[bool, str]:
    """Promote the shadow when, on the same requests since it started, it traded enough and
    made at least as much as the champion (realised policy return; hit rate as the tie-break
    story). Both dicts are ``smc_core.outcomes.live_summary`` results."""
    trades = shadow_live["trades"]
    if trades < min_trades:
        return False, f"{trades} resolved shadow trades, fewer than the {min_trades} needed to judge it live"
    ours, theirs = shadow_live["realised_return"], champion_live["realised_return"]
    described = (f"shadow return {ours:+.4f} over {trades} trades (hit rate {_rate(shadow_live)}) vs champion "
                 f"{theirs:+.4f} over {champion_live['trades']} trades (hit rate {_rate(champion_live)})")
    if ours < theirs:
        return False, f"{described}: the shadow made less live"
    return True, f"{described}: the shadow made at least as much live"


def end_shadow(db: Database, version: str, passed: bool, reason: str, *, metrics: dict | None = None,
               dagster_run_id: str | None = None, name: str = MODEL_NAME, alias: str = SHADOW) -> str | None:
    """Promote the shadow (``passed``) or refuse it; the ``shadow`` alias is cleared either way.
    Returns the champion before. ``alias=AB`` ends an A/B test the same way."""
    import mlflow

    client = mlflow.MlflowClient()
    before = alias_version(CHAMPION, name=name)
    if passed:
        promote(db, version, reason, metrics=metrics, dagster_run_id=dagster_run_id, name=name)
    else:
        refuse(db, version, reason, metrics=metrics, dagster_run_id=dagster_run_id, name=name)
    client.delete_registered_model_alias(name, alias)
    return before


def _rate(live: dict) -> str:
    return "–" if live["hit_rate"] is None else f"{live['hit_rate']:.1%}"


def refuse(db: Database, version: str, reason: str, *, gates: list[dict] | None = None,
           metrics: dict | None = None, dagster_run_id: str | None = None, failed: tuple[str, ...] = (),
           name: str = MODEL_NAME) -> int:
    """Record a refusal (aliases untouched): the decision row, the registry version's
    description and tags, its MLflow run's tags and an ``info`` alert. Returns the alert id."""
    champion = alias_version(CHAMPION, name=name)
    record_decision(db, "refused", version, reason, champion_before=champion, champion_after=champion, gates=gates,
                    metrics=metrics, dagster_run_id=dagster_run_id, name=name)
    annotate(version, "refused", reason, failed=failed, dagster_run_id=dagster_run_id, name=name)
    kept = f"{name}/{champion} stays champion" if champion else "no champion yet"
    return raise_alert(db, "promotion_refused", f"{name}/{version} refused", f"{reason}; {kept}",
                       {"model": name, "version": version, "failed_gates": list(failed), "champion": champion,
                        "dagster_run_id": dagster_run_id}, severity="info")


def annotate(version: str, decision: str, reason: str, *, failed: tuple[str, ...] = (),
             dagster_run_id: str | None = None, name: str = MODEL_NAME) -> None:
    """Write a decision where MLflow users look: the registry version's description, tags on
    the version and on the MLflow run that trained it."""
    import mlflow

    client = mlflow.MlflowClient()
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    by = f" by Dagster run {dagster_run_id}" if dagster_run_id else ""
    client.update_model_version(name, version, description=f"{decision.capitalize()} {when}{by}: {reason}")
    tags = {DECISION_TAG: decision, FAILED_GATES_TAG: ",".join(failed), REASON_TAG: reason[:_TAG_LIMIT]}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    run_id = client.get_model_version(name, version).run_id
    if run_id:
        for key, value in tags.items():
            client.set_tag(run_id, key, value)


def rollback(db: Database, *, dagster_run_id: str | None = None, name: str = MODEL_NAME,
             reason: str | None = None) -> tuple[str, str]:
    """``champion`` ← ``previous`` (and ``previous`` cleared, so a second rollback is refused
    rather than flipping back); returns (rolled-back version, restored version). ``reason``
    (e.g. the circuit breaker's) is recorded with the decision."""
    import mlflow

    client = mlflow.MlflowClient()
    current, previous = alias_version(CHAMPION, name=name), alias_version(PREVIOUS, name=name)
    if previous is None:
        raise PromotionError(f"{name}: no 'previous' alias to roll back to"
                             + (f" (champion is version {current})" if current else " (no champion either)"))
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.delete_registered_model_alias(name, PREVIOUS)
    moved = f"rolled back from version {current} to {previous}"
    record_decision(db, "rollback", previous, f"{moved}: {reason}" if reason else moved,
                    champion_before=current, champion_after=previous, dagster_run_id=dagster_run_id, name=name)
    return current, previous


def risk_terms_of(version: str, name: str = MODEL_NAME) -> RiskTerms | None:
    """The risk terms recorded when ``version`` was promoted (None before they were recorded)."""
    import mlflow

    return RiskTerms.from_tags(mlflow.MlflowClient().get_model_version(name, version).tags)


def entry_threshold_of(version: str, name: str = MODEL_NAME) -> float | None:
    """The entry threshold a version was promoted with (None if it never was)."""
    import mlflow

    tags = mlflow.MlflowClient().get_model_version(name, version).tags
    return float(tags[ENTRY_THRESHOLD_TAG]) if ENTRY_THRESHOLD_TAG in tags else None


def record_trials(db: Database, version: str, sharpes: dict[str, float], observations: int,
                  dagster_run_id: str | None = None, name: str = MODEL_NAME) -> None:
    with db.connection() as conn:
        with conn.cursor() as cursor:
            cursor.executemany(
                """INSERT INTO backtest_trials (model_name, version, candidate, sharpe, observations, dagster_run_id)
                   VALUES (%s, %s, %s, %s, %s, %s)""",
                [(name, version, candidate, float(value) if np.isfinite(value) else None, observations,
                  dagster_run_id) for candidate, value in sharpes.items()])


def trial_sharpes(db: Database, name: str = MODEL_NAME) -> np.ndarray:
    """Every trial's Sharpe ratio for ``name`` (NaN where undefined): DSR's N and variance."""
    with db.connection() as conn:
        rows = conn.execute("SELECT sharpe FROM backtest_trials WHERE model_name = %s ORDER BY id", (name,)).fetchall()
    return np.array([np.nan if r[0] is None else r[0] for r in rows], dtype=np.float64)


def decisions(db: Database, name: str = MODEL_NAME) -> list[dict]:
    with db.connection() as conn:
        rows = conn.execute(
            """SELECT id, decided_at, version, decision, champion_before, champion_after, reason, gates, metrics,
                      dagster_run_id FROM model_promotions WHERE model_name = %s ORDER BY id""", (name,)).fetchall()
    keys = ("id", "decided_at", "version", "decision", "champion_before", "champion_after", "reason", "gates",
            "metrics", "dagster_run_id")
    return [dict(zip(keys, row)) for row in rows]


def _json(value) -> str:
    return json.dumps(plain(value), default=str)
