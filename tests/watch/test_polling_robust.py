"""The poller's thread survives what would kill it: an interval beyond what a thread can wait
(``--poll-interval 1e12``) and a pass that raises."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from cachewatchd.watch.batch import Batch, Batcher
from cachewatchd.watch.git import GitWatcher
from cachewatchd.watch.observers import Watcher
from cachewatchd.watch.polling import POLL_INTERVAL_RANGE, SourceLister, bounded_interval
from tests.support.wait import git, wait_until


class Feed:
    def __init__(self) -> None:
        self.changed: set[Path] = set()
        self.lock = threading.Lock()

    def __call__(self, batch: Batch) -> None:
        with self.lock:
            self.changed |= batch.changed

    def saw(self, path: Path) -> bool:
        with self.lock:
            return path in self.changed


@pytest.fixture
def feed() -> Iterator[tuple[Feed, Batcher]]:
    got = Feed()
    batcher = Batcher(got, quiet=0.02)
    batcher.start()
    try:
        yield got, batcher
    finally:
        batcher.stop()


def _threads(observer: Any) -> list[threading.Thread]:
    return [observer, *observer.emitters]


@pytest.mark.parametrize("interval", [1e12, float("inf"), float("nan"), -1.0, 0.0])
def test_bad_interval_never_kills_the_poller(
    tmp_path: Path, feed: tuple[Feed, Batcher], interval: float
) -> None:
    root = tmp_path.resolve()
    _, batcher = feed
    with capture_logs() as logs:
        watcher = Watcher([root], poll_mode="always", poll_interval=interval, batcher=batcher)
        watcher.start()
        try:
            observer = watcher._roots[root].observer
            threads = _threads(observer)
            assert len(threads) == 2
            # a wait of 1e12 s raised OverflowError at once in both threads; give them a moment
            # to die the way they did (a condition that must stay false, then true at the end)
            assert not wait_until(
                lambda: not all(t.is_alive() for t in threads), 0.3, raise_on_timeout=False
            )
        finally:
            watcher.stop()
    assert not any(t.is_alive() for t in threads)  # and stop() still ends them
    (warning,) = [e for e in logs if "out of range" in e.get("error", "")]
    assert warning["action"] == f"using {bounded_interval(interval):g} s"
    assert warning["error"] == f"poll interval {interval:g} out of range"


def test_bounded_interval_keeps_sane_values() -> None:
    low, high = POLL_INTERVAL_RANGE
    assert bounded_interval(0.5) == 0.5
    assert bounded_interval(1e12) == high
    assert bounded_interval(1e-9) == low
    assert bounded_interval(float("nan")) == 1.0


def test_a_failing_pass_is_logged_once_and_polling_goes_on(
    tmp_path: Path, feed: tuple[Feed, Batcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path.resolve()
    (root / "a.py").write_text("A = 1\n")
    got, batcher = feed
    real = SourceLister.__call__
    failures = [2]

    def flaky(self: SourceLister, path: str | None) -> Any:
        if failures[0] > 0:
            failures[0] -= 1
            raise RuntimeError("a bug in one pass")
        return real(self, path)

    with capture_logs() as logs:
        watcher = Watcher([root], poll_mode="always", poll_interval=0.05, batcher=batcher)
        watcher.start()
        try:
            monkeypatch.setattr(SourceLister, "__call__", flaky)
            wait_until(lambda: failures[0] == 0, 10, message="two failing passes")
            (root / "a.py").write_text("A = 22\n")
            wait_until(lambda: got.saw(root / "a.py"), 10, message="the edit after the failures")
        finally:
            watcher.stop()
    failed = [e for e in logs if "polling pass failed" in e.get("error", "")]
    assert len(failed) == 1, failed
    assert "a bug in one pass" in failed[0]["error"]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_watcher_survives_a_huge_poll_interval(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q")

    class Sink:
        def git_moved(self, move: object) -> None:
            pass

        def git_settled(self, repo: object) -> None:
            pass

    watcher = GitWatcher([repo], sink=Sink(), poll_mode="always", poll_interval=1e12)
    watcher.start()
    try:
        watcher.poke()
        wait_until(lambda: watcher.checks >= 1, 10, message="a checking pass")
        watcher.poke()
        wait_until(lambda: watcher.checks >= 2, 10, message="another checking pass")
        assert watcher._thread.is_alive()
    finally:
        watcher.stop()
