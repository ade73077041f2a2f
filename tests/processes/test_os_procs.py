"""Existing processes found by match or pidfile: restart (relaunch detached), signal, refusals."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from structlog.testing import capture_logs

from cachewatchd.processes import os_procs as procs
from cachewatchd.processes.controller import Controller
from cachewatchd.processes.spec import ProcessSpec
from cachewatchd.processes.status import TargetState
from tests.support.daemon import DaemonProc, cli, isolated_env
from tests.support.e2e import toml_config
from tests.support.fifo import RESCUE_AFTER, fifo_at, rescued
from tests.support.servers import (
    Reaper,
    assert_one_line_faults,
    events,
    fetch,
    free_port,
    gunicorn_command,
    set_value,
    uvicorn_command,
    wait_event,
    wait_value,
    write_asgi_app,
    write_wsgi_app,
)
from tests.support.wait import wait_until

SLEEPER = "import signal\nsignal.pause()\n"


def _sleeper(tmp_path: Path, name: str = "sleeper.py") -> Path:
    script = tmp_path / name
    script.write_text(SLEEPER, encoding="utf-8")
    return script


def test_match_restart_relaunches_same_command_cwd_and_environment(
    tmp_path: Path, reaper: Reaper
) -> None:
    app_dir = tmp_path / "srv"
    app = write_asgi_app(app_dir, "old")
    port = free_port()
    env = {**os.environ, "CACHEWATCHD_TEST_MARK": "kept"}
    old = reaper.popen(uvicorn_command(port), cwd=app_dir, env=env)
    wait_value(port, "old")
    old_proc = psutil.Process(old.pid)

    spec = ProcessSpec(
        name="web", match=rf"uvicorn app:app .*--port {port}\b", cwd=app_dir, grace=5
    )
    controller = Controller([spec], [tmp_path])
    with capture_logs() as logs:
        controller.start()
        set_value(app, "old", "newer")  # another size: no daemon invalidates the cache here
        controller.notify({app})
        done = wait_event(logs, "restarted")
        for pid in done["pids"]:
            reaper.track(pid)
        controller.stop()
    assert not old_proc.is_running() or old_proc.status() == psutil.STATUS_ZOMBIE
    (new_pid,) = done["pids"]
    assert new_pid != old.pid
    wait_value(port, "newer")
    new = psutil.Process(new_pid)
    assert new.cmdline() == old.args
    assert Path(new.cwd()) == app_dir
    assert new.environ()["CACHEWATCHD_TEST_MARK"] == "kept"
    assert os.getsid(new.pid) != os.getsid(0), "relaunched processes are detached (own session)"
    assert os.getsid(new_pid) == new_pid, "relaunched in its own session"
    assert done["seconds"] >= 0


def test_gunicorn_master_takes_hup_and_serves_new_code(tmp_path: Path, reaper: Reaper) -> None:
    app = write_wsgi_app(tmp_path, "before")
    port = free_port()
    master = reaper.popen(gunicorn_command(port, workers=2), cwd=tmp_path)
    wait_value(port, "before")
    master_proc = psutil.Process(master.pid)
    wait_until(lambda: len(master_proc.children()) == 2, 20, message="2 gunicorn workers")
    workers_before = {p.pid for p in master_proc.children()}

    spec = ProcessSpec(
        name="gunicorn", match=rf"gunicorn .*127\.0\.0\.1:{port}", action="signal", signal="HUP"
    )
    controller = Controller([spec], [tmp_path])
    with capture_logs() as logs:
        controller.start()
        set_value(app, "before", "after-hup")  # another size: no daemon invalidates the cache here
        controller.notify({app})
        sent = wait_event(logs, "signalled")
        controller.stop()
    assert sent["pids"] == [master.pid]
    wait_value(port, "after-hup")

    def replaced() -> bool:
        now = {p.pid for p in master_proc.children()}
        return len(now) == 2 and not now & workers_before

    wait_until(replaced, 20, message="all gunicorn workers replaced")
    assert master_proc.is_running()
    assert controller.status()[0].stale is False


def test_hup_refused_on_uvicorn_reload_parent_and_single_uvicorn(
    tmp_path: Path, reaper: Reaper
) -> None:
    fake = tmp_path / "bin" / "uvicorn"  # sleeps, but its cmdline reads like uvicorn's
    fake.parent.mkdir()
    fake.write_text(SLEEPER, encoding="utf-8")
    reload_parent = reaper.popen([sys.executable, str(fake), "app:app", "--reload"])
    single = reaper.popen([sys.executable, str(fake), "app:app", "--port", "1"])
    workers = reaper.popen([sys.executable, str(fake), "app:app", "--workers", "2"])
    for proc in (reload_parent, single, workers):
        pid = proc.pid
        wait_until(lambda: "app:app" in " ".join(psutil.Process(pid).cmdline()))  # noqa: B023

    with pytest.raises(procs.ProcessActionError, match="--reload` parent"):
        procs.send_signal(psutil.Process(reload_parent.pid), "HUP")
    with pytest.raises(procs.ProcessActionError, match="single-process uvicorn"):
        procs.send_signal(psutil.Process(single.pid), "SIGHUP")

    spec = ProcessSpec(name="dev", match=rf"{fake} app:app --reload", action="signal", signal="HUP")
    controller = Controller([spec], [tmp_path])
    with capture_logs() as logs:
        controller.start()
        controller.notify({tmp_path / "x.py"})
        warned = wait_event(logs, "error")  # said once at start...
        failed = wait_event(logs, "restart-failed")  # ...and on every batch
        wait_until(lambda: controller.status()[0].state is TargetState.FAILED)
        controller.stop()
    assert "refusing to send HUP" in failed["error"]
    assert warned["error"] == failed["error"]
    assert controller.status()[0].state is TargetState.STOPPED
    assert_one_line_faults(logs)
    assert reload_parent.poll() is None
    assert single.poll() is None

    procs.send_signal(psutil.Process(workers.pid), "HUP")  # `uvicorn --workers 2` may take HUP
    assert workers.wait(timeout=10) == -signal.SIGHUP


def test_pidfile_restart_rewrites_the_pidfile(tmp_path: Path, reaper: Reaper) -> None:
    script = _sleeper(tmp_path)
    old = reaper.popen([sys.executable, str(script)], cwd=tmp_path)
    pidfile = tmp_path / "app.pid"
    pidfile.write_text(f"{old.pid}\n", encoding="ascii")
    spec = ProcessSpec(name="bg", pidfile=pidfile, grace=5)
    controller = Controller([spec], [tmp_path])
    with capture_logs() as logs:
        controller.start()
        controller.notify({script})
        done = wait_event(logs, "restarted")
        reaper.track(done["pids"][0])
        controller.notify({script})  # the next batch finds the relaunched process
        again = wait_event(logs, "restarted", 2)
        reaper.track(again["pids"][0])
        controller.stop()
    assert old.wait(timeout=10) == -signal.SIGTERM
    assert pidfile.read_text(encoding="ascii").strip() == str(again["pids"][0])
    assert again["pids"][0] != done["pids"][0]
    assert psutil.Process(again["pids"][0]).cmdline() == [sys.executable, str(script)]


def test_pidfile_faults_are_one_line_each(tmp_path: Path, reaper: Reaper) -> None:
    gone = reaper.popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead, garbage, missing = tmp_path / "dead.pid", tmp_path / "garbage.pid", tmp_path / "no.pid"
    dead.write_text(f"{gone.pid}\n", encoding="ascii")
    garbage.write_text("not a pid\n", encoding="ascii")
    specs = [ProcessSpec(name=p.stem, pidfile=p) for p in (dead, garbage, missing)]
    controller = Controller(specs, [tmp_path])
    with capture_logs() as logs:
        controller.start()
        controller.notify({tmp_path / "m.py"})
        wait_until(lambda: len(events(logs, "restart-failed")) == 3, 20)
        wait_until(lambda: [s.state for s in controller.status()] == [TargetState.FAILED] * 3)
        controller.stop()
    errors = sorted(e["error"] for e in events(logs, "restart-failed"))
    assert any(f"names pid {gone.pid}, which is not running" in e for e in errors)
    assert any("does not hold a pid" in e for e in errors)
    assert any("cannot read pidfile" in e for e in errors)
    assert_one_line_faults(logs)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to start a process as another user")
def test_another_users_process_is_never_touched(tmp_path: Path, reaper: Reaper) -> None:
    shell = "sleep 60; exit 0"  # a system binary: the venv's python may be unreadable to nobody
    other = reaper.popen(["/bin/sh", "-c", shell, "other-user-marker"], user=65534, cwd="/")
    wait_until(lambda: "other-user-marker" in " ".join(psutil.Process(other.pid).cmdline()))
    assert procs.find_by_match("other-user-marker") == []
    pidfile = tmp_path / "other.pid"
    pidfile.write_text(str(other.pid), encoding="ascii")
    with pytest.raises(procs.ProcessActionError, match="belongs to another user"):
        procs.find_by_pidfile(pidfile)
    with pytest.raises(procs.ProcessActionError, match="another user"):
        procs.terminate_tree(psutil.Process(other.pid), grace=1)
    with pytest.raises(procs.ProcessActionError, match="another user"):
        procs.send_signal(psutil.Process(other.pid), "TERM")
    assert other.poll() is None


def test_a_recycled_pid_is_never_signalled(tmp_path: Path, reaper: Reaper) -> None:
    victim = reaper.popen([sys.executable, str(_sleeper(tmp_path))])
    proc = psutil.Process(victim.pid)
    # The same pid with another start time: what psutil sees when the pid was reused.
    proc._ident = (proc.pid, proc._ident[1] - 100)  # type: ignore[attr-defined]
    procs.terminate_tree(proc, grace=1)
    with pytest.raises(procs.ProcessActionError, match="exited before"):
        procs.send_signal(proc, "TERM")
    assert victim.poll() is None


def test_find_by_match_returns_tree_tops_and_never_ourselves(
    tmp_path: Path, reaper: Reaper
) -> None:
    port = free_port()
    app_dir = tmp_path / "srv"
    write_wsgi_app(app_dir, "x")
    master = reaper.popen(gunicorn_command(port, workers=1), cwd=app_dir)
    wait_until(lambda: fetch(port) == "x", 30)
    found = procs.find_by_match(rf"127\.0\.0\.1:{port}")
    assert [p.pid for p in found] == [master.pid]  # the master, not its worker
    assert procs.find_by_match(rf"127\.0\.0\.1:{port}", cwd=tmp_path) == []
    assert [p.pid for p in procs.find_by_match(rf"127\.0\.0\.1:{port}", cwd=app_dir)] == [
        master.pid
    ]
    assert os.getpid() not in {p.pid for p in procs.find_by_match("pytest|python")}


def test_alive_and_wait_gone(tmp_path: Path, reaper: Reaper) -> None:
    sleeper = reaper.popen([sys.executable, str(_sleeper(tmp_path))])
    zombie = reaper.popen([sys.executable, "-c", "pass"])  # exits; not reaped until the end
    proc, dead = psutil.Process(sleeper.pid), psutil.Process(zombie.pid)
    wait_until(lambda: dead.status() == psutil.STATUS_ZOMBIE)
    shown = [procs.alive(p) for p in (proc, sleeper.pid, dead, zombie.pid)]
    assert shown == [True, True, False, False]  # a zombie runs no code
    recycled = psutil.Process(sleeper.pid)
    recycled._ident = (recycled.pid, recycled._ident[1] - 100)  # type: ignore[attr-defined]
    assert not procs.alive(recycled)
    assert procs.wait_gone([proc, dead], 0.05) == [proc]
    proc.terminate()
    assert procs.wait_gone([proc, dead], 10) == []


def _pids_matching(marker: str) -> set[int]:
    return {p.pid for p in procs.find_by_match(marker)}


def test_match_acts_only_on_processes_under_the_roots_unless_scope_any(
    tmp_path: Path, reaper: Reaper
) -> None:
    root, elsewhere = tmp_path / "proj", tmp_path / "other-project"
    root.mkdir()
    elsewhere.mkdir()
    marker = f"cw-scope-{os.getpid()}-{tmp_path.name}"
    inline = [sys.executable, "-c", SLEEPER, marker]
    inside = reaper.popen(inline, cwd=root)  # runs in the project
    outside = reaper.popen(inline, cwd=elsewhere)  # the same command, another project
    script = reaper.popen([sys.executable, str(_sleeper(root)), marker], cwd=elsewhere)
    wait_until(lambda: _pids_matching(marker) == {inside.pid, outside.pid, script.pid})

    spec = ProcessSpec(name="w", match=marker, grace=5)
    controller = Controller([spec], [root])
    with capture_logs() as logs:
        controller.start()
        controller.notify({root / "m.py"})
        done = wait_event(logs, "restarted")
        for pid in done["pids"]:
            reaper.track(pid)
        controller.stop()
    assert inside.wait(timeout=10) == -signal.SIGTERM
    assert script.wait(timeout=10) == -signal.SIGTERM  # its script lies under the root
    assert outside.poll() is None, "a process of another project was restarted"
    assert len(done["pids"]) == 2
    relaunched = {psutil.Process(pid).cwd() for pid in done["pids"]}
    assert relaunched == {str(root), str(elsewhere)}

    wider = ProcessSpec(name="w", match=marker, grace=5, scope="any")
    controller = Controller([wider], [root])
    with capture_logs() as logs:
        controller.start()
        controller.notify({root / "m.py"})
        done = wait_event(logs, "restarted")
        for pid in done["pids"]:
            reaper.track(pid)
        controller.stop()
    assert outside.wait(timeout=10) == -signal.SIGTERM  # asked for explicitly: scope = "any"
    assert len(done["pids"]) == 3


def test_a_match_with_nothing_under_the_roots_says_where_it_looked(
    tmp_path: Path, reaper: Reaper
) -> None:
    root, elsewhere = tmp_path / "proj", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    marker = f"cw-scope-none-{os.getpid()}-{tmp_path.name}"
    outside = reaper.popen([sys.executable, "-c", SLEEPER, marker], cwd=elsewhere)
    wait_until(lambda: _pids_matching(marker) == {outside.pid})
    controller = Controller([ProcessSpec(name="w", match=marker)], [root])
    with capture_logs() as logs:
        controller.start()
        wait_until(lambda: controller.status()[0].state is TargetState.NOT_FOUND)
        problem = controller.status()[0].problem
        controller.stop()
    assert problem == f"no running process for match {marker!r} under {root}"
    assert outside.poll() is None
    assert_one_line_faults(logs)


# -- pidfiles a hostile tree made FIFOs: unreadable, never a hang -----------------------------------
def test_a_pidfile_that_is_a_fifo_is_unreadable_not_a_hang(tmp_path: Path) -> None:
    fifo = fifo_at(tmp_path / "app.pid")
    start = time.monotonic()
    with rescued(fifo), pytest.raises(procs.ProcessActionError) as raised:
        procs.find_by_pidfile(fifo)
    assert time.monotonic() - start < RESCUE_AFTER
    assert raised.value.message == f"cannot read pidfile {fifo}: a FIFO, not a regular file"


def test_a_fifo_pidfile_is_the_targets_problem_and_the_controller_stops(tmp_path: Path) -> None:
    fifo = fifo_at(tmp_path / "w.pid")
    controller = Controller([ProcessSpec(name="w", pidfile=fifo)], [tmp_path])
    start = time.monotonic()
    with rescued(fifo), capture_logs() as logs:
        controller.start()
        try:
            wait_until(lambda: [s.state for s in controller.status()] == [TargetState.NOT_FOUND])
            controller.notify({tmp_path / "m.py"})  # a batch: the restart fails, at once
            failed = wait_event(logs, "restart-failed", timeout=RESCUE_AFTER)
        finally:
            controller.stop()
    assert time.monotonic() - start < RESCUE_AFTER
    (status,) = controller.status()
    assert status.problem == f"cannot read pidfile {fifo}: a FIFO, not a regular file"
    assert failed["error"] == status.problem
    assert_one_line_faults(logs)


def test_a_fifo_at_the_pidfiles_old_temporary_name_does_not_hang_the_rewrite(
    tmp_path: Path, reaper: Reaper
) -> None:
    script = _sleeper(tmp_path)
    old = reaper.popen([sys.executable, str(script)], cwd=tmp_path)
    pidfile = tmp_path / "app.pid"
    pidfile.write_text(f"{old.pid}\n", encoding="ascii")
    pidfile.chmod(0o644)
    trap = fifo_at(tmp_path / ".app.pid.cachewatchd")  # the fixed name once written through
    controller = Controller([ProcessSpec(name="bg", pidfile=pidfile, grace=5)], [tmp_path])
    start = time.monotonic()
    # without the fix the FIFO becomes the pidfile: rescued() unblocks the reads of it
    with _drained(trap), rescued(pidfile), capture_logs() as logs:
        controller.start()
        try:
            controller.notify({script})
            done = wait_event(logs, "restarted")
            reaper.track(done["pids"][0])
        finally:
            controller.stop()
    assert time.monotonic() - start < RESCUE_AFTER
    assert stat.S_ISREG(pidfile.stat().st_mode)
    assert pidfile.read_text(encoding="ascii") == f"{done['pids'][0]}\n"
    assert stat.S_IMODE(pidfile.stat().st_mode) == 0o644  # the pidfile's mode is kept
    assert stat.S_ISFIFO(trap.stat().st_mode)  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".app.pid.cachewatchd", "app.pid", script.name]
    )


@contextlib.contextmanager
def _drained(fifo: Path) -> Iterator[None]:
    """Run the body; from RESCUE_AFTER seconds on, open *fifo* for reading over and over, so that
    a writer blocked in ``open`` (the bug) gets through and the test fails on its assertions
    instead of hanging."""
    stop = threading.Event()

    def drain() -> None:
        if stop.wait(RESCUE_AFTER):
            return
        while not stop.is_set():
            with contextlib.suppress(OSError):
                fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
                stop.wait(0.05)
                with contextlib.suppress(OSError):
                    os.read(fd, 4096)
                os.close(fd)

    thread = threading.Thread(target=drain, name="fifo-drain", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def test_a_daemon_whose_pidfile_is_a_fifo_reports_it_and_stops(tmp_path: Path) -> None:
    proj = (tmp_path / "proj").resolve()
    proj.mkdir()
    (proj / "m.py").write_text("X = 1\n", encoding="utf-8")
    fifo = fifo_at(proj / "run" / "app.pid")  # in the watched tree: anyone with write access
    config = toml_config(tmp_path / "config.toml", [{"name": "app", "pidfile": fifo}])
    env = isolated_env(tmp_path / "home")
    problem = f"cannot read pidfile {fifo}: a FIFO, not a regular file"
    with rescued(fifo), DaemonProc(["--config", str(config), str(proj)], env) as daemon:
        daemon.ready()
        daemon.wait_event("error", lambda e: e.get("target") == "app")
        human = cli(["status"], env).stdout
        start = time.monotonic()
        assert daemon.stop() == 0
    assert time.monotonic() - start < RESCUE_AFTER
    assert daemon.events("error")[0]["error"] == problem
    assert f"  process app: not-found pid - ({problem})" in human
    assert daemon.garbage == []
