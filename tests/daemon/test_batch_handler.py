"""The batch handler's own parts: one report per path whichever thread finds it."""

from __future__ import annotations

import threading
from pathlib import Path

from structlog.testing import capture_logs

from cachewatchd.daemon.batch_handler import BatchHandler, Counters
from cachewatchd.log import ReportedPaths
from cachewatchd.watch.batch import Batcher
from cachewatchd.watch.observers import Watcher


def test_first_time_is_true_once_per_path_across_threads() -> None:
    reported = ReportedPaths()
    start = threading.Barrier(8)
    firsts: list[bool] = []
    lock = threading.Lock()

    def report() -> None:
        start.wait()
        for i in range(2000):
            first = reported.first_time(f"/p/{i % 50}")
            if first:
                with lock:
                    firsts.append(first)

    threads = [threading.Thread(target=report) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(firsts) == 50


def test_a_path_the_watcher_reported_is_counted_once_not_reported_again(tmp_path: Path) -> None:
    """The daemon's one ReportedPaths is shared by its watchers and its batch handler; its owner
    counts the first report, whoever makes it."""
    counted: list[str] = []
    reported = ReportedPaths(on_first=counted.append)
    batcher = Batcher(lambda batch: None)
    watcher = Watcher([tmp_path], batcher=batcher, reported=reported)
    with capture_logs() as logs:
        watcher.report_denied(str(tmp_path / "denied"), PermissionError(13, "Permission denied"))
    assert [(e["event"], e["action"]) for e in logs] == [("error", "not watched")]
    handler = BatchHandler(
        {tmp_path: ()}, pycache_prefix=None, counters=Counters(), reported=reported
    )
    with capture_logs() as logs:
        handler._errors([(tmp_path / "denied", "Permission denied")], during="test")
    assert logs == []
    assert counted == [str(tmp_path / "denied")]
    assert handler.counters.errors == 0  # the owner of the shared set counts
    assert not reported.first_time(tmp_path / "denied")


def test_handlers_sharing_the_set_report_a_problem_once(tmp_path: Path) -> None:
    counted: list[str] = []
    shared = ReportedPaths(counted.append)  # the daemon's one, shared with its watchers
    first = BatchHandler({tmp_path: ()}, pycache_prefix=None, counters=Counters(), reported=shared)
    first._errors([(tmp_path / "x", "boom")], during="test")
    assert not shared.first_time(tmp_path / "x")
    again = BatchHandler({tmp_path: ()}, pycache_prefix=None, counters=Counters(), reported=shared)
    again._errors([(tmp_path / "x", "boom"), (tmp_path / "y", "boom")], during="test")
    assert counted == [str(tmp_path / "x"), str(tmp_path / "y")]
    alone = BatchHandler({tmp_path: ()}, pycache_prefix=None, counters=Counters())
    alone._errors([(tmp_path / "x", "boom"), (tmp_path / "x", "boom")], during="test")
    assert alone.counters.errors == 1  # a handler with a set of its own counts it itself


def test_the_first_report_callback_runs_outside_the_lock() -> None:
    """The callback may look at the set again (the daemon's takes other locks): no deadlock."""
    seen: list[bool] = []
    reported = ReportedPaths(on_first=lambda path: seen.append(reported.first_time(path)))
    assert reported.first_time("/p")
    assert seen == [False]


def test_handlers_sharing_counters_guard_them_with_one_lock(tmp_path: Path) -> None:
    """A reload replaces the handler while the old one may still count (a batch under way): both
    must take the same lock, or an increment is lost."""
    counters = Counters()
    old = BatchHandler({tmp_path: ()}, pycache_prefix=None, counters=counters)
    new = BatchHandler({tmp_path: ()}, pycache_prefix=None, counters=counters)
    assert old.lock is new.lock is counters.lock
    other = BatchHandler({tmp_path: ()}, pycache_prefix=None, counters=Counters())
    assert other.lock is not counters.lock
