"""Import gate (a syntax error mid-edit never takes the server down) and health check."""

from __future__ import annotations

import http.server
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from cachewatchd.processes.controller import Controller
from cachewatchd.processes.gate import (
    Probe,
    import_check,
    probe_from_command,
    python_executable,
    wait_healthy,
)
from cachewatchd.processes.spec import ProcessSpec
from cachewatchd.processes.status import TargetState
from tests.support.servers import (
    assert_one_line_faults,
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


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = 200 if self.path == "/ok" else 500
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def http_server() -> Iterator[int]:
    """A real HTTP server on 127.0.0.1: ``/ok`` answers 200, anything else 500."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, name="test-http", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_import_check_reports_the_error_as_one_line(tmp_path: Path) -> None:
    probe = Probe(sys.executable, str(tmp_path), {**os.environ, "NEEDED": "1"})
    (tmp_path / "good.py").write_text("import os\nassert os.environ['NEEDED'] == '1'\n")
    (tmp_path / "broken.py").write_text("X = 1\nVALUE = (\n")
    (tmp_path / "raises.py").write_text("import does_not_exist_anywhere\n")
    assert import_check("good", probe) is None  # found via cwd, passes with the target's env
    error = import_check("good", Probe(sys.executable, str(tmp_path), {"PATH": os.defpath}))
    assert error is not None
    assert error.startswith("KeyError: 'NEEDED'")

    broken = import_check("broken", probe)
    assert broken is not None
    assert broken.startswith("SyntaxError: '(' was never closed")
    assert f"({tmp_path / 'broken.py'}, line 2)" in broken
    assert "\n" not in broken
    raises = import_check("raises", probe)
    assert raises == "ModuleNotFoundError: No module named 'does_not_exist_anywhere'" + (
        f" ({tmp_path / 'raises.py'}, line 1)"
    )
    missing = import_check("good", Probe(str(tmp_path / "nopython"), str(tmp_path)))
    assert missing is not None
    assert missing.startswith("cannot run")


def test_the_target_python_is_found_from_argv0_or_the_shebang(tmp_path: Path) -> None:
    # argv[0] keeps a venv's path (psutil's exe() would resolve the symlink out of the venv)
    assert python_executable([sys.executable, "-m", "uvicorn"], None, None) == sys.executable
    script = tmp_path / "serve"
    script.write_text(f"#!{sys.executable}\nprint('hi')\n")
    script.chmod(0o755)
    assert python_executable([str(script), "app:app"], None, None) == sys.executable
    env_script = tmp_path / "serve-env"
    versioned = f"python{sys.version_info[0]}.{sys.version_info[1]}"  # what every venv has
    env_script.write_text(f"#!/usr/bin/env -S {versioned} -u\n")
    env_script.chmod(0o755)
    env = {"PATH": str(Path(sys.executable).parent)}
    found = python_executable(["./serve-env"], str(tmp_path), env)
    assert found == str(Path(sys.executable).parent / versioned)
    assert python_executable(["/bin/sh", "-c", "true"], None, None) is None
    assert probe_from_command(["/bin/sh"]) is None


def test_health_check_waits_for_200_and_reports_failures(http_server: int) -> None:
    assert wait_healthy(f"http://127.0.0.1:{http_server}/ok", 5) is None
    failed = wait_healthy(f"http://127.0.0.1:{http_server}/broken", 0.3)
    assert failed is not None
    assert "did not answer HTTP 200 within 0.3s (last: HTTP 500)" in failed
    closed = wait_healthy(f"http://127.0.0.1:{free_port()}/", 0.3)
    assert closed is not None
    assert "Connection refused" in closed
    cancel = threading.Event()
    cancel.set()
    cancelled = wait_healthy(f"http://127.0.0.1:{free_port()}/", 30, cancel=cancel)
    assert cancelled is not None
    assert "cancelled" in cancelled


def test_syntax_error_keeps_the_old_server_and_the_fix_brings_the_new_code(
    tmp_path: Path,
) -> None:
    app = write_asgi_app(tmp_path, "good-1")
    port = free_port()
    spec = ProcessSpec(
        name="app",
        command=tuple(uvicorn_command(port)),
        cwd=tmp_path,
        grace=5,
        import_check="app",
        health_url=f"http://127.0.0.1:{port}/",
    )
    controller = Controller([spec], [tmp_path])
    with capture_logs() as logs:
        controller.start()
        wait_value(port, "good-1")
        (old_pid,) = controller.status()[0].pids
        text = app.read_text()
        app.write_text(text.replace("VALUE = 'good-1'", "VALUE = ('good-2'"))  # mid-edit
        controller.notify({app})
        blocked = wait_event(logs, "restart-blocked")
        assert blocked["module"] == "app"
        assert "SyntaxError" in blocked["error"]
        assert str(app) in blocked["error"]
        wait_until(lambda: controller.status()[0].state is TargetState.BLOCKED)
        assert controller.status()[0].pids == (old_pid,)
        assert fetch(port) == "good-1"  # the old server keeps answering

        app.write_text(text)
        set_value(app, "good-1", "good-two")  # another size: no daemon invalidates the cache here
        controller.notify({app})
        wait_event(logs, "restarted")
        wait_value(port, "good-two")
        controller.stop()
    assert not events(logs, "restart-failed")
    assert_one_line_faults(logs)


def test_failed_health_check_is_reported_as_restart_failed(tmp_path: Path) -> None:
    spec = ProcessSpec(
        name="quiet",
        command=(sys.executable, "-c", "import signal; signal.pause()"),
        grace=5,
        health_url=f"http://127.0.0.1:{free_port()}/health",
        health_timeout=0.3,
    )
    controller = Controller([spec], [tmp_path])
    with capture_logs() as logs:
        controller.start()
        controller.notify({tmp_path / "a.py"})
        failed = wait_event(logs, "restart-failed")
        wait_until(lambda: controller.status()[0].state is TargetState.FAILED)
        status = controller.status()[0]
        controller.stop()
    assert "did not answer HTTP 200 within 0.3s" in failed["error"]
    assert failed["pids"] == list(status.pids)
    assert (status.last_action or "").startswith("failed: ")
    assert not events(logs, "restarted")


def test_a_fifo_where_the_script_should_be_is_no_python_and_never_blocks(tmp_path: Path) -> None:
    fifo = tmp_path / "serve"
    os.mkfifo(fifo)
    fifo.chmod(0o755)
    assert python_executable([str(fifo), "app:app"], None, None) is None
