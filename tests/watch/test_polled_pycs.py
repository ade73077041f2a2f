"""A poller reports the pycs written under its root (issue 9: "The daemon verifies every pyc that
appears"): its snapshots hold each ``__pycache__`` (one stat, none of its children), a pyc written
there moves that directory's mtime, and the poller's event mapper lists that one directory. A
legacy pyc is watched beside its source only. A native observer reports each pyc itself: its
directory events never make the mapper list a ``__pycache__``."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from cachewatchd.cache.walk import WalkOptions
from cachewatchd.watch.events import EventMapper, event_filter
from cachewatchd.watch.observers import Watcher
from cachewatchd.watch.polling import SourceLister
from tests.support.daemon import DaemonProc, isolated_env
from tests.support.pycs import late_writer_pyc, restore_mtime_edit, write
from tests.support.ticks import past_the_tick
from tests.support.wait import compile_pyc, wait_until

TAG = sys.implementation.cache_tag


class Sink:
    """An event sink that records the pycs reported (observer threads feed it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pycs: list[Path] = []

    def source_changed(self, path: Path) -> None: ...
    def source_removed(self, path: Path) -> None: ...
    def dir_removed(self, path: Path) -> None: ...
    def rescan(self, root: Path, reason: str) -> None: ...

    def pyc_written(self, path: Path) -> None:
        with self._lock:
            self._pycs.append(path)

    def pycs(self) -> set[Path]:
        with self._lock:
            return set(self._pycs)


def test_the_lister_keeps_each_pycache_but_none_of_its_children(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    compile_pyc(write(pkg / "m.py", "X = 1\n"))
    compile_pyc(write(pkg / "legacy.py", "L = 1\n"), cfile=pkg / "legacy.pyc")
    compile_pyc(write(tmp_path / "gone.py", "G = 1\n"), cfile=pkg / "lone.pyc")  # sourceless
    lister = SourceLister(str(tmp_path), WalkOptions(), lambda path, exc: None)
    assert {e.name for e in lister(str(pkg))} == {"m.py", "__pycache__", "legacy.py", "legacy.pyc"}
    assert list(lister(str(pkg / "__pycache__"))) == []


class _DirEvent:
    def __init__(self, kind: str, src: str) -> None:
        self.event_type = kind
        self.src_path = src
        self.dest_path = ""
        self.is_directory = True


def test_only_a_pollers_mapper_lists_a_modified_pycache(tmp_path: Path) -> None:
    pyc = compile_pyc(write(tmp_path / "pkg" / "m.py", "X = 1\n"))
    skipped = compile_pyc(write(tmp_path / "skipped" / "s.py", "S = 1\n"))
    options = WalkOptions(excludes=("skipped",))
    for polled, expected in ((False, set()), (True, {pyc})):
        sink = Sink()
        mapper = EventMapper(tmp_path, sink, options, lambda root: None, polled=polled)
        for directory in (pyc.parent, skipped.parent, tmp_path / "pkg"):
            mapper.dispatch(_DirEvent("modified", str(directory)))
        assert sink.pycs() == expected, polled
    names = {cls.__name__ for cls in event_filter(dirs_modified=True)}
    assert "DirModifiedEvent" in names
    assert "DirModifiedEvent" not in {cls.__name__ for cls in event_filter()}


def test_a_polled_root_reports_the_pycs_written_under_it(tmp_path: Path) -> None:
    """In an existing ``__pycache__``, in one created after the start (a new package), and
    legacy pycs beside their sources; not a sourceless pyc, not in an excluded directory."""
    root = tmp_path.resolve()
    existing = compile_pyc(write(root / "pkg" / "a.py", "A = 1\n"))
    source = write(root / "pkg" / "b.py", "B = 1\n")
    skipped = write(root / "skipped" / "s.py", "S = 1\n")
    legacy_source = write(root / "old.py", "O = 1\n")
    past_the_tick(existing.parent, root)
    sink = Sink()
    watcher = Watcher(
        [root], poll_mode="always", poll_interval=0.05, batcher=sink, excludes=("skipped",)
    )
    watcher.start()
    try:
        written = [
            compile_pyc(source),
            compile_pyc(write(root / "new" / "n.py", "N = 1\n")),
            compile_pyc(legacy_source, cfile=root / "old.pyc"),
        ]
        compile_pyc(skipped)
        compile_pyc(legacy_source, cfile=root / "sourceless.pyc")
        for pyc in written:
            wait_until(lambda: pyc in sink.pycs(), 10, message=f"{pyc} reported")  # noqa: B023
        past_the_tick(*written)
        marker = compile_pyc(write(root / "pkg" / "c.py", "C = 1\n"))
        wait_until(lambda: marker in sink.pycs(), 10, message="a later pyc reported")
    finally:
        watcher.stop()
    reported = sink.pycs()
    assert not {p for p in reported if "skipped" in p.parts or p.name == "sourceless.pyc"}
    assert reported <= {existing, marker, *written}


def test_a_polling_daemon_removes_a_pyc_of_old_code_the_moment_it_appears(
    tmp_path: Path,
) -> None:
    """``--poll always`` (a root on NFS or sshfs): the pyc an importer that read the old source
    writes after the daemon started is compared with the source at the next pass and removed."""
    root = (tmp_path / "proj").resolve()
    source = write(root / "m.py", "X = 1\n")
    restore_mtime_edit(source, "X = 2\n")
    (root / "__pycache__").mkdir()
    env = isolated_env(tmp_path / "home")
    with DaemonProc([str(root), "--poll", "always", "--poll-interval", "0.2"], env) as daemon:
        daemon.ready()
        pyc = late_writer_pyc(source, "X = 1\n")
        wait_until(lambda: not pyc.exists(), 30, message=f"{pyc} of old code to go")
        event = daemon.wait_event("invalidated", lambda e: e["removed"] == [str(pyc)])
        assert "checked when it appeared" in event["reason"]
        assert daemon.stop() == 0


def test_a_pyc_written_on_the_other_side_of_a_mount_below_a_native_root(tmp_path: Path) -> None:
    """A real bindfs mount below a natively watched root gets a poller: a pyc written on the
    other side raises no inotify event on this side, the poller's listing of its ``__pycache__``
    reports it."""
    from tests.support.mounts import bindfs

    root = (tmp_path / "root").resolve()
    with bindfs(tmp_path / "other", root / "mnt") as mounted:
        source = write(mounted.other / "pkg" / "m.py", "X = 1\n")
        compile_pyc(source)  # its __pycache__ there from the start
        past_the_tick(source.parent / "__pycache__")
        sink = Sink()
        watcher = Watcher([root], poll_mode="auto", poll_interval=0.05, batcher=sink)
        watcher.start()
        try:
            choice = watcher.observers()[root]
            assert choice.kind == "native"
            assert "polling" in choice.reason, choice.reason
            other = compile_pyc(write(mounted.other / "pkg" / "n.py", "N = 1\n"))
            seen = mounted.client / other.relative_to(mounted.other)
            wait_until(lambda: seen in sink.pycs(), 10, message=f"{seen} reported")
        finally:
            watcher.stop()


class _Clock:
    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def time_ns(self) -> int:
        return self.now_ns


def test_a_pyc_written_in_the_tick_of_the_pass_is_seen_at_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass stats a ``__pycache__`` just changed; a pyc written in the same timestamp tick
    leaves the directory's mtime as the pass saw it. The pass after still reports it modified
    (the clock is faked, the files and snapshots are real)."""
    from watchdog.utils.dirsnapshot import DirectorySnapshot, DirectorySnapshotDiff

    from cachewatchd.watch import polling

    root = tmp_path.resolve()
    compile_pyc(write(root / "pkg" / "a.py", "A = 1\n"))
    cache = root / "pkg" / "__pycache__"
    stamp = cache.stat().st_mtime_ns // 1_000_000 * 1_000_000 + 1_000  # not a whole second
    os.utime(cache, ns=(stamp, stamp))
    clock = _Clock(stamp + 1_000_000)  # the pass, 1 ms later
    monkeypatch.setattr(polling, "time", clock, raising=False)
    lister = SourceLister(str(root), WalkOptions(), lambda path, exc: None)

    def snapshot() -> Any:
        return DirectorySnapshot(str(root), stat=polling.change_stat, listdir=lister)

    first = snapshot()
    compile_pyc(write(root / "pkg" / "b.py", "B = 1\n"))
    os.utime(cache, ns=(stamp, stamp))  # the same tick: the mtime did not move
    clock.now_ns = stamp + 1_000_000_000
    second = snapshot()
    assert str(cache) in DirectorySnapshotDiff(first, second).dirs_modified
    assert DirectorySnapshotDiff(second, snapshot()).dirs_modified == []
    clock.now_ns = stamp - 1_000_000_000  # the directory stamped by a clock ahead of this one
    assert polling.change_stat(str(cache)).st_mtime_ns == stamp


class _MovedEvent:
    def __init__(self, src: str, dest: str, *, is_directory: bool) -> None:
        self.event_type = "moved"
        self.src_path = src
        self.dest_path = dest
        self.is_directory = is_directory


def test_a_new_file_that_took_a_removed_directorys_inode_is_a_creation(tmp_path: Path) -> None:
    """watchdog's snapshot diff pairs paths by inode and calls the pair a directory move when the
    old path was a directory: a source created after the daemon removed an emptied
    ``__pycache__`` may get its inode (seen on NFS: the source's creation was lost). And a new
    ``__pycache__`` that took a removed file's inode is listed."""
    sink = _Recorder()
    mapper = EventMapper(tmp_path, sink, WalkOptions(), lambda root: None, polled=True)
    source = write(tmp_path / "b" / "n.py", "N = 1\n")
    gone_cache = tmp_path / "a" / "__pycache__"
    mapper.dispatch(_MovedEvent(str(gone_cache), str(source), is_directory=True))
    gone_pkg = tmp_path / "c"
    mapper.dispatch(_MovedEvent(str(gone_pkg), str(source), is_directory=True))
    pyc = compile_pyc(write(tmp_path / "d" / "m.py", "M = 1\n"))
    mapper.dispatch(_MovedEvent(str(tmp_path / "old.py"), str(pyc.parent), is_directory=False))
    assert sink.changed == [source, source]
    assert sink.dirs == [gone_pkg]
    assert sink.removed == [tmp_path / "old.py"]
    assert sink.pycs() == {pyc}


class _Recorder(Sink):
    def __init__(self) -> None:
        super().__init__()
        self.changed: list[Path] = []
        self.removed: list[Path] = []
        self.dirs: list[Path] = []

    def source_changed(self, path: Path) -> None:
        self.changed.append(path)

    def source_removed(self, path: Path) -> None:
        self.removed.append(path)

    def dir_removed(self, path: Path) -> None:
        self.dirs.append(path)
