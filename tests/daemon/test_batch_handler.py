"""The batch handler's own parts: one report per path whichever thread finds it."""

from __future__ import annotations

import threading
from pathlib import Path

from cachewatchd.daemon.batch_handler import BatchHandler, Counters, ReportedPaths


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


def test_paths_reported_by_the_watchers_are_not_reported_again(tmp_path: Path) -> None:
    shared = {str(tmp_path / "denied")}  # the set the watchers add to
    reported = ReportedPaths(shared)
    assert not reported.first_time(tmp_path / "denied")
    assert reported.first_time(tmp_path / "other")
    assert str(tmp_path / "other") in shared


def test_handlers_sharing_the_set_report_a_problem_once(tmp_path: Path) -> None:
    shared: set[str] = set()  # what the daemon loop shares with its watchers and every handler
    first = BatchHandler({tmp_path: ()}, pycache_prefix=None, counters=Counters(), reported=shared)
    first._errors([(tmp_path / "x", "boom")], during="test")
    assert shared == {str(tmp_path / "x")}
    again = BatchHandler(
        {tmp_path: ()}, pycache_prefix=None, counters=Counters(), reported=ReportedPaths(shared)
    )
    again._errors([(tmp_path / "x", "boom"), (tmp_path / "y", "boom")], during="test")
    assert (first.counters.errors, again.counters.errors) == (1, 1)
    alone = BatchHandler({tmp_path: ()}, pycache_prefix=None, counters=Counters())
    alone._errors([(tmp_path / "x", "boom")], during="test")
    assert alone.counters.errors == 1
