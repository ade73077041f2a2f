"""Docker targets end to end: the daemon on this host, a real dockerd, an app in a container that
runs the bind-mounted code (tests/support/dockerd.py, tests/support/docker_app.py).

The edits are the trap of containers: a same-size edit within the second of the pyc the
container's Python wrote, which a plain ``docker restart`` does not fix; cachewatchd removes the
cache on the host and restarts (or signals) the container's app.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path

import psutil
import pytest

from cachewatchd.processes.docker_model import parse_time
from tests.support.daemon import cli
from tests.support.docker_app import ask, wait_answer, write_unix_app
from tests.support.dockerd import Dockerd
from tests.support.e2e import E2E, toml_config
from tests.support.servers import Reaper
from tests.support.wait import git

COMPOSE = {"com.docker.compose.project": "shop", "com.docker.compose.service": "backend"}

_RELOADING = """\
import importlib
import os
import signal
import socket
import sys

import answer

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "app.sock")
reload = []


def stop(signum, frame):
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGHUP, lambda signum, frame: reload.append(1))
if os.path.exists(PATH):
    os.unlink(PATH)
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(PATH + ".new")
os.rename(PATH + ".new", PATH)
server.listen(16)
server.settimeout(0.05)
print("serving", answer.VALUE, flush=True)
while True:
    if reload:
        reload.clear()
        importlib.reload(answer)
        print("reloaded", answer.VALUE, flush=True)
    try:
        conn, _ = server.accept()
    except socket.timeout:
        continue
    with conn:
        conn.sendall(str(answer.VALUE).encode())
"""


@pytest.fixture
def e2e(tmp_path: Path, reaper: Reaper) -> E2E:
    return E2E(tmp_path, reaper)


def _app(
    e2e: E2E, dockerd: Dockerd, *, labels: dict[str, str] | None = None, marker: str = ""
) -> tuple[Path, str]:
    """The app in container ``backend``, serving ``one`` from ``proj/src`` (bind-mounted); its
    command line ends with *marker* (serve.py ignores it)."""
    src = e2e.proj / "src"
    write_unix_app(src, "one")
    argv = ["python", "/app/serve.py", *([marker] if marker else [])]
    cid = dockerd.run_container("backend", src, argv, labels=labels or {})
    wait_answer(src / "app.sock", "one", timeout=60)
    return src, cid


def _same_size_edit(src: Path, new: str) -> None:
    """``VALUE = NEW`` with the old size and the old mtime: the pyc the container wrote stays valid
    for its Python (a plain ``docker restart`` serves the old value); cachewatchd removes it."""
    answer = src / "answer.py"
    before = answer.stat()
    answer.write_text(f"VALUE = {new!r}\n", encoding="utf-8")
    assert answer.stat().st_size == before.st_size
    os.utime(answer, ns=(before.st_atime_ns, before.st_mtime_ns))


def _config(e2e: E2E, dockerd: Dockerd, table: Mapping[str, object]) -> Path:
    return toml_config(e2e.tmp / "config.toml", [{"name": "backend", "grace": 5, **table}])


def _no_tracebacks(text: str) -> None:
    assert "Traceback" not in text, text


def test_a_bind_mounted_edit_restarts_the_containers_app_once_and_it_serves_the_new_code(
    e2e: E2E, dockerd: Dockerd
) -> None:
    src, cid = _app(e2e, dockerd)
    config = _config(e2e, dockerd, {"docker": {"container": "backend", "host": dockerd.host}})
    with e2e.daemon(["--config", str(config), str(e2e.proj)]) as daemon:
        daemon.ready()
        _same_size_edit(src, "two")
        restarted = daemon.wait_event("restarted", timeout=60)
        wait_answer(src / "app.sock", "two", timeout=30)
        record = e2e.published(daemon)
        shown = cli(["status"], e2e.env).stdout
    assert restarted["target"] == "backend"
    assert len(daemon.events("restarted")) == 1
    assert restarted["pids"] == [dockerd.inspect(cid)["State"]["Pid"]]
    (target,) = record["processes"]
    assert target["kind"] == "docker"
    (container,) = target["containers"]
    assert (container["name"], container["state"]) == ("backend", "running")
    assert not target["stale"]
    assert f"container backend ({cid[:12]}) running since {container['started_at']}" in shown
    assert dockerd.logs(cid).split() == ["serving", "one", "serving", "two"]
    _no_tracebacks(daemon.stderr())


def test_a_compose_service_is_found_by_its_labels(e2e: E2E, dockerd: Dockerd) -> None:
    src, cid = _app(e2e, dockerd, labels=COMPOSE)
    compose = {"project": "shop", "service": "backend", "host": dockerd.host}
    config = _config(e2e, dockerd, {"compose": compose})
    with e2e.daemon(["--config", str(config), str(e2e.proj)]) as daemon:
        daemon.ready()
        _same_size_edit(src, "two")
        daemon.wait_event("restarted", timeout=60)
        wait_answer(src / "app.sock", "two", timeout=30)
    assert len(daemon.events("restarted")) == 1
    assert dockerd.logs(cid).split() == ["serving", "one", "serving", "two"]


def test_a_signal_target_sends_hup_to_the_containers_app(e2e: E2E, dockerd: Dockerd) -> None:
    src = e2e.proj / "src"
    write_unix_app(src, "one")
    (src / "serve.py").write_text(_RELOADING, encoding="utf-8")
    cid = dockerd.run_container("backend", src, ["python", "/app/serve.py"])
    wait_answer(src / "app.sock", "one", timeout=60)
    table = {"docker": {"container": "backend", "host": dockerd.host}, "action": "signal",
             "signal": "HUP", "grace": 1}  # fmt: skip
    config = _config(e2e, dockerd, table)
    with e2e.daemon(["--config", str(config), str(e2e.proj)]) as daemon:
        daemon.ready()
        started = dockerd.inspect(cid)["State"]["StartedAt"]
        _same_size_edit(src, "two")
        daemon.wait_event("signalled", timeout=60)
        wait_answer(src / "app.sock", "two", timeout=30)
    assert dockerd.inspect(cid)["State"]["StartedAt"] == started  # not restarted
    assert dockerd.logs(cid).split() == ["serving", "one", "reloaded", "two"]
    assert not daemon.events("restarted")


def test_a_container_whose_mounts_lie_outside_the_roots_is_refused(
    e2e: E2E, dockerd: Dockerd
) -> None:
    elsewhere = e2e.tmp / "elsewhere"
    write_unix_app(elsewhere, "one")
    dockerd.run_container("backend", elsewhere, ["python", "/app/serve.py"])
    wait_answer(elsewhere / "app.sock", "one", timeout=60)
    config = _config(e2e, dockerd, {"docker": {"container": "backend", "host": dockerd.host}})
    with e2e.daemon(["--config", str(config), str(e2e.proj)]) as daemon:
        code = daemon.wait_exit(timeout=60)
    assert code == 3
    stderr = daemon.stderr()
    assert "has no bind mount under the watched roots" in stderr
    assert f"{elsewhere} -> /app" in stderr
    _no_tracebacks(stderr)


def test_a_match_target_on_a_containerized_process_is_refused_and_never_relaunched_here(
    e2e: E2E, dockerd: Dockerd
) -> None:
    from cachewatchd.processes.pid_namespace import foreign

    marker = f"cachewatchd-test-{uuid.uuid4().hex}"  # other sessions run /app/serve.py too
    src, cid = _app(e2e, dockerd, marker=marker)
    config = _config(e2e, dockerd, {"match": marker, "scope": "any"})
    e2e.env["DOCKER_HOST"] = dockerd.host  # to name the container
    with e2e.daemon(["--config", str(config), str(e2e.proj)]) as daemon:
        daemon.ready()
        warned = daemon.wait_event("error", lambda e: "PID namespace" in e.get("error", ""))
        _same_size_edit(src, "two")
        failed = daemon.wait_event("restart-failed", timeout=60)
    expected = f"runs in another PID namespace (container backend ({cid[:12]}))"
    assert expected in warned["error"]
    assert expected in failed["error"]
    assert 'docker = { container = "backend" }' in failed["error"]
    assert dockerd.logs(cid).split() == ["serving", "one"]  # neither restarted nor stopped
    serving = [p for p in psutil.process_iter() if marker in " ".join(_cmdline(p))]
    assert [p.pid for p in serving] == [dockerd.inspect(cid)["State"]["Pid"]]  # nothing here
    assert all(foreign(p) for p in serving)
    _no_tracebacks(daemon.stderr())


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def test_a_container_started_before_its_mounted_sources_changed_is_stale_in_doctor_and_status(
    e2e: E2E, dockerd: Dockerd
) -> None:
    src, cid = _app(e2e, dockerd)
    started = parse_time(dockerd.inspect(cid)["State"]["StartedAt"])
    assert started is not None
    later = started + 30  # an edit after the container started (mtime: no waiting here)
    os.utime(src / "answer.py", (later, later))
    e2e.env["DOCKER_HOST"] = dockerd.host
    done = cli(["doctor", "--json", "--probe-timeout", "0.5", str(e2e.proj)], e2e.env)
    report = json.loads(done.stdout)
    (stale,) = [f for f in report["findings"] if f["id"] == "stale-containers"]
    assert done.returncode == 1
    assert stale["details"][0].startswith(f"container backend ({cid[:12]}): pid ")
    assert str(src / "answer.py") in stale["details"][0]
    assert stale["action"].startswith("docker restart backend;")
    config = _config(e2e, dockerd, {"docker": {"container": "backend"}})
    with e2e.daemon(["--config", str(config), str(e2e.proj)]) as daemon:
        daemon.ready()
        daemon.wait_event("stale-process")
        (target,) = e2e.published(daemon)["processes"]
        shown = cli(["status"], e2e.env).stdout
    assert target["stale"]
    assert target["stale_reason"].startswith(f"container backend ({cid[:12]}): pid ")
    assert f"STALE: container backend ({cid[:12]})" in shown


def test_the_import_gate_runs_in_the_container_and_keeps_the_old_app_on_a_syntax_error(
    e2e: E2E, dockerd: Dockerd
) -> None:
    src, cid = _app(e2e, dockerd)
    table = {"docker": {"container": "backend", "host": dockerd.host}, "import_check": "answer"}
    config = _config(e2e, dockerd, table)
    with e2e.daemon(["--config", str(config), str(e2e.proj)]) as daemon:
        daemon.ready()
        (src / "answer.py").write_text("VALUE = 'two\n", encoding="utf-8")
        blocked = daemon.wait_event("restart-blocked", timeout=60)
        assert ask(src / "app.sock") == "one"  # the old app keeps serving
        (src / "answer.py").write_text("VALUE = 'fix'\n", encoding="utf-8")
        daemon.wait_event("restarted", timeout=60)
        wait_answer(src / "app.sock", "fix", timeout=30)
    assert "SyntaxError" in blocked["error"]
    assert "/app/answer.py, line 1" in blocked["error"]  # the container's path: it ran there
    assert len(daemon.events("restarted")) == 1
    assert dockerd.logs(cid).split() == ["serving", "one", "serving", "fix"]


def test_a_git_checkout_in_the_bind_mount_restarts_the_container_once(
    e2e: E2E, dockerd: Dockerd
) -> None:
    src = e2e.proj / "src"
    write_unix_app(src, "one")
    for n in range(200):  # a checkout that touches many files
        (src / f"mod{n}.py").write_text(f"N = {n}\n", encoding="utf-8")
    git(e2e.proj, "init", "-q")
    git(e2e.proj, "add", "-A")
    git(e2e.proj, "commit", "-qm", "one")
    git(e2e.proj, "checkout", "-qb", "two")
    (src / "answer.py").write_text("VALUE = 'two, from git'\n", encoding="utf-8")
    for n in range(200):
        (src / f"mod{n}.py").write_text(f"N = {n + 1}\n", encoding="utf-8")
    git(e2e.proj, "commit", "-qam", "two")
    git(e2e.proj, "checkout", "-q", "main")
    cid = dockerd.run_container("backend", src, ["python", "/app/serve.py"])
    wait_answer(src / "app.sock", "one", timeout=60)
    config = _config(e2e, dockerd, {"docker": {"container": "backend", "host": dockerd.host}})
    with e2e.daemon(["--config", str(config), str(e2e.proj)]) as daemon:
        daemon.ready()
        git(e2e.proj, "checkout", "-q", "two")
        daemon.wait_event("restarted", timeout=60)
        wait_answer(src / "app.sock", "two, from git", timeout=30)
        e2e.published(daemon)  # every batch of the checkout handled by now
    assert len(daemon.events("restarted")) == 1
    assert dockerd.logs(cid).split("\n")[:2] == ["serving one", "serving two, from git"]


_SLOW_TCP = """\
import os
import signal
import socket
import sys
import time

import answer

signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
time.sleep(2)  # a slow start: the restart is not over before it listens
tcp = socket.socket()
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("127.0.0.1", 8000))
tcp.listen(16)
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app.sock")
if os.path.exists(path):
    os.unlink(path)
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
server.listen(16)
print("serving", answer.VALUE, flush=True)
while True:
    conn, _ = server.accept()
    with conn:
        conn.sendall(str(answer.VALUE).encode())
"""


def test_a_restarted_container_is_up_once_its_app_listens_on_its_port_again(
    e2e: E2E, dockerd: Dockerd
) -> None:
    src = e2e.proj / "src"
    write_unix_app(src, "one")
    (src / "serve.py").write_text(_SLOW_TCP, encoding="utf-8")
    cid = dockerd.run_container("backend", src, ["python", "/app/serve.py"])
    wait_answer(src / "app.sock", "one", timeout=60)
    config = _config(e2e, dockerd, {"docker": {"container": "backend", "host": dockerd.host}})
    with e2e.daemon(["--config", str(config), str(e2e.proj)]) as daemon:
        daemon.ready()
        _same_size_edit(src, "two")
        restarted = daemon.wait_event("restarted", timeout=60)
        wait_answer(src / "app.sock", "two", timeout=30)
    # the port is read from the container's process (its own network namespace): the wait is
    # for it, not for the steady second a process without a port gets
    assert restarted["seconds"] >= 2
    assert dockerd.logs(cid).split() == ["serving", "one", "serving", "two"]
