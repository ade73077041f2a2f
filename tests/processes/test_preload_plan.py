"""Which own-child commands start warm, and what their fork runs (processes/warm_plan), and the
switches that turn warm starts off (``--cold``, ``[child] warm``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from cachewatchd.cli import build_parser
from cachewatchd.cli._daemon import _command_line, _detached_argv
from cachewatchd.config.user import load_config
from cachewatchd.errors import ConfigError, UsageError
from cachewatchd.processes.spec import ProcessSpec
from cachewatchd.processes.targets import ChildTarget
from cachewatchd.processes.warm_plan import warm_plan

PY = sys.executable


def _env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}


def test_python_dash_m(tmp_path: Path) -> None:
    plan, _ = warm_plan([PY, "-u", "-X", "dev", "-m", "uvicorn", "app:app"], str(tmp_path), {})
    assert plan is not None
    assert (plan.python, plan.options, plan.mode, plan.target) == (
        PY,
        ("-u", "-X", "dev"),
        "module",
        "uvicorn",
    )
    assert plan.argv == ("-m", "app:app")
    assert plan.path0 == str(tmp_path)  # python -m puts the cwd first
    assert plan.title == (PY, "-u", "-X", "dev", "-m", "uvicorn", "app:app")


def test_python_script(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    plan, _ = warm_plan([PY, "sub/app.py", "x"], str(tmp_path), {})
    assert plan is not None
    assert (plan.mode, plan.target, plan.argv) == ("script", "sub/app.py", ("sub/app.py", "x"))
    assert plan.path0 == str(tmp_path / "sub")


def test_isolated_mode_puts_nothing_first(tmp_path: Path) -> None:
    plan, _ = warm_plan([PY, "-I", "app.py"], str(tmp_path), {})
    assert plan is not None
    assert plan.path0 is None


def test_console_script_by_its_shebang(tmp_path: Path) -> None:
    script = tmp_path / "bin" / "serve"
    script.parent.mkdir()
    script.write_text(f"#!{PY}\nimport sys\n", encoding="utf-8")
    script.chmod(0o755)
    plan, _ = warm_plan(["serve", "--port", "1"], str(tmp_path), _env(tmp_path))
    assert plan is not None
    assert (plan.python, plan.mode, plan.target) == (PY, "script", str(script))
    assert plan.argv == (str(script), "--port", "1")
    assert plan.title == (PY, str(script), "--port", "1")  # what execve of a #! script shows


def test_env_prefix(tmp_path: Path) -> None:
    plan, _ = warm_plan(["env", "-u", "A", "B=2", PY, "-m", "m"], str(tmp_path), {"A": "1"})
    assert plan is not None
    assert plan.target == "m"
    assert plan.environ({"A": "1", "C": "3"}) == {"B": "2", "C": "3"}


@pytest.mark.parametrize(
    ("command", "why"),
    [
        ([PY, "-c", "pass"], "-c"),
        ([PY, "-i", "app.py"], "-i"),
        ([PY], "standard input"),
        ([PY, "-"], "standard input"),
        (["sh", "-c", "true"], "not a Python command"),
        (["no-such-program-here"], "not found"),
        (["env", "-i", PY, "app.py"], "env -i"),
    ],
)
def test_not_warm(tmp_path: Path, command: list[str], why: str) -> None:
    plan, reason = warm_plan(command, str(tmp_path), dict(os.environ))
    assert plan is None
    assert why in reason


def test_child_target_warm_only_for_python_commands(tmp_path: Path) -> None:
    python = ChildTarget(ProcessSpec(name="a", command=(PY, "app.py"), cwd=tmp_path))
    cold = ChildTarget(ProcessSpec(name="b", command=(PY, "app.py"), cwd=tmp_path, warm=False))
    other = ChildTarget(ProcessSpec(name="c", command=("sleep", "1"), cwd=tmp_path))
    assert python.child.warm is not None
    assert cold.child.warm is None
    assert other.child.warm is None
    python.stop()


def _spec(*argv: str, config_warm: bool = True) -> ProcessSpec:
    args = build_parser().parse_args(["run", *argv])
    args.child_command = [PY, "app.py"]
    spec = _command_line(args, None, config_warm).child
    assert spec is not None
    return spec


def test_cold_flag_and_config(tmp_path: Path) -> None:
    assert _spec("--cold", str(tmp_path)).warm is False
    assert _spec(str(tmp_path), config_warm=False).warm is False
    assert _spec(str(tmp_path)).warm is True
    args = build_parser().parse_args(["run", "--cold", str(tmp_path)])
    args.child_command = []
    with pytest.raises(UsageError, match="--cold need"):
        _command_line(args)
    args = build_parser().parse_args(["run", "--cold", str(tmp_path)])
    args.child_command = [PY, "app.py"]
    assert "--cold" in _detached_argv(args)
    config = tmp_path / "config.toml"
    config.write_text("[child]\nwarm = false\n", encoding="utf-8")
    assert load_config(config).child_warm is False
    config.write_text('[child]\nwarm = "no"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="warm"):
        load_config(config)
