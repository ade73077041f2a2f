"""The user config's ``[child]`` table: the own child's options (its COMMAND stays on the
command line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachewatchd.config.user import load_config
from cachewatchd.errors import ConfigError


def test_listen(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, '[child]\nlisten = "127.0.0.1:8000"\n'))
    assert config.child_listen == "127.0.0.1:8000"
    assert load_config(_write(tmp_path, "")).child_listen is None


def test_a_relative_unix_path_is_taken_from_the_configs_directory(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, '[child]\nlisten = "unix:app.sock"\n'))
    assert config.child_listen == f"unix:{tmp_path / 'app.sock'}"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('[child]\nlisten = "127.0.0.1:x"\n', "config.toml:2: child.listen: the port must be"),
        ("[child]\nlisten = 8000\n", "config.toml:2: child.listen: must be a string, not"),
        ('[child]\nport = "1"\n', "config.toml:2: child.port: unknown key (expected one of:"),
        ('child = "x"\n', "config.toml:1: child: must be a table ([child]), not"),
        ('[child]\ncommand = "uvicorn"\n', "config.toml:2: child.command: not allowed in the"),
    ],
)
def test_mistakes_name_the_file_line_and_key(tmp_path: Path, text: str, said: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    assert said in info.value.message
    assert info.value.exit_code == 2
