"""The daemon's own child: a real uvicorn restarted after batches, crash-loop backoff, process
group, output passing through."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from structlog.testing import capture_logs

from cachewatchd.cli._control import _describe_target
from cachewatchd.processes.controller import Controller
from cachewatchd.processes.own_child import ChildError, OwnChild
from cachewatchd.processes.spec import ProcessSpec
from cachewatchd.processes.status import TargetState
from cachewatchd.processes.stderr_tee import StderrTee
from tests.support.servers import (
    events,
    free_port,
    set_value,
    uvicorn_command,
    wait_event,
    wait_value,
    write_asgi_app,
)
from tests.support.wait import wait_until

SLEEPER = "import signal; signal.pause()"


def test_uvicorn_as_own_child_restarts_onto_new_code(tmp_path: Path) -> None:
    app = write_asgi_app(tmp_path, "first")
    port = free_port()
    spec = ProcessSpec(
        name="app",
        command=tuple(uvicorn_command(port)),
        cwd=tmp_path,
        grace=5,
        health_url=f"http://127.0.0.1:{port}/",
    )
    controller = Controller([spec], [tmp_path])
    with capture_logs() as logs:
        controller.start()
        wait_value(port, "first")
        first = controller.status()[0]
        set_value(app, "first", "second")
        controller.notify({app})
        done = wait_event(logs, "restarted")
        wait_value(port, "second")
        wait_until(lambda: list(controller.status()[0].pids) == done["pids"])
        controller.stop()
    assert first.kind == "child"
    assert done["pids"] != list(first.pids)
    for pid in [*first.pids, *done["pids"]]:
        assert not psutil.pid_exists(pid)
    assert controller.status()[0].state is TargetState.STOPPED


def test_output_passes_through_and_stop_ends_the_whole_group(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "parent.py"
    script.write_text(
        "import signal, subprocess, sys\n"
        "kid = subprocess.Popen([sys.executable, '-c', 'import signal; signal.pause()'])\n"
        "print('child says hello', kid.pid, flush=True)\n"
        "print('child error line', file=sys.stderr, flush=True)\n"
        "signal.pause()\n",
        encoding="utf-8",
    )
    child = OwnChild([sys.executable, str(script)], grace=5)
    pid = child.start()
    wait_until(lambda: "child says hello" in capfd.readouterr().out, 10)
    leader = psutil.Process(pid)
    wait_until(lambda: len(leader.children()) == 1)
    grandchild = leader.children()[0]
    assert child.stop() is not None
    wait_until(lambda: not grandchild.is_running() or grandchild.status() == "zombie")
    assert child.pid is None
    with pytest.raises(ChildError, match="cannot start"):
        OwnChild([str(tmp_path / "missing-command")]).start()


def test_crash_loop_backs_off_and_a_clean_exit_waits_for_the_next_batch(
    tmp_path: Path,
) -> None:
    crashing = OwnChild([sys.executable, "-c", "raise SystemExit(3)"], backoff=(0.05, 0.2))
    with capture_logs() as logs:
        crashing.start()

        def five_crashes() -> bool:
            crashing.poll()  # what the controller's worker does between batches
            return crashing.crashes >= 5

        wait_until(five_crashes, 20)
        crashing.stop()
    delays = [e["restart_in"] for e in events(logs, "child-exited")][:5]
    assert delays == [0.05, 0.1, 0.2, 0.2, 0.2]
    assert {e["code"] for e in events(logs, "child-exited")} == {3}

    done = OwnChild([sys.executable, "-c", "pass"])
    with capture_logs() as logs:
        done.start()
        wait_until(lambda: done.poll() is None and done.last_exit == 0)
        assert done.waiting_until is None  # exit 0: not restarted until the next batch
        assert done.pid is None
    assert events(logs, "child-exited")[0]["restart_in"] is None


def test_controller_restarts_a_crashed_child_and_stops_it(tmp_path: Path) -> None:
    marker = tmp_path / "starts.txt"
    script = tmp_path / "flaky.py"
    script.write_text(
        "import pathlib, signal, sys\n"
        f"m = pathlib.Path({str(marker)!r})\n"
        "n = len(m.read_text()) if m.exists() else 0\n"
        "m.write_text('x' * (n + 1))\n"
        "if n == 0:\n"
        "    sys.exit(1)\n"
        "signal.pause()\n",
        encoding="utf-8",
    )
    spec = ProcessSpec(name="flaky", command=(sys.executable, str(script)), grace=5)
    controller = Controller([spec], [tmp_path])
    with capture_logs() as logs:
        controller.start()
        wait_event(logs, "child-exited")
        wait_until(lambda: marker.exists() and marker.read_text() == "xx", 20)
        wait_until(lambda: controller.status()[0].state is TargetState.RUNNING)
        (pid,) = controller.status()[0].pids
        controller.stop()
    assert not psutil.pid_exists(pid)
    assert controller.status()[0].restarts == 0  # crash restarts are not batch restarts


def test_a_child_that_cannot_be_executed_fails_the_start_then_backs_off(tmp_path: Path) -> None:
    script = tmp_path / "later.sh"  # missing at start
    spec = ProcessSpec(name="app", command=(str(script),), grace=5)
    controller = Controller([spec], [tmp_path])
    with pytest.raises(ChildError) as raised:
        controller.start()
    assert raised.value.message == f"cannot start {str(script)!r}: No such file or directory"
    assert raised.value.exit_code == 3
    # Whoever carries on (the daemon, on a reload) gets the worker and the crash-loop backoff.
    wait_until(lambda: controller.status()[0].state is TargetState.BACKOFF)
    assert controller.status()[0].problem == raised.value.message
    script.write_text("#!/bin/sh\nexec sleep 60\n", encoding="utf-8")
    script.chmod(0o755)
    wait_until(lambda: controller.status()[0].pids, 20, message="started by the backoff")
    status = controller.status()[0]
    controller.stop()
    assert (status.state, status.problem) == (TargetState.RUNNING, None)


def test_a_crash_looping_child_says_why_and_its_stderr_still_passes_through(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    write_asgi_app(tmp_path, "never served")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))  # the port is ours: uvicorn cannot bind it
        taken.listen()
        port = taken.getsockname()[1]
        spec = ProcessSpec(name="app", command=tuple(uvicorn_command(port)), cwd=tmp_path, grace=5)
        controller = Controller([spec], [tmp_path])
        faults: list[None] = []
        controller.subscribe_errors(lambda: faults.append(None))
        with capture_logs() as logs:
            controller.start()
            first = wait_event(logs, "child-exited")

            def backing_off_after_two() -> bool:
                status = controller.status()[0]
                return status.state is TargetState.BACKOFF and status.crashes >= 2

            wait_until(backing_off_after_two, 30, message="a second crash")
            shown = controller.status()[0]
            controller.stop()
    reason = first["reason"]
    assert reason.endswith("address already in use"), reason
    assert f"('127.0.0.1', {port})" in reason
    code = first["code"]
    assert code == 3  # uvicorn's startup failure
    assert shown.last_exit == f"exited with code {code}: {reason}"
    assert shown.problem == shown.last_exit  # backing off: why there is no process
    assert len(faults) >= shown.crashes >= 2  # every crash counts as an error
    text = _describe_target(shown.to_json())
    assert text.startswith(f"  process app: backoff pid - (exited with code {code}: {reason})")
    assert f"crashed {shown.crashes} times" in text
    err = capfd.readouterr().err
    # Passed through unchanged: uvicorn's own line, with its own spacing.
    assert "ERROR:    [Errno 98] error while attempting to bind on address" in err


def test_the_stderr_tee_never_blocks_the_child_when_our_stderr_stalls(tmp_path: Path) -> None:
    stalled_read, stalled = os.pipe()  # nobody reads it: our stderr, stalled
    os.set_blocking(stalled, False)
    try:
        while True:
            os.write(stalled, b"x" * 65536)
    except BlockingIOError:
        os.set_blocking(stalled, True)  # full, as a stalled terminal or log reader leaves it
    tee = StderrTee.open(name="loud", out=stalled)
    script = "import sys; sys.stderr.write('y' * 4_000_000 + '\\nlast words\\n')"
    child = subprocess.Popen([sys.executable, "-c", script], stderr=tee.child_end)
    tee.started()
    try:
        assert child.wait(timeout=20) == 0, "the child blocked on its stderr"
        assert tee.wait(10)
    finally:
        child.kill()
        child.wait()
        os.close(stalled)
        os.close(stalled_read)
    assert tee.last_line == "last words"
    assert tee.dropped == 4_000_000 + len("\nlast words\n")


def test_the_stderr_tee_keeps_draining_when_our_stderr_is_gone(tmp_path: Path) -> None:
    gone_read, gone = os.pipe()
    os.close(gone_read)  # the reader left: every write fails (EPIPE)
    tee = StderrTee.open(name="orphan", out=gone)
    script = "import sys\nfor i in range(2000): print('line', i, file=sys.stderr)"
    child = subprocess.Popen([sys.executable, "-c", script], stderr=tee.child_end)
    tee.started()
    try:
        assert child.wait(timeout=20) == 0
        assert tee.wait(10)
    finally:
        os.close(gone)
    assert tee.last_line == "line 1999"
    assert tee.dropped > 0


class _Bug(BaseException):
    """What a worker's guard does not catch."""


def test_a_worker_thread_that_dies_stops_its_child_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("threading.excepthook", lambda args: None)  # no traceback in the output
    spec = ProcessSpec(name="app", command=(sys.executable, "-c", SLEEPER), grace=5)
    controller = Controller([spec], [tmp_path])
    controller.start()
    wait_until(lambda: controller.status()[0].state is TargetState.RUNNING)
    (pid,) = controller.status()[0].pids
    worker = controller._workers[0]

    def broken_tick() -> float | None:
        raise _Bug

    def running(pid: int) -> bool:
        return psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"

    with capture_logs() as logs:  # the thread's death may be logged too (thread-died)
        monkeypatch.setattr(worker.target, "tick", broken_tick)
        controller.notify({tmp_path / "m.py"})  # the worker wakes up, restarts, ticks and dies
        worker.thread.join(20)
        (restarted,) = wait_event(logs, "restarted")["pids"]
        left = [p for p in (pid, restarted) if running(p)]
        controller.stop()
    assert not worker.thread.is_alive()
    assert left == [], "the child outlived its worker"
    assert controller.status()[0].state is TargetState.STOPPED
