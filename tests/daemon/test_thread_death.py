"""A thread of the daemon that dies stops the daemon: one ``thread-died`` line, the managed
processes stopped, exit code 3; never "ready" while part of it is dead.

In-process, with the real :class:`Daemon`, real watchers, a real own child and one thread made to
fail by a patched method; ``tests/e2e/test_daemon_lifecycle.py`` does the same with the daemon as
users run it.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from cachewatchd.config.settings import CommandLine, build_settings
from cachewatchd.config.user import Config
from cachewatchd.daemon.batch_handler import BatchHandler
from cachewatchd.daemon.contracts import ControllerLike
from cachewatchd.daemon.loop import Daemon
from cachewatchd.daemon.registry import list_daemons
from cachewatchd.daemon.sd_notify import Notifier, WatchdogPinger
from cachewatchd.daemon.status import DaemonState
from cachewatchd.errors import EXIT_FAILURE, EXIT_OK
from cachewatchd.processes.controller import Controller
from cachewatchd.processes.os_procs import alive
from cachewatchd.processes.spec import ProcessSpec
from cachewatchd.processes.worker import Worker
from cachewatchd.watch.events import EventMapper
from cachewatchd.watch.git import GitWatcher
from cachewatchd.watch.observers import Watcher
from tests.support.pycs import write
from tests.support.wait import git, wait_until

PAUSE = (sys.executable, "-c", "import signal; signal.pause()")


class Fault(BaseException):
    """What kills the thread: a BaseException, so that no ``except Exception`` of the code under
    test keeps the thread alive (the batcher outlives a bad batch on purpose)."""


def boom(*args: object, **kwargs: object) -> Any:
    raise Fault("injected")


def bug(*args: object, **kwargs: object) -> Any:
    raise RuntimeError("injected")


@pytest.fixture(autouse=True)
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    project = (tmp_path / "proj").resolve()
    write(project / "pkg" / "mod.py", "X = 1\n")
    return project


def make_controller(
    specs: Sequence[ProcessSpec], roots: Sequence[Path], excludes: Mapping[Path, tuple[str, ...]]
) -> ControllerLike:
    return Controller(specs, roots, excludes)


@dataclass
class Run:
    """A :class:`Daemon` running on its own thread, with the log captured."""

    daemon: Daemon
    logs: list[MutableMapping[str, Any]]
    ready: threading.Event
    code: list[int] = field(default_factory=list)

    def events(self, name: str) -> list[MutableMapping[str, Any]]:
        return [e for e in list(self.logs) if e["event"] == name]

    def child_pids(self) -> tuple[int, ...]:
        (target,) = self.daemon.status()["processes"]
        return tuple(target["pids"])


@pytest.fixture
def running(root: Path) -> Iterator[Callable[..., Run]]:
    """``running(**command_line)``: a daemon watching *root* with an own child, on its own thread,
    until it is ready or exited; stopped and joined at the end of the test."""
    started: list[threading.Thread] = []
    daemons: list[Daemon] = []

    def start(**command_line: Any) -> Run:
        child = ProcessSpec("child", command=PAUSE)
        settings = build_settings(Config(), CommandLine(paths=(root,), child=child, **command_line))
        ready = threading.Event()
        daemon = Daemon(settings, make_controller=make_controller, on_ready=ready.set)
        run = Run(daemon, logs, ready)
        thread = threading.Thread(target=lambda: run.code.append(daemon.run()), name="daemon-run")
        thread.start()
        started.append(thread)
        daemons.append(daemon)
        wait_until(lambda: ready.is_set() or not thread.is_alive(), 30, message="ready")
        return run

    with capture_logs() as logs:  # on for the whole test: the daemon logs from its threads
        yield start
        for daemon in daemons:
            daemon.request_stop()
        for thread in started:
            thread.join(30)
            assert not thread.is_alive(), "the daemon did not stop"


def edit(root: Path) -> None:
    (root / "pkg" / "mod.py").write_text("X = 22\n", encoding="utf-8")


def wait_exit(run: Run, timeout: float = 30) -> int:
    wait_until(lambda: bool(run.code), timeout, message="the daemon to exit")
    return run.code[0]


def assert_stopped_everything(
    run: Run, pids: tuple[int, ...], thread: str, error: str = "Fault: injected"
) -> None:
    died = run.events("thread-died")
    assert [e["thread"] for e in died] == [thread], died
    assert died[0]["error"] == error
    assert died[0]["at"].endswith(".py:" + died[0]["at"].rsplit(":", 1)[1])
    assert pids
    assert not any(alive(pid) for pid in pids), "the child still runs"
    assert run.daemon.status()["state"] == "stopping"
    assert not run.daemon.healthy()
    assert list_daemons() == []
    assert run.events("stopping")


def child_running(run: Run) -> tuple[int, ...]:
    wait_until(lambda: bool(run.child_pids()), 20, message="the own child")
    return run.child_pids()


# -- each thread of the daemon ------------------------------------------------------------------
def test_the_batcher_thread(running: Callable[..., Run], root: Path) -> None:
    run = running()
    pids = child_running(run)
    run.daemon._batcher._on_batch = boom
    edit(root)
    assert wait_exit(run) == EXIT_FAILURE
    assert_stopped_everything(run, pids, "cachewatchd-batcher")


def test_the_watcher_supervisor(
    running: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = running()
    pids = child_running(run)
    monkeypatch.setattr(Watcher, "_check_roots", boom)  # runs every second
    assert wait_exit(run) == EXIT_FAILURE
    assert_stopped_everything(run, pids, "cachewatchd-watch")


def test_the_git_watcher(
    running: Callable[..., Run], monkeypatch: pytest.MonkeyPatch, root: Path
) -> None:
    git(root, "init", "-q")
    run = running()
    pids = child_running(run)
    monkeypatch.setattr(GitWatcher, "_check_all", boom)
    watching = run.daemon._watching
    assert watching is not None
    watching.gits[0].poke()
    assert wait_exit(run) == EXIT_FAILURE
    assert_stopped_everything(run, pids, "cachewatchd-git")


def test_a_target_worker(
    running: Callable[..., Run], monkeypatch: pytest.MonkeyPatch, root: Path
) -> None:
    run = running()
    pids = child_running(run)
    monkeypatch.setattr(Worker, "_count_target_failures", boom)  # outside the worker's guard
    edit(root)  # a restart request wakes the worker
    assert wait_exit(run) == EXIT_FAILURE
    died = run.events("thread-died")
    assert [e["thread"] for e in died] == ["cachewatchd-target-child"]
    assert not any(alive(pid) for pid in pids)
    assert not any(alive(pid) for pid in run.child_pids())  # the restarted one too


def test_the_recheck_on_the_loop_thread(
    running: Callable[..., Run], monkeypatch: pytest.MonkeyPatch, root: Path
) -> None:
    run = running()
    pids = child_running(run)
    monkeypatch.setattr(BatchHandler, "recheck", bug)
    edit(root)  # the batch wakes the loop, which takes a second look first
    assert wait_exit(run) == EXIT_FAILURE
    assert_stopped_everything(run, pids, "daemon-run", "RuntimeError: injected")


def test_the_reconcile_timer(running: Callable[..., Run], monkeypatch: pytest.MonkeyPatch) -> None:
    run = running(reconcile_interval=0.2)
    pids = child_running(run)
    monkeypatch.setattr(BatchHandler, "reconcile", boom)  # the batcher audits on the loop's word
    assert wait_exit(run) == EXIT_FAILURE
    assert_stopped_everything(run, pids, "cachewatchd-batcher")


def test_a_watchdog_observer_thread_through_the_excepthook(
    running: Callable[..., Run], monkeypatch: pytest.MonkeyPatch, root: Path
) -> None:
    run = running()
    pids = child_running(run)
    monkeypatch.setattr(EventMapper, "dispatch", boom)
    edit(root)
    assert wait_exit(run) == EXIT_FAILURE
    (died,) = run.events("thread-died")
    assert died["error"] == "Fault: injected"
    assert not any(alive(pid) for pid in pids)
    assert list_daemons() == []


def test_the_systemd_watchdog_pinger(running: Callable[..., Run]) -> None:
    run = running()
    pids = child_running(run)
    with WatchdogPinger(Notifier(None), interval=0.01, healthy=boom):
        assert wait_exit(run) == EXIT_FAILURE
    assert_stopped_everything(run, pids, "cachewatchd-watchdog")


# -- before ready ---------------------------------------------------------------------------------
def test_a_death_during_the_start_audit_never_says_ready(
    running: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(BatchHandler, "reconcile", boom)
    run = running()
    assert wait_exit(run) == EXIT_FAILURE
    assert not run.ready.is_set()
    assert not run.events("ready")
    assert [e["thread"] for e in run.events("thread-died")] == ["cachewatchd-batcher"]
    assert run.daemon.status()["processes"] == []  # the child was never started
    assert list_daemons() == []


def test_a_normal_stop_is_still_zero(running: Callable[..., Run]) -> None:
    run = running()
    child_running(run)
    assert run.daemon.status()["state"] == DaemonState.READY.value == "ready"
    assert run.daemon.healthy()
    run.daemon.request_stop()
    assert wait_exit(run) == EXIT_OK
    assert not run.events("thread-died")


def test_a_batch_that_fails_is_a_counted_error_not_a_death(
    running: Callable[..., Run], monkeypatch: pytest.MonkeyPatch, root: Path
) -> None:
    """The batcher outlives a batch that raises (one ``error`` line): status counts it."""
    run = running()
    child_running(run)
    before = run.daemon.status()["counters"]["errors"]
    monkeypatch.setattr(BatchHandler, "handle", bug)
    edit(root)
    wait_until(lambda: run.events("error"), 10, message="the batch's error")
    wait_until(
        lambda: run.daemon.status()["counters"]["errors"] == before + 1, 10, message="counted"
    )
    assert run.daemon.healthy()
    assert run.daemon.status()["state"] == "ready"
    assert not run.events("thread-died")
