"""The service's side of the kill switch: the halts in force, followed from the database.

Why a copy in memory and on disk: a halt must hold whatever happens to the database. The
switch polls ``trading_halts`` every ``HALT_POLL_SECONDS``; when the database does not
answer it keeps the last state it knew (never un-halting because of an outage) and says so
in ``/health``. The state is also written to a local file, so a service restarted while the
database is away starts halted as it was. A halt sent to the service while the database is
away takes effect at once and is written to the database when it answers again (pending);
a resume needs the database, so it can never lift a halt the breaker wrote there unseen.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from smc_core.safety import Halt, HaltState, halt, read_halts, resume, scopes_of

log = logging.getLogger("smc.serving.halts")
DATABASE_TIMEOUT_S = 2.0


class HaltSwitch:
    def __init__(self, database: Callable[[], object], state_file: Path, poll_seconds: float,
                 on_change: Callable[[HaltState], None] | None = None):
        self._database = database
        self.state_file = Path(state_file)
        self.poll_seconds = poll_seconds
        self._on_change = on_change
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="halt-switch", daemon=True)
        self.state = HaltState()
        self.pending: list[Halt] = []
        """Halts made here while the database was away, written to it when it answers."""
        self.origin = "none"
        """Where the state came from: database, local file (last known), or none yet."""
        self.error: str | None = None
        self.checked_at: float | None = None
        self._load_file()

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> "HaltSwitch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _poll(self) -> None:
        self.refresh()
        while not self._stop.wait(self.poll_seconds):
            self.refresh()

    # --- reading -----------------------------------------------------------------------

    def applying_to(self, symbol: str) -> Halt | None:
        return self.state.applying_to(symbol)

    def refresh(self) -> bool:
        """Write pending halts, then read the halts in force; on any error keep the last state."""
        try:
            database = self._database()
            for pending in list(self.pending):
                halt(database, [pending.scope], pending.reason, pending.source,
                     {**pending.details, "halted_at_service": pending.since.isoformat()}, timeout=DATABASE_TIMEOUT_S)
                with self._lock:
                    self.pending.remove(pending)
            state = read_halts(database, timeout=DATABASE_TIMEOUT_S)
        except Exception as error:  # the database is away: the last known state holds
            if self.error is None:
                log.warning("halt state unreadable, keeping the last known one (%s): %s", self.origin, error)
            self.error = f"{type(error).__name__}: {error}"
            return False
        self._set(state, "database")
        self.error, self.checked_at = None, time.time()
        return True

    def health(self) -> dict:
        return {**self.state.as_json(), "source": self.origin, "database_error": self.error,
                "checked_at": None if self.checked_at is None
                else datetime.fromtimestamp(self.checked_at, timezone.utc).isoformat(),
                "pending": len(self.pending)}

    # --- changing ----------------------------------------------------------------------

    def halt(self, symbols, reason: str, source: str, details: dict | None = None) -> bool:
        """In force at once; True when it is also in the database (else pending)."""
        now = datetime.now(timezone.utc)
        halts = [Halt(scope, reason, source, now, details or {}) for scope in scopes_of(symbols)]
        self._set(self.state.merged(halts), self.origin)
        try:
            state = halt(self._database(), [h.scope for h in halts], reason, source, details,
                         timeout=DATABASE_TIMEOUT_S)
        except Exception as error:
            log.warning("halt of %s kept here until the database answers: %s", [h.scope for h in halts], error)
            with self._lock:
                waiting = {h.scope for h in self.pending}
                self.pending += [h for h in halts if h.scope not in waiting]
            self._save()
            return False
        self._set(state, "database")
        return True

    def resume(self, symbols, reason: str, source: str) -> None:
        """Lift halts in the database, then here; raises when the database cannot be reached."""
        state = resume(self._database(), symbols, reason, source, timeout=DATABASE_TIMEOUT_S)
        self._set(state, "database")

    def _set(self, state: HaltState, origin: str) -> None:
        with self._lock:
            state = state.merged(self.pending)  # a halt waiting for the database stays in force
            changed, self.state, self.origin = state != self.state, state, origin
        if changed:
            log.warning("trading halts now: %s", json.dumps(state.as_json(), default=str))
            self._save()
            if self._on_change is not None:
                self._on_change(state)

    # --- the local copy ----------------------------------------------------------------

    def _save(self) -> None:
        with self._lock:
            data = {"state": self.state.as_json(), "pending": [h.as_json() for h in self.pending],
                    "saved_at": datetime.now(timezone.utc).isoformat()}
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(data, default=str))
            os.replace(temporary, self.state_file)
        except OSError as error:
            log.error("halt state not saved to %s: %s", self.state_file, error)

    def _load_file(self) -> None:
        if not self.state_file.exists():
            return
        try:
            data = json.loads(self.state_file.read_text())
            self.pending = [Halt.from_json(h) for h in data.get("pending", [])]
            self.state = HaltState.from_json(data["state"]).merged(self.pending)
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.error("halt state file %s unreadable (%s): waiting for the database", self.state_file, error)
            return
        self.origin = "local file"
        if self.state.halts:
            log.warning("starting halted as last known (%s): %s", self.state_file, list(self.state.halts))


def halted_answer(body: dict, halt: Halt) -> dict:
    """Turn an answer into the halt's skip: no size and no prices; the probabilities, the risk
    distances and the raw label stay (they are what the model said), and ``skip_reason`` and
    ``halt`` say why."""
    body.update(label="skip", position_size=0.0, skip_reason="halted",
                halt={key: value for key, value in halt.as_json().items() if key != "details"})
    body["risk"] = {**body["risk"], "stop_price": None, "target_price": None}
    return body
