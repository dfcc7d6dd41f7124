"""How long a model switch takes as clients see it: requests are sent every ``interval_s`` from
the moment the registry alias moved, until every response for ``settle_s`` seconds carries the
expected version. Failed requests are counted — a switch must not drop any.

Why paced and not back to back: the probe shares the API key's rate limit with the strategy
(RATE_LIMIT_PER_SECOND, 100 by default); a served request takes a few milliseconds, so back to
back it would spend the whole limit and be refused (429) — a failure the measurement caused.
20 requests a second resolve the switch time to 50 ms and leave the limit to the strategy."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from smc_core.errors import SmcError


@dataclass
class Switchover:
    expected: str
    seconds: float | None
    """From the alias move to the first response after which every response carried ``expected``
    (None: not reached within the timeout)."""
    requests: int = 0
    failures: int = 0
    versions: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    """Why requests failed, by message: a failed switch must say what the client saw."""

    def summary(self) -> str:
        seen = ", ".join(f"{version} ×{count}" for version, count in self.versions.items())
        if self.seconds is None:
            return f"not every response carried {self.expected} in time ({self.requests} requests: {seen})"
        failed = "".join(f"; failed: {message} ×{count}" for message, count in self.errors.items())
        return (f"every response carries {self.expected} {self.seconds:.2f} s after the alias moved "
                f"({self.requests} requests, {self.failures} failed; seen: {seen}{failed})")


def measure_switchover(predict: Callable[[], dict], expected: str, moved_at: float, *, timeout_s: float = 60.0,
                       settle_s: float = 1.0, interval_s: float = 0.05) -> Switchover:
    """``predict()`` returns a /predict response body (raising on failure); ``moved_at`` is the
    ``time.monotonic()`` of the alias move."""
    report = Switchover(expected, None)
    switched_at = None
    next_at = time.monotonic()
    while time.monotonic() - moved_at < timeout_s:
        time.sleep(max(next_at - time.monotonic(), 0.0))
        next_at = time.monotonic() + interval_s
        try:
            version = predict()["model_version"]
        except (SmcError, OSError, KeyError) as error:
            report.failures += 1
            report.requests += 1
            message = str(error)[:200]
            report.errors[message] = report.errors.get(message, 0) + 1
            if report.failures > 50:
                raise SmcError(f"the service keeps failing while switching to {expected}: {error}") from None
            continue
        now = time.monotonic()
        report.requests += 1
        report.versions[version] = report.versions.get(version, 0) + 1
        if version != expected:
            switched_at = None
        elif switched_at is None:
            switched_at = now
        if switched_at is not None and now - switched_at >= settle_s:
            report.seconds = switched_at - moved_at
            return report
    return report
