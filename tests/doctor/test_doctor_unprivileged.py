"""``doctor`` as users run it: an unreadable subtree (as an unprivileged user, for real) and no
stray line from watchdog's loggers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fs import reachable_tree
from tests.support.pycs import write
from tests.support.users import REPO, unprivileged


@pytest.fixture
def base() -> Iterator[Path]:
    """A tree the unprivileged user can reach (pytest's tmp dirs are private to root)."""
    with reachable_tree() as path:
        yield path


def doctor_as_user(base: Path, *args: str) -> subprocess.CompletedProcess[str]:
    home = base / "home"
    if not home.is_dir():
        home.mkdir()
        home.chmod(0o777)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "PYTHON"))}
    env.update(HOME=str(home), PYTHONPATH=str(REPO), NO_COLOR="1")
    return subprocess.run(
        [*unprivileged(), sys.executable, "-m", "cachewatchd", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd="/",
        check=False,
    )


def test_unreadable_subtree_makes_the_audit_partial(base: Path) -> None:
    project = base / "project"
    write(project / "ok" / "a.py", "X = 1\n")
    write(project / "secret" / "inner" / "b.py", "Y = 1\n")
    for d in (project, project / "ok"):
        d.chmod(0o777)  # the probe file is written here
    (project / "secret").chmod(0o000)
    done = doctor_as_user(base, "--json", "--probe-timeout", "5", str(project))
    assert done.returncode == 1, done.stderr
    assert done.stderr == ""
    findings = json.loads(done.stdout)["findings"]
    (partial,) = [f for f in findings if f["id"] == "audit-partial"]
    secret = project / "secret"
    assert partial["severity"] == "warning"
    assert partial["message"] == (
        f"the audit was partial: 1 directory could not be read (first: {secret}); "
        "the caches there were not judged"
    )
    assert partial["details"] == [f"{secret}: Permission denied"]
    assert partial["action"] == "run doctor as a user who can read them, or make them readable"

    text = doctor_as_user(base, "--probe-timeout", "5", str(project))
    assert "warning  audit-partial: the audit was partial: 1 directory could not be" in text.stdout


_STRAY = r"""
import logging, sys
from watchdog.observers import inotify

stop = inotify.InotifyEmitter.on_thread_stop

def noisy(self):  # what watchdog logs when stopping races its emitter, made certain
    logging.getLogger("watchdog.observers.inotify").error(
        "InotifyEmitter.queue_events() called when the thread is inactive")
    stop(self)

inotify.InotifyEmitter.on_thread_stop = noisy
from cachewatchd.cli import main
sys.exit(main(["doctor", "--probe-timeout", "5", sys.argv[1]]))
"""


def test_no_stray_watchdog_line_on_stderr(tmp_path: Path) -> None:
    project = tmp_path / "project"
    write(project / "m.py", "X = 1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO), NO_COLOR="1")
    done = subprocess.run(
        [sys.executable, "-c", _STRAY, str(project)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    assert done.stderr == ""
    assert "cachewatchd doctor: " in done.stdout
