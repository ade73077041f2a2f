"""The audit engine on real pycs written by real CPython: one test per state and per cause."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cachewatchd.cache.audit import AuditOptions, State, audit, mirror_dir
from tests.conftest import child_env
from tests.support.pycs import compile_with, restore_mtime_edit, same_second_edit, write
from tests.support.ticks import past_the_tick
from tests.support.wait import compile_pyc, find_interpreters


def states(root: Path, **options: object) -> dict[str, State]:
    """State of every entry (fresh ones kept), checked against an audit that only counts fresh."""
    full = audit([root.resolve()], AuditOptions(keep_fresh=True, **options))  # type: ignore[arg-type]
    assert not full.errors, full.errors
    counted = audit([root.resolve()], AuditOptions(**options))  # type: ignore[arg-type]
    assert counted.entries == full.non_fresh()
    assert counted.summary() == full.summary()
    assert counted.errors == full.errors
    return {str(e.path.relative_to(root.resolve())): e.state for e in full.entries}


def run_import(root: Path, code: str, **env: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env=child_env(**env),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()


TAG = sys.implementation.cache_tag
RUNNING = f"{sys.version_info[0]}.{sys.version_info[1]}"


def test_fresh_pyc(tmp_path: Path) -> None:
    compile_pyc(write(tmp_path / "m.py", "X = 1\n"))
    assert states(tmp_path) == {f"__pycache__/m.{TAG}.pyc": State.FRESH}


def test_mtime_restored_edit_is_stale_and_cpython_really_runs_the_old_code(tmp_path: Path) -> None:
    source = write(tmp_path / "m.py", "X = 1\n")
    compile_pyc(source)
    restore_mtime_edit(source, "X = 2\n")
    # The proof that this matters: CPython imports the old value.
    assert run_import(tmp_path, "import m; print(m.X)") == "1"
    assert states(tmp_path) == {f"__pycache__/m.{TAG}.pyc": State.STALE}


def test_same_second_same_size_edit_is_stale(tmp_path: Path) -> None:
    source = write(tmp_path / "m.py", "X = 1\n")
    compile_pyc(source)
    same_second_edit(source, "X = 3\n")
    assert states(tmp_path) == {f"__pycache__/m.{TAG}.pyc": State.STALE}


def test_ordinary_edit_is_outdated(tmp_path: Path) -> None:
    source = write(tmp_path / "m.py", "X = 1\n")
    compile_pyc(source)
    source.write_text("X = 12345\n")
    assert states(tmp_path) == {f"__pycache__/m.{TAG}.pyc": State.OUTDATED}


def test_source_that_no_longer_compiles_behind_a_matching_header_is_stale(tmp_path: Path) -> None:
    source = write(tmp_path / "m.py", "X = 1\n")
    compile_pyc(source)
    restore_mtime_edit(source, "X = (\n")
    assert states(tmp_path) == {f"__pycache__/m.{TAG}.pyc": State.STALE}


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("unchecked-hash", State.STALE), ("checked-hash", State.OUTDATED)],
)
def test_hash_pyc_edits(tmp_path: Path, mode: str, expected: State) -> None:
    source = write(tmp_path / "m.py", "X = 1\n")
    compile_pyc(source, mode=mode)
    assert states(tmp_path) == {f"__pycache__/m.{TAG}.pyc": State.FRESH}
    source.write_text("X = 2\n")
    assert states(tmp_path) == {f"__pycache__/m.{TAG}.pyc": expected}
    if mode == "unchecked-hash":
        assert run_import(tmp_path, "import m; print(m.X)") == "1"


def test_legacy_pyc_after_its_source_is_deleted_is_sourceless(tmp_path: Path) -> None:
    source = write(tmp_path / "m.py", "X = 'ghost'\n")
    compile_pyc(source, cfile=tmp_path / "m.pyc")
    assert states(tmp_path) == {"m.pyc": State.OUTDATED}
    source.unlink()
    assert run_import(tmp_path, "import m; print(m.X)") == "ghost"
    assert states(tmp_path) == {"m.pyc": State.SOURCELESS}


def test_legacy_pyo_is_never_imported(tmp_path: Path) -> None:
    compile_pyc(write(tmp_path / "m.py", "X = 1\n"), cfile=tmp_path / "m.pyo")
    (tmp_path / "m.py").unlink()
    assert states(tmp_path) == {"m.pyo": State.ORPHAN}


def test_pycache_orphan(tmp_path: Path) -> None:
    source = write(tmp_path / "gone.py", "X = 1\n")
    compile_pyc(source)
    source.unlink()
    assert states(tmp_path) == {f"__pycache__/gone.{TAG}.pyc": State.ORPHAN}


def test_truncated_body_is_corrupt_with_deep(tmp_path: Path) -> None:
    source = write(tmp_path / "m.py", "X = 1\n" * 50)
    past_the_tick(source)
    pyc = compile_pyc(source)
    data = pyc.read_bytes()
    pyc.write_bytes(data[: len(data) // 2])
    # The header still matches and the pyc is newer than the source by more than a timestamp
    # tick: only --deep reads the body.
    assert states(tmp_path) == {f"__pycache__/m.{TAG}.pyc": State.FRESH}
    assert states(tmp_path, deep=True) == {f"__pycache__/m.{TAG}.pyc": State.CORRUPT}
    proc = subprocess.run(
        [sys.executable, "-c", "import m"], cwd=tmp_path, env=child_env(), capture_output=True
    )
    assert b"marshal data too short" in proc.stderr


def test_header_without_body_is_corrupt(tmp_path: Path) -> None:
    pyc = compile_pyc(write(tmp_path / "m.py", "X = 1\n"))
    pyc.write_bytes(pyc.read_bytes()[:16])
    assert states(tmp_path) == {f"__pycache__/m.{TAG}.pyc": State.CORRUPT}


def test_unknown_flag_bits_are_corrupt(tmp_path: Path) -> None:
    pyc = compile_pyc(write(tmp_path / "m.py", "X = 1\n"))
    data = bytearray(pyc.read_bytes())
    data[4] |= 0x04
    pyc.write_bytes(bytes(data))
    assert states(tmp_path) == {f"__pycache__/m.{TAG}.pyc": State.CORRUPT}


def test_magic_of_no_cpython_is_corrupt(tmp_path: Path) -> None:
    pyc = compile_pyc(write(tmp_path / "m.py", "X = 1\n"))
    pyc.write_bytes(b"\x01\x02\r\n" + pyc.read_bytes()[4:])
    assert states(tmp_path) == {f"__pycache__/m.{TAG}.pyc": State.CORRUPT}


def test_magic_contradicting_its_tag_is_corrupt(tmp_path: Path) -> None:
    pyc = compile_pyc(write(tmp_path / "m.py", "X = 1\n"))
    pyc.rename(pyc.with_name("m.cpython-37.pyc"))
    assert states(tmp_path) == {"__pycache__/m.cpython-37.pyc": State.CORRUPT}


@pytest.mark.parametrize("optimize", [1, 2])
def test_opt_levels_compare_exactly(tmp_path: Path, optimize: int) -> None:
    source = write(tmp_path / "m.py", '"""doc"""\nassert True\nX = 1\n')
    pyc = compile_pyc(source, optimize=optimize)
    assert pyc.name == f"m.{TAG}.opt-{optimize}.pyc"
    os.chmod(source, 0o640)  # ctime moves: the exact check runs and must say fresh
    assert states(tmp_path) == {pyc.name and f"__pycache__/{pyc.name}": State.FRESH}
    restore_mtime_edit(source, '"""doc"""\nassert True\nX = 2\n')
    assert states(tmp_path) == {f"__pycache__/{pyc.name}": State.STALE}


def test_preserved_mtime_copy_with_identical_content_is_fresh(tmp_path: Path) -> None:
    original = tmp_path / "orig"
    compile_pyc(write(original / "pkg" / "m.py", "X = 1\n"))
    copy = tmp_path / "copy"
    shutil.copytree(original, copy, copy_function=shutil.copy2)  # cp -p: mtimes preserved
    assert states(copy) == {f"pkg/__pycache__/m.{TAG}.pyc": State.FRESH}


def test_pycache_prefix_tree(tmp_path: Path) -> None:
    root = (tmp_path / "proj").resolve()
    prefix = (tmp_path / "prefix").resolve()
    source = write(root / "m.py", "X = 1\n")
    gone = write(root / "gone.py", "Y = 1\n")
    run_import(root, "import m, gone", PYTHONPYCACHEPREFIX=str(prefix))
    mirror = mirror_dir(prefix, root)
    assert (mirror / f"m.{TAG}.pyc").exists()
    assert not (root / "__pycache__").exists()
    gone.unlink()
    restore_mtime_edit(source, "X = 2\n")
    report = audit([root], AuditOptions(pycache_prefix=prefix))
    got = {e.path: (e.state, e.kind) for e in report.entries}
    assert got == {
        mirror / f"m.{TAG}.pyc": (State.STALE, "prefix"),
        mirror / f"gone.{TAG}.pyc": (State.ORPHAN, "prefix"),
    }


def test_venvs_are_recognised_by_pyvenv_cfg_not_by_name(tmp_path: Path) -> None:
    env = tmp_path / "not-named-venv"
    write(env / "pyvenv.cfg", "home = /usr/bin\n")
    (env / "lib" / "gone.py").parent.mkdir(parents=True)
    compile_pyc(write(env / "lib" / "gone.py", "X = 1\n"))
    (env / "lib" / "gone.py").unlink()
    named = tmp_path / "venv"
    compile_pyc(write(named / "m.py", "X = 1\n"))
    assert states(tmp_path) == {f"venv/__pycache__/m.{TAG}.pyc": State.FRESH}
    assert f"not-named-venv/lib/__pycache__/gone.{TAG}.pyc" in states(tmp_path, include_venvs=True)


def test_default_and_user_excludes(tmp_path: Path) -> None:
    compile_pyc(write(tmp_path / ".tox" / "m.py", "X = 1\n"))
    compile_pyc(write(tmp_path / "build" / "m.py", "X = 1\n"))
    compile_pyc(write(tmp_path / "src" / "m.py", "X = 1\n"))
    assert set(states(tmp_path, excludes=("build",))) == {f"src/__pycache__/m.{TAG}.pyc"}
    assert len(states(tmp_path, default_excludes=False)) == 3


def test_symlinks_out_of_the_tree_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    compile_pyc(write(outside / "m.py", "X = 1\n"))
    (outside / "m.py").unlink()
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    pkg = write(root / "pkg" / "m.py", "X = 1\n").parent
    (pkg / "__pycache__").symlink_to(outside / "__pycache__", target_is_directory=True)
    assert states(root) == {}


@pytest.mark.parametrize("version", ["3.7", "3.8", "3.9", "3.10", "3.12", "3.13"])
def test_pycs_of_other_cpythons(tmp_path: Path, version: str) -> None:
    exe = find_interpreters().get(version)
    if exe is None or version == f"{sys.version_info[0]}.{sys.version_info[1]}":
        pytest.skip(f"CPython {version} is not installed here (or is the running one)")
    tag = "cpython-" + version.replace(".", "")
    ts = write(tmp_path / "ts.py", "X = 1\n")
    unchecked = write(tmp_path / "un.py", "X = 1\n")
    checked = write(tmp_path / "ch.py", "X = 1\n")
    compile_with(exe, ts)
    compile_with(exe, unchecked, "unchecked-hash")
    compile_with(exe, checked, "checked-hash")
    assert set(states(tmp_path).values()) == {State.FRESH}
    restore_mtime_edit(ts, "X = 2\n")
    unchecked.write_text("X = 2\n")
    checked.write_text("X = 2\n")
    assert states(tmp_path) == {  # the timestamp pyc compared by that CPython
        f"__pycache__/ts.{tag}.pyc": State.STALE,
        f"__pycache__/un.{tag}.pyc": State.STALE,
        f"__pycache__/ch.{tag}.pyc": State.OUTDATED,
    }


def test_unreadable_pyc_goes_to_errors_and_the_scan_carries_on(tmp_path: Path) -> None:
    compile_pyc(write(tmp_path / "b.py", "X = 1\n"))
    write(tmp_path / "a.py", "X = 1\n")
    fifo = tmp_path / "__pycache__" / f"a.{TAG}.pyc"
    os.mkfifo(fifo)  # would block a naive open(); must be reported, not hang
    report = audit([tmp_path.resolve()], AuditOptions(keep_fresh=True))
    assert [(e.path.name, e.error) for e in report.errors] == [(fifo.name, "not a regular file")]
    assert [e.path.name for e in report.entries] == [f"b.{TAG}.pyc"]
    counted = audit([tmp_path.resolve()])
    assert counted.errors == report.errors
    assert counted.entries == []
    assert counted.summary()["fresh"] == 1


def test_permission_denied_goes_to_errors(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads everything")
    bad = compile_pyc(write(tmp_path / "a.py", "X = 1\n"))
    compile_pyc(write(tmp_path / "b.py", "X = 1\n"))
    bad.chmod(0)
    report = audit([tmp_path.resolve()])
    assert [e.path.name for e in report.errors] == [bad.name]
    assert sum(report.summary().values()) == 1


def test_running_magic_sanity() -> None:
    assert importlib.util.MAGIC_NUMBER[2:] == b"\r\n"


def test_the_shortcut_agrees_with_the_general_judge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fresh pycs after the first of each tag are settled by a bytes compare: same verdicts."""
    others = [exe for version, exe in find_interpreters().items() if version != RUNNING][:2]
    for d in range(6):
        pkg = tmp_path / f"p{d}"
        for i, text in enumerate(["X = 1\n", "X = 22\n", "X = 333\n"]):
            source = write(pkg / f"m{i}.py", text)
            compile_pyc(source)
            compile_pyc(source, optimize=2)
            for exe in others:
                compile_with(exe, source)
        if d == 1:
            restore_mtime_edit(pkg / "m0.py", "X = 9\n")  # stale for every tag
        elif d == 2:
            os.utime(pkg / "m1.py", (1, 1))  # outdated for every tag
        elif d == 3:
            pyc = pkg / "__pycache__" / f"m2.{TAG}.pyc"
            pyc.write_bytes(pyc.read_bytes()[:16])  # header without a body
        elif d == 4:
            pyc = pkg / "__pycache__" / f"m0.{TAG}.opt-2.pyc"
            pyc.write_bytes(pyc.read_bytes()[:4] + b"\x02\x00\x00\x00" + pyc.read_bytes()[8:])
    root = tmp_path.resolve()
    for deep in (False, True):
        options = AuditOptions(deep=deep, keep_fresh=True)
        fast = audit([root], options)
        monkeypatch.setattr("cachewatchd.cache.auditor._open_dirs", lambda *_: None)
        general = audit([root], options)
        monkeypatch.undo()
        assert fast.entries == general.entries
        assert fast.errors == general.errors == []
        assert {e.state for e in fast.entries} >= {State.FRESH, State.STALE, State.OUTDATED}


def test_pycs_of_cpython_36_are_judged_by_their_12_byte_header(tmp_path: Path) -> None:
    exe = find_interpreters().get("3.6") or shutil.which("python3.6")
    if exe is None:
        pytest.skip("CPython 3.6 is not installed here")
    source = write(tmp_path / "m.py", "X = 1\n")
    subprocess.run(
        [
            exe,
            "-c",
            "import py_compile, sys; py_compile.compile(sys.argv[1], doraise=True)",
            str(source),
        ],
        check=True,
        env=child_env(),
        timeout=60,
    )
    assert states(tmp_path) == {"__pycache__/m.cpython-36.pyc": State.FRESH}
    source.write_text("X = 123\n")
    assert states(tmp_path) == {"__pycache__/m.cpython-36.pyc": State.OUTDATED}
