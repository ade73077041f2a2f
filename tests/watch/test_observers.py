"""Observers on real trees: real inotify, real polling, injected kernel limits and a real overflow."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from watchdog.utils.dirsnapshot import DirectorySnapshot, DirectorySnapshotDiff

from cachewatchd.cache.walk import WalkOptions
from cachewatchd.watch.batch import Batch, Batcher, Rescan
from cachewatchd.watch.coverage import coverage_gaps
from cachewatchd.watch.observers import Watcher
from cachewatchd.watch.polling import SourceLister, change_stat
from tests.support.inotify import fail_instances, fail_watches, inject_overflow, reader_lock
from tests.support.users import unprivileged
from tests.support.wait import wait_until

inotify_c = pytest.importorskip("watchdog.observers.inotify_c")

MODES = ["never", "always"]  # native inotify, polling


class Feed:
    """Records what the batcher hands over."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.lock = threading.Lock()

    def __call__(self, batch: Batch) -> None:
        with self.lock:
            self.batches.append(batch)

    def changed(self) -> set[Path]:
        with self.lock:
            return {p for b in self.batches for p in b.changed}

    def removed(self) -> set[Path]:
        with self.lock:
            return {p for b in self.batches for p in b.removed}

    def dirs_removed(self) -> set[Path]:
        with self.lock:
            return {p for b in self.batches for p in b.dirs_removed}

    def rescans(self) -> list[Rescan]:
        with self.lock:
            return [r for b in self.batches for r in b.rescans]

    def rescan_reasons(self) -> str:
        return " | ".join(r.reason for r in self.rescans())


@contextmanager
def watching(roots: list[Path], **kwargs: Any) -> Iterator[tuple[Watcher, Feed]]:
    feed = Feed()
    batcher = Batcher(feed, quiet=0.02)
    batcher.start()
    kwargs.setdefault("poll_interval", 0.05)
    kwargs.setdefault("check_interval", 0.05)
    watcher = Watcher(roots, batcher=batcher, **kwargs)
    try:
        watcher.start()
        yield watcher, feed
    finally:
        watcher.stop()
        batcher.stop()


def _tree(root: Path) -> Path:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "mod.py").write_text("X = 1\n")
    (root / "pkg" / "sub" / "deep.py").write_text("Y = 1\n")
    (root / "notes.txt").write_text("hello\n")
    return root.resolve()


# -- sources: edit, create, delete, rename -----------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_edit_create_delete_rename(tmp_path: Path, mode: str) -> None:
    root = _tree(tmp_path)
    with watching([root], poll_mode=mode) as (watcher, feed):
        assert watcher.observers()[root].kind == ("native" if mode == "never" else "polling")
        (root / "pkg" / "mod.py").write_text("X = 2\n")
        (root / "new.py").write_text("")
        wait_until(lambda: {root / "pkg/mod.py", root / "new.py"} <= feed.changed(), 10)
        (root / "pkg" / "__init__.py").unlink()
        os.rename(root / "pkg" / "sub" / "deep.py", root / "pkg" / "sub" / "moved.py")
        wait_until(
            lambda: {root / "pkg/__init__.py", root / "pkg/sub/deep.py"} <= feed.removed(), 10
        )
        wait_until(lambda: root / "pkg/sub/moved.py" in feed.changed(), 10)
    assert root / "notes.txt" not in feed.changed()


@pytest.mark.parametrize("mode", MODES)
def test_atomic_save_by_rename_over_the_source(tmp_path: Path, mode: str) -> None:
    root = _tree(tmp_path)
    with watching([root], poll_mode=mode) as (_, feed):
        tmp = root / "pkg" / ".mod.py.swp"
        tmp.write_text("X = 3\n")
        os.replace(tmp, root / "pkg" / "mod.py")
        wait_until(lambda: root / "pkg/mod.py" in feed.changed(), 10)


@pytest.mark.parametrize("mode", MODES)
def test_mtime_restored_same_size_edit_is_seen(tmp_path: Path, mode: str) -> None:
    root = _tree(tmp_path)
    mod = root / "pkg" / "mod.py"
    before = mod.stat()
    with watching([root], poll_mode=mode) as (_, feed):
        mod.write_text("X = 9\n")  # same size
        os.utime(mod, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = mod.stat()
        assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
        wait_until(lambda: mod in feed.changed(), 10, message="invisible edit seen")


def test_change_stat_makes_the_snapshot_diff_see_a_restored_mtime(tmp_path: Path) -> None:
    mod = _tree(tmp_path) / "pkg" / "mod.py"
    before = mod.stat()
    plain_ref = DirectorySnapshot(str(tmp_path), stat=os.lstat)
    ours_ref = DirectorySnapshot(str(tmp_path), stat=change_stat)
    mod.write_text("X = 8\n")
    os.utime(mod, ns=(before.st_atime_ns, before.st_mtime_ns))
    plain = DirectorySnapshotDiff(plain_ref, DirectorySnapshot(str(tmp_path), stat=os.lstat))
    ours = DirectorySnapshotDiff(ours_ref, DirectorySnapshot(str(tmp_path), stat=change_stat))
    assert str(mod) not in plain.files_modified  # what stock polling would miss
    assert str(mod) in ours.files_modified
    st = change_stat(str(mod))
    assert st.st_ino == before.st_ino
    assert st.st_size == before.st_size


@pytest.mark.parametrize("mode", MODES)
def test_directory_rename_and_delete_remove_the_sources_below(tmp_path: Path, mode: str) -> None:
    root = _tree(tmp_path)
    with watching([root], poll_mode=mode) as (_, feed):
        os.rename(root / "pkg", root / "lib")
        wait_until(lambda: root / "pkg" in feed.dirs_removed(), 10, message="dir moved away")
        wait_until(lambda: root / "pkg/sub/deep.py" in feed.removed(), 10)
        wait_until(lambda: root / "lib/sub/deep.py" in feed.changed(), 10)
        shutil.rmtree(root / "lib")
        wait_until(lambda: root / "lib" in feed.dirs_removed(), 10, message="dir deleted")
        wait_until(lambda: root / "lib/mod.py" in feed.removed(), 10)


@pytest.mark.parametrize("mode", MODES)
def test_directory_moved_out_of_the_root(tmp_path: Path, mode: str) -> None:
    root = _tree(tmp_path / "root")
    outside = tmp_path / "outside"
    with watching([root], poll_mode=mode) as (watcher, feed):
        os.rename(root / "pkg", outside)
        wait_until(lambda: root / "pkg" in feed.dirs_removed(), 10)
        guard = watcher._roots[root].guard
        if guard is not None:  # native: the watches that left with the tree are dropped
            wait_until(lambda: str(root / "pkg") not in guard.watched(), 10)
        (outside / "sub" / "elsewhere.py").write_text("")
        (root / "marker.py").write_text("")
        wait_until(lambda: root / "marker.py" in feed.changed(), 10)
        assert not any(p.name == "elsewhere.py" for p in feed.changed())
        os.rename(outside, root / "back")  # and a tree moved in from outside
        wait_until(lambda: root / "back/sub/deep.py" in feed.changed(), 10)


# -- what is not watched ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_pycache_excluded_dirs_and_venvs_are_ignored(tmp_path: Path, mode: str) -> None:
    root = _tree(tmp_path)
    for d in ("node_modules/x", ".git/hooks", "env/lib", "pkg/__pycache__", "gen/out"):
        (root / d).mkdir(parents=True)
    (root / "env" / "pyvenv.cfg").write_text("home = /usr\n")
    with watching([root], poll_mode=mode, excludes=["gen"]) as (watcher, feed):
        if mode == "never":
            guard = watcher._roots[root].guard
            assert guard is not None
            watched = guard.watched()
            assert str(root / "pkg" / "sub") in watched
            # watched for the pycs written there (the daemon checks each), never entered
            assert str(root / "pkg" / "__pycache__") in watched
            for skipped in ("node_modules", ".git", "env", "env/lib", "gen"):
                assert str(root / skipped) not in watched
        noise = [
            root / "node_modules/x/a.py",
            root / ".git/hooks/h.py",
            root / "env/lib/site.py",
            root / "pkg/__pycache__/mod.cpython-311.pyc",
            root / "gen/out/g.py",
            root / "pkg/legacy.pyc",
        ]
        for path in noise:
            path.write_text("")
        (root / "marker.py").write_text("")
        wait_until(lambda: root / "marker.py" in feed.changed(), 10)
        shutil.rmtree(root / "node_modules")
        (root / "marker2.py").write_text("")
        wait_until(lambda: root / "marker2.py" in feed.changed(), 10)
    assert not set(noise) & (feed.changed() | feed.removed())
    assert root / "node_modules" not in feed.dirs_removed()


def test_new_directories_get_watched_with_the_same_pruning(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    with watching([root], poll_mode="never") as (watcher, feed):
        (root / "fresh" / "inner").mkdir(parents=True)
        (root / "fresh" / "node_modules").mkdir()
        guard = watcher._roots[root].guard
        assert guard is not None
        wait_until(lambda: str(root / "fresh" / "inner") in guard.watched(), 10)
        (root / "fresh" / "inner" / "n.py").write_text("")
        wait_until(lambda: root / "fresh/inner/n.py" in feed.changed(), 10)
        assert str(root / "fresh" / "node_modules") not in guard.watched()


def test_coverage_gaps_lists_unwatched_directories(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "node_modules" / "x").mkdir(parents=True)
    (root / "venv" / "lib").mkdir(parents=True)
    (root / "venv" / "pyvenv.cfg").write_text("")
    (root / "pkg" / "__pycache__").mkdir()
    opts = WalkOptions()
    everything = {str(root), str(root / "pkg"), str(root / "pkg" / "sub")}
    assert coverage_gaps(root, everything, opts) == []
    assert coverage_gaps(root, {str(root)}, opts) == [str(root / "pkg"), str(root / "pkg" / "sub")]
    assert str(root / "venv") in coverage_gaps(root, everything, WalkOptions(include_venvs=True))


# -- faults: limits, overflow, vanished roots, permissions ------------------------------------------
def test_watch_limit_at_start_falls_back_to_polling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _tree(tmp_path)
    fail_watches(monkeypatch, b"/pkg/sub", errno.ENOSPC)
    with capture_logs() as logs, watching([root], poll_mode="auto") as (watcher, feed):
        choice = watcher.observers()[root]
        assert choice.kind == "polling"
        assert "inotify watch limit reached" in choice.reason
        wait_until(lambda: "observer fallback" in feed.rescan_reasons(), 10)
        (root / "pkg" / "sub" / "deep.py").write_text("Y = 2\n")
        wait_until(lambda: root / "pkg/sub/deep.py" in feed.changed(), 10)
    fallbacks = [e for e in logs if e["event"] == "observer-fallback"]
    assert len(fallbacks) == 1
    assert fallbacks[0]["root"] == str(root)
    assert "pkg/sub" in fallbacks[0]["reason"]


def test_instance_limit_falls_back_to_polling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _tree(tmp_path)

    fail_instances(monkeypatch)
    with watching([root], poll_mode="auto") as (watcher, feed):
        assert watcher.observers()[root].kind == "polling"
        assert "instance limit" in watcher.observers()[root].reason
        (root / "pkg" / "mod.py").write_text("X = 5\n")
        wait_until(lambda: root / "pkg/mod.py" in feed.changed(), 10)


def test_silently_skipped_directory_is_caught_by_the_coverage_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _tree(tmp_path)
    from cachewatchd.watch.native import Guard

    real_watched = Guard.watched

    def lossy(self: Any) -> set[str]:  # what watchdog 7 does at the limit: no error, no watch
        return {p for p in real_watched(self) if not p.endswith("/sub")}

    monkeypatch.setattr(Guard, "watched", lossy)
    with watching([root], poll_mode="auto") as (watcher, _):
        choice = watcher.observers()[root]
        assert choice.kind == "polling"
        assert "1 directory left unwatched" in choice.reason


def test_watch_limit_while_running_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _tree(tmp_path)
    with watching([root], poll_mode="auto") as (watcher, feed):
        assert watcher.observers()[root].kind == "native"
        fail_watches(monkeypatch, b"/later", errno.ENOSPC)
        (root / "later").mkdir()
        wait_until(lambda: watcher.observers()[root].kind == "polling", 10, message="fallback")
        (root / "later" / "x.py").write_text("")
        wait_until(lambda: root / "later/x.py" in feed.changed(), 10)
        assert "observer fallback" in feed.rescan_reasons()


def test_injected_queue_overflow_requests_a_rescan(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    with watching([root], poll_mode="never") as (watcher, feed):
        inject_overflow(watcher, root)
        wait_until(lambda: Rescan(root, "event queue overflow") in feed.rescans(), 10)
        (root / "pkg" / "sub" / "after.py").write_text("")  # watches were rebuilt
        wait_until(lambda: root / "pkg/sub/after.py" in feed.changed(), 10)


def test_real_queue_overflow_requests_a_rescan(tmp_path: Path) -> None:
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 200_000:
        pytest.skip(f"max_queued_events={limit}: flooding would take too long")
    root = _tree(tmp_path)
    a, b = root / "pkg" / "mod.py", root / "pkg" / "__init__.py"
    with watching([root], poll_mode="never") as (watcher, feed):
        with reader_lock(watcher, root):
            fa, fb = os.open(a, os.O_WRONLY), os.open(b, os.O_WRONLY)
            try:
                for _ in range(limit // 2 + 4096):  # alternate files: no coalescing
                    os.pwrite(fa, b"#", 0)
                    os.pwrite(fb, b"#", 0)
            finally:
                os.close(fa)
                os.close(fb)
        wait_until(lambda: Rescan(root, "event queue overflow") in feed.rescans(), 20)


@pytest.mark.parametrize("mode", MODES)
def test_root_deleted_and_recreated_resumes(tmp_path: Path, mode: str) -> None:
    root = _tree(tmp_path / "root")
    with watching([root], poll_mode=mode) as (watcher, feed):
        shutil.rmtree(root)
        wait_until(lambda: root in feed.dirs_removed(), 10, message="root removal")
        wait_until(lambda: not watcher.attached()[root], 10, message="detached")
        root.mkdir()
        wait_until(lambda: watcher.attached()[root], 10, message="re-attached")
        wait_until(lambda: "root is back" in feed.rescan_reasons(), 10)
        (root / "again.py").write_text("")
        wait_until(lambda: root / "again.py" in feed.changed(), 10, message="events resume")


def test_root_replaced_behind_our_back_is_reattached(tmp_path: Path) -> None:
    root = _tree(tmp_path / "root")
    with watching([root], poll_mode="never") as (watcher, feed):
        os.rename(root, tmp_path / "old")  # the watch follows the inode, not the path
        root.mkdir()
        wait_until(lambda: "root is back" in feed.rescan_reasons(), 10)
        (root / "fresh.py").write_text("")
        wait_until(lambda: root / "fresh.py" in feed.changed(), 10)
        (tmp_path / "old" / "stale.py").write_text("")
        assert watcher.attached()[root]
    assert tmp_path / "old" / "stale.py" not in feed.changed()


def test_missing_root_at_start_is_attached_when_it_appears(tmp_path: Path) -> None:
    root = tmp_path / "later"
    with capture_logs() as logs, watching([root], poll_mode="never") as (watcher, feed):
        assert not watcher.attached()[root]
        root.mkdir()
        wait_until(lambda: watcher.attached()[root], 10)
        (root / "a.py").write_text("")
        wait_until(lambda: root / "a.py" in feed.changed(), 10)
    assert sum(1 for e in logs if e["event"] == "error") == 1  # said once, not every second


def test_source_lister_keeps_sources_directories_and_the_pycache_itself(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "pkg" / "__pycache__").mkdir()
    (root / "node_modules").mkdir()
    (root / "venv").mkdir()
    (root / "venv" / "pyvenv.cfg").write_text("")
    lister = SourceLister(str(root), WalkOptions(), lambda p, e: None)
    assert sorted(e.name for e in lister(str(root))) == ["pkg", "venv"]
    assert list(lister(str(root / "venv"))) == []
    listed = sorted(e.name for e in lister(str(root / "pkg")))
    assert listed == ["__init__.py", "__pycache__", "mod.py", "sub"]
    assert list(lister(str(root / "pkg" / "__pycache__"))) == []  # its stat only


_DENIED_SCRIPT = r"""
import json, os, sys, threading
from pathlib import Path
from structlog.testing import capture_logs
from cachewatchd.watch.batch import Batcher
from cachewatchd.watch.observers import Watcher
root = Path(sys.argv[1]); mode = sys.argv[2]
seen = threading.Event(); changed = []
def on_batch(b):
    changed.extend(str(p) for p in b.changed)
    if str(root / "ok" / "a.py") in changed: seen.set()
with capture_logs() as logs:
    batcher = Batcher(on_batch, quiet=0.02); batcher.start()
    w = Watcher([root], poll_mode=mode, poll_interval=0.05, batcher=batcher); w.start()
    (root / "ok" / "a.py").write_text("")
    ok = seen.wait(20)
    w.stop(); batcher.stop()
print(json.dumps({"ok": ok, "kind": w.observers()[root].kind,
                  "errors": [e for e in logs if e["event"] == "error"]}))
"""


@pytest.mark.parametrize("mode", MODES)
def test_permission_denied_subtree_is_reported_once(mode: str) -> None:
    prefix = unprivileged()
    base = Path(tempfile.mkdtemp(prefix="cw-perm-"))
    try:
        base.chmod(0o755)
        (base / "ok").mkdir(mode=0o777)
        (base / "ok").chmod(0o777)
        (base / "secret" / "inner").mkdir(parents=True)
        (base / "secret").chmod(0o000)
        proc = subprocess.run(
            [*prefix, sys.executable, "-c", _DENIED_SCRIPT, str(base), mode],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=str(Path(__file__).resolve().parents[2]),
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        (base / "secret").chmod(0o755)
        shutil.rmtree(base)
    assert result["ok"]
    assert result["kind"] == ("native" if mode == "never" else "polling")
    denied = [e for e in result["errors"] if e.get("path") == str(base / "secret")]
    assert len(denied) == 1, result["errors"]
    assert "denied" in denied[0]["error"].lower()
