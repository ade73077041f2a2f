"""The daemon compares every pyc that appears under its roots with its source (issue 9: "The
daemon verifies every pyc that appears"), so a pyc written with old code is removed the moment it
is written, whether or not a second look was due; the periodic reconcile removes the ones no
event reported."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from cachewatchd.cache.walk import WalkOptions
from cachewatchd.daemon.batch_handler import BatchHandler, Counters
from cachewatchd.daemon.recheck import Rechecker
from cachewatchd.watch.batch import Batch
from cachewatchd.watch.events import EventMapper
from tests.cache.real_import import import_v
from tests.support.daemon import DaemonProc, isolated_env
from tests.support.pycs import late_writer_pyc, restore_mtime_edit, write
from tests.support.ticks import past_the_tick
from tests.support.wait import compile_pyc, wait_until

TAG = sys.implementation.cache_tag


def old_code_after_the_edit(root: Path) -> tuple[Path, Path]:
    """``m.py`` edited (same size, mtime put back), then a pyc of its old code written by an
    importer that read it before: CPython runs the old code, and no time can tell."""
    source = write(root / "m.py", "X = 1\n")
    compile_pyc(source).unlink()
    restore_mtime_edit(source, "X = 2\n")
    past_the_tick(source)
    pyc = late_writer_pyc(source, "X = 1\n")
    past_the_tick(pyc)
    run = import_v(sys.executable, root)
    assert (run.loaded, run.value) == (pyc, "1"), run.log
    return source, pyc


def test_verify_finds_a_pyc_of_old_code_and_leaves_the_others(tmp_path: Path) -> None:
    source, pyc = old_code_after_the_edit(tmp_path)
    fresh = compile_pyc(write(tmp_path / "n.py", "Y = 1\n"))
    half = compile_pyc(write(tmp_path / "h.py", "Z = 1\n" * 40))
    half.write_bytes(half.read_bytes()[:40])  # a non-atomic writer, caught mid-write
    found = Rechecker(pycache_prefix=None).verify([pyc, fresh, half, tmp_path / "nothing.pyc"])
    assert found == {pyc: source}


def test_verify_reads_a_prefix_tree(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    source = write(root / "m.py", "X = 1\n")
    restore_mtime_edit(source, "X = 1\n")
    prefix = tmp_path / "prefix"
    mirror = prefix / str(root.resolve()).lstrip("/")
    local = late_writer_pyc(source, "X = 0\n")
    mirror.mkdir(parents=True)
    pyc = mirror / local.name
    os.replace(local, pyc)
    past_the_tick(pyc)
    assert Rechecker(pycache_prefix=prefix).verify([pyc]) == {pyc: source.resolve()}


def test_the_handler_removes_what_a_batch_of_new_pycs_holds(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    source, pyc = old_code_after_the_edit(root)
    handler = BatchHandler({root: ()}, pycache_prefix=None, counters=Counters())
    outcome = handler.handle(Batch(pycs=frozenset({pyc}), events=1))
    assert not pyc.exists()
    assert outcome.removed == 1
    assert outcome.touched == {source}


class _Sink:
    def __init__(self) -> None:
        self.pycs: list[Path] = []

    def source_changed(self, path: Path) -> None: ...
    def source_removed(self, path: Path) -> None: ...
    def dir_removed(self, path: Path) -> None: ...
    def rescan(self, root: Path, reason: str) -> None: ...

    def pyc_written(self, path: Path) -> None:
        self.pycs.append(path)


class _Event:
    def __init__(self, kind: str, src: str, dest: str = "") -> None:
        self.event_type = kind
        self.src_path = src
        self.dest_path = dest
        self.is_directory = False


def test_the_mapper_reports_pycs_written_in_a_pycache(tmp_path: Path) -> None:
    sink = _Sink()
    options = WalkOptions(excludes=("skipped",))
    mapper = EventMapper(tmp_path, sink, options, lambda root: None)
    cache = tmp_path / "pkg" / "__pycache__"
    events: list[Any] = [
        _Event("moved", f"{cache}/m.{TAG}.pyc.1234", f"{cache}/m.{TAG}.pyc"),  # importlib
        _Event("created", f"{tmp_path}/legacy.pyc"),
        _Event("modified", f"{cache}/n.{TAG}.pyc"),  # its rename or creation already counted
        _Event("created", f"{tmp_path}/skipped/__pycache__/m.{TAG}.pyc"),
        _Event("deleted", f"{cache}/o.{TAG}.pyc"),
    ]
    for event in events:
        mapper.dispatch(event)
    assert sink.pycs == [cache / f"m.{TAG}.pyc", tmp_path / "legacy.pyc"]


def test_the_daemon_removes_a_pyc_of_old_code_the_moment_it_appears(tmp_path: Path) -> None:
    """No event of the source since the daemon started, so no second look is due: only the
    check of the new pyc can catch it (the old second looks at 1 s and 10 s would not). In an
    existing ``__pycache__`` and in one created after the start."""
    root = (tmp_path / "proj").resolve()
    source = write(root / "m.py", "X = 1\n")
    other = write(root / "pkg" / "other.py", "Y = 1\n")
    for edited in (source, other):
        restore_mtime_edit(edited, edited.read_text().replace("1", "2"))
    (root / "__pycache__").mkdir()
    with DaemonProc([str(root)], isolated_env(tmp_path / "home")) as daemon:
        daemon.ready()
        for edited, old in ((source, "X = 1\n"), (other, "Y = 1\n")):
            pyc = late_writer_pyc(edited, old)  # an importer that read the old source
            wait_until(lambda: not pyc.exists(), 30, message=f"{pyc} of old code to go")  # noqa: B023
            removed = [str(pyc)]
            event = daemon.wait_event("invalidated", lambda e: e["removed"] == removed)  # noqa: B023
            assert "checked when it appeared" in event["reason"]
        fresh = compile_pyc(other)
        assert daemon.stop() == 0
        assert fresh.exists()


def test_the_periodic_reconcile_removes_a_pyc_of_old_code_no_event_reported(
    tmp_path: Path,
) -> None:
    """The periodic reconcile compares every pyc the verification index does not know (the
    others are settled by their records): a pyc of old code goes even when its event was missed.
    The start's audit judges by the times and the index only."""
    root = tmp_path.resolve()
    _, pyc = old_code_after_the_edit(root)
    handler = BatchHandler({root: ()}, pycache_prefix=None, counters=Counters())
    assert handler.reconcile(root, "start") == 0
    assert pyc.exists()
    assert handler.reconcile(root, "reconcile interval") == 1
    assert not pyc.exists()
