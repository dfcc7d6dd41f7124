"""Durable background writers: a bounded queue in memory, a bounded spool on disk, the database.

Why: what the service receives (bars, prediction rows) must survive a database outage and
a restart, yet ``/predict`` must never wait for a disk or a database. ``submit`` only puts
on a bounded in-memory queue. One thread per writer takes batches off it: with the
database up and nothing spooled it writes them directly; otherwise it appends the batch
to the spool (one fsynced file per batch, named in order) and replays the spool oldest
first once the database answers again, so rows reach the database in the order they
arrived. Only a full queue or a full spool loses rows, and those are counted.

Several worker processes: each writes a spool directory of its own (``claim_spool``), held
with an exclusive lock for as long as it runs, so two processes never write or replay the
same files; a worker that starts takes over the batches of directories no live process holds
(a worker that is gone, a lower worker count than before).
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

log = logging.getLogger("smc.serving.spool")

_SEGMENT_SUFFIX = ".jsonl"


class Spool:
    """Append-only batches of JSON rows under one directory, bounded in bytes.

    Each batch is written to a temporary file, fsynced and renamed to the next sequence
    number: a crash leaves whole batches or none, and the names give the order.
    """

    def __init__(self, directory: Path, max_bytes: int):
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.directory)  # SpoolBusy when another process (or spool) holds it
        for leftover in self.directory.glob("*.tmp"):  # a batch a crash interrupted was never acknowledged
            leftover.unlink()
        segments = self.segments()
        self._next = int(segments[-1].stem) + 1 if segments else 1
        self.bytes = sum(segment.stat().st_size for segment in segments)
        self.rows = sum(_line_count(segment) for segment in segments)

    def release(self) -> None:
        """Let another process take this directory over (the spool is not written after this)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def adopt(self, directory: Path) -> int:
        """Move the batches of a spool no process holds behind this one's; returns the rows taken over."""
        directory = Path(directory)
        if not directory.is_dir() or directory.resolve() == self.directory.resolve():
            return 0
        try:
            handle = _lock(directory)
        except SpoolBusy:  # a live worker's own
            return 0
        moved = 0
        try:
            for leftover in directory.glob("*.tmp"):
                leftover.unlink()
            for segment in sorted(directory.glob(f"*{_SEGMENT_SUFFIX}")):
                rows, size = _line_count(segment), segment.stat().st_size
                segment.rename(self.directory / f"{self._next:012d}{_SEGMENT_SUFFIX}")
                self._next += 1
                self.bytes += size
                self.rows += rows
                moved += rows
        finally:
            handle.close()
        if moved:
            log.warning("spool %s: took over %d row(s) left in %s", self.directory, moved, directory)
        return moved

    def segments(self) -> list[Path]:
        """Spooled batches, oldest first."""
        return sorted(self.directory.glob(f"*{_SEGMENT_SUFFIX}"))

    def append(self, rows: Sequence[list]) -> bool:
        """Spool one batch; False (nothing written) when it would exceed the size bound."""
        data = "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows).encode()
        if self.bytes + len(data) > self.max_bytes:
            return False
        final = self.directory / f"{self._next:012d}{_SEGMENT_SUFFIX}"
        temporary = final.with_suffix(".tmp")
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.rename(final)
        self._next += 1
        self.bytes += len(data)
        self.rows += len(rows)
        return True

    def read(self, segment: Path) -> list[list]:
        with open(segment, "rb") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def remove(self, segment: Path, rows: int) -> None:
        size = segment.stat().st_size
        segment.unlink()
        self.bytes -= size
        self.rows -= rows

    def quarantine(self, segment: Path, rows: int, reason: str) -> Path:
        """Move a batch the database refuses for good out of the way (kept, never deleted)."""
        target = self.directory / "refused" / segment.name
        target.parent.mkdir(exist_ok=True)
        size = segment.stat().st_size
        segment.rename(target)
        target.with_suffix(".reason").write_text(reason + "\n")
        self.bytes -= size
        self.rows -= rows
        return target


class SpoolBusy(Exception):
    """Another process (or another spool of this one) holds the directory."""


def _lock(directory: Path):
    """An exclusive lock on ``directory`` that lasts as long as the returned handle is open
    (the kernel drops it when the process dies, however it dies)."""
    handle = open(directory / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SpoolBusy(str(directory)) from None
    return handle


def claim_spool(base: Path, max_bytes: int, worker: int | None = None) -> Spool:
    """A spool of this process's own under ``base``: ``worker-<n>``, ``n`` the worker's index when that
    one is free (a restarted worker finds its batches), else the first free one; then it takes over
    the batches of every directory under ``base`` no live process holds (and of ``base`` itself, where
    a single-process service kept them before)."""
    preferred = worker or 1
    for n in itertools.chain([preferred], (i for i in itertools.count(1) if i != preferred)):
        try:
            spool = Spool(Path(base) / f"worker-{n}", max_bytes)
            break
        except SpoolBusy:
            continue
    for other in [Path(base), *sorted(Path(base).glob("worker-*"))]:
        spool.adopt(other)
    return spool


def _serialisable(values: list) -> bool:
    try:
        json.dumps(values)
        return True
    except (TypeError, ValueError):
        return False


def _line_count(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


@dataclass
class WriterStats:
    written: int = 0
    """Rows the database has (directly or replayed from the spool)."""
    spooled: int = 0
    """Rows that went through the spool because the database did not answer."""
    dropped: int = 0
    """Rows lost: the in-memory queue or the spool was full."""
    refused: int = 0
    """Rows the database refused for good (kept in the spool's ``refused`` folder)."""


class DurableWriter:
    """One sink (``write``) fed through a bounded queue, a bounded spool and a background thread.

    ``encode``/``decode`` turn a row into JSON-safe values and back. ``write`` receives a
    list of rows and must be atomic: it either stores all of them or raises. An error
    that ``is_permanent`` judges permanent (the data itself is refused) quarantines the
    batch instead of retrying it forever; anything else is taken as the database being away.
    A spooled file that cannot be read is quarantined the same way; a row JSON cannot hold is
    counted as dropped. Anything else that goes wrong in the thread is logged with its
    traceback and shown in ``last_error``, and the thread goes on: a writer never stops silently.
    """

    def __init__(self, name: str, write: Callable[[list], None], spool: Spool, *,
                 encode: Callable[[object], list], decode: Callable[[list], object], capacity: int = 50_000,
                 batch: int = 500, interval: float = 0.1, linger: float = 0.25, retry_seconds: float = 1.0,
                 is_permanent: Callable[[Exception], bool] = lambda error: False,
                 on_drop: Callable[[int, str], None] | None = None, target: str = "database"):
        self.name, self._write, self.spool, self.target = name, write, spool, target
        self._encode, self._decode, self._is_permanent = encode, decode, is_permanent
        self.batch, self.interval, self.linger = batch, interval, linger
        self.retry_seconds, self.on_drop = retry_seconds, on_drop
        self.capacity = capacity
        self._rows: deque = deque()
        """Submitted rows: appended by request threads, taken by the writer thread. A deque and no
        queue.Queue: its append takes no lock and wakes no thread (the writer polls), so a row costs
        the request path a fraction of a microsecond and the writer no wake-up per row."""
        self._in_hand = 0
        """Rows the writer thread has taken and not yet finished (written, spooled or dropped)."""
        self.stats = WriterStats()
        self.last_error: str | None = None
        self._retry_at = 0.0
        self._next_loss_log = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"writer-{name}", daemon=True)
        self._writing_since: float | None = None
        """When the write in progress began (None between writes): a write that never returns
        shows in ``health()`` as a growing ``writing_for_s``, not as a silent stall."""

    def start(self) -> "DurableWriter":
        self._thread.start()
        return self

    def submit(self, row) -> None:
        """Never blocks: a full queue drops the row (counted)."""
        if len(self._rows) >= self.capacity:
            self._drop(1, "in-memory queue full")
        else:
            self._rows.append(row)

    def queued(self) -> int:
        """Rows submitted and not yet written or spooled."""
        return len(self._rows) + self._in_hand

    def pending(self) -> int:
        """Rows not yet in the database: queued plus spooled."""
        return self.queued() + self.spool.rows

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is in the database (or dropped)."""
        deadline = time.monotonic() + timeout
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self.pending()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what can be written within ``timeout``; whatever is left stays spooled for the next start."""
        self.flush(timeout)
        self._stop.set()
        self._thread.join(timeout=timeout + 5)
        rows = self._take(block=False)
        while rows:  # the database is away: keep the rest on disk
            self._to_spool(rows)
            self._done(rows)
            rows = self._take(block=False)
        self.spool.release()

    def health(self) -> dict:
        since = self._writing_since
        return {"written": self.stats.written, "spooled": self.stats.spooled, "dropped": self.stats.dropped,
                "refused": self.stats.refused, "spool_rows": self.spool.rows, "spool_bytes": self.spool.bytes,
                "spool_limit_bytes": self.spool.max_bytes, "queued": self.queued(),
                "last_error": self.last_error, "thread_alive": self._thread.is_alive(),
                "writing_for_s": 0.0 if since is None else round(time.monotonic() - since, 1)}

    # --- the writer thread -------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            rows = self._take(block=True)
            try:
                if self.spool.rows or time.monotonic() < self._retry_at:
                    if rows:  # behind what is spooled already: order is kept
                        self._to_spool(rows)
                    self._replay()
                elif rows:
                    self._write_fresh(rows)
            except Exception as error:  # a fault of this code, not an outage: loud, and the thread goes on
                log.exception("%s: unexpected error in the writer thread", self.name)
                self.last_error = f"writer: {type(error).__name__}: {error}"[:500]
                self._retry_at = time.monotonic() + self.retry_seconds
            finally:
                self._done(rows)

    def _take(self, block: bool) -> list:
        """The next batch (marked in hand before it leaves the queue: ``pending`` never undercounts).
        Blocking, it first sleeps ``linger`` unless a whole batch is waiting, so a row waits at most
        that long for company: one transaction per request would cost the database (and the
        server's cores) several statements and a commit for each answer; batched, a few per
        second. A writer that does not linger polls an empty queue every ``interval``."""
        if block:
            if self.linger > 0 and len(self._rows) < self.batch:
                self._stop.wait(self.linger)
            elif not self._rows:
                self._stop.wait(self.interval)
        count = min(len(self._rows), self.batch)
        self._in_hand = count
        return [self._rows.popleft() for _ in range(count)]

    def _done(self, rows: list) -> None:
        self._in_hand -= len(rows)

    def _timed_write(self, rows: list) -> None:
        self._writing_since = time.monotonic()
        try:
            self._write(rows)
        finally:
            self._writing_since = None

    def _write_fresh(self, rows: list) -> None:
        try:
            self._timed_write(rows)
            self.stats.written += len(rows)
            self.last_error = None
        except Exception as error:
            if not self._is_permanent(error):  # a permanent refusal is quarantined by the replay
                self._unavailable(error)
            self._to_spool(rows)
            self._replay()

    def _to_spool(self, rows: list) -> None:
        try:
            encoded = [self._encode(row) for row in rows]
            try:
                stored = self.spool.append(encoded)
            except (TypeError, ValueError):  # a row JSON cannot hold: spool the others, count that one lost
                kept = [values for values in encoded if _serialisable(values)]
                self._drop(len(encoded) - len(kept), "row(s) JSON cannot hold (not spooled)")
                if not kept:  # an empty batch file would replay as a write of nothing
                    return
                encoded, stored = kept, self.spool.append(kept)
            if stored:
                self.stats.spooled += len(encoded)
            else:
                self._drop(len(encoded), f"spool full ({self.spool.bytes} of {self.spool.max_bytes} bytes)")
        except OSError as error:
            self._drop(len(rows), f"spool unwritable: {error}")

    def _replay(self) -> None:
        """Write spooled batches oldest first until the spool is empty or the database fails."""
        if time.monotonic() < self._retry_at:
            return
        for segment in self.spool.segments():
            if self._stop.is_set():
                return
            try:
                encoded = self.spool.read(segment)
            except ValueError as error:  # a damaged file (JSON or UTF-8): kept aside, the rest replayed
                self._set_aside(segment, _line_count(segment), f"unreadable: {error}")
                continue
            try:
                self._timed_write([self._decode(row) for row in encoded])
            except Exception as error:
                if self._is_permanent(error):
                    self._set_aside(segment, len(encoded), f"the {self.target} refused it for good: "
                                                           f"{type(error).__name__}: {error}")
                    continue
                self._unavailable(error)
                return
            self.spool.remove(segment, len(encoded))
            self.stats.written += len(encoded)
            if self.last_error is not None:
                log.warning("%s: %s back; replaying the spool", self.name, self.target)
            self.last_error = None
        if not self.spool.rows:
            self._retry_at = 0.0

    def _set_aside(self, segment: Path, rows: int, reason: str) -> None:
        """A spooled batch no retry will write: kept in ``refused/`` with the reason, counted."""
        where = self.spool.quarantine(segment, rows, reason)
        self.stats.refused += rows
        log.error("%s: %d spooled row(s) set aside in %s: %s", self.name, rows, where, reason)

    def _unavailable(self, error: Exception) -> None:
        if self.last_error is None:  # said once per outage, not on every retry
            log.warning("%s: %s unavailable, spooling to %s (%s: %s)", self.name, self.target, self.spool.directory,
                        type(error).__name__, str(error).strip()[:300])
        self.last_error = f"{type(error).__name__}: {str(error).strip()}"[:500]
        self._retry_at = time.monotonic() + self.retry_seconds

    def _drop(self, count: int, reason: str) -> None:
        self.stats.dropped += count
        now = time.monotonic()
        if now >= self._next_loss_log:  # once every 10 s, with the running total: never a log flood
            log.error("%s: %d row(s) lost so far: %s", self.name, self.stats.dropped, reason)
            self._next_loss_log = now + 10.0
        if self.on_drop is not None:
            self.on_drop(count, reason)
