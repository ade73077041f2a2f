"""The daemon keeps removing caches where watch coverage used to be lost: a package moved out of the
project and back within half a second, and nested directories created in a burst."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from cachewatchd.watch.native import inotify_classes
from tests.support.daemon import DaemonProc, isolated_env
from tests.support.wait import compile_pyc, wait_until

pytestmark = pytest.mark.skipif(
    inotify_classes() is None, reason="needs watchdog's inotify internals (Linux)"
)


def edit_removes_the_cache(source: Path, rounds: int = 2) -> None:
    """A fresh pyc, an edit, the pyc gone: *rounds* times (the last round's pyc can only go because
    of its own edit, whatever events were still on their way from before)."""
    for i in range(rounds):
        pyc = compile_pyc(source)
        source.write_text(f"VALUE = {i}  # edited\n")
        wait_until(_gone(pyc), 10, message=f"pyc of {source} removed (round {i})")


def _gone(path: Path) -> Callable[[], bool]:
    return lambda: not path.exists()


def test_package_moved_out_and_back_quickly_still_gets_its_caches_removed(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    (proj / "pkg" / "sub").mkdir(parents=True)
    source = proj / "pkg" / "sub" / "m.py"
    source.write_text("VALUE = 1\n")
    proj = proj.resolve()
    source = proj / "pkg" / "sub" / "m.py"
    with DaemonProc([str(proj)], isolated_env(tmp_path / "home")) as daemon:
        daemon.ready()
        os.rename(proj / "pkg", tmp_path / "away")
        os.rename(tmp_path / "away", proj / "pkg")  # back before watchdog pairs the move
        daemon.wait_event("rewatched", lambda e: e["path"] == str(proj / "pkg"))
        edit_removes_the_cache(source)
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.stderr()


_RACE_HOOK = """
import functools
import os
_target = os.environ.get("CW_TEST_RACE_DIR")
_real = os.scandir
_done = []

class _Listing:
    def __init__(self, entries):
        self._it = iter(entries)
    def __iter__(self):
        return self
    def __next__(self):
        return next(self._it)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return None
    def close(self):
        pass

def _racing(path="."):
    with _real(path) as it:
        entries = list(it)
    if _target and not _done and os.fsdecode(path) == _target:
        _done.append(1)
        os.makedirs(os.path.join(_target, "late", "deeper", "deepest"))
    return _Listing(entries)

if _target:  # a partial, not a function: Python 3.10's pathlib holds os.scandir as a class
    os.scandir = functools.partial(_racing)  # attribute, where a function becomes a method
"""


def test_nested_directories_created_in_a_burst_get_their_caches_removed(tmp_path: Path) -> None:
    """Twenty ``mkdir -p`` chains, plus one that finishes right after the daemon listed its top
    directory (the race a loaded machine makes likely, made certain by a ``sitecustomize`` in the
    daemon that creates ``a/late/deeper/deepest`` just after ``a`` is listed)."""
    proj = tmp_path / "proj"
    proj.mkdir()
    proj = proj.resolve()
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_RACE_HOOK)
    env = isolated_env(tmp_path / "home", CW_TEST_RACE_DIR=str(proj / "a"))
    env["PYTHONPATH"] = os.pathsep.join([str(hook), env["PYTHONPATH"]])
    chain = os.path.join(*"abcdefghijklmnopqrst")
    with DaemonProc([str(proj)], env) as daemon:
        daemon.ready()
        for i in range(20):
            os.makedirs(proj / f"t{i}" / chain)
        (proj / "a").mkdir()
        raced = proj / "a" / "late" / "deeper" / "deepest"
        wait_until(raced.is_dir, 10, message="the daemon listing a, then the racing mkdir -p")
        deepest = [raced / "m.py", *(proj / f"t{i}" / chain / "m.py" for i in range(20))]
        for source in deepest:
            source.write_text("VALUE = 1\n")
        for source in deepest:
            edit_removes_the_cache(source)
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.stderr()
