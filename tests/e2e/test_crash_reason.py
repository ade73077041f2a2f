"""The daemon's own child keeps crashing: the log, ``cachewatchd status`` and its JSON say why."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from tests.support.daemon import DaemonProc, cli, isolated_env
from tests.support.e2e import child_command
from tests.support.servers import uvicorn_command, write_asgi_app
from tests.support.wait import wait_until


def _target(env: dict[str, str]) -> dict[str, Any]:
    daemons = json.loads(cli(["status", "--json"], env).stdout)["daemons"]
    processes = (daemons[0].get("processes") or [{}]) if daemons else [{}]
    entry: dict[str, Any] = processes[0]
    return entry


def test_status_says_why_the_own_child_keeps_exiting(tmp_path: Path) -> None:
    env = isolated_env(tmp_path / "home")
    proj = (tmp_path / "proj").resolve()
    write_asgi_app(proj, "never served")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = child_command(uvicorn_command(port))
        with DaemonProc([str(proj), "--grace", "5", "--", *server], env, cwd=proj) as daemon:
            daemon.ready()
            exited = daemon.wait_event("child-exited")
            wait_until(lambda: _target(env).get("crashes", 0) >= 2, 30, message="2 crashes")
            shown = _target(env)
            text = cli(["status"], env).stdout
            counters = json.loads(cli(["status", "--json"], env).stdout)["daemons"][0]["counters"]
            assert daemon.stop() == 0
    reason = exited["reason"]
    assert reason.endswith("address already in use"), reason
    assert shown["last_exit"] == f"exited with code {exited['code']}: {reason}"
    assert "address already in use" in text
    assert f"crashed {shown['crashes']} times" in text
    assert counters["errors"] >= 2
    # uvicorn's own line passed through the daemon's stderr, unchanged, among the JSON events
    assert any("[Errno 98] error while attempting to bind" in line for line in daemon.garbage)
