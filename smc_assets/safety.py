"""Safety as Dagster sees it: the kill switch as two jobs (``halt_job``, ``resume_job``) and the
end of an A/B test (``ab_review``). The circuit breaker and the A/B sensor live in
``sensors/safety.py``; the logic in ``smc_core.safety`` and ``smc_core.ab_test``."""

from dagster import AssetExecutionContext, Config, Failure, MaterializeResult, MetadataValue, OpExecutionContext, \
    asset, op
from pydantic import Field

from smc_assets.common import checked
from smc_core.ab_test import review_ab_test
from smc_core.promotion import AB, ab_state, end_shadow
from smc_core.registry import MODEL_NAME
from smc_core.safety import SafetySettings, halt, resume


class HaltConfig(Config):
    symbols: list[str] = Field(default_factory=list, description="Symbols to halt (resume); empty: every symbol "
                                                                 "(resume: every halt).")
    reason: str = Field(description="Why; recorded with the halt or resume.")


@op(required_resource_keys={"database"},
    description="Halt trading: every answer of the service for the symbols (or all) is skip within HALT_POLL_SECONDS.")
def halt_trading(context: OpExecutionContext, config: HaltConfig) -> None:
    state = checked(lambda: halt(context.resources.database.database(), config.symbols or None, config.reason,
                                 "dagster", {"dagster_run_id": context.run.run_id}))
    context.log.warning(f"trading halted: {state.as_json()}")


@op(required_resource_keys={"database"}, description="Lift the halts of the symbols (or every halt).")
def resume_trading(context: OpExecutionContext, config: HaltConfig) -> None:
    state = checked(lambda: resume(context.resources.database.database(), config.symbols or None, config.reason,
                                   "dagster"))
    context.log.info(f"trading resumed; halts still in force: {state.as_json()}")


@asset(
    required_resource_keys={"database", "tracking"},
    group_name="promotion",
    kinds={"mlflow"},
    description="Ends an A/B test: each arm's resolved live trades, a one-sided Welch t-test, then the challenger is "
                "promoted (p < SMC_AB_ALPHA) or refused; the 'ab' alias is cleared either way.",
)
def ab_review(context: AssetExecutionContext) -> MaterializeResult:
    db = context.resources.database.database()
    context.resources.tracking.client()
    settings = SafetySettings.from_env()
    state = checked(lambda: ab_state(db))
    if state is None:
        raise Failure(description="no A/B test is running (no version has the alias 'ab')")
    verdict, champion, challenger = checked(lambda: review_ab_test(db, state["version"], settings.ab_min_trades,
                                                                   settings.ab_alpha))
    if verdict.decision == "continue":
        raise Failure(description=f"the A/B test of {challenger} cannot be judged yet: {verdict.reason}")
    before = end_shadow(db, state["version"], verdict.decision == "promote", f"A/B test: {verdict.reason}",
                        metrics=verdict.as_json(), dagster_run_id=context.run.run_id, alias=AB)
    context.log.info(f"{challenger} {'promoted' if verdict.decision == 'promote' else 'refused'}: {verdict.reason}")
    return MaterializeResult(metadata={
        "verdict": "promoted" if verdict.decision == "promote" else "refused", "reason": verdict.reason,
        "challenger": challenger, "champion_before": f"{MODEL_NAME}/{before}" if before else "none",
        "p_value": verdict.p_value, "arms": MetadataValue.json(verdict.as_json())})
