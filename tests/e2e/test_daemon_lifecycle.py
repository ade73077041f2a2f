"""The daemon's lifecycle around its managed targets: start, status, errors, reload."""

from __future__ import annotations

import inspect
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from cachewatchd.daemon.loop import Daemon
from cachewatchd.processes.os_procs import alive
from cachewatchd.processes.status import TargetState, TargetStatus
from cachewatchd.watch import batch
from tests.support.daemon import DaemonProc, cli, isolated_env
from tests.support.e2e import toml_config
from tests.support.fs import full_filesystem
from tests.support.servers import Reaper
from tests.support.wait import wait_until

SLEEP = [sys.executable, "-c", "import signal; signal.pause()"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return isolated_env(tmp_path / "home")


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    root = (tmp_path / "proj").resolve()
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text("X = 1\n", encoding="utf-8")
    return root


def published(env: dict[str, str]) -> dict[str, Any]:
    """The one daemon's record, as `cachewatchd status --json` prints it."""
    (record,) = json.loads(cli(["status", "--json"], env).stdout)["daemons"]
    return dict(record)


def target(env: dict[str, str]) -> TargetStatus | None:
    """The first managed target in the published status (``None`` until the controller runs)."""
    shown = published(env).get("processes") or []
    return TargetStatus.from_json(shown[0]) if shown else None


def test_debounce_defaults_are_the_batchers_own() -> None:
    defaults = inspect.signature(Daemon).parameters
    # The very objects batch.py defines, not copies of their values that could drift apart.
    assert defaults["quiet"].default is batch.DEFAULT_QUIET
    assert defaults["max_window"].default is batch.DEFAULT_MAX_WINDOW


def test_stale_detection_honours_the_roots_excludes(
    proj: Path, env: dict[str, str], tmp_path: Path, reaper: Reaper
) -> None:
    old = reaper.popen(SLEEP)
    pidfile = tmp_path / "app.pid"
    pidfile.write_text(f"{old.pid}\n", encoding="ascii")
    past = psutil.Process(old.pid).create_time() - 60
    os.utime(proj / "pkg" / "mod.py", (past, past))
    generated = proj / "generated" / "out.py"  # rewritten all the time, never imported
    generated.parent.mkdir()
    generated.write_text("", encoding="utf-8")
    later = time.time() + 3600
    os.utime(generated, (later, later))
    config = toml_config(tmp_path / "config.toml", [{"name": "app", "pidfile": pidfile}])
    args = ["--config", str(config), "--exclude", "generated", str(proj)]
    with DaemonProc(args, env) as daemon:
        daemon.ready()
        found = (old.pid,)
        wait_until(lambda: getattr(target(env), "pids", ()) == found, 20, message="target found")
        shown = target(env)
        assert daemon.stop() == 0
    assert shown is not None
    assert not shown.stale, shown.stale_reason
    assert not daemon.events("stale-process")


def test_status_of_a_target_whose_pidfile_names_no_process(
    proj: Path, env: dict[str, str], tmp_path: Path
) -> None:
    pidfile = tmp_path / "w.pid"  # missing
    config = toml_config(tmp_path / "config.toml", [{"name": "w", "pidfile": pidfile}])
    with DaemonProc(["--config", str(config), str(proj)], env) as daemon:
        daemon.ready()
        not_found = TargetState.NOT_FOUND
        wait_until(
            lambda: getattr(target(env), "state", None) is not_found, 20, message="not-found"
        )
        shown = target(env)
        human = cli(["status"], env).stdout
        assert daemon.stop() == 0
    assert shown is not None
    assert shown.pids == ()
    assert (shown.problem or "").startswith(f"cannot read pidfile {pidfile}: ")
    assert f"  process w: not-found pid - (cannot read pidfile {pidfile}: " in human
    assert "running" not in human.split("process w:")[1]


def test_target_faults_count_as_errors_in_status(
    proj: Path, env: dict[str, str], tmp_path: Path
) -> None:
    config = toml_config(tmp_path / "config.toml", [{"name": "w", "pidfile": tmp_path / "w.pid"}])
    with DaemonProc(["--config", str(config), str(proj)], env) as daemon:
        daemon.ready()
        daemon.wait_event("error", lambda e: e.get("target") == "w")  # at start: no pidfile
        wait_until(lambda: published(env)["counters"]["errors"] == 1, 20, message="1 error")
        (proj / "pkg" / "mod.py").write_text("X = 2\n", encoding="utf-8")
        daemon.wait_event("restart-failed")
        wait_until(lambda: published(env)["counters"]["errors"] == 2, 20, message="2 errors")
        human = cli(["status"], env).stdout
        assert daemon.stop() == 0
    assert "errors 2;" in human


@pytest.mark.parametrize("kind", ["missing", "not-executable"])
def test_an_own_child_that_cannot_be_executed_ends_the_start(
    proj: Path, env: dict[str, str], tmp_path: Path, kind: str
) -> None:
    command = tmp_path / "app.sh"
    reason = "No such file or directory"
    if kind == "not-executable":
        command.write_text("#!/bin/sh\nexec sleep 60\n", encoding="utf-8")
        command.chmod(0o644)
        reason = "Permission denied"
    line = f"cachewatchd: cannot start {str(command)!r}: {reason}\n"
    with DaemonProc([str(proj), "--", str(command)], env) as daemon:
        assert daemon.wait_exit() == 3
    assert daemon.garbage == [line]  # the one line that is not a log event
    assert not daemon.events("ready")
    assert "no cachewatchd daemon running" in cli(["status"], env).stdout

    detached = cli(["run", str(proj), "--", str(command)], env)
    assert detached.returncode == 3
    assert detached.stderr == line


def test_the_audit_after_a_reload_says_reload(
    proj: Path, env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text("exclude = []\n", encoding="utf-8")
    with DaemonProc([str(proj), "--config", str(config)], env) as daemon:
        daemon.ready()
        assert [e["reason"] for e in daemon.events("rescan")] == ["start"]
        config.write_text('exclude = ["build"]\n', encoding="utf-8")
        daemon.send(signal.SIGHUP)
        assert daemon.wait_event("reloaded")["changed"] is True
        after = daemon.wait_event("rescan", lambda e: e["reason"] != "start")
        assert daemon.stop() == 0
    assert after["reason"] == "reload"
    assert after["root"] == str(proj)


POISON = '''\
"""Test-side fault (a sitecustomize on PYTHONPATH): a batch that meets a source named poison.py
kills the batcher thread. A BaseException: the batcher outlives a batch that fails normally."""
from cachewatchd.daemon.batch_handler import BatchHandler


class Poison(BaseException):
    pass


_handle = BatchHandler.handle


def handle(self, batch):
    roots = [rescan.root for rescan in batch.rescans]
    if any(p.name == "poison.py" for p in batch.changed) or any(
        (root / "poison.py").exists() for root in roots
    ):
        raise Poison("poison.py")
    return _handle(self, batch)


BatchHandler.handle = handle
'''


def poisoned(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """*env* whose Python processes load :data:`POISON` first."""
    inject = tmp_path / "inject"
    inject.mkdir(exist_ok=True)
    (inject / "sitecustomize.py").write_text(POISON, encoding="utf-8")
    return {**env, "PYTHONPATH": os.pathsep.join([str(inject), env["PYTHONPATH"]])}


def test_a_thread_that_dies_stops_the_daemon_and_its_child(
    proj: Path, env: dict[str, str], tmp_path: Path
) -> None:
    poison_env = poisoned(env, tmp_path)
    with DaemonProc([str(proj), "--", "sleep", "600"], poison_env) as daemon:
        daemon.ready()
        wait_until(lambda: bool(getattr(target(env), "pids", ())), 20, message="the own child")
        shown = target(env)
        assert shown is not None
        assert published(env)["state"] == "ready"
        (proj / "pkg" / "poison.py").write_text("X = 1\n", encoding="utf-8")
        try:
            code = daemon.wait_exit()
            left = [pid for pid in shown.pids if alive(pid)]
        finally:  # a daemon that did not stop its child: stop it here, by pid
            for pid in shown.pids:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
    assert code == 3
    (died,) = daemon.events("thread-died")
    assert died["thread"] == "cachewatchd-batcher"
    assert died["error"] == "Poison: poison.py"
    assert daemon.garbage == []  # log events only: no traceback
    assert daemon.events("stopping")
    assert left == []
    assert "no cachewatchd daemon running" in cli(["status"], env).stdout


def test_a_thread_that_dies_before_ready_fails_the_start(
    proj: Path, env: dict[str, str], tmp_path: Path
) -> None:
    (proj / "poison.py").write_text("X = 1\n", encoding="utf-8")  # the start audit meets it
    poison_env = poisoned(env, tmp_path)
    with DaemonProc([str(proj), "--", "sleep", "600"], poison_env) as daemon:
        assert daemon.wait_exit() == 3
    assert [e["thread"] for e in daemon.events("thread-died")] == ["cachewatchd-batcher"]
    assert not daemon.events("ready")
    assert daemon.garbage == []

    detached = cli(["run", str(proj), "--", "sleep", "600"], poison_env)
    assert detached.returncode == 3
    (line,) = detached.stderr.splitlines()
    assert line.startswith("cachewatchd: the daemon exited before it was ready (exit code 3)")
    assert "no cachewatchd daemon running" in cli(["status"], env).stdout


@pytest.fixture
def full_runtime_dir(tmp_path: Path) -> Iterator[Path]:
    """A real full filesystem to be ``$XDG_RUNTIME_DIR``."""
    with full_filesystem(tmp_path / "run", dirs=("cachewatchd/daemons",)) as run:
        yield run


def test_a_full_runtime_dir_is_one_line_exit_three(
    proj: Path, env: dict[str, str], full_runtime_dir: Path
) -> None:
    full_env = {**env, "XDG_RUNTIME_DIR": str(full_runtime_dir)}
    for args in (["--foreground", str(proj)], ["run", str(proj)]):
        proc = cli(args, full_env)
        assert proc.returncode == 3, proc.stderr
        (line,) = proc.stderr.splitlines()
        assert line.startswith(
            f"cachewatchd: cannot write the daemon's record: {full_runtime_dir}/cachewatchd/daemons/"
        )
        assert line.endswith(": No space left on device")
    assert list((full_runtime_dir / "cachewatchd" / "daemons").glob("*.json")) == []


def test_a_root_that_is_a_symlink_loop_is_one_line_exit_two(
    env: dict[str, str], tmp_path: Path
) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "back")
    (tmp_path / "back").symlink_to(loop)
    for args in (["--foreground", str(loop)], ["run", str(loop)], ["stop", str(loop)]):
        proc = cli(args, env)
        assert (proc.returncode, proc.stderr) == (
            2,
            f"cachewatchd: {loop}: Too many levels of symbolic links\n",
        ), args
