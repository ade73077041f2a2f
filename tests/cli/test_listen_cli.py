"""``--listen`` and ``[child] listen``: the own child's address on the command line and in the
config; misuse is one line, exit 2."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from cachewatchd.cli import build_parser, main
from cachewatchd.cli._daemon import _command_line, _detached_argv, _settings


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("XDG_RUNTIME_DIR", "NOTIFY_SOCKET"):
        monkeypatch.delenv(var, raising=False)
    for var in ("CONFIG", "STATE", "CACHE", "DATA"):
        monkeypatch.setenv(f"XDG_{var}_HOME", str(tmp_path / "home" / var.lower()))
    return tmp_path / "home"


def _args(*argv: str, command: tuple[str, ...] = ("uvicorn", "app:app")) -> argparse.Namespace:
    args: argparse.Namespace = build_parser().parse_args(["run", *argv])
    args.child_command = list(command)
    return args


def test_listen_goes_into_the_own_childs_spec_a_unix_path_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _command_line(_args("--listen", "127.0.0.1:8000")).child
    assert spec is not None
    assert spec.listen == "127.0.0.1:8000"
    monkeypatch.chdir(tmp_path)
    spec = _command_line(_args("--listen", "unix:app.sock")).child
    assert spec is not None
    assert spec.listen == f"unix:{tmp_path / 'app.sock'}"


def test_the_configs_child_listen_applies_and_the_command_line_beats_it(
    tmp_path: Path, home: Path
) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[child]\nlisten = "unix:run/app.sock"\n', encoding="utf-8")
    root = str(tmp_path)
    settings = _settings(_args("--config", str(config), root))
    assert settings.processes[0].listen == f"unix:{tmp_path / 'run' / 'app.sock'}"
    settings = _settings(_args("--config", str(config), "--listen", "127.0.0.1:9", root))
    assert settings.processes[0].listen == "127.0.0.1:9"
    settings = _settings(_args("--config", str(config), root, command=()))
    assert settings.processes == (), "no own child, nothing to listen for"


def test_a_detached_daemon_gets_listen_too(tmp_path: Path) -> None:
    argv = _detached_argv(_args("--listen", "127.0.0.1:8000", str(tmp_path)))
    assert argv[argv.index("--listen") + 1] == "127.0.0.1:8000"
    assert argv[-3:] == ["--", "uvicorn", "app:app"]


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (
            ["run", "--listen", "127.0.0.1:8000"],
            "cachewatchd: --grace, --import-check, --health-url, --health-timeout, --listen",
        ),
        (
            ["run", "--listen", "127.0.0.1:http", "--", "true"],
            "cachewatchd: --listen: the port must be a number from 0 to 65535, not 'http'\n",
        ),
        (
            ["run", "--listen", "::1:80", "--", "true"],
            "cachewatchd: --listen: must be HOST:PORT (an IPv6 host in brackets: [::1]:8000), ",
        ),
    ],
)
def test_listen_misuse_is_one_line_exit_2(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str], home: Path
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(said)
    assert captured.err.count("\n") == 1
