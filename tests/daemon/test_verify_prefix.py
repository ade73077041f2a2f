"""The daemon verifies the pycs that appear in the mirrors of its roots inside a pycache prefix
tree outside them (``PYTHONPYCACHEPREFIX``, ``--pycache-prefix``; issue 9: "it watches
``__pycache__`` and prefix-tree creations"): a late writer's pyc there is removed the moment it
appears, whether the mirror existed at the start or was made later; a prefix that cannot be
watched never stops the daemon."""

from __future__ import annotations

import importlib._bootstrap_external
import os
import sys
import threading
from pathlib import Path

import pytest

from cachewatchd.cache.pyc import mirror_dir
from cachewatchd.cache.walk import WalkOptions
from cachewatchd.watch.prefix_watch import PrefixWatcher, mirrors
from tests.support.daemon import DaemonProc, isolated_env
from tests.support.pycs import restore_mtime_edit, write
from tests.support.wait import compile_pyc, wait_until

TAG = sys.implementation.cache_tag


def late_writer_in(mirror: Path, source: Path, old_text: str) -> Path:
    """The pyc an importer that read *old_text* writes now into the prefix tree (atomically): the
    old code under a header that the source, edited with the same size and its mtime put back,
    still matches."""
    code = compile(old_text, str(source), "exec", dont_inherit=True)
    st = source.stat()
    data = importlib._bootstrap_external._code_to_timestamp_pyc(  # type: ignore[attr-defined]
        code, int(st.st_mtime), st.st_size
    )
    mirror.mkdir(parents=True, exist_ok=True)
    pyc = mirror / f"{source.stem}.{TAG}.pyc"
    tmp = mirror / f"{pyc.name}.{os.getpid()}"
    tmp.write_bytes(data)
    os.replace(tmp, pyc)
    return pyc


def _edited(root: Path) -> Path:
    source = write(root / "m.py", "X = 1\n")
    restore_mtime_edit(source, "X = 2\n")
    return source


@pytest.mark.parametrize("made", ["before the start", "after the start"])
def test_the_daemon_removes_a_pyc_of_old_code_written_into_the_prefix_tree(
    tmp_path: Path, made: str
) -> None:
    root = (tmp_path / "proj").resolve()
    prefix = tmp_path.resolve() / "prefix"
    source = _edited(root)
    other = write(root / "n.py", "Y = 1\n")
    mirror = mirror_dir(prefix, root)
    if made == "before the start":
        mirror.mkdir(parents=True)
    else:
        prefix.mkdir()  # the mirror appears later (checked every 5 s)
    env = isolated_env(tmp_path / "home")
    with DaemonProc([str(root), "--pycache-prefix", str(prefix)], env) as daemon:
        daemon.ready()
        pyc = late_writer_in(mirror, source, "X = 1\n")
        wait_until(lambda: not pyc.exists(), 30, message=f"{pyc} of old code to go")
        event = daemon.wait_event("invalidated", lambda e: e["removed"] == [str(pyc)])
        assert "checked when it appeared" in event["reason"]
        fresh = compile_pyc(other, cfile=mirror / f"n.{TAG}.pyc")
        late_writer_in(mirror, source, "X = 1\n")  # checked after the fresh one: a marker
        wait_until(lambda: not pyc.exists(), 30, message=f"{pyc} of old code to go again")
        assert daemon.stop() == 0
    assert fresh.exists()


def test_a_prefix_that_cannot_be_watched_never_stops_the_daemon(tmp_path: Path) -> None:
    root = (tmp_path / "proj").resolve()
    _edited(root)
    prefix = write(tmp_path / "prefix", "a file, not a directory\n")
    env = isolated_env(tmp_path / "home")
    with DaemonProc([str(root), "--pycache-prefix", str(prefix)], env) as daemon:
        daemon.ready()
        (root / "n.py").write_text("Y = 1\n")
        pyc = compile_pyc(root / "n.py")
        (root / "n.py").write_text("Y = 22\n")
        wait_until(lambda: not pyc.exists(), 30, message="the root still watched")
        assert daemon.stop() == 0


class _Sink:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pycs: set[Path] = set()
        self.other = 0

    def source_changed(self, path: Path) -> None:
        self.other += 1

    def source_removed(self, path: Path) -> None:
        self.other += 1

    def dir_removed(self, path: Path) -> None:
        self.other += 1

    def rescan(self, root: Path, reason: str) -> None:
        self.other += 1

    def pyc_written(self, path: Path) -> None:
        with self._lock:
            self._pycs.add(path)

    def pycs(self) -> set[Path]:
        with self._lock:
            return set(self._pycs)


def test_mirrors_of_a_root_given_through_a_symlink(tmp_path: Path) -> None:
    real = (tmp_path / "real").resolve()
    real.mkdir()
    link = tmp_path.resolve() / "link"
    link.symlink_to(real)
    prefix = Path("/p")
    assert mirrors(prefix, [link]) == [Path("/p" + str(link)), Path("/p" + str(real))]


@pytest.mark.parametrize("poll_mode", ["auto", "always"])
def test_the_prefix_watcher_reports_pycs_in_mirrors_as_they_appear(
    tmp_path: Path, poll_mode: str
) -> None:
    """A mirror there at the start reports each pyc written; one made later is attached at the
    next check, every pyc already in it reported; one removed and made again too; nothing but
    pycs is reported."""
    base = tmp_path.resolve()
    roots = [base / "a", base / "b"]
    prefix = base / "prefix"
    first, later = (mirror_dir(prefix, r) for r in roots)
    first.mkdir(parents=True)
    sink = _Sink()
    watcher = PrefixWatcher(
        prefix,
        roots,
        sink,
        options=WalkOptions(),
        poll_mode="always" if poll_mode == "always" else "auto",
        poll_interval=0.05,
        check_interval=0.1,
    )
    watcher.start()
    try:
        assert watcher.watched() == [first]
        source = write(base / "src" / "m.py", "X = 1\n")
        written = compile_pyc(source, cfile=first / "sub" / f"m.{TAG}.pyc")
        wait_until(lambda: written in sink.pycs(), 10, message="a pyc in a watched mirror")
        early = compile_pyc(source, cfile=later / "deep" / f"m.{TAG}.pyc")
        wait_until(lambda: early in sink.pycs(), 10, message="a pyc in a mirror made later")
        wait_until(lambda: later in watcher.watched(), 10, message="the later mirror watched")
        (later / "deep" / f"m.{TAG}.pyc").unlink()
        (later / "deep").rmdir()
        later.rmdir()
        wait_until(lambda: later not in watcher.watched(), 10, message="the mirror dropped")
        again = compile_pyc(source, cfile=later / f"m.{TAG}.pyc")
        wait_until(lambda: again in sink.pycs(), 10, message="a pyc in a mirror made again")
    finally:
        watcher.stop()
    assert sink.other == 0


def test_a_mirror_that_cannot_be_watched_natively_is_polled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inotify limit reached (a synthetic fault: the native observer cannot be built)."""
    import watchdog.observers

    class NoInotify:
        def __init__(self) -> None:
            raise OSError(28, "inotify watch limit reached")

    monkeypatch.setattr(watchdog.observers, "Observer", NoInotify)
    base = tmp_path.resolve()
    mirror = mirror_dir(base / "prefix", base / "a")
    mirror.mkdir(parents=True)
    sink = _Sink()
    watcher = PrefixWatcher(
        base / "prefix", [base / "a"], sink, options=WalkOptions(), poll_interval=0.05
    )
    watcher.start()
    try:
        assert watcher.watched() == [mirror]
        pyc = compile_pyc(write(base / "a" / "m.py", "X = 1\n"), cfile=mirror / f"m.{TAG}.pyc")
        wait_until(lambda: pyc in sink.pycs(), 10, message="a pyc in a polled mirror")
    finally:
        watcher.stop()
