"""The A/B traffic split: a gated challenger answers a share of live requests, and its live
record against the champion's decides, by a stated test, whether it is promoted.

Assignment (deterministic, stated once): each request's unit is its bar — symbol,
timeframe and the current bar's UTC close time. ``sha256("<symbol>|<timeframe>|<close ISO
8601>")``'s first 8 bytes, read as a big-endian integer over 2**64, give a number in [0, 1);
the challenger answers when it is below the share. A bar gets the same arm on a retry, in
any worker and after a restart; over many bars the challenger's share of them is the share.
(By symbol would give one arm per instrument: too few units to test anything.)

The decision (a fixed-sample test, judged once): as soon as each arm has ``min_trades``
resolved trades, the per-trade realised returns (direction × size × the label's log
return, ``prediction_outcomes``) of the two arms are compared by a one-sided Welch t-test,
H0: the challenger's mean is not above the champion's. p < ``alpha`` promotes the challenger;
otherwise the test ends and the champion stays. Judged once, not at every tick, so the
level is the stated alpha (peeking would inflate it). The arms' trades overlap in time and
are not strictly independent: the p-value is a guide, not an exact probability.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from smc_core.db import Database

CHAMPION_ARM, CHALLENGER_ARM, SHADOW_ARM = "champion", "challenger", "shadow"
ASSIGNMENT = ("sha256('<symbol>|<timeframe>|<current bar close, UTC ISO 8601>') as a number in [0, 1); "
              "the challenger answers below the share")


def arm_bucket(symbol: str, timeframe: str, bar_close: datetime) -> float:
    """The request's place in [0, 1) (see the module's docstring)."""
    stamp = bar_close.astimezone(timezone.utc).isoformat()
    digest = hashlib.sha256(f"{symbol}|{timeframe}|{stamp}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


# --------------------------------------------------------------------------------------
# The decision rule (pure)
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArmFigures:
    predictions: int
    trades: int
    hits: int
    total_return: float
    mean_return: float | None
    """Mean realised return per trade."""
    std_return: float | None
    """Sample standard deviation (ddof 1) per trade."""

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.trades if self.trades else None

    def as_json(self) -> dict:
        return {"predictions": self.predictions, "trades": self.trades, "hits": self.hits,
                "hit_rate": self.hit_rate, "total_return": self.total_return, "mean_return": self.mean_return,
                "std_return": self.std_return}


def arm_figures(rows: pd.DataFrame) -> ArmFigures:
    """``rows``: one arm's resolved predictions with direction, position_size, realised_return, hit."""
    trade = (rows["direction"].to_numpy() != 0) & (rows["position_size"].to_numpy(dtype=np.float64) > 0)
    returns = rows["realised_return"].to_numpy(dtype=np.float64)[trade]
    hits = int(rows["hit"][trade].astype(bool).sum())
    return ArmFigures(len(rows), int(trade.sum()), hits, float(returns.sum()),
                      float(returns.mean()) if len(returns) else None,
                      float(returns.std(ddof=1)) if len(returns) > 1 else None)


@dataclass(frozen=True)
class AbVerdict:
    decision: str
    """``continue`` (too few trades yet), ``promote`` or ``end`` (the champion stays)."""
    reason: str
    champion: ArmFigures
    challenger: ArmFigures
    t: float | None = None
    df: float | None = None
    p_value: float | None = None

    def as_json(self) -> dict:
        return {"decision": self.decision, "reason": self.reason, "champion": self.champion.as_json(),
                "challenger": self.challenger.as_json(), "test": "one-sided Welch t-test on per-trade realised return",
                "t": self.t, "df": self.df, "p_value": self.p_value}


def welch_one_sided(challenger: np.ndarray, champion: np.ndarray) -> tuple[float, float, float]:
    """(t, Welch–Satterthwaite df, p) for H1: mean(challenger) > mean(champion)."""
    from scipy import stats

    a, b = np.asarray(challenger, dtype=np.float64), np.asarray(champion, dtype=np.float64)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    t = (a.mean() - b.mean()) / se
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(t), float(df), float(stats.t.sf(t, df))


def ab_verdict(champion: pd.DataFrame, challenger: pd.DataFrame, min_trades: int, alpha: float) -> AbVerdict:
    """The rule of the module's docstring on each arm's resolved predictions."""
    ours, theirs = arm_figures(challenger), arm_figures(champion)
    counts = f"challenger {ours.trades} trades, champion {theirs.trades}"
    if min(ours.trades, theirs.trades) < min_trades:
        return AbVerdict("continue", f"{counts}: each arm needs {min_trades} resolved trades", theirs, ours)
    trade = lambda rows: rows[(rows["direction"] != 0) & (rows["position_size"] > 0)]["realised_return"]  # noqa: E731
    a, b = trade(challenger).to_numpy(np.float64), trade(champion).to_numpy(np.float64)
    if a.var(ddof=1) == 0 and b.var(ddof=1) == 0:
        return AbVerdict("end", f"{counts}: returns without variance, the test cannot be computed; the champion "
                                "stays", theirs, ours)
    t, df, p = welch_one_sided(a, b)
    described = (f"{counts}; mean return per trade {ours.mean_return:+.6f} vs {theirs.mean_return:+.6f}; "
                 f"one-sided Welch t = {t:.3f}, df = {df:.1f}, p = {p:.4f}")
    if p < alpha:
        return AbVerdict("promote", f"{described} < {alpha:g}: the challenger earns more per trade", theirs, ours,
                         t, df, p)
    return AbVerdict("end", f"{described} ≥ {alpha:g}: no significant gain; the champion stays", theirs, ours, t, df, p)


# --------------------------------------------------------------------------------------
# The live record per arm
# --------------------------------------------------------------------------------------
def arm_outcomes(db: Database, champion_version: str, challenger_version: str) -> dict[str, pd.DataFrame]:
    """Each arm's resolved, non-shadow predictions since the challenger's first one (bar time,
    so a replayed period counts as it was served)."""
    with db.connection() as conn:
        since = conn.execute("SELECT min(ts) FROM predictions WHERE arm = %s AND model_version = %s AND NOT shadow",
                             (CHALLENGER_ARM, challenger_version)).fetchone()[0]
        cursor = conn.execute(
            """SELECT p.arm, o.ts, o.request_id, o.symbol, o.direction, o.position_size, o.realised_return, o.hit
               FROM prediction_outcomes o
               JOIN predictions p ON p.ts = o.ts AND p.request_id = o.request_id AND p.shadow = o.shadow
               WHERE NOT o.shadow AND o.ts >= %(since)s
                 AND ((p.arm = 'challenger' AND o.model_version = %(challenger)s)
                      OR (p.arm = 'champion' AND o.model_version = %(champion)s))
               ORDER BY o.ts, o.request_id""",
            {"since": since, "challenger": challenger_version, "champion": champion_version})
        frame = pd.DataFrame(cursor.fetchall(), columns=[c.name for c in cursor.description])
    frame["realised_return"] = frame["realised_return"].astype("float64")
    return {arm: frame[frame["arm"] == arm].reset_index(drop=True) for arm in (CHAMPION_ARM, CHALLENGER_ARM)}


def judge_ab_test(db: Database, champion_version: str, challenger_version: str, min_trades: int,
                  alpha: float) -> AbVerdict:
    """The decision on the outcomes resolved so far (resolve them first)."""
    arms = arm_outcomes(db, champion_version, challenger_version)
    return ab_verdict(arms[CHAMPION_ARM], arms[CHALLENGER_ARM], min_trades, alpha)


def review_ab_test(db: Database, version: str, min_trades: int, alpha: float) -> tuple[AbVerdict, str, str]:
    """Resolve both arms' outcomes, then judge: (verdict, champion, challenger) as ``<name>/<version>``.
    ``version``: the registry version of the challenger (alias ``ab``)."""
    from smc_core.errors import SmcError
    from smc_core.model.package import package_horizon
    from smc_core.outcomes import resolve_outcomes
    from smc_core.registry import MODEL_NAME, alias_version, package_path

    champion = alias_version("champion")
    if champion is None:
        raise SmcError("an A/B test needs a champion, and no version has the alias 'champion'")
    champion_version, challenger_version = f"{MODEL_NAME}/{champion}", f"{MODEL_NAME}/{version}"
    horizon = package_horizon(package_path(version))
    if horizon is None:
        raise SmcError(f"{challenger_version} records no label horizon in its lineage: its outcomes cannot be resolved")
    resolve_outcomes(db, horizon=horizon, model_versions=[champion_version, challenger_version])
    return judge_ab_test(db, champion_version, challenger_version, min_trades, alpha), champion_version, \
        challenger_version
