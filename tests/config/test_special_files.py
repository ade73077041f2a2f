"""Config files that are not regular files (real FIFOs) or too large, and numbers out of bounds:
one clear line, never a hang, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cachewatchd.config.project import PROJECT_FILE_LIMIT, load_project_config
from cachewatchd.config.reader import BOUNDS, check_number
from cachewatchd.config.user import CONFIG_FILE_LIMIT, Config, _Validator, load_config
from cachewatchd.errors import EXIT_USAGE, ConfigError, UsageError
from tests.support.daemon import DaemonProc, isolated_env
from tests.support.fifo import RESCUE_AFTER, fifo_at, rescued


@pytest.fixture(autouse=True)
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".state"))
    return home


def run_cli(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cachewatchd", *args],
        env=isolated_env(home),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- the user's config -----------------------------------------------------------------------------


def test_fifo_as_the_default_config_is_a_config_error(xdg: Path) -> None:
    fifo = fifo_at(xdg / ".config" / "cachewatchd" / "config.toml")
    start = time.monotonic()
    with rescued(fifo), pytest.raises(ConfigError) as caught:
        load_config()
    assert time.monotonic() - start < RESCUE_AFTER
    assert caught.value.message == f"{fifo}: cannot read: a FIFO, not a regular file"
    assert caught.value.exit_code == EXIT_USAGE


def test_fifo_given_with_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    fifo = fifo_at(tmp_path / "config.toml")
    project = tmp_path / "project"
    project.mkdir()
    with rescued(fifo):
        done = run_cli(["--foreground", "--config", str(fifo), str(project)], tmp_path)
    assert done.returncode == EXIT_USAGE, done.stderr
    assert done.stderr == f"cachewatchd: {fifo}: cannot read: a FIFO, not a regular file\n"


def test_config_larger_than_the_limit_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_text("# padding\n" * (CONFIG_FILE_LIMIT // 10 + 1))
    with pytest.raises(ConfigError, match=f"cannot read: larger than {CONFIG_FILE_LIMIT} bytes"):
        load_config(file)


# -- a project's pyproject.toml ----------------------------------------------------------------------


def test_fifo_as_project_pyproject_is_a_warning_and_ignored(tmp_path: Path) -> None:
    fifo = fifo_at(tmp_path / "pyproject.toml")
    start = time.monotonic()
    with rescued(fifo):
        project = load_project_config(tmp_path)
    assert time.monotonic() - start < RESCUE_AFTER
    assert (project.exclude, project.poll) == ((), None)
    assert project.warnings == (
        f"{fifo}: cannot read [tool.cachewatchd]: a FIFO, not a regular file; ignored",
    )


def test_huge_project_pyproject_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("# padding\n" * (PROJECT_FILE_LIMIT // 10 + 1))
    (warning,) = load_project_config(tmp_path).warnings
    assert warning.endswith(f"larger than {PROJECT_FILE_LIMIT} bytes; ignored")


def test_daemon_and_doctor_start_with_a_fifo_as_project_pyproject(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "pkg").mkdir(parents=True)
    (project / "pkg" / "m.py").write_text("X = 1\n")
    fifo = fifo_at(project / "pyproject.toml")
    with rescued(fifo):
        doctor = run_cli(["doctor", "--json", "--probe-timeout", "5", str(project)], tmp_path)
        with DaemonProc([str(project)], isolated_env(tmp_path)) as daemon:
            daemon.ready()
            assert daemon.stop() == 0
    assert doctor.returncode == 1, doctor.stderr  # the warning needs action
    assert "a FIFO, not a regular file; ignored" in doctor.stdout
    assert doctor.stderr == ""
    assert "a FIFO, not a regular file; ignored" in daemon.stderr()


# -- numbers -----------------------------------------------------------------------------------------


def test_poll_interval_1e12_in_the_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("poll_interval = 1e12\n")
    project = tmp_path / "project"
    project.mkdir()
    done = run_cli(["--foreground", "--config", str(config), str(project)], tmp_path)
    assert done.returncode == EXIT_USAGE, done.stderr
    assert done.stderr == (
        f"cachewatchd: {config}:1: poll_interval: must be a number of seconds from 0.05 to "
        "3600, not 1e+12\n"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1e12, "--poll-interval: must be a number of seconds from 0.05 to 3600, not 1e+12"),
        (float("nan"), "--poll-interval: must be a number of seconds from 0.05 to 3600, not nan"),
        (float("inf"), "--poll-interval: must be a number of seconds from 0.05 to 3600, not inf"),
        (0, "--poll-interval: must be a number of seconds from 0.05 to 3600, not 0"),
        (True, "--poll-interval: must be a number of seconds, not a boolean"),
        ("2", "--poll-interval: must be a number of seconds, not a string"),
    ],
)
def test_check_number_refuses_with_one_line(value: object, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        check_number("--poll-interval", value, *BOUNDS["poll_interval"])
    assert caught.value.message == message
    assert caught.value.exit_code == EXIT_USAGE


def test_check_number_accepts_the_bounds_themselves() -> None:
    for low, high in BOUNDS.values():
        assert check_number("x", low, low, high) == low
        assert check_number("x", int(high), low, high) == high
        assert isinstance(check_number("x", int(high), low, high), float)


def test_every_number_key_of_the_config_has_bounds(tmp_path: Path) -> None:
    """Each number key of the config goes through the one table (a new key without bounds fails)."""
    validator = _Validator(tmp_path / "c.toml", "")
    for key in ("poll_interval", "reconcile_interval", "grace", "health_timeout"):
        low, high = BOUNDS[key]
        with pytest.raises(ConfigError, match=f"from {low:g} to {high:g}"):
            validator.seconds((key,), high * 2)
    # nothing the threads wait for may reach threading.TIMEOUT_MAX
    import threading

    assert all(high < threading.TIMEOUT_MAX / 1000 for _, high in BOUNDS.values())


def test_fifo_helper_unblocks_a_plain_reader(tmp_path: Path) -> None:
    """The rescue used above really unblocks what the bug did (so a regression fails, not hangs)."""
    fifo = fifo_at(tmp_path / "f")
    with rescued(fifo, after=0.1):
        assert Path(fifo).read_bytes() == b""
    assert not os.path.isfile(fifo)


def test_default_config_is_looked_for_without_creating_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service user whose $HOME cannot be written: no config, the defaults (was an OSError)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(blocker / "config"))  # mkdir fails, even for root
    assert load_config() == Config()
