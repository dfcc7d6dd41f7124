"""measure_switchover on a scripted service: when the switch counts as done, what a failure
records, and that the probe keeps to its pace (it shares the strategy's rate limit)."""

from __future__ import annotations

import time

from smc_core.errors import SmcError
from smc_core.serving.switchover import measure_switchover


def scripted(switch_after_s: float, failures: dict[int, str] | None = None):
    """A /predict stand-in: version 1 until ``switch_after_s``, then 2; call n raises failures[n]."""
    started, calls = time.monotonic(), []

    def predict() -> dict:
        calls.append(time.monotonic())
        if failures and len(calls) in failures:
            raise SmcError(failures[len(calls)])
        return {"model_version": "m/2" if time.monotonic() - started >= switch_after_s else "m/1"}

    return started, calls, predict


def test_the_switch_is_timed_from_the_first_of_a_settled_run_of_new_answers():
    moved_at, calls, predict = scripted(0.3)
    report = measure_switchover(predict, "m/2", moved_at, timeout_s=5, settle_s=0.3, interval_s=0.02)
    assert report.seconds is not None and 0.3 <= report.seconds < 0.4
    assert report.failures == 0 and set(report.versions) == {"m/1", "m/2"}
    assert "0 failed" in report.summary() and "failed:" not in report.summary()


def test_the_probe_keeps_its_pace():
    moved_at, calls, predict = scripted(0.0)
    measure_switchover(predict, "m/2", moved_at, timeout_s=5, settle_s=0.5, interval_s=0.05)
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert min(gaps) >= 0.049 and len(calls) <= 12  # 20 a second, not back to back


def test_failures_are_counted_with_what_the_client_saw():
    moved_at, calls, predict = scripted(0.1, failures={2: "answered 429 rate limit exceeded", 3: "timed out"})
    report = measure_switchover(predict, "m/2", moved_at, timeout_s=5, settle_s=0.2, interval_s=0.01)
    assert report.failures == 2 and report.errors == {"answered 429 rate limit exceeded": 1, "timed out": 1}
    assert "2 failed" in report.summary() and "answered 429 rate limit exceeded ×1" in report.summary()


def test_a_switch_that_never_settles_has_no_time():
    moved_at, calls, predict = scripted(60.0)
    report = measure_switchover(predict, "m/2", moved_at, timeout_s=0.3, interval_s=0.02)
    assert report.seconds is None and "not every response carried m/2" in report.summary()
