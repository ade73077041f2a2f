"""Pycs of other CPython versions are checked by their own interpreters (issue 9, item 10).

Each test uses the real interpreters installed here (pyenv's 2.7 and 3.6-3.13) and is skipped,
saying so, when the one it needs is absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cachewatchd.cache import check_worker, interpreters
from cachewatchd.cache.audit import AuditOptions, Entry, State, audit
from cachewatchd.cache.checks import CheckPool
from cachewatchd.cache.interpreters import ENV_VAR, Finder, runnable
from tests.cache.real_import import import_v, interpreter
from tests.support.pycs import compile_with, restore_mtime_edit, write
from tests.support.ticks import past_the_tick

RUNNING = f"{sys.version_info[0]}.{sys.version_info[1]}"
OTHER = "3.12" if RUNNING != "3.12" else "3.11"
"""A version that is not the running one."""
COMPILE_ARGV1 = "import sys; compile(open(sys.argv[1]).read(), sys.argv[1], 'exec')"


@pytest.fixture(autouse=True)
def _no_venvs_beside_the_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The finder also looks for venvs beside every directory above a pyc: a venv that happens
    to lie directly in /tmp (beside the test's directory) must not answer for the machine."""
    real = interpreters._homes_in
    base = os.path.realpath(tmp_path)

    def homes_in(directory: str) -> list[str]:
        inside = os.path.realpath(directory) + os.sep
        return real(directory) if inside.startswith(base + os.sep) else []

    monkeypatch.setattr(interpreters, "_homes_in", homes_in)


def magic_of(exe: str) -> bytes:
    out = subprocess.run(
        [exe, "-c", "import importlib.util as u, sys; sys.stdout.write(u.MAGIC_NUMBER.hex())"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return bytes.fromhex(out)


def nowhere(tmp_path: Path) -> dict[str, str]:
    """An environment in which no interpreter can be found."""
    empty = tmp_path / "empty"
    empty.mkdir(exist_ok=True)
    return {"PATH": str(empty), "HOME": str(empty), "PYENV_ROOT": str(empty)}


def entries(root: Path, **options: object) -> dict[str, Entry]:
    report = audit([root.resolve()], AuditOptions(keep_fresh=True, **options))  # type: ignore[arg-type]
    assert not report.errors, report.errors
    return {str(e.path.relative_to(root.resolve())): e for e in report.entries}


@pytest.mark.parametrize(
    "version", ["2.7", "3.6", "3.7", "3.8", "3.9", "3.10", "3.11", "3.12", "3.13"]
)
def test_the_worker_is_python_of_every_version(version: str) -> None:
    """check_worker.py runs in the interpreter whose pycs it checks: its syntax is theirs."""
    exe = interpreter(version)
    proc = subprocess.run(
        [exe, "-c", COMPILE_ARGV1, check_worker.__file__],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_a_truncated_pyc_of_another_version_is_corrupt_with_deep(tmp_path: Path) -> None:
    exe = interpreter(OTHER)
    source = write(tmp_path / "m.py", "X = 1\n" * 50)
    pyc = compile_with(exe, source)
    pyc.write_bytes(pyc.read_bytes()[:40])
    run = import_v(exe, tmp_path)
    assert "EOFError" in run.log, run.log  # that CPython fails to import it
    name = pyc.relative_to(tmp_path).as_posix()
    entry = entries(tmp_path, deep=True)[name]
    assert entry.state is State.CORRUPT, entry
    assert "EOFError" in entry.reason


def test_without_its_interpreter_the_verdict_names_the_missing_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exe = interpreter(OTHER)
    source = write(tmp_path / "m.py", "X = 1\n")
    pyc = compile_with(exe, source)
    restore_mtime_edit(source, "X = 2\n")
    name = pyc.relative_to(tmp_path).as_posix()
    with monkeypatch.context() as patch:
        for var, value in nowhere(tmp_path).items():
            patch.setenv(var, value)
        patch.delenv(ENV_VAR, raising=False)
        entry = entries(tmp_path)[name]
        assert entry.state is State.SUSPECT
        assert f"no CPython {OTHER} found" in entry.reason
        assert entries(tmp_path, deep=True)[name].state is State.SUSPECT
        patch.setenv(ENV_VAR, exe)  # named explicitly
        assert entries(tmp_path)[name].state is State.STALE
    assert entries(tmp_path)[name].state is State.STALE  # found where it is installed


def test_the_finder_asks_each_candidate_its_magic(tmp_path: Path) -> None:
    exe = interpreter(OTHER)
    magic = magic_of(exe)
    env = nowhere(tmp_path)
    assert Finder(env).find(magic) is None
    wrong = interpreter(RUNNING)
    assert Finder({**env, ENV_VAR: wrong}).find(magic) is None  # another version's magic
    found = Finder({**env, ENV_VAR: f"{wrong}{os.pathsep}{exe}"}).find(magic)
    assert found is not None
    assert (found.exe, found.version) == (exe, tuple(int(x) for x in OTHER.split(".")))


def test_pyenv_and_uv_layouts_are_searched(tmp_path: Path) -> None:
    exe = interpreter(OTHER)
    magic = magic_of(exe)
    env = nowhere(tmp_path)
    name = f"python{OTHER}"
    pyenv = tmp_path / "pyenv" / "versions" / f"{OTHER}.99" / "bin"
    pyenv.mkdir(parents=True)
    (pyenv / name).symlink_to(exe)
    found = Finder({**env, "PYENV_ROOT": str(tmp_path / "pyenv")}).find(magic)
    assert found is not None
    assert found.exe == str(pyenv / name)
    uv = tmp_path / "uv" / f"cpython-{OTHER}.99-linux-x86_64-gnu" / "bin"
    uv.mkdir(parents=True)
    (uv / name).symlink_to(exe)
    found = Finder({**env, "UV_PYTHON_INSTALL_DIR": str(tmp_path / "uv")}).find(magic)
    assert found is not None
    assert found.exe == str(uv / name)


def test_the_home_of_a_venv_beside_the_project_is_searched(tmp_path: Path) -> None:
    exe = interpreter(OTHER)
    home = os.path.dirname(os.path.realpath(exe))  # outside every directory above the pyc
    project = tmp_path / "project"
    write(project / ".venv" / "pyvenv.cfg", f"home = {home}\nversion = {OTHER}\n")
    pyc = compile_with(exe, write(project / "pkg" / "m.py", "X = 1\n"))
    finder = Finder(nowhere(tmp_path))
    assert finder.find(magic_of(exe)) is None  # not in the usual places
    found = finder.find(magic_of(exe), str(pyc))
    assert found is not None
    assert found.exe == os.path.join(home, f"python{OTHER}")


def test_a_home_inside_the_judged_tree_is_never_run(tmp_path: Path) -> None:
    """A cloned repository writes a pyvenv.cfg whose home is its own directory: what lies there is
    never run (nor anything another user can change)."""
    exe = interpreter(OTHER)
    project = tmp_path / "project"
    evil = project / "tools"
    marker = tmp_path / "ran"
    script = write(evil / f"python{OTHER}", f'#!/bin/sh\ntouch {marker}\nexec {exe} "$@"\n')
    script.chmod(0o755)
    write(project / ".venv" / "pyvenv.cfg", f"home = {evil}\n")
    write(project / "sub" / ".venv" / "pyvenv.cfg", "home = ../../tools\n")
    pyc = compile_with(exe, write(project / "sub" / "pkg" / "m.py", "X = 1\n"))
    assert Finder(nowhere(tmp_path)).find(magic_of(exe), str(pyc)) is None
    assert not marker.exists()
    shared = tmp_path / "elsewhere" / "bin"
    shared.mkdir(parents=True)
    (shared / f"python{OTHER}").symlink_to(exe)
    assert runnable(str(shared / f"python{OTHER}"), [str(project)])
    shared.chmod(0o777)  # any user may replace what it holds
    assert not runnable(str(shared / f"python{OTHER}"), [str(project)])


def test_nan_and_signed_zero_constants_of_another_version(tmp_path: Path) -> None:
    exe = interpreter(OTHER)
    source = write(tmp_path / "m.py", "X = 1e999 * 0\nY = -0.0\nZ = (float('inf'), 1e999j * 0)\n")
    pyc = compile_with(exe, source)
    name = pyc.relative_to(tmp_path).as_posix()
    assert entries(tmp_path, deep=True)[name].state is State.FRESH  # NaN compared by its bits
    restore_mtime_edit(source, "X = 1e999 * 0\nY = +0.0\nZ = (float('inf'), 1e999j * 0)\n")
    run = import_v(exe, tmp_path, module="m")
    assert run.loaded == pyc
    entry = entries(tmp_path)[name]
    assert entry.state is State.STALE, entry  # -0.0 is not 0.0


def test_python27_pyo_is_compared_at_o_and_oo(tmp_path: Path) -> None:
    exe = interpreter("2.7")
    write(tmp_path / "m.py", '"""doc"""\nassert 0, "x"\nX = 1\n')
    subprocess.run(
        [exe, "-OO", "-c", "import py_compile; py_compile.compile('m.py', cfile='m.pyo')"],
        cwd=tmp_path,
        check=True,
        timeout=60,
    )
    entry = entries(tmp_path, deep=True)["m.pyo"]
    assert entry.state is State.FRESH, entry
    assert "code identical" in entry.reason


def test_a_foreign_worker_that_dies_is_a_verdict_and_replaced(tmp_path: Path) -> None:
    exe = interpreter(OTHER)
    source = write(tmp_path / "m.py", "X = 1\n")
    pyc = str(compile_with(exe, source))
    with CheckPool() as pool:
        assert pool.exact(pyc, str(source), 0).result == "same"
        (first,) = (w.pid for k, w in pool._workers.items() if k is not None)
        os.kill(first, 9)
        outcome = pool.exact(pyc, str(source), 0)
        assert outcome.result == "failed" or outcome.result == "same"  # noqa: PLR1714
        assert pool.exact(pyc, str(source), 0).result == "same"
        (second,) = (w.pid for k, w in pool._workers.items() if k is not None)
        assert second != first


def test_a_huge_declared_body_of_another_version_stays_in_its_limits(tmp_path: Path) -> None:
    """A 21-byte body declaring a 2**27-element tuple: 1 GiB, over the worker's address space:
    MemoryError, the import fails, the verdict is corrupt; this process is untouched."""
    exe = interpreter(OTHER)
    source = write(tmp_path / "m.py", "X = 1\n")
    pyc = compile_with(exe, source)
    header = pyc.read_bytes()[:16]
    pyc.write_bytes(header + b"(" + (2**27).to_bytes(4, "little") + b"N" * 16)
    entry = entries(tmp_path, deep=True)[pyc.relative_to(tmp_path).as_posix()]
    assert entry.state is State.CORRUPT, entry


def test_a_relative_path_entry_is_not_searched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exe = interpreter(OTHER)
    marker = tmp_path / "ran"
    script = write(tmp_path / f"python{OTHER}", f'#!/bin/sh\ntouch {marker}\nexec {exe} "$@"\n')
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    env = {**nowhere(tmp_path), "PATH": "."}
    assert Finder(env).find(magic_of(exe)) is None
    assert not marker.exists()


def test_a_missing_interpreter_is_said_once_per_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under --deep the unchecked entries may be fresh (not listed): the note still tells."""
    from cachewatchd.cli import main

    exe = interpreter(OTHER)
    sources = [write(tmp_path / f"{name}.py", f"{name.upper()} = 1\n") for name in ("a", "b")]
    past_the_tick(*sources)  # a pyc written within the tick of its source would be suspect
    for source in sources:
        compile_with(exe, source)
    for var, value in nowhere(tmp_path).items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv(ENV_VAR, raising=False)
    report = audit([tmp_path.resolve()], AuditOptions(deep=True, use_index=False))
    assert report.non_fresh() == []
    assert len(report.notes) == 1
    assert f"CPython {OTHER}'s cache entries were judged by their headers only" in report.notes[0]
    assert main(["scan", "--deep", "--jobs", "2", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert err.count(f"no CPython {OTHER} found") == 1, err
