"""``restarted`` is logged when it is true: once the new server listens (or answers its health
check), never before; a new process that exits at once fails the restart instead."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from cachewatchd.processes.controller import Controller
from cachewatchd.processes.ready import named_ports
from cachewatchd.processes.spec import ProcessSpec
from cachewatchd.processes.status import TargetState
from tests.support.servers import (
    Reaper,
    Supervisord,
    events,
    fetch,
    free_port,
    set_value,
    uvicorn_command,
    wait_event,
    wait_value,
    write_asgi_app,
)
from tests.support.wait import wait_until

_GATED = """\
import os as _os, pathlib as _pathlib, time as _time
_here = _pathlib.Path(__file__).parent
(_here / "importing").write_text(str(_os.getpid()))
while not (_here / "go").exists():  # the app's own slow start, held by the test
    _time.sleep(0.01)
"""


def _gated_app(directory: Path, value: str) -> Path:
    """The test app, whose import waits until ``go`` exists beside it (a slow start)."""
    app = write_asgi_app(directory, value)
    app.write_text(_GATED + app.read_text(encoding="utf-8"), encoding="utf-8")
    return app


def _importing(directory: Path) -> int | None:
    try:
        return int((directory / "importing").read_text())
    except (OSError, ValueError):
        return None


def test_own_child_restarted_is_logged_once_the_new_server_listens(tmp_path: Path) -> None:
    app = _gated_app(tmp_path, "first")
    go = tmp_path / "go"
    go.touch()
    port = free_port()
    spec = ProcessSpec(name="app", command=tuple(uvicorn_command(port)), cwd=tmp_path, grace=5)
    controller = Controller([spec], [tmp_path])
    with capture_logs() as logs:
        controller.start()
        wait_value(port, "first")
        (old,) = controller.status()[0].pids
        go.unlink()
        set_value(app, "first", "second")
        controller.notify({app})
        # The new server is importing the app (and held there): not up yet.
        wait_until(lambda: _importing(tmp_path) not in (None, old), 30, message="new import")
        logged_early = events(logs, "restarted")
        state = controller.status()[0].state
        go.touch()
        done = wait_event(logs, "restarted")
        answer = fetch(port)  # at once: "restarted" means it serves
        controller.stop()
    assert logged_early == [], "restarted logged before the new server listened"
    assert state is TargetState.RESTARTING
    assert answer == "second"
    assert done["pids"] == [_importing(tmp_path)]


def test_a_relaunched_process_that_exits_at_once_is_a_failed_restart(
    tmp_path: Path, reaper: Reaper
) -> None:
    flag = tmp_path / "broken-config"
    script = tmp_path / "worker.py"
    script.write_text(
        "import os, pathlib, signal, sys\n"
        "if pathlib.Path(sys.argv[1]).exists():\n"
        "    sys.exit('refusing to start')\n"
        f"pathlib.Path({str(tmp_path)!r}, f'up-{{os.getpid()}}').touch()\n"
        "signal.pause()\n",
        encoding="utf-8",
    )
    old = reaper.popen([sys.executable, str(script), str(flag)], cwd=tmp_path)
    # up: past its flag check (a flag set before that would stop the old process, not the new)
    wait_until((tmp_path / f"up-{old.pid}").exists, 30, message="the old process is up")
    pidfile = tmp_path / "worker.pid"
    pidfile.write_text(f"{old.pid}\n", encoding="ascii")
    controller = Controller([ProcessSpec(name="w", pidfile=pidfile, grace=5)], [tmp_path])
    with capture_logs() as logs:
        controller.start()
        wait_until(lambda: controller.status()[0].state is TargetState.RUNNING)
        flag.touch()  # the next start fails
        controller.notify({script})
        failed = wait_event(logs, "restart-failed")
        for pid in failed.get("pids", []):
            reaper.track(pid)
        wait_until(lambda: controller.status()[0].state is TargetState.FAILED)
        controller.stop()
    assert events(logs, "restarted") == []
    (pid,) = failed["pids"]
    assert failed["error"] == f"pid {pid} exited, within 1s of the restart"


def test_own_child_that_dies_after_a_restart_fails_it_with_its_reason(tmp_path: Path) -> None:
    flag = tmp_path / "broken-config"
    script = tmp_path / "serve.py"
    script.write_text(
        "import os, pathlib, signal, sys\n"
        f"if pathlib.Path({str(flag)!r}).exists():\n"
        "    sys.exit('boom: the config is broken')\n"
        f"pathlib.Path({str(tmp_path)!r}, f'up-{{os.getpid()}}').touch()\n"
        "signal.pause()\n",
        encoding="utf-8",
    )
    spec = ProcessSpec(name="app", command=(sys.executable, str(script)), grace=5)
    controller = Controller([spec], [tmp_path])
    with capture_logs() as logs:
        controller.start()
        wait_until(lambda: controller.status()[0].state is TargetState.RUNNING)
        (first,) = controller.status()[0].pids
        # up: past its flag check (a flag set before that would crash the first child instead)
        wait_until((tmp_path / f"up-{first}").exists, 30, message="the first child is up")
        flag.touch()
        controller.notify({script})
        failed = wait_event(logs, "restart-failed")
        exited = wait_event(logs, "child-exited")
        flag.unlink()  # the crash-loop restart starts it again
        wait_until(lambda: controller.status()[0].pids, 20, message="started by the backoff")
        controller.stop()
    assert events(logs, "restarted") == []
    assert (
        failed["error"]
        == "exited with code 1: boom: the config is broken, within 1s of the restart"
    )
    assert exited["reason"] == "boom: the config is broken"


class _SlowSupervisord(Supervisord):
    """supervisord whose programs count as started only after 10 s (``startsecs``)."""

    def _config(self, base: Path, programs: Any) -> str:
        return super()._config(base, programs).replace("startsecs = 0", "startsecs = 10")


def test_supervisord_restarted_is_logged_when_the_server_listens_not_after_startsecs(
    tmp_path: Path, reaper: Reaper
) -> None:
    app_dir = tmp_path / "app"
    app = write_asgi_app(app_dir, "one")
    port = free_port()
    command = " ".join(uvicorn_command(port))
    sv = _SlowSupervisord(tmp_path, {"web": f"command = {command}\ndirectory = {app_dir}"}, reaper)
    try:
        wait_value(port, "one")
        spec = ProcessSpec(name="web", supervisor=sv.spec("web"), grace=5)
        controller = Controller([spec], [tmp_path])
        with capture_logs() as logs:
            controller.start()
            set_value(app, "one", "two!")
            controller.notify({app})
            done = wait_event(logs, "restarted")
            answer = fetch(port)
            controller.stop()
    finally:
        sv.stop()
    assert answer == "two!"
    assert done["seconds"] < 10, "waited for supervisord's startsecs"


@pytest.mark.parametrize(
    ("cmdline", "ports"),
    [
        (["python", "-m", "uvicorn", "app:app", "--port", "8001"], {8001}),
        (["/venv/bin/uvicorn", "app:app", "--port=8002", "--host", "0.0.0.0"], {8002}),
        (["gunicorn", "-b", "127.0.0.1:8003", "--bind=[::1]:8004", "app:app"], {8003, 8004}),
        (["gunicorn", "-b127.0.0.1:8005", "app:app"], {8005}),
        (["gunicorn", "--bind", "unix:/run/app.sock", "app:app"], set()),
        (["python", "manage.py", "runserver", "0.0.0.0:8006"], {8006}),
        (["flask", "run", "-p", "8007"], {8007}),
        (["python", "worker.py", "--port", "5432"], set()),  # not a known server: its DB port
        (["uvicorn", "app:app"], set()),  # nothing named: the old sockets, or a steady moment
    ],
)
def test_ports_named_on_a_servers_command_line(cmdline: list[str], ports: set[int]) -> None:
    assert named_ports(cmdline) == ports


def test_a_crashed_servers_restart_waits_for_the_port_its_command_line_names(
    tmp_path: Path,
) -> None:
    app = _gated_app(tmp_path, "v1")
    port = free_port()
    spec = ProcessSpec(name="app", command=tuple(uvicorn_command(port)), cwd=tmp_path, grace=5)
    controller = Controller([spec], [tmp_path])
    with capture_logs() as logs:
        controller.start()  # its import waits for "go": it never listened
        wait_until(lambda: _importing(tmp_path) is not None, 30, message="first import")
        first = _importing(tmp_path)
        set_value(app, "v1", "v2-longer")
        controller.notify({app})
        wait_until(lambda: _importing(tmp_path) not in (None, first), 30, message="new import")
        logged_early = events(logs, "restarted")
        (tmp_path / "go").touch()
        wait_event(logs, "restarted")
        answer = fetch(port)
        controller.stop()
    assert logged_early == []
    assert answer == "v2-longer"
