"""One compute thread that runs waiting /predict requests together: the micro-batch.

Why: the model is so small that one forward pass over eight windows costs little more than
over one, while the requests of a busy strategy (several charts, several clients) arrive
within the same few milliseconds. Whatever is waiting when the compute thread becomes free
is taken together (up to ``max_size``) and run as one batch; a request that finds the queue
empty runs at once and never waits for company. ``max_wait_s`` lets a batch that already
has company wait that much longer for more (0: never wait).

Why one thread: a second compute thread only contends for the two cores and the GIL with
the event loop (measured: ~10x slower with 2 torch threads); everything that must not
interleave with predictions (a reload's warm-up) runs here too, through ``call``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

log = logging.getLogger("smc.serving")
Item = TypeVar("Item")


@dataclass
class _Job:
    future: Future
    item: object = None
    call: Callable[[], object] | None = None
    """Set for a plain job, which runs alone; None for a batchable item."""


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest: int = 0
    sizes: dict[int, int] = field(default_factory=dict)
    """How many batches had each size."""


class MicroBatcher(Generic[Item]):
    """``run(items)`` is called on the compute thread with every batch and returns one outcome per
    item: a value, or an exception instance that the item's future then raises."""

    def __init__(self, run: Callable[[Sequence[Item]], Sequence[object]], max_size: int = 16,
                 max_wait_s: float = 0.0, name: str = "predict"):
        if max_size < 1 or max_wait_s < 0:
            raise ValueError(f"max_size must be >= 1 and max_wait_s >= 0, got {max_size} and {max_wait_s}")
        self._run, self.max_size, self.max_wait_s = run, max_size, max_wait_s
        self._queue: deque[_Job] = deque()
        self._ready = threading.Condition()
        self._stopped = False
        self.stats = BatchStats()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Item) -> Future:
        """Queue one item; its future gets the item's outcome."""
        return self._put(_Job(Future(), item=item))

    def call(self, function: Callable[[], object]) -> Future:
        """Run ``function`` on the compute thread, alone, in turn with the batches."""
        return self._put(_Job(Future(), call=function))

    def stop(self, timeout: float = 5.0) -> None:
        """Finish what is queued, then end the thread."""
        with self._ready:
            self._stopped = True
            self._ready.notify()
        self._thread.join(timeout)

    def _put(self, job: _Job) -> Future:
        with self._ready:
            if self._stopped:
                raise RuntimeError("the compute thread has stopped")
            self._queue.append(job)
            self._ready.notify()
        return job.future

    def _take(self) -> list[_Job] | None:
        """The next plain job alone, or the batchable items at the head of the queue (waiting
        ``max_wait_s`` for more only when the batch already has company)."""
        with self._ready:
            while not self._queue:
                if self._stopped:
                    return None
                self._ready.wait()
            if self._queue[0].call is not None:
                return [self._queue.popleft()]
            batch = self._drain([])
            if 1 < len(batch) < self.max_size and self.max_wait_s > 0:
                deadline = time.monotonic() + self.max_wait_s
                while len(batch) < self.max_size and (left := deadline - time.monotonic()) > 0:
                    self._ready.wait(left)
                    batch = self._drain(batch)
                    if self._queue and self._queue[0].call is not None:
                        break
            return batch

    def _drain(self, batch: list[_Job]) -> list[_Job]:
        while self._queue and len(batch) < self.max_size and self._queue[0].call is None:
            batch.append(self._queue.popleft())
        return batch

    def _loop(self) -> None:
        while (jobs := self._take()) is not None:
            if jobs[0].call is not None:
                job = jobs[0]
                if job.future.set_running_or_notify_cancel():
                    try:
                        job.future.set_result(job.call())
                    except BaseException as error:  # the caller gets it; the thread goes on
                        job.future.set_exception(error)
                continue
            # A cancelled item (its caller gave up: the deadline passed) is still run, so that
            # everything a request carries is kept; only its answer is dropped.
            wanted = [job.future.set_running_or_notify_cancel() for job in jobs]
            try:
                outcomes = self._run([job.item for job in jobs])
                if len(outcomes) != len(jobs):
                    raise RuntimeError(f"the batch function returned {len(outcomes)} outcomes for {len(jobs)} items")
            except BaseException as error:
                log.exception("a micro-batch failed")
                outcomes = [error] * len(jobs)
            self._count(len(jobs))
            for job, keep, outcome in zip(jobs, wanted, outcomes):
                if not keep:
                    continue
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)

    def _count(self, size: int) -> None:
        stats = self.stats
        stats.batches += 1
        stats.items += size
        stats.largest = max(stats.largest, size)
        stats.sizes[size] = stats.sizes.get(size, 0) + 1
