"""Each serving worker spools to a directory of its own: two processes never write or replay the same
files, and what a worker that is gone left behind is taken over by one that starts; a writer's
stalled write shows in its health."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from smc_core.serving.spool import DurableWriter, Spool, SpoolBusy, claim_spool

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 1 << 20


def test_workers_get_their_own_directories_and_a_held_one_is_never_shared(tmp_path):
    first = claim_spool(tmp_path, LIMIT, worker=1)
    second = claim_spool(tmp_path, LIMIT, worker=2)
    assert (first.directory.name, second.directory.name) == ("worker-1", "worker-2")
    clash = claim_spool(tmp_path, LIMIT, worker=1)  # index 1 is held: the first free one instead
    assert clash.directory.name == "worker-3"
    try:
        Spool(first.directory, LIMIT)
        raise AssertionError("a held spool was opened a second time")
    except SpoolBusy:
        pass
    first.release()
    assert claim_spool(tmp_path, LIMIT, worker=1).directory.name == "worker-1"  # a restarted worker: its own again


def test_another_process_holding_a_spool_keeps_it(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from smc_core.serving.spool import claim_spool; "
                               f"s = claim_spool({str(tmp_path)!r}, {LIMIT}, worker=1); s.append([[1]]); "
                               "print(s.directory.name, flush=True); time.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "worker-1"
        mine = claim_spool(tmp_path, LIMIT, worker=1)
        assert mine.directory.name == "worker-2" and mine.rows == 0  # its batch stays with it, not adopted
        assert len(list((tmp_path / "worker-1").glob("*.jsonl"))) == 1
    finally:
        holder.kill()
        holder.wait()
    mine.release()
    taken = claim_spool(tmp_path, LIMIT, worker=2)  # the holder is gone: its batch is taken over
    assert taken.rows == 1 and taken.read(taken.segments()[0]) == [[1]]
    assert list((tmp_path / "worker-1").glob("*.jsonl")) == []


def test_a_starting_worker_takes_over_batches_no_live_worker_holds_in_order(tmp_path):
    # batches of a single-process service (directly under the base) and of a worker no longer run
    legacy = tmp_path / "000000000001.jsonl"
    legacy.write_text('["legacy", 1]\n["legacy", 2]\n')
    gone = claim_spool(tmp_path, LIMIT, worker=3)
    gone.append([["gone", 1]])
    gone.append([["gone", 2]])
    gone.release()
    alive = claim_spool(tmp_path, LIMIT, worker=2)
    assert alive.rows == 4  # it took over what the gone worker held (the legacy batch included) when it started
    alive.append([["alive", 1]])

    own = claim_spool(tmp_path, LIMIT, worker=1)
    own_batches = [own.read(segment) for segment in own.segments()]
    assert own_batches == []  # the live worker's batches are its own; nothing was left elsewhere
    batches = [alive.read(segment) for segment in alive.segments()]
    assert batches == [[["legacy", 1], ["legacy", 2]], [["gone", 1]], [["gone", 2]], [["alive", 1]]]
    assert alive.bytes == sum(segment.stat().st_size for segment in alive.segments())
    assert not legacy.exists() and list((tmp_path / "worker-3").glob("*.jsonl")) == []


def test_a_write_that_does_not_return_shows_in_the_writers_health(tmp_path):
    """A stalled write is visible (``writing_for_s`` grows, the thread is alive), not a silent stop."""
    release, written = threading.Event(), []

    def write(rows):
        release.wait(10)
        written.extend(rows)

    writer = DurableWriter("test", write, Spool(tmp_path / "spool", 1 << 20), encode=list, decode=tuple,
                           linger=0).start()
    try:
        assert writer.health()["writing_for_s"] == 0.0 and writer.health()["thread_alive"]
        writer.submit((1,))
        time.sleep(0.6)
        stalled = writer.health()
        assert stalled["writing_for_s"] >= 0.4 and stalled["queued"] == 1 and stalled["thread_alive"]
        release.set()
        assert writer.flush(5) and written == [(1,)]
        assert writer.health()["writing_for_s"] == 0.0
    finally:
        release.set()
        writer.stop(2)


def test_a_row_json_cannot_hold_is_counted_and_a_damaged_spool_file_is_kept_aside(tmp_path):
    """Database away: a batch with one row JSON cannot hold spools the others and counts that one
    dropped; a spooled file damaged on disk goes to ``refused`` and the batches after it replay;
    the thread stays alive throughout."""
    up, written = threading.Event(), []

    def write(rows):
        if not rows:  # as the real writers: min() of no timestamps
            raise ValueError("an empty batch")
        if not up.is_set():
            raise ConnectionError("database away")
        written.extend(rows)

    spool = Spool(tmp_path / "spool", 1 << 20)
    spool.append([[0, "damaged"]])
    first = spool.segments()[0]
    first.write_bytes(b'[0, "dam\n')  # cut short mid-write by something outside the spool's control
    writer = DurableWriter("test", write, spool, encode=list, decode=tuple, linger=0, retry_seconds=0.2).start()
    try:
        writer.submit((0, object()))  # a batch of nothing but such rows leaves no empty file behind
        time.sleep(0.3)
        for row in ((1, "a"), (2, object()), (3, "c")):
            writer.submit(row)
        deadline = time.monotonic() + 5
        while writer.pending() != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        health = writer.health()
        assert health["dropped"] == 2 and health["spool_rows"] == 2 and health["thread_alive"]
        up.set()
        assert writer.flush(5)
        assert written == [(1, "a"), (3, "c")]
        health = writer.health()
        assert health["refused"] == 1 and health["thread_alive"] and health["last_error"] is None
        assert (tmp_path / "spool" / "refused" / first.name).exists()
        assert "unreadable" in (tmp_path / "spool" / "refused" / first.name).with_suffix(".reason").read_text()
    finally:
        up.set()
        writer.stop(2)


def test_an_unexpected_error_in_the_writer_thread_is_shown_and_the_thread_goes_on(tmp_path):
    """A fault of the writer's own code (here: the spool's directory removed under it while the
    database is away, so the spool cannot even be listed) is logged and shown in ``last_error``;
    the thread is still alive and writes what comes once the fault is gone."""
    up, written = threading.Event(), []

    def write(rows):
        if not up.is_set():
            raise ConnectionError("database away")
        written.extend(rows)

    spool = Spool(tmp_path / "spool", 1 << 20)
    writer = DurableWriter("test", write, spool, encode=list, decode=tuple, linger=0, retry_seconds=0.2).start()
    broken = {"on": True}
    segments = spool.segments

    def listing():
        if broken["on"]:
            raise RuntimeError("spool listing failed")
        return segments()

    spool.segments = listing
    try:
        writer.submit((1,))
        deadline = time.monotonic() + 5
        while "RuntimeError" not in (writer.health()["last_error"] or "") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "writer: RuntimeError: spool listing failed" in writer.health()["last_error"]
        assert writer.health()["thread_alive"]
        broken["on"] = False
        up.set()
        assert writer.flush(5) and written == [(1,)]
    finally:
        up.set()
        writer.stop(2)


def test_a_full_queue_drops_and_counts_rows_without_blocking_and_keeps_the_rest_in_order(tmp_path):
    """The in-memory queue is bounded: past ``capacity`` a submitted row is dropped at once, counted
    and reported (``on_drop``), never waited for; what was queued is written in submission order,
    in batches of at most ``batch`` rows, and ``pending`` counts a batch the thread holds."""
    entered, release, batches, lost = threading.Event(), threading.Event(), [], []

    def write(rows):
        entered.set()
        release.wait(5)  # the database is slow: the first batch stays in the writer's hands
        batches.append(list(rows))

    writer = DurableWriter("test", write, Spool(tmp_path / "spool", LIMIT), encode=list, decode=tuple, capacity=4,
                           batch=3, linger=0, on_drop=lambda count, reason: lost.append((count, reason)))
    started = time.perf_counter()
    for i in range(6):  # not started yet: nothing is taken, the queue fills up
        writer.submit((i,))
    assert time.perf_counter() - started < 0.5
    assert writer.health()["queued"] == 4 and writer.health()["dropped"] == 2
    assert lost == [(1, "in-memory queue full")] * 2
    writer.start()
    try:
        assert entered.wait(5)
        assert writer.pending() == 4  # three in the writer's hands, one queued
        release.set()
        assert writer.flush(5)
        assert batches == [[(0,), (1,), (2,)], [(3,)]] and writer.health()["written"] == 4
    finally:
        release.set()
        writer.stop(2)
