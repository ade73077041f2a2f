"""A ``match``/``pidfile`` target that finds a process in another PID namespace (a container's)
is refused: it is never signalled, stopped or relaunched from this host. The process here runs in
a PID namespace of its own (``unshare --pid``); the real container is in tests/e2e."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import psutil
import pytest

from cachewatchd.processes.existing import ProcessTarget
from cachewatchd.processes.pid_namespace import container_of, foreign, namespace_refusal
from cachewatchd.processes.spec import ProcessSpec
from cachewatchd.processes.targets import TargetError
from tests.support.servers import Reaper
from tests.support.wait import wait_until

_MARK = f"ns-{uuid.uuid4().hex}"
"""On the namespaced process's command line only (other test sessions run this test too)."""
# the marker is built at run time: unshare's own command line does not match it
_EXEC = (
    "import os, sys; os.execv(sys.executable, [sys.executable, '-c', "
    f"'import signal; signal.pause()', {_MARK[:5]!r} + {_MARK[5:]!r}])"
)


def _can_unshare() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    done = subprocess.run(
        ["unshare", "--pid", "--fork", "true"], capture_output=True, check=False, timeout=30
    )
    return None if done.returncode == 0 else "unshare --pid is not permitted here (needs root)"


@pytest.fixture
def namespaced(reaper: Reaper) -> psutil.Process:
    """``python -c ... MARK``, pid 1 of a PID namespace of its own."""
    reason = _can_unshare()
    if reason is not None:
        pytest.skip(reason)
    outer = reaper.popen(["unshare", "--pid", "--kill-child", sys.executable, "-c", _EXEC])
    found: list[psutil.Process] = []

    def started() -> bool:
        found[:] = [
            p for p in psutil.Process(outer.pid).children() if _MARK in " ".join(p.cmdline())
        ]
        return bool(found)

    wait_until(started, message="the namespaced process")
    return found[0]


def test_a_process_in_another_pid_namespace_is_foreign(namespaced: psutil.Process) -> None:
    assert foreign(namespaced)
    assert not foreign(psutil.Process(os.getpid()))
    assert container_of(namespaced) is None  # no container: its cgroup names none


def test_a_match_target_on_it_is_refused_and_nothing_is_relaunched(
    namespaced: psutil.Process, tmp_path: Path
) -> None:
    spec = ProcessSpec(name="app", match=_MARK, scope="any", grace=2)
    target = ProcessTarget(spec, [tmp_path])
    problem = target.check()
    assert problem is not None
    assert problem.startswith(f"pid {namespaced.pid} (")
    assert "runs in another PID namespace" in problem
    assert "never signals it or starts its command line on this host" in problem
    with pytest.raises(TargetError, match="another PID namespace"):
        target.act(threading.Event())
    assert namespaced.is_running()  # not stopped
    matching = [p for p in psutil.process_iter() if _MARK in " ".join(_cmdline(p))]
    assert [p.pid for p in matching] == [namespaced.pid]  # and not started on this host


def test_a_pidfile_target_naming_it_is_refused(namespaced: psutil.Process, tmp_path: Path) -> None:
    pidfile = tmp_path / "app.pid"
    pidfile.write_text(f"{namespaced.pid}\n", encoding="ascii")
    target = ProcessTarget(ProcessSpec(name="app", pidfile=pidfile, action="signal", signal="HUP"))
    with pytest.raises(TargetError, match="another PID namespace"):
        target.act(threading.Event())
    assert namespace_refusal([psutil.Process(os.getpid())]) is None


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []
