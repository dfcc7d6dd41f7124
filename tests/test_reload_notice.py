"""The notice that passes /admin/reload on to a service's other workers (two workers = two notices
on one file)."""

from __future__ import annotations

from smc_core.serving.reload_notice import ReloadNotice


def test_a_reload_is_passed_on_once_to_each_other_worker_and_never_back(tmp_path):
    path = tmp_path / "spool" / "reload-request"
    first, second, third = ReloadNotice(path), ReloadNotice(path), ReloadNotice(path)
    assert not any(n.pending() for n in (first, second, third))  # nothing announced yet
    first.announce()
    assert not first.pending()  # its own reload is done already
    assert second.pending() and third.pending()
    assert not second.pending() and not third.pending()  # once per announcement
    second.announce()
    assert first.pending() and third.pending() and not second.pending()
    assert not list(path.parent.glob(".reload-request.*"))  # written whole, nothing half-written left


def test_a_worker_started_after_a_reload_does_not_repeat_it(tmp_path):
    path = tmp_path / "reload-request"
    ReloadNotice(path).announce()
    assert not ReloadNotice(path).pending()
