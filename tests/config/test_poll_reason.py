"""A forced observer says where ``poll`` was set: the command line (``--poll always``), the user's
config file (its path and the key) or the project's ``pyproject.toml`` — never ``--poll always``
for a setting the command line did not give."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachewatchd.config.project import load_project_config
from cachewatchd.config.settings import CommandLine, build_settings, plan_root
from cachewatchd.config.user import Config, load_config
from cachewatchd.watch.batch import Batcher
from cachewatchd.watch.observers import Watcher
from tests.support.daemon import DaemonProc, cli, isolated_env


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = (tmp_path / "proj").resolve()
    _write(path / "m.py", "X = 1\n")
    return path


def test_the_reason_names_the_command_line_the_config_file_or_the_project(
    root: Path, tmp_path: Path
) -> None:
    _write(root / "pyproject.toml", '[tool.cachewatchd]\npoll = "never"\n')
    project = load_project_config(root)
    config_file = _write(tmp_path / "conf" / "config.toml", 'poll = "always"\n')
    config = load_config(config_file)

    assert plan_root(root, config, project, cli_poll="always").poll_reason == "--poll always"
    from_config = plan_root(root, config, project)
    assert (from_config.poll, from_config.poll_source) == ("always", "config")
    assert from_config.poll_reason == f'poll = "always" in {config_file}'
    from_project = plan_root(root, Config(), project)
    assert (from_project.poll, from_project.poll_source) == ("never", "project")
    assert from_project.poll_reason == (
        f'[tool.cachewatchd] poll = "never" in {root / "pyproject.toml"}'
    )
    (plan,) = build_settings(config, CommandLine(paths=(root,))).roots  # what the daemon runs by
    assert plan.poll_reason == f'poll = "always" in {config_file}'


def test_a_watcher_gives_each_root_the_reason_it_was_given(root: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(root)  # the roots as given; the watcher resolves them
    other = (tmp_path / "other").resolve()
    other.mkdir()
    reason = f'poll = "always" in {tmp_path / "config.toml"}'
    batcher = Batcher(lambda batch: None, quiet=0.02)
    watcher = Watcher(
        [link, other],
        poll_mode="always",
        poll_interval=0.05,
        batcher=batcher,
        forced_by={link: reason},
    )
    batcher.start()
    try:
        watcher.start()
        observers = watcher.observers()
    finally:
        watcher.stop()
        batcher.stop()
    assert (observers[root].kind, observers[root].reason) == ("polling", reason)
    assert (observers[other].kind, observers[other].reason) == ("polling", "--poll always")


def test_the_daemon_names_the_config_file_that_forces_polling(root: Path, tmp_path: Path) -> None:
    config_file = _write(tmp_path / "conf" / "config.toml", 'poll = "always"\n')
    env = isolated_env(tmp_path / "home")
    reason = f'poll = "always" in {config_file}'
    with DaemonProc(["--config", str(config_file), str(root)], env) as daemon:
        ready = daemon.ready()
        human = cli(["status"], env).stdout
        assert daemon.stop() == 0
    assert ready["observers"][str(root)]["reason"] == reason
    assert f"  {root}: polling ({reason})" in human.splitlines()
