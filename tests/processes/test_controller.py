"""The controller: one restart per batch, coalescing, roots, stale processes, systemd, status."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from structlog.testing import capture_logs

from cachewatchd.processes import staleness
from cachewatchd.processes.controller import Controller
from cachewatchd.processes.spec import ProcessSpec, SupervisorSpec
from cachewatchd.processes.staleness import SourceClock, importers, scan_sources, stale_reason
from cachewatchd.processes.status import TargetState
from tests.support.servers import Reaper, assert_one_line_faults, events, wait_event
from tests.support.ticks import past_the_tick
from tests.support.wait import wait_until

SLEEP = (sys.executable, "-c", "import signal; signal.pause()")


def _idle(controller: Controller, index: int = 0) -> bool:
    status = controller.status()[index]
    return status.state is TargetState.RUNNING and not status.pending and bool(status.pids)


def test_a_burst_of_notifies_gives_one_restart(tmp_path: Path) -> None:
    controller = Controller([ProcessSpec(name="app", command=SLEEP, grace=5)], [tmp_path])
    with capture_logs() as logs:
        controller.start()
        wait_until(lambda: _idle(controller))
        for i in range(50):
            controller.notify({tmp_path / f"m{i}.py"})
        wait_event(logs, "restarted")
        wait_until(lambda: _idle(controller))
        restarts = controller.status()[0].restarts
        controller.stop()
    assert restarts in (1, 2)  # 2 only when the burst straddled the start of the restart
    # a straddling notify supersedes the first restart's wait for the process to be up
    assert len(events(logs, "restarted")) + len(events(logs, "restart-superseded")) == restarts


def test_a_batch_during_a_restart_coalesces_into_exactly_one_more(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    script = tmp_path / "stubborn.py"
    script.write_text(
        "import pathlib, signal\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)  # needs the KILL after the grace\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "signal.pause()\n",
        encoding="utf-8",
    )
    spec = ProcessSpec(name="slow", command=(sys.executable, str(script)), grace=0.5)
    controller = Controller([spec], [tmp_path])
    with capture_logs() as logs:
        controller.start()
        wait_until(ready.exists)
        controller.notify({script})
        wait_until(lambda: controller.status()[0].state is TargetState.RESTARTING)
        for _ in range(5):
            controller.notify({script})
        wait_event(logs, "restarted")
        wait_until(lambda: _idle(controller))
        status = controller.status()[0]
        controller.stop()
    assert status.restarts == 2
    # the first restart's wait for its process to be up gave way to the newer change at once
    (superseded,) = events(logs, "restart-superseded")
    (restarted,) = events(logs, "restarted")
    assert superseded["pids"] != restarted["pids"]


def test_only_targets_whose_root_was_touched_restart(tmp_path: Path) -> None:
    a, b, elsewhere = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d in (a, b, elsewhere):
        d.mkdir()
    specs = [
        ProcessSpec(name="a", command=SLEEP, root=a, grace=5),
        ProcessSpec(name="b", command=SLEEP, root=b, grace=5),
        ProcessSpec(name="any", command=SLEEP, grace=5),
    ]
    controller = Controller(specs, [a, b])
    with capture_logs() as logs:
        controller.start()
        wait_until(lambda: all(_idle(controller, i) for i in range(3)))
        controller.notify({elsewhere / "x.py"})  # under no root: nobody restarts
        controller.notify({a / "pkg" / "x.py"})  # pending is set right here, synchronously
        wait_until(lambda: len(events(logs, "restarted")) == 2)
        wait_until(lambda: all(_idle(controller, i) for i in range(3)))
        by_name = {s.name: s for s in controller.status()}
        controller.stop()
    assert sorted(e["target"] for e in events(logs, "restarted")) == ["a", "any"]
    assert by_name["b"].restarts == 0
    assert by_name["a"].restarts == by_name["any"].restarts == 1


def test_a_process_older_than_its_sources_is_stale(tmp_path: Path, reaper: Reaper) -> None:
    src = tmp_path / "src"
    (src / "__pycache__").mkdir(parents=True)
    (src / ".venv").mkdir()
    (src / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n", encoding="utf-8")
    old = reaper.popen(list(SLEEP))
    pidfile = tmp_path / "app.pid"
    pidfile.write_text(str(old.pid), encoding="ascii")
    module = src / "mod.py"
    module.write_text("X = 1\n", encoding="utf-8")
    later = time.time() + 3600  # a change well after the process started
    os.utime(module, (later, later))
    ignored = src / ".venv" / "lib.py"
    ignored.write_text("", encoding="utf-8")
    os.utime(ignored, (later + 60, later + 60))

    controller = Controller([ProcessSpec(name="old", pidfile=pidfile)], [src])
    with capture_logs() as logs:
        controller.start()
        logged = wait_event(logs, "stale-process")
        wait_until(lambda: controller.status()[0].stale)
        status = controller.status()[0]
        controller.stop()
    assert status.pids == (old.pid,)
    assert status.stale_reason is not None
    assert f"pid {old.pid} started" in status.stale_reason
    assert f"before {module} changed" in status.stale_reason
    assert logged["reason"] == status.stale_reason
    assert len(events(logs, "stale-process")) == 1


def test_sources_are_dated_by_the_shared_walk_with_the_roots_excludes(
    tmp_path: Path, reaper: Reaper
) -> None:
    old = reaper.popen(list(SLEEP))
    pidfile = tmp_path / "app.pid"
    pidfile.write_text(str(old.pid), encoding="ascii")
    src = tmp_path / "src"
    later = time.time() + 3600  # changes well after the process started, all in skipped places
    for skipped in ("env/lib.py", "generated/out.py", "node_modules/pkg/x.py", ".tox/py/y.py"):
        (src / skipped).parent.mkdir(parents=True, exist_ok=True)
        (src / skipped).write_text("", encoding="utf-8")
        os.utime(src / skipped, (later, later))
    (src / "env" / "pyvenv.cfg").write_text("home = /usr/bin\n", encoding="utf-8")  # any name
    (src / "mod.py").write_text("X = 1\n", encoding="utf-8")
    past = psutil.Process(old.pid).create_time() - 60
    os.utime(src / "mod.py", (past, past))

    scan = scan_sources({src: ("generated",)})
    assert scan.newest is not None
    assert scan.newest.path == src / "mod.py"
    assert scan.directories == 1  # the root only: everything else is skipped

    spec = ProcessSpec(name="old", pidfile=pidfile)
    controller = Controller([spec], [src], {src: ("generated",)})
    unexcluded = Controller([spec], [src])
    controller.start()
    unexcluded.start()
    wait_until(lambda: controller.status()[0].pids == (old.pid,))
    wait_until(lambda: unexcluded.status()[0].stale)
    status, other = controller.status()[0], unexcluded.status()[0]
    controller.stop()
    unexcluded.stop()
    assert not status.stale, status.stale_reason
    assert f"before {src / 'generated' / 'out.py'} changed" in (other.stale_reason or "")


def test_a_change_touched_while_its_root_is_first_walked_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batcher's thread touches a source while a worker's thread walks its root for the first
    time, after the walk dated it: the root's newest change is that touch, not the walk's older
    date (a process started before it would not be called stale)."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("A = 1\n")
    b.write_text("B = 1\n")
    clock = SourceClock()
    real = staleness.scan_sources

    def walk_then_touch(roots: Any) -> Any:
        found = real(roots)  # b is dated here, before its change
        past_the_tick(a, b)
        b.write_text("B = 2\n")
        clock.touch([b])  # what the batcher's thread does meanwhile
        return found

    monkeypatch.setattr(staleness, "scan_sources", walk_then_touch)
    clock.scan(tmp_path)
    newest = clock.newest([tmp_path])
    assert newest is not None
    assert newest.path == b
    assert newest.time == max(b.stat().st_mtime, b.stat().st_ctime)


def test_source_clock_and_importers(tmp_path: Path, reaper: Reaper) -> None:
    clock = SourceClock()
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.py").write_text("")
    a = tmp_path / "a.py"
    a.write_text("")
    clock.scan(tmp_path)
    newest = clock.newest([tmp_path])
    assert newest is not None
    assert newest.path == a
    gone = tmp_path / "deleted.py"
    clock.touch([gone, tmp_path / "notes.txt"])
    latest = clock.newest([tmp_path])
    assert latest is not None
    assert latest.path == gone  # a deleted source counts as changed now

    parent = reaper.popen(
        [sys.executable, "-c", "import signal, subprocess, sys\n"
         "subprocess.Popen([sys.executable, '-c', 'import signal; signal.pause()'])\n"
         "signal.pause()\n"]
    )  # fmt: skip
    proc = psutil.Process(parent.pid)
    wait_until(lambda: len(proc.children()) == 1)
    assert [p.pid for p in importers([proc])] == [proc.children()[0].pid]
    assert stale_reason([proc], latest) is None  # started within the 1 s slack of the change


def test_systemd_faults_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = ProcessSpec(name="unit", systemd="cachewatchd-test-does-not-exist.service")
    if shutil.which("systemctl"):
        controller = Controller([spec], [tmp_path])
        with capture_logs() as logs:
            controller.start()
            controller.notify({tmp_path / "m.py"})
            failed = wait_event(logs, "restart-failed")
            controller.stop()
        assert failed["error"].startswith(
            "systemctl --user restart cachewatchd-test-does-not-exist.service failed: "
        )
        assert_one_line_faults(logs)

    monkeypatch.setenv("PATH", str(tmp_path))  # no systemctl here
    controller = Controller([spec], [tmp_path])
    with capture_logs() as logs:
        controller.start()
        warned = wait_event(logs, "error")
        controller.notify({tmp_path / "m.py"})
        failed = wait_event(logs, "restart-failed")
        controller.stop()
    assert warned["error"] == failed["error"]
    assert failed["error"] == (
        "systemctl not found: cannot manage systemd unit cachewatchd-test-does-not-exist.service"
    )
    assert_one_line_faults(logs)


def test_status_shape_and_stop_without_start(tmp_path: Path) -> None:
    controller = Controller([ProcessSpec(name="app", command=SLEEP)], [tmp_path])
    (status,) = controller.status()
    assert set(status.to_json()) == {
        "name", "kind", "pids", "state", "restarts", "last_action", "last_action_at",
        "pending", "stale", "stale_reason", "problem", "crashes", "last_exit", "containers",
    }  # fmt: skip
    assert status.state is TargetState.STARTING
    controller.notify({tmp_path / "x.py"})
    controller.stop()  # never started: nothing to join, no child to stop
    assert Controller([], [tmp_path]).status() == []


def test_a_target_without_a_process_is_not_running(tmp_path: Path, reaper: Reaper) -> None:
    dead = reaper.popen(["true"])
    dead.wait()
    missing, junk, gone = tmp_path / "missing.pid", tmp_path / "junk.pid", tmp_path / "gone.pid"
    junk.write_text("not a pid\n", encoding="ascii")
    gone.write_text(f"{dead.pid}\n", encoding="ascii")
    specs = [
        ProcessSpec(name="missing", pidfile=missing),
        ProcessSpec(name="junk", pidfile=junk),
        ProcessSpec(name="gone", pidfile=gone),
        ProcessSpec(name="nothing", match=r"cachewatchd-test-no-such-process-\d{9}"),
        ProcessSpec(name="sv", supervisor=SupervisorSpec("unix:///nonexistent/sv.sock", "web")),
    ]
    controller = Controller(specs, [tmp_path])
    controller.start()
    wait_until(lambda: all(s.state is not TargetState.STARTING for s in controller.status()))
    shown = {s.name: s for s in controller.status()}
    controller.stop()
    assert {name: s.state for name, s in shown.items()} == {
        "missing": TargetState.NOT_FOUND,
        "junk": TargetState.NOT_FOUND,
        "gone": TargetState.NOT_FOUND,
        "nothing": TargetState.NOT_FOUND,
        "sv": TargetState.UNREACHABLE,
    }
    assert all(s.pids == () for s in shown.values())
    problems = {name: s.problem or "" for name, s in shown.items()}
    assert problems["missing"].startswith(f"cannot read pidfile {missing}: ")
    assert problems["junk"] == f"pidfile {junk} does not hold a pid: 'not a pid'"
    assert problems["gone"] == f"pidfile {gone} names pid {dead.pid}, which is not running"
    assert problems["nothing"].startswith("no running process for match ")
    assert "/nonexistent/sv.sock" in problems["sv"]


def test_a_target_found_later_is_running(tmp_path: Path, reaper: Reaper) -> None:
    pidfile = tmp_path / "app.pid"
    controller = Controller([ProcessSpec(name="app", pidfile=pidfile)], [tmp_path])
    controller.start()
    wait_until(lambda: controller.status()[0].state is TargetState.NOT_FOUND)
    app = reaper.popen(list(SLEEP))
    pidfile.write_text(f"{app.pid}\n", encoding="ascii")
    controller.notify({tmp_path / "m.py"})  # the restart looks again
    try:
        wait_until(lambda: controller.status()[0].pids not in ((), (app.pid,)), 30)
        status = controller.status()[0]
    finally:
        controller.stop()
        for pid in pidfile.read_text(encoding="ascii").split():  # rewritten: the relaunched pid
            reaper.track(int(pid))
    assert (status.state, status.problem, status.restarts) == (TargetState.RUNNING, None, 1)


def test_every_target_fault_is_counted(tmp_path: Path) -> None:
    script = tmp_path / "crash.sh"
    script.write_text("#!/bin/sh\nexit 1\n", encoding="utf-8")
    script.chmod(0o755)
    specs = [
        ProcessSpec(name="missing", pidfile=tmp_path / "missing.pid"),  # error, restart-failed
        ProcessSpec(name="gated", command=SLEEP, import_check="cachewatchd_no_such_module"),
        ProcessSpec(name="crashing", command=(str(script),), root=tmp_path / "elsewhere"),
    ]
    controller = Controller(specs, [tmp_path])
    counted: list[int] = []
    controller.subscribe_errors(lambda: counted.append(1))
    with capture_logs() as logs:
        controller.start()
        wait_until(lambda: _idle(controller, 1))
        wait_event(logs, "child-exited")
        script.unlink()  # its crash restart cannot start it any more: restart-failed
        controller.notify({tmp_path / "m.py"})
        wait_event(logs, "restart-failed", 2)
        wait_event(logs, "restart-blocked")
        controller.stop()
    faults = [e for e in logs if e["event"] in ("error", "restart-failed", "restart-blocked")]
    assert {(e["event"], e["target"]) for e in faults} == {
        ("error", "missing"),
        ("restart-failed", "missing"),
        ("restart-blocked", "gated"),
        ("restart-failed", "crashing"),
    }
    crashes = [e for e in logs if e["event"] == "child-exited" and e["code"] != 0]
    assert crashes
    # The child's own crash, and its crash restart that could not start it, are errors too.
    assert len(counted) == len(faults) + len(crashes)


def test_a_newer_change_cuts_the_wait_for_the_restarted_process(tmp_path: Path) -> None:
    """While a restarted process is not up yet (here: a health check that never answers), a
    newer change restarts it again at once instead of waiting for the verdict (health_timeout);
    a stop ends that wait too, without a ``restart-failed`` line."""
    spec = ProcessSpec(
        name="app",
        command=SLEEP,
        grace=5,
        health_url="http://127.0.0.1:9/never",
        health_timeout=60,
    )
    controller = Controller([spec], [tmp_path])
    with capture_logs() as logs:
        controller.start()
        wait_until(lambda: bool(controller.status()[0].pids))
        first = controller.status()[0].pids
        controller.notify({tmp_path / "m.py"})

        def waiting_for_health() -> bool:
            status = controller.status()[0]
            return status.state is TargetState.RESTARTING and status.pids not in ((), first)

        wait_until(waiting_for_health, 30)
        second = controller.status()[0].pids
        controller.notify({tmp_path / "m.py"})
        wait_event(logs, "restart-superseded")
        wait_until(lambda: controller.status()[0].pids not in ((), first, second), 30)
        controller.stop()
    (superseded,) = events(logs, "restart-superseded")
    assert tuple(superseded["pids"]) == second
    assert events(logs, "restart-failed") == []
    assert events(logs, "restarted") == []
