"""Permission denied, for real: as an unprivileged user (via setpriv when the tests run as root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fs import reachable_tree
from tests.support.pycs import restore_mtime_edit, write
from tests.support.users import unprivileged
from tests.support.wait import compile_pyc, wait_until

TAG = sys.implementation.cache_tag


@pytest.fixture
def base() -> Iterator[Path]:
    """A tree the unprivileged user can reach (pytest's tmp dirs are private to root)."""
    with reachable_tree() as path:
        yield path


def cachewatchd(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    env["HOME"] = "/nonexistent"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return subprocess.run(
        [*unprivileged(), sys.executable, "-m", "cachewatchd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_scan_reports_an_unreadable_pyc_and_carries_on(base: Path) -> None:
    secret = compile_pyc(write(base / "a.py", "X = 1\n"))
    secret.chmod(0o000)
    source = write(base / "b.py", "X = 1\n")
    stale = compile_pyc(source)
    restore_mtime_edit(source, "X = 2\n")
    proc = cachewatchd("scan", "--json", str(base))
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["errors"] == [{"path": str(secret), "error": "Permission denied"}]
    assert [e["path"] for e in doc["entries"]] == [str(stale)]


def test_unreadable_root_is_one_line_exit_two(base: Path) -> None:
    root = base / "private"
    root.mkdir(mode=0o700)
    proc = cachewatchd("scan", str(root))
    assert proc.returncode == 2
    assert proc.stderr == f"cachewatchd: {root}: permission denied\n"


def test_clean_reports_permission_denied_per_file_and_goes_on(base: Path) -> None:
    locked_src = write(base / "locked" / "m.py", "X = 1\n")
    locked = compile_pyc(locked_src)
    restore_mtime_edit(locked_src, "X = 2\n")
    open_src = write(base / "open" / "m.py", "X = 1\n")
    opened = compile_pyc(open_src)
    restore_mtime_edit(open_src, "X = 2\n")
    for directory in (base / "locked", base / "open"):
        directory.chmod(0o777)
    (base / "open" / "__pycache__").chmod(0o777)
    (base / "locked" / "__pycache__").chmod(0o555)
    proc = cachewatchd("clean", "--json", str(base))
    assert proc.returncode == 3, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["removed"] == [str(opened)]
    assert doc["errors"] == [{"path": str(locked), "error": "permission denied"}]
    assert locked.exists()
    assert not opened.exists()


def test_daemon_reports_a_denied_subtree_once(base: Path) -> None:
    """The watcher and the start audit both meet the unreadable directory: one report."""
    (base / "home").mkdir(mode=0o777)
    (base / "home").chmod(0o777)
    project = base / "project"
    write(project / "ok" / "m.py", "X = 1\n")
    (project / "secret" / "inner").mkdir(parents=True)
    (project / "secret").chmod(0o000)
    log = base / "home" / "daemon.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "NOTIFY_"))}
    env |= {
        "HOME": str(base / "home"),
        "XDG_CONFIG_HOME": str(base / "home" / "config"),
        "XDG_STATE_HOME": str(base / "home" / "state"),
        "XDG_RUNTIME_DIR": str(base / "home" / "run"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    command = [*unprivileged(), sys.executable, "-m", "cachewatchd", "--foreground"]
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [*command, "--log-format", "json", str(project)], stderr=err, env=env
        )
    try:
        wait_until(lambda: '"event": "ready"' in log.read_text(), 30, message="ready")
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    errors = [e for e in lines if e["event"] == "error"]
    assert [e["path"] for e in errors] == [str(project / "secret")], errors
