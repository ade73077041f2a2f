"""Watch coverage re-established by construction, with real inotify: a directory moved out of the
root and back within watchdog's 0.5 s pairing window, one replaced within it, nested directories
created in a burst (racing the watcher's walk), and a directory a storm left without a watch."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from cachewatchd.watch.batch import Batch, Batcher
from cachewatchd.watch.coverage import coverage_gaps
from cachewatchd.watch.native import Guard, inotify_classes
from cachewatchd.watch.observers import Watcher
from tests.support.wait import wait_until

pytestmark = pytest.mark.skipif(
    inotify_classes() is None, reason="needs watchdog's inotify internals (Linux)"
)


class Feed:
    """Every batch, in order."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.lock = threading.Lock()

    def __call__(self, batch: Batch) -> None:
        with self.lock:
            self.batches.append(batch)

    def mark(self) -> int:
        with self.lock:
            return len(self.batches)

    def changed_since(self, mark: int) -> set[Path]:
        with self.lock:
            return {p for b in self.batches[mark:] for p in b.changed}

    def dirs_removed(self) -> set[Path]:
        with self.lock:
            return {p for b in self.batches for p in b.dirs_removed}


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


def tree(root: Path) -> Path:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "sub" / "deep.py").write_text("Y = 1\n")
    return root.resolve()


def edit_is_seen(feed: Feed, source: Path, text: str) -> None:
    """Edit *source*; its event must arrive in a batch after the edit."""
    mark = feed.mark()
    source.write_text(text)
    wait_until(lambda: source in feed.changed_since(mark), 10, message=f"edit of {source}")


# -- moved away and back within the pairing window ---------------------------------------------------


def test_directory_moved_out_and_back_quickly_keeps_its_watches(tmp_path: Path) -> None:
    root = tree(tmp_path / "root")
    with capture_logs() as logs, watching(root) as (_, feed, guard):
        os.rename(root / "pkg", tmp_path / "away")
        os.rename(tmp_path / "away", root / "pkg")  # well within 0.5 s
        # watchdog reports the move-out on its own once the window closes
        wait_until(lambda: root / "pkg" in feed.dirs_removed(), 10, message="move-out reported")
        wait_until(lambda: str(root / "pkg" / "sub") in guard.watched(), 10, message="rewatched")
        edit_is_seen(feed, root / "pkg" / "sub" / "deep.py", "Y = 2\n")
        (root / "pkg" / "sub" / "new").mkdir()  # and what is created there is watched too
        wait_until(lambda: str(root / "pkg" / "sub" / "new") in guard.watched(), 10)
        edit_is_seen(feed, root / "pkg" / "sub" / "new" / "n.py", "N = 1\n")
    rewatched = [e for e in logs if e["event"] == "rewatched"]
    assert rewatched[0]["path"] == str(root / "pkg")
    assert rewatched[0]["reason"] == "moved away and back"


def test_directory_replaced_within_the_window(tmp_path: Path) -> None:
    root = tree(tmp_path / "root")
    away = tmp_path / "away"
    with watching(root) as (_, feed, guard):
        os.rename(root / "pkg", away)
        (root / "pkg" / "sub").mkdir(parents=True)  # another tree at the same path
        wait_until(lambda: root / "pkg" in feed.dirs_removed(), 10, message="move-out reported")
        wait_until(lambda: str(root / "pkg" / "sub") in guard.watched(), 10, message="rewatched")
        edit_is_seen(feed, root / "pkg" / "sub" / "fresh.py", "F = 1\n")
        mark = feed.mark()
        (away / "sub" / "deep.py").write_text("Y = 9\n")  # outside the root now: not reported
        edit_is_seen(feed, root / "pkg" / "sub" / "fresh.py", "F = 2\n")
        assert not {p for p in feed.changed_since(mark) if p.name == "deep.py"}


# -- nested directories created in a burst -------------------------------------------------------------


class _Listing:
    """What ``os.scandir`` returns, from a list taken beforehand."""

    def __init__(self, entries: list[Any]) -> None:
        self._it = iter(entries)

    def __iter__(self) -> _Listing:
        return self

    def __next__(self) -> Any:
        return next(self._it)

    def __enter__(self) -> _Listing:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def close(self) -> None:
        pass


def test_directory_created_while_its_parent_is_being_watched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``mkdir -p a/late/deeper/deepest`` finishing right after the watcher listed ``a`` (the race a
    loaded machine makes likely), made certain: the listing is taken, then the tree appears."""
    root = tmp_path.resolve()
    target = str(root / "a")
    real_scandir = os.scandir
    raced: list[str] = []

    def racing_scandir(path: Any = ".") -> Any:
        with real_scandir(path) as it:
            entries = list(it)
        if os.fsdecode(path) == target and not raced:
            raced.append(target)
            os.makedirs(os.path.join(target, "late", "deeper", "deepest"))
        return _Listing(entries)

    with watching(root) as (_, feed, guard):
        monkeypatch.setattr(os, "scandir", racing_scandir)
        os.mkdir(target)
        wait_until(lambda: raced, 10, message="the watcher listing the new directory")
        monkeypatch.setattr(os, "scandir", real_scandir)
        deepest = root / "a" / "late" / "deeper" / "deepest"
        wait_until(lambda: str(deepest) in guard.watched(), 10, message="deepest watched")
        edit_is_seen(feed, deepest / "m.py", "M = 1\n")


def test_nested_burst_under_load_is_fully_watched(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    chain = "abcdefghijklmnopqrstuvwxyz"
    stop = threading.Event()

    def burn() -> None:  # keeps the GIL busy: the watcher's threads fall behind, as under load
        while not stop.is_set():
            sum(range(2000))

    with watching(root) as (watcher, feed, guard):
        burners = [threading.Thread(target=burn) for _ in range(3)]
        for t in burners:
            t.start()
        try:
            for i in range(30):
                os.makedirs(root / f"t{i}" / os.path.join(*chain))
        finally:
            stop.set()
            for t in burners:
                t.join()
        options = watcher.walk_options
        wait_until(lambda: not coverage_gaps(root, guard.watched(), options), 20, message="cover")
        for i in range(30):
            deepest = root / f"t{i}" / os.path.join(*chain)
            edit_is_seen(feed, deepest / "m.py", f"M = {i}\n")


# -- a directory left without a watch: checked after the storm, repaired -------------------------------


def test_directory_left_unwatched_by_a_storm_is_watched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tree(tmp_path / "root")
    hole = root / "hole"
    real_skip = Guard.skip
    skipped: list[str] = []

    def lossy_once(self: Guard, path: str) -> bool:  # a watch silently lost, once
        if path == str(hole) and not skipped:
            skipped.append(path)
            return True
        return real_skip(self, path)

    monkeypatch.setattr(Guard, "skip", lossy_once)
    with capture_logs() as logs, watching(root) as (watcher, feed, guard):
        (hole / "inner").mkdir(parents=True)
        wait_until(lambda: skipped, 10, message="the lost watch")
        wait_until(lambda: str(hole / "inner") in guard.watched(), 10, message="repaired")
        assert watcher.observers()[root].kind == "native"
        edit_is_seen(feed, hole / "inner" / "x.py", "X = 1\n")
    (repair,) = [e for e in logs if e["event"] == "rewatched"]
    assert repair["path"] == str(hole)
    assert repair["directories"] == 2
    assert repair["reason"] == "left without a watch"


def test_directory_that_stays_unwatched_falls_back_to_polling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tree(tmp_path / "root")
    hole = root / "hole"
    real_skip = Guard.skip

    def lossy(self: Guard, path: str) -> bool:  # the watch can never be had
        return path == str(hole) or real_skip(self, path)

    monkeypatch.setattr(Guard, "skip", lossy)
    with watching(root) as (watcher, feed, _):
        (hole / "inner").mkdir(parents=True)
        wait_until(lambda: watcher.observers()[root].kind == "polling", 10, message="fallback")
        assert "2 directories left unwatched (first: " in watcher.observers()[root].reason
        edit_is_seen(feed, hole / "inner" / "x.py", "X = 1\n")


def test_coverage_gaps_of_a_subtree(tmp_path: Path) -> None:
    root = tree(tmp_path / "root")
    (root / "node_modules" / "x").mkdir(parents=True)
    (root / "venv" / "lib" / "deep").mkdir(parents=True)
    (root / "venv" / "pyvenv.cfg").write_text("")
    from cachewatchd.cache.walk import WalkOptions

    opts = WalkOptions()
    sub = str(root / "pkg" / "sub")
    assert coverage_gaps(root, set(), opts, below=str(root / "pkg")) == [str(root / "pkg"), sub]
    assert coverage_gaps(root, {str(root / "pkg")}, opts, below=str(root / "pkg")) == [sub]
    assert coverage_gaps(root, set(), opts, below=str(root / "node_modules" / "x")) == []
    assert coverage_gaps(root, set(), opts, below=str(root / "venv" / "lib")) == []
    assert coverage_gaps(root, set(), opts, below=str(tmp_path)) == []
    assert coverage_gaps(root, set(), opts, below=str(root)) == coverage_gaps(root, set(), opts)
    shutil.rmtree(root / "pkg")
    assert coverage_gaps(root, set(), opts, below=sub) == []
