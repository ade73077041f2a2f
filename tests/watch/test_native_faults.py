"""The native observer on either backend (watchdog 7 on Python 3.11+, watchdog 6 on 3.10): a watch
the kernel refuses, a tree moved in from outside the root, an overflow after a move."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from cachewatchd.watch.batch import Batch, Batcher, Rescan
from cachewatchd.watch.coverage import coverage_gaps
from cachewatchd.watch.native import Guard, inotify_classes
from cachewatchd.watch.observers import Watcher
from tests.support.inotify import fail_watches, inject_overflow
from tests.support.wait import wait_until

pytestmark = pytest.mark.skipif(
    inotify_classes() is None, reason="needs watchdog's inotify internals (Linux)"
)


class Feed:
    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.lock = threading.Lock()

    def __call__(self, batch: Batch) -> None:
        with self.lock:
            self.batches.append(batch)

    def changed(self) -> set[Path]:
        with self.lock:
            return {p for b in self.batches for p in b.changed}

    def rescans(self) -> list[Rescan]:
        with self.lock:
            return [r for b in self.batches for r in b.rescans]


@contextmanager
def watching(root: Path) -> Iterator[tuple[Watcher, Feed, Guard]]:
    feed = Feed()
    batcher = Batcher(feed, quiet=0.02)
    batcher.start()
    watcher = Watcher([root], poll_mode="never", batcher=batcher, check_interval=0.05)
    try:
        watcher.start()
        guard = watcher._roots[root].guard
        assert guard is not None
        yield watcher, feed, guard
    finally:
        watcher.stop()
        batcher.stop()


def test_refused_watch_is_reported_once_and_the_rest_is_watched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an unprivileged daemon meets at a directory it may not read: the watch is refused
    (EACCES; watchdog 6 records it as watch descriptor -1) and the walk cannot list it."""
    root = tmp_path.resolve()
    secret = root / "secret"
    (secret / "inner").mkdir(parents=True)
    (root / "ok").mkdir()
    fail_watches(monkeypatch, b"/secret", errno.EACCES)
    real_scandir = os.scandir

    def unreadable(path: Any = ".") -> Any:
        if os.fsdecode(path) == str(secret):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", unreadable)
    with capture_logs() as logs, watching(root) as (watcher, feed, guard):
        assert watcher.observers()[root].kind == "native"
        assert str(root / "ok") in guard.watched()
        assert str(secret) not in guard.watched()
        (root / "ok" / "a.py").write_text("")
        wait_until(lambda: root / "ok" / "a.py" in feed.changed(), 10)
        guard.rewatch(str(root))  # found refused again: not reported again
    denied = [e for e in logs if e["event"] == "error" and e.get("path") == str(secret)]
    assert len(denied) == 1, logs
    assert "denied" in denied[0]["error"].lower()


def test_tree_moved_in_from_outside_is_watched(tmp_path: Path) -> None:
    root = (tmp_path / "root").resolve()
    root.mkdir()
    outside = tmp_path / "outside"
    (outside / "pkg" / "sub").mkdir(parents=True)
    (outside / "pkg" / "node_modules" / "x").mkdir(parents=True)
    with capture_logs() as logs, watching(root) as (watcher, feed, guard):
        os.rename(outside, root / "moved")
        wait_until(lambda: str(root / "moved" / "pkg" / "sub") in guard.watched(), 10)
        assert str(root / "moved" / "pkg" / "node_modules") not in guard.watched()
        (root / "moved" / "pkg" / "sub" / "n.py").write_text("")
        wait_until(lambda: root / "moved/pkg/sub/n.py" in feed.changed(), 10)
        assert not coverage_gaps(root, guard.watched(), watcher.walk_options)
    assert not [e for e in logs if e["event"] == "rewatched"]  # watched as it came, not repaired


def test_overflow_after_a_rename_rewatches_the_tree_under_its_new_name(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    (root / "pkg" / "sub").mkdir(parents=True)
    with watching(root) as (watcher, feed, guard):
        os.rename(root / "pkg", root / "lib")
        wait_until(lambda: str(root / "lib" / "sub") in guard.watched(), 10)
        inject_overflow(watcher, root)
        wait_until(lambda: Rescan(root, "event queue overflow") in feed.rescans(), 10)
        watched = guard.watched()
        assert str(root / "lib" / "sub") in watched
        assert not {p for p in watched if "/pkg" in p}
        (root / "lib" / "sub" / "after.py").write_text("")
        wait_until(lambda: root / "lib/sub/after.py" in feed.changed(), 10)
