"""The prediction log: a bounded queue drained by one background thread with batched COPY.

Why this shape: ``/predict`` must never wait for the database. ``submit`` only appends to a
bounded queue (never blocks); a full queue, or a batch the database refuses, is dropped and
counted, so an outage costs log rows, never latency or errors for the trader.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

from smc_core.db import Database

log = logging.getLogger("smc.serving.log")

COLUMNS = ("ts", "request_id", "shadow", "logged_at", "symbol", "timeframe", "model_version", "label", "raw_label",
           "confidence", "p_long", "p_short", "p_skip", "position_size", "latency_ms", "features", "feature_set")


class PredictionLog:
    def __init__(self, database: Callable[[], Database], capacity: int = 10_000, batch: int = 500,
                 interval: float = 0.2, on_drop: Callable[[int, str], None] | None = None):
        self._database, self._queue = database, queue.Queue(maxsize=capacity)
        self.batch, self.interval, self.on_drop = batch, interval, on_drop
        self.written = 0
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)

    def start(self) -> "PredictionLog":
        self._thread.start()
        return self

    def submit(self, row: dict) -> None:
        try:
            self._queue.put_nowait(tuple(row[c] for c in COLUMNS))
        except queue.Full:
            self._dropped(1, "queue full")

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is written or dropped (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            rows = self._take()
            if rows:
                try:
                    self._write(rows)
                    self.written += len(rows)
                except Exception as error:  # database down or refusing: count, keep serving
                    self._dropped(len(rows), f"{type(error).__name__}: {error}")
                    self._stop.wait(1.0)
                finally:
                    for _ in rows:
                        self._queue.task_done()

    def _take(self) -> list[tuple]:
        try:
            rows = [self._queue.get(timeout=self.interval)]
        except queue.Empty:
            return []
        while len(rows) < self.batch:
            try:
                rows.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return rows

    def _write(self, rows: list[tuple]) -> None:
        db = self._database()
        times = [row[0] for row in rows]
        with db.connection() as conn:
            conn.execute("SELECT smc_prepare_time_range('predictions', %s, %s)", (min(times), max(times)))
            with conn.cursor().copy(f"COPY predictions ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)

    def _dropped(self, count: int, reason: str) -> None:
        self.dropped += count
        log.warning("prediction log dropped %d row(s): %s", count, reason)
        if self.on_drop is not None:
            self.on_drop(count, reason)
