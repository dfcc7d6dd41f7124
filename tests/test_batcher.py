"""The micro-batcher on its own: waiting requests run together, a lone one never waits,
batches stay within their bound, one item's failure stays its own, and plain jobs run alone
on the same thread in turn."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError

import pytest

from smc_core.serving.batcher import MicroBatcher


class Recorder:
    """A batch function that records each batch it was given and doubles every item."""

    def __init__(self, fail_on=None):
        self.batches: list[list] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def __call__(self, items):
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        return [ValueError(f"bad {item}") if item == self.fail_on else item * 2 for item in items]


def hold(batcher: MicroBatcher) -> threading.Event:
    """Keep the compute thread busy until the returned event is set."""
    release, started = threading.Event(), threading.Event()
    batcher.call(lambda: (started.set(), release.wait(10)))
    assert started.wait(10)
    return release


def test_requests_waiting_for_the_compute_thread_run_as_one_batch():
    run = Recorder()
    batcher = MicroBatcher(run, max_size=16)
    release = hold(batcher)
    futures = [batcher.submit(i) for i in range(5)]
    release.set()
    assert [f.result(10) for f in futures] == [0, 2, 4, 6, 8]
    assert run.batches == [[0, 1, 2, 3, 4]]
    assert batcher.stats.batches == 1 and batcher.stats.largest == 5
    batcher.stop()


def test_a_batch_never_exceeds_its_bound():
    run = Recorder()
    batcher = MicroBatcher(run, max_size=3)
    release = hold(batcher)
    futures = [batcher.submit(i) for i in range(7)]
    release.set()
    assert [f.result(10) for f in futures] == [i * 2 for i in range(7)]
    assert run.batches == [[0, 1, 2], [3, 4, 5], [6]]
    batcher.stop()


def test_a_lone_request_never_waits_for_company():
    run = Recorder()
    batcher = MicroBatcher(run, max_size=16, max_wait_s=5.0)
    started = time.monotonic()
    assert batcher.submit(21).result(10) == 42
    assert time.monotonic() - started < 2.5  # it did not sit out the 5 s a batch with company may wait
    assert run.batches == [[21]]
    batcher.stop()


def test_a_batch_with_company_waits_for_more_up_to_the_bound():
    run = Recorder()
    batcher = MicroBatcher(run, max_size=4, max_wait_s=5.0)
    release = hold(batcher)
    first = [batcher.submit(i) for i in range(2)]
    release.set()
    time.sleep(0.2)  # the two are taken and wait for company
    later = [batcher.submit(i) for i in range(2, 4)]  # these fill the batch to its bound: it runs at once
    assert [f.result(10) for f in first + later] == [0, 2, 4, 6]
    assert run.batches == [[0, 1, 2, 3]]
    batcher.stop()


def test_a_refused_item_fails_alone_and_a_failing_batch_fails_each_item():
    run = Recorder(fail_on=2)
    batcher = MicroBatcher(run, max_size=8)
    release = hold(batcher)
    futures = [batcher.submit(i) for i in range(4)]
    release.set()
    assert [f.result(10) for f in futures if f is not futures[2]] == [0, 2, 6]
    with pytest.raises(ValueError, match="bad 2"):
        futures[2].result(10)
    batcher.stop()

    def broken(items):
        raise RuntimeError("the model broke")

    batcher = MicroBatcher(broken)
    with pytest.raises(RuntimeError, match="the model broke"):
        batcher.submit(1).result(10)
    batcher.stop()


def test_a_cancelled_item_is_still_run_but_not_answered():
    """A caller past its deadline gives up; what its request carried is still handled."""
    run = Recorder()
    batcher = MicroBatcher(run)
    release = hold(batcher)
    kept, dropped = batcher.submit(1), batcher.submit(2)
    assert dropped.cancel()
    release.set()
    assert kept.result(10) == 2
    with pytest.raises(CancelledError):
        dropped.result(10)
    assert run.batches == [[1, 2]]
    batcher.stop()


def test_plain_jobs_run_alone_on_the_compute_thread_in_turn():
    run = Recorder()
    batcher = MicroBatcher(run, name="compute-test")
    release = hold(batcher)
    a = batcher.submit(1)
    job = batcher.call(lambda: threading.current_thread().name)
    b = batcher.submit(2)
    release.set()
    assert job.result(10) == "compute-test" and a.result(10) == 2 and b.result(10) == 4
    assert run.batches == [[1], [2]]  # the job between them split the batch: order is kept
    assert run.threads == {"compute-test"}
    with pytest.raises(ZeroDivisionError):
        batcher.call(lambda: 1 / 0).result(10)
    batcher.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        batcher.submit(3)
