"""The second look: a pyc written with the old code while its source was edited is removed."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from cachewatchd.cache import check_process
from cachewatchd.daemon.recheck import Rechecker
from tests.cache.real_import import interpreter
from tests.support.daemon import DaemonProc, isolated_env
from tests.support.pycs import compile_with, restore_mtime_edit, write
from tests.support.wait import compile_pyc, wait_until

TAG = sys.implementation.cache_tag


def late_writer_pyc(source: Path, old_text: str) -> Path:
    """What an import that read *old_text* before the edit writes after it: the old code under a
    header taken from the source's stat (which a restored mtime and the same size keep equal)."""
    code = compile(old_text, str(source), "exec", dont_inherit=True)
    st = source.stat()
    data = importlib._bootstrap_external._code_to_timestamp_pyc(  # type: ignore[attr-defined]
        code, int(st.st_mtime), st.st_size
    )
    pyc = Path(importlib.util.cache_from_source(str(source)))
    pyc.parent.mkdir(exist_ok=True)
    tmp = pyc.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, pyc)
    return pyc


def test_schedule_and_due_times(tmp_path: Path) -> None:
    rechecker = Rechecker(pycache_prefix=None, delays=(1.0, 10.0))
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    rechecker.schedule([a], now=100.0)
    rechecker.schedule([b], now=105.0)
    assert rechecker.next_due() == 101.0
    assert rechecker.take_due(now=100.5) == []
    assert rechecker.take_due(now=106.0) == [a, b]
    assert rechecker.next_due() == 110.0
    assert rechecker.take_due(now=111.0) == [a]
    assert rechecker.take_due(now=200.0) == [b]
    assert rechecker.next_due() is None


def test_wrong_caches_finds_only_pycs_with_other_code(tmp_path: Path) -> None:
    source = write(tmp_path / "m.py", "X = 1\n")
    pyc = compile_pyc(source)
    other = compile_pyc(write(tmp_path / "n.py", "Y = 1\n"))
    rechecker = Rechecker(pycache_prefix=None)
    assert rechecker.wrong_caches(source) == []
    restore_mtime_edit(source, "X = 2\n")
    late_writer_pyc(source, "X = 1\n")
    assert rechecker.wrong_caches(source) == [pyc]
    assert other.exists()


def test_the_second_look_compares_the_pycs_of_another_version(tmp_path: Path) -> None:
    """The app may run another CPython than the daemon: its late writer is caught all the same,
    compared by that version's interpreter."""
    version = "3.12" if sys.version_info[:2] != (3, 12) else "3.13"
    exe = interpreter(version)
    source = write(tmp_path / "m.py", "X = 1\n")
    pyc = compile_with(exe, source)
    rechecker = Rechecker(pycache_prefix=None)
    assert rechecker.wrong_caches(source) == []
    restore_mtime_edit(source, "X = 2\n")
    assert rechecker.wrong_caches(source) == [pyc]


def test_a_fifo_named_like_a_pyc_never_blocks_the_second_look(tmp_path: Path) -> None:
    source = write(tmp_path / "m.py", "X = 1\n")
    fifo = Path(importlib.util.cache_from_source(str(source)))
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    assert Rechecker(pycache_prefix=None).wrong_caches(source) == []


def test_daemon_removes_a_pyc_written_with_old_code_during_the_edit(tmp_path: Path) -> None:
    root = (tmp_path / "proj").resolve()
    source = write(root / "m.py", "X = 1\n")
    compile_pyc(source)
    with DaemonProc([str(root)], isolated_env(tmp_path / "home")) as daemon:
        daemon.ready()
        restore_mtime_edit(source, "X = 2\n")
        daemon.wait_event("invalidated", lambda e: e["source"] == str(source))
        # An importer that read the old bytes before the edit writes its pyc only now.
        pyc = late_writer_pyc(source, "X = 1\n")
        wait_until(lambda: not pyc.exists(), 30, message="the late stale pyc to go")
        event = daemon.wait_event("invalidated", lambda e: "reason" in e)
        assert event["removed"] == [str(pyc)]
        assert daemon.stop() == 0


def test_the_sources_of_one_look_share_one_checking_process_and_leave_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[int] = []
    real = check_process.CheckProcess.__init__

    def counting(self: check_process.CheckProcess, *args: Any) -> None:
        real(self, *args)
        started.append(self.pid)

    monkeypatch.setattr(check_process.CheckProcess, "__init__", counting)
    sources = [write(tmp_path / f"m{i}.py", f"X = {i}\n") for i in range(5)]
    for source in sources:
        compile_pyc(source)
        restore_mtime_edit(source, source.read_text().replace("X", "Y"))
        late_writer_pyc(source, source.read_text().replace("Y", "X"))
    rechecker = Rechecker(pycache_prefix=None, delays=(1.0,))
    rechecker.schedule(sources, now=0.0)
    due = rechecker.take_due(now=2.0)
    wrong = [pyc for source in due for pyc in rechecker.wrong_caches(source)]
    assert len(wrong) == 5
    assert len(started) == 1
    assert not psutil.Process().children(recursive=True)
