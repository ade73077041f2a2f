"""Verdicts proven by the interpreter that reads the pyc.

Each test builds a tree with real interpreters, asks the interpreter that would read the cache
what it runs (``python -B -v -c "import m; print(m.X)"``: the pyc, or the source it recompiles;
see ``real_import.py``), and checks that cachewatchd's verdict says the same. A test whose
interpreter is not installed is skipped, saying so.
"""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cachewatchd.cache.audit import AuditOptions, Entry, State, audit, mirror_dir
from cachewatchd.cache.clean import clean
from cachewatchd.cache.parallel import audit_jobs
from tests.cache.real_import import import_v, interpreter
from tests.conftest import child_env
from tests.support.pycs import compile_with, restore_mtime_edit, write
from tests.support.ticks import past_the_tick
from tests.support.wait import compile_pyc

TAG = sys.implementation.cache_tag

posix_only = pytest.mark.skipif(
    ".pyw" in importlib.machinery.SOURCE_SUFFIXES, reason=".pyw is a source on Windows"
)


def judged(root: Path, **options: Any) -> dict[str, Entry]:
    """Every entry under *root* (fresh ones too), by path relative to *root* (else absolute)."""
    report = audit([root], AuditOptions(keep_fresh=True, **options))
    assert not report.errors, report.errors
    found = {}
    for entry in report.entries:
        try:
            key = str(entry.path.relative_to(root))
        except ValueError:
            key = str(entry.path)
        found[key] = entry
    return found


def compile_old(exe: str, source: Path, *flags: str) -> None:
    """Compile *source* with *exe* as its ``py_compile`` does by default (2.7: ``m.pyc`` beside
    the source, ``m.pyo`` with ``-O``; 3.6: in ``__pycache__``). ``compile_with`` needs
    invalidation modes, which older ``py_compile`` lacks."""
    code = "import py_compile, sys; py_compile.compile(sys.argv[1], doraise=True)"
    subprocess.run([exe, *flags, "-c", code, str(source)], check=True, env=child_env(), timeout=60)


def set_magic(pyc: Path, number: int) -> None:
    data = bytearray(pyc.read_bytes())
    data[:2] = number.to_bytes(2, "little")
    pyc.write_bytes(bytes(data))


def backdate(pyc: Path) -> None:
    """Make the pyc older than its source's last change (ctime), so that the exact check runs:
    CPython never looks at a pyc's own mtime."""
    st = pyc.stat()
    os.utime(pyc, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))


# -- 1. .pyw is a source on Windows only ------------------------------------------------------------
@posix_only
def test_a_legacy_pyc_beside_a_pyw_is_imported_as_sourceless(tmp_path: Path) -> None:
    pyc = compile_pyc(write(tmp_path / "m.pyw", "X = 'pyw'\n"), cfile=tmp_path / "m.pyc")
    run = import_v(sys.executable, tmp_path)
    assert (run.loaded, run.value) == (pyc, "pyw"), run.log
    entry = judged(tmp_path)["m.pyc"]
    assert (entry.state, entry.source) == (State.SOURCELESS, None)
    assert "m.pyw is here, but .pyw is not a source on this platform" in entry.reason


@posix_only
def test_the_pycache_of_a_pyw_is_never_read(tmp_path: Path) -> None:
    pyc = compile_pyc(write(tmp_path / "m.pyw", "X = 'pyw'\n"))
    assert pyc == tmp_path / "__pycache__" / f"m.{TAG}.pyc"
    run = import_v(sys.executable, tmp_path)
    assert run.loaded is None, run.log
    assert "No module named 'm'" in run.log, run.log
    entry = judged(tmp_path)[f"__pycache__/m.{TAG}.pyc"]
    assert (entry.state, entry.source) == (State.ORPHAN, None)
    assert "m.pyw is here, but .pyw is not a source" in entry.reason


# -- 2. NaN constants --------------------------------------------------------------------------------
NAN_SOURCE = """\
X = 1e999 * 0
T = (1e999 * 0, -0.0)
S = 2 in {1e999 * 0, 2}
C = 1j * 1e999
def f():
    return 1e999 * 0
"""


def test_a_pyc_holding_nan_constants_is_fresh(tmp_path: Path) -> None:
    source = write(tmp_path / "m.py", NAN_SOURCE)
    pyc = compile_pyc(source)
    backdate(pyc)
    run = import_v(sys.executable, tmp_path)
    assert (run.loaded, run.value) == (pyc, "nan"), run.log
    for deep in (False, True):
        entry = judged(tmp_path, deep=deep)[f"__pycache__/{pyc.name}"]
        assert (entry.state, entry.reason) == (State.FRESH, "code identical to a fresh compile")


@pytest.mark.parametrize(
    ("before", "after", "printed"),
    [
        ("X = 1e999 * 0\n", "X = 1e999 * 1\n", "nan"),  # NaN -> inf
        ("X = 1e999 * 1\n", "X = 1e999 * 0\n", "inf"),  # inf -> NaN
        ("X = 0.0\n", "X = -0.\n", "0.0"),  # -0.0 is not 0.0
        ("X = 1e999 * 0\n", "X =-(1e999*0)\n", "nan"),  # NaN -> NaN of the other sign
    ],
)
def test_an_edit_of_a_float_constant_is_stale(
    tmp_path: Path, before: str, after: str, printed: str
) -> None:
    source = write(tmp_path / "m.py", before)
    pyc = compile_pyc(source)
    restore_mtime_edit(source, after)
    run = import_v(sys.executable, tmp_path)
    assert (run.loaded, run.value) == (pyc, printed), run.log
    assert judged(tmp_path)[f"__pycache__/{pyc.name}"].state is State.STALE


# -- 3. magic numbers of pre-releases -----------------------------------------------------------------
PRE_RELEASES = [
    ("3.7", 3393, 3394),
    ("3.8", 3412, 3413),
    ("3.9", 3424, 3425),
    ("3.10", 3438, 3439),
    ("3.11", 3494, 3495),
    ("3.12", 3530, 3531),
    ("3.13", 3570, 3571),
]


@pytest.mark.parametrize(("version", "magic", "released"), PRE_RELEASES)
def test_a_pre_release_magic_is_outdated(
    tmp_path: Path, version: str, magic: int, released: int
) -> None:
    exe = interpreter(version)
    source = write(tmp_path / "m.py", "X = 1\n")
    pyc = compile_with(exe, source)
    assert pyc.read_bytes()[:2] == released.to_bytes(2, "little")
    set_magic(pyc, magic)
    run = import_v(exe, tmp_path)
    assert "bad magic number" in run.log, run.log
    assert (run.loaded, run.value) == (source, "1"), run.log
    entry = judged(tmp_path)[f"__pycache__/{pyc.name}"]
    assert entry.state is State.OUTDATED
    assert f"magic {magic} of a pre-release of CPython {version}, whose releases read " in (
        entry.reason
    )
    assert "bad magic number" in entry.reason


def test_an_unchecked_hash_pyc_of_a_pre_release_is_outdated_not_stale(tmp_path: Path) -> None:
    exe = interpreter("3.12")
    source = write(tmp_path / "m.py", "X = 1\n")
    pyc = compile_with(exe, source, "unchecked-hash")
    set_magic(pyc, 3530)
    source.write_text("X = 2\n")  # a released 3.12 would never check an unchecked-hash pyc...
    run = import_v(exe, tmp_path)  # ...but it refuses this one's magic first
    assert "bad magic number" in run.log, run.log
    assert (run.loaded, run.value) == (source, "2"), run.log
    entry = judged(tmp_path)[f"__pycache__/{pyc.name}"]
    assert (entry.state, entry.mode) == (State.OUTDATED, "unchecked-hash")


def test_a_sourceless_pyc_of_a_pre_release_does_not_import_on_a_release(tmp_path: Path) -> None:
    exe = interpreter("3.12")
    source = write(tmp_path / "m.py", "X = 1\n")
    pyc = compile_with(exe, source)
    legacy = tmp_path / "m.pyc"
    legacy.write_bytes(pyc.read_bytes())
    shutil.rmtree(pyc.parent)
    source.unlink()
    set_magic(legacy, 3530)
    run = import_v(exe, tmp_path)
    assert run.loaded is None, run.log
    assert "ImportError: bad magic number" in run.log, run.log
    # Still sourceless (that pre-release, or PyPy, may use this magic), and the reason says so.
    entry = judged(tmp_path)["m.pyc"]
    assert entry.state is State.SOURCELESS
    assert "magic 3530 of a pre-release of CPython 3.12, whose releases read 3531" in entry.reason
    assert "CPython 3.12 refuses to import it (bad magic number)" in entry.reason


# -- 4. 3.3-3.6 compare the unmasked mtime ------------------------------------------------------------
@pytest.mark.parametrize(("mtime", "read"), [(2**32 + 5, False), (-5, False), (2**31 + 5, True)])
def test_cpython_36_compares_the_whole_mtime(tmp_path: Path, mtime: int, read: bool) -> None:
    exe = interpreter("3.6")
    source = write(tmp_path / "m.py", "X = 1\n")
    os.utime(source, (mtime, mtime))
    compile_old(exe, source)
    pyc = tmp_path / "__pycache__" / "m.cpython-36.pyc"
    run = import_v(exe, tmp_path)
    entry = judged(tmp_path)["__pycache__/m.cpython-36.pyc"]
    if read:
        assert "matches" in run.log, run.log
        assert run.loaded == pyc, run.log
        assert entry.state is State.FRESH
    else:
        assert "bytecode is stale" in run.log, run.log
        assert run.loaded == source, run.log
        assert entry.state is State.OUTDATED
        assert f"whole mtime ({mtime}" in entry.reason


# -- 5. Python 2.7: m.pyc / m.pyo beside m.py ---------------------------------------------------------
def test_a_27_pyc_beside_its_source_is_its_live_cache(tmp_path: Path) -> None:
    exe = interpreter("2.7")
    source = write(tmp_path / "m.py", "X = 1\n")
    compile_old(exe, source)
    pyc = tmp_path / "m.pyc"
    run = import_v(exe, tmp_path)
    assert "m.pyc matches m.py" in run.log, run.log
    assert (run.loaded, run.value) == (pyc, "1"), run.log
    entry = judged(tmp_path)["m.pyc"]
    assert (entry.state, entry.source, entry.mode) == (State.FRESH, source, "timestamp")

    restore_mtime_edit(source, "X = 2\n")  # Python 2.7 runs the old code
    run = import_v(exe, tmp_path)
    assert (run.loaded, run.value) == (pyc, "1"), run.log
    entry = judged(tmp_path)["m.pyc"]  # compared by that Python 2.7
    assert entry.state is State.STALE
    assert "code differs" in entry.reason

    st = source.stat()
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 7 * 10**9))  # the mtime moves on
    run = import_v(exe, tmp_path)
    assert "has bad mtime" in run.log, run.log
    assert (run.loaded, run.value) == (source, "2"), run.log
    assert judged(tmp_path)["m.pyc"].state is State.OUTDATED


@pytest.mark.parametrize(("mtime", "read"), [(2**32 + 5, True), (2**31 + 5, False), (-5, False)])
def test_python_27_reads_the_header_mtime_as_a_signed_number(
    tmp_path: Path, mtime: int, read: bool
) -> None:
    exe = interpreter("2.7")
    source = write(tmp_path / "m.py", "X = 1\n")
    os.utime(source, (mtime, mtime))
    compile_old(exe, source)
    run = import_v(exe, tmp_path)
    entry = judged(tmp_path)["m.pyc"]
    if read:
        assert (run.loaded, run.value) == (tmp_path / "m.pyc", "1"), run.log
        assert entry.state is State.FRESH
    else:
        assert "has bad mtime" in run.log, run.log
        assert run.loaded == source, run.log
        assert entry.state is State.OUTDATED
        assert "signed 32-bit number" in entry.reason


def test_a_27_pyo_is_the_live_cache_of_python2_with_o(tmp_path: Path) -> None:
    exe = interpreter("2.7")
    source = write(tmp_path / "m.py", "X = 1\n")
    past_the_tick(source)  # else the exact check runs (and says the same)
    compile_old(exe, source, "-O")
    pyo = tmp_path / "m.pyo"
    run = import_v(exe, tmp_path, "-O")
    assert (run.loaded, run.value) == (pyo, "1"), run.log
    entry = judged(tmp_path)["m.pyo"]
    assert (entry.state, entry.source) == (State.FRESH, source)
    assert "python2 -O imports it" in entry.reason

    source.unlink()
    run = import_v(exe, tmp_path, "-O")
    assert (run.loaded, run.value) == (pyo, "1"), run.log
    entry = judged(tmp_path)["m.pyo"]
    assert (entry.state, entry.source) == (State.SOURCELESS, None)
    assert "python2 -O imports this bytecode" in entry.reason


def test_a_sourceless_27_deployment_is_sourceless_and_clean_keeps_it(tmp_path: Path) -> None:
    exe = interpreter("2.7")
    source = write(tmp_path / "m.py", "X = 'shipped'\n")
    compile_old(exe, source)
    source.unlink()
    pyc = tmp_path / "m.pyc"
    run = import_v(exe, tmp_path)
    assert (run.loaded, run.value) == (pyc, "shipped"), run.log
    entry = judged(tmp_path)["m.pyc"]
    assert entry.state is State.SOURCELESS
    assert "Python 2.7 imports this bytecode" in entry.reason
    result = clean([tmp_path])
    assert result.removed == ()
    assert [e.path for e in result.kept] == [pyc]
    assert pyc.exists()


def test_a_27_pyc_in_pycache_is_never_read(tmp_path: Path) -> None:
    exe = interpreter("2.7")
    source = write(tmp_path / "m.py", "X = 1\n")
    compile_old(exe, source)
    cached = tmp_path / "__pycache__" / "m.cpython-27.pyc"
    cached.parent.mkdir()
    (tmp_path / "m.pyc").rename(cached)
    run = import_v(exe, tmp_path)
    assert (run.loaded, run.value) == (source, "1"), run.log
    assert judged(tmp_path)["__pycache__/m.cpython-27.pyc"].state is State.ORPHAN


# -- 6. a prefix tree inside the root -----------------------------------------------------------------
def test_a_prefix_tree_inside_the_root_is_judged_as_the_prefix_tree(tmp_path: Path) -> None:
    root = (tmp_path / "proj").resolve()
    prefix = root / ".pycache"
    source = write(root / "m.py", "X = 1\n")
    subprocess.run(  # the app, as users run it: it writes the prefix tree
        [sys.executable, "-c", "import m"],
        cwd=root,
        env=child_env(PYTHONPYCACHEPREFIX=str(prefix)),
        check=True,
        timeout=60,
    )
    pyc = mirror_dir(prefix, root) / f"m.{TAG}.pyc"
    run = import_v(sys.executable, root, PYTHONPYCACHEPREFIX=str(prefix))
    assert (run.loaded, run.value) == (pyc, "1"), run.log
    options = AuditOptions(pycache_prefix=prefix, keep_fresh=True)
    report = audit([root], options)
    assert not report.errors
    assert report.entries  # the app's mirror, and the standard library's that it imported
    assert {(e.state, e.kind) for e in report.entries} == {(State.FRESH, "prefix")}
    assert pyc in [e.path for e in report.entries]

    restore_mtime_edit(source, "X = 2\n")
    run = import_v(sys.executable, root, PYTHONPYCACHEPREFIX=str(prefix))
    assert (run.loaded, run.value) == (pyc, "1"), run.log
    report = audit([root], options)
    assert [(e.path, e.source, e.state) for e in report.entries if e.state is not State.FRESH] == [
        (pyc, source, State.STALE)
    ]
    assert audit_jobs([root], options, 2).entries == report.entries
    # The prefix tree as the root: the same verdicts, not legacy pycs without a source.
    inside = audit([prefix], options)
    assert {(e.path, e.source, e.state) for e in inside.entries if e.state is not State.FRESH} == {
        (pyc, source, State.STALE)
    }
    assert {e.kind for e in inside.entries} == {"prefix"}


# -- 7. a symlinked root and the prefix tree ----------------------------------------------------------
def test_both_mirrors_of_a_symlinked_root_are_judged(tmp_path: Path) -> None:
    base = tmp_path.resolve()
    real = base / "real"
    link = base / "link"
    link.symlink_to(real, target_is_directory=True)
    prefix = base / "prefix"
    source = write(real / "m.py", "X = 1\n")
    env = {"PYTHONPYCACHEPREFIX": str(prefix)}
    # sys.path as written (PYTHONPATH=link) is mirrored unresolved; the working directory resolved.
    for cwd, extra in ((base, {"PYTHONPATH": str(link)}), (link, {})):
        subprocess.run(
            [sys.executable, "-c", "import m"],
            cwd=cwd,
            env=child_env(**env, **extra),
            check=True,
            timeout=60,
        )
    as_given = mirror_dir(prefix, link) / f"m.{TAG}.pyc"
    resolved = mirror_dir(prefix, real) / f"m.{TAG}.pyc"
    restore_mtime_edit(source, "X = 2\n")
    run = import_v(sys.executable, base, PYTHONPATH=str(link), **env)
    assert (run.loaded, run.value) == (as_given, "1"), run.log
    run = import_v(sys.executable, link, **env)
    assert (run.loaded, run.value) == (resolved, "1"), run.log

    expected = {(as_given, link / "m.py", State.STALE), (resolved, real / "m.py", State.STALE)}
    as_linked = audit([link], AuditOptions(pycache_prefix=prefix))  # the root as given
    assert not as_linked.errors
    assert {(e.path, e.source, e.state) for e in as_linked.entries} == expected
    # The root resolved (as the CLI resolves it), and the path the user gave as an alias.
    options = AuditOptions(pycache_prefix=prefix, aliases=(link,))
    report = audit([real], options)
    assert not report.errors
    assert {(e.path, e.source, e.state) for e in report.entries} == expected
    assert audit_jobs([real], options, 2).entries == report.entries
    assert audit_jobs([link], AuditOptions(pycache_prefix=prefix), 2).entries == as_linked.entries
