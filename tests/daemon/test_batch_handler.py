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


def test_a_path_the_watcher_reported_is_not_reported_again_by_the_handler(tmp_path: Path) -> None:
    """The daemon's one ReportedPaths is shared by its watchers and its batch handler."""
    reported = ReportedPaths()
    batcher = Batcher(lambda batch: None)
    watcher = Watcher([tmp_path], batcher=batcher, reported=reported)
    watcher.report_denied(str(tmp_path / "denied"), PermissionError(13, "Permission denied"))
    handler = BatchHandler(
        {tmp_path: ()}, pycache_prefix=None, counters=Counters(), reported=reported
    )
    with capture_logs() as logs:
        handler._errors([(tmp_path / "denied", "Permission denied")], during="test")
    assert logs == []
    assert not reported.first_time(tmp_path / "denied")


def test_handlers_sharing_the_set_report_a_problem_once(tmp_path: Path) -> None:
    shared = ReportedPaths()  # the daemon loop's one, shared with its watchers and every handler
    first = BatchHandler({tmp_path: ()}, pycache_prefix=None, counters=Counters(), reported=shared)
    first._errors([(tmp_path / "x", "boom")], during="test")
    assert not shared.first_time(tmp_path / "x")
    again = BatchHandler({tmp_path: ()}, pycache_prefix=None, counters=Counters(), reported=shared)
    again._errors([(tmp_path / "x", "boom"), (tmp_path / "y", "boom")], during="test")
    assert (first.counters.errors, again.counters.errors) == (1, 1)
    alone = BatchHandler({tmp_path: ()}, pycache_prefix=None, counters=Counters())
    alone._errors([(tmp_path / "x", "boom")], during="test")
    assert alone.counters.errors == 1
