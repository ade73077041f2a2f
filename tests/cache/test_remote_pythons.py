"""Pycs checked by an interpreter reached through a command (a container's Python, issue 12):
the command's argv, the paths as its interpreter sees them, and a note when it cannot run.

The interpreter here is a real CPython of another version, run directly; the paths it sees are a
copy of the host's directory (so which files it read shows in the verdict).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachewatchd.cache.audit import State
from cachewatchd.cache.checks import CheckPool
from cachewatchd.cache.interpreters import ENV_VAR, Finder
from cachewatchd.cache.remote_pythons import Command, commands_for, provide
from tests.cache.real_import import interpreter
from tests.cache.test_foreign import OTHER, _no_venvs_beside_the_test, entries, nowhere
from tests.support.pycs import compile_with, restore_mtime_edit, write

__all__ = ["_no_venvs_beside_the_test"]  # the autouse fixture, shared


@pytest.fixture
def box(tmp_path: Path) -> tuple[Path, Path, Path, str]:
    """``host/m.py`` edited after its pyc (by another version) was written; ``inside`` the copy
    made before the edit: source, pyc, inside, the interpreter."""
    exe = interpreter(OTHER)
    host = tmp_path / "host"
    source = write(host / "m.py", "X = 1\n")
    pyc = compile_with(exe, source)
    inside = tmp_path / "inside"
    shutil.copytree(host, inside)
    restore_mtime_edit(source, "X = 2\n")
    return source, pyc, inside, exe


@pytest.fixture
def registered() -> Iterator[object]:
    key = object()
    yield key
    provide(key, None)


def test_a_command_maps_the_paths_of_its_directory() -> None:
    command = Command(("run",), "/srv/app", "/app", "box")
    assert command.path("/srv/app/pkg/m.py") == "/app/pkg/m.py"
    assert command.path("/srv/app") == "/app"
    assert command.path("/srv/application/m.py") == "/srv/application/m.py"
    assert not command.covers("/srv/application/m.py")


def test_the_check_runs_in_the_commands_interpreter_on_its_paths(
    box: tuple[Path, Path, Path, str], tmp_path: Path, registered: object
) -> None:
    source, pyc, inside, exe = box
    host = os.path.realpath(source.parent)
    provide(registered, lambda p: [Command((exe,), host, str(inside), "box")])
    assert commands_for(str(pyc)) == [Command((exe,), host, str(inside), "box")]
    with CheckPool(finder=Finder(nowhere(tmp_path))) as checks:
        assert checks.exact(str(pyc), str(source), 0).result == "same"  # the copy's files
    provide(registered, lambda p: [Command((exe,), host, host, "box")])
    with CheckPool(finder=Finder(nowhere(tmp_path))) as checks:
        assert checks.exact(str(pyc), str(source), 0).result == "differs"


def test_an_audit_judges_by_the_command_what_it_cannot_judge_here(
    box: tuple[Path, Path, Path, str],
    tmp_path: Path,
    registered: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, pyc, _, exe = box
    root = source.parent
    name = pyc.relative_to(root).as_posix()
    for var, value in nowhere(tmp_path).items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert entries(root)[name].state is State.SUSPECT
    host = os.path.realpath(root)
    provide(registered, lambda p: [Command((exe,), host, host, "box")])
    assert entries(root)[name].state is State.STALE


@pytest.mark.parametrize(
    ("argv", "why", "said"),
    [
        ((), "no docker command on PATH", "box: no docker command on PATH"),
        (("/nonexistent/python3",), "", "box: /nonexistent/python3 did not answer"),
    ],
)
def test_a_command_that_cannot_check_leaves_the_pyc_unchecked_with_a_note(
    box: tuple[Path, Path, Path, str],
    tmp_path: Path,
    registered: object,
    argv: tuple[str, ...],
    why: str,
    said: str,
) -> None:
    source, pyc, inside, _ = box
    command = Command(argv, os.path.realpath(source.parent), str(inside), "box", why)
    provide(registered, lambda p: [command])
    with CheckPool(finder=Finder(nowhere(tmp_path))) as checks:
        outcome = checks.exact(str(pyc), str(source), 0)
        missing = checks.missing
    assert outcome.result == "unchecked"
    assert f"no CPython {OTHER} found" in outcome.detail
    assert said in outcome.detail
    assert said in missing[tuple(int(n) for n in OTHER.split("."))]  # type: ignore[index]
