"""``cachewatchd scan`` runs in pre-commit hooks and CI on every commit: its start-up loads only
what a scan needs. Asserted on ``sys.modules`` of a fresh interpreter, never on time."""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import get_args

from cachewatchd.cli import COMMANDS, build_parser
from cachewatchd.cli._args import POLL_MODES
from cachewatchd.watch import mounts
from tests.conftest import child_env

REPO = Path(__file__).resolve().parents[2]

NOT_FOR_SCAN = [
    # the daemon's third-party dependencies
    "watchdog",
    "psutil",
    "structlog",
    # the layers a scan does not use
    "cachewatchd.daemon",
    "cachewatchd.doctor",
    "cachewatchd.service",
    "cachewatchd.watch",
    "cachewatchd.processes",
    "cachewatchd.config",
    "cachewatchd.log",
    # the daemon's half of the CLI
    "cachewatchd.cli._foreground",
    "cachewatchd.cli._detach",
    "cachewatchd.cli._logfile",
    "cachewatchd.cli._terminal",
    # the other commands' modules: only the running command's parsers are built
    "cachewatchd.cli._daemon",
    "cachewatchd.cli._control",
    "cachewatchd.cli._doctor",
    "cachewatchd.cli._service",
    # the standard library a plain scan does without
    "dataclasses",
    "inspect",
    "json",
    "traceback",
    "subprocess",
    "shutil",  # argparse's help formatter imports it for the width (and bz2, lzma, zlib with it)
    "typing",  # 2 ms: annotations under TYPE_CHECKING, records by cachewatchd.cache.named
    "pathlib",  # 2 ms with urllib.parse and ipaddress: the scan prints the engine's plain rows
    "cachewatchd.cache.audit",  # the API's report (Entry, Path), which the scan does not build
]


def _loaded_after(code: str, cwd: Path) -> set[str]:
    """The modules of ``NOT_FOR_SCAN`` loaded once *code* has run in a fresh interpreter."""
    script = textwrap.dedent(code) + textwrap.dedent(
        f"""
        import sys
        print(" ".join(m for m in {NOT_FOR_SCAN!r}
                       if m in sys.modules or any(k.startswith(m + ".") for k in sys.modules)))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=child_env(PYTHONPATH=str(REPO)),
    )
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.splitlines()[-1].split())


def test_importing_the_cli_loads_nothing_a_scan_does_not_need(tmp_path: Path) -> None:
    assert _loaded_after("import cachewatchd.cli\n", tmp_path) == set()


def _commands_of(parser: argparse.ArgumentParser) -> list[str]:
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def test_the_command_table_is_what_the_modules_register() -> None:
    # main() finds a command's module by this table; the full parser (top-level --help) lists all
    assert _commands_of(build_parser()) == list(COMMANDS)
    for command, module in COMMANDS.items():
        registered = _commands_of(build_parser(command))
        assert command in registered
        assert all(COMMANDS[other] == module for other in registered)


def test_a_scan_of_a_tiny_tree_loads_nothing_it_does_not_need(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("X = 1\n")
    code = """
        import contextlib, io, runpy, sys
        sys.argv = ["cachewatchd", "scan", "pkg"]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                runpy.run_module("cachewatchd", run_name="__main__")
            except SystemExit as exc:
                assert exc.code == 0, exc.code
        assert "cache entries under" in out.getvalue(), out.getvalue()
    """
    assert _loaded_after(code, tmp_path) == set()


def test_the_poll_choices_of_the_cli_are_the_poll_modes() -> None:
    # the CLI spells them out so that building its parser does not import cachewatchd.watch
    assert POLL_MODES == mounts.POLL_MODES == get_args(mounts.PollMode)
