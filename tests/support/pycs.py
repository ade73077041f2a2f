"""Build real pycs for tests: sources, edits that CPython misses, other interpreters' pycs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

from tests.conftest import child_env

__all__ = ["compile_with", "late_writer_pyc", "restore_mtime_edit", "same_second_edit", "write"]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def restore_mtime_edit(source: Path, text: str) -> None:
    """Rewrite *source* with the same size and put its old mtime back, as ``cp -p`` would: the edit
    CPython misses (its pyc header still matches)."""
    st = source.stat()
    assert len(text.encode()) == st.st_size, "a restored-mtime edit must keep the size"
    source.write_text(text)
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))


def same_second_edit(source: Path, text: str) -> None:
    """Rewrite *source* within the same whole second of its current mtime."""
    st = source.stat()
    source.write_text(text)
    second = st.st_mtime_ns // 1_000_000_000
    os.utime(source, ns=(st.st_atime_ns, second * 1_000_000_000 + 500_000_000))


def compile_with(exe: str, source: Path, mode: str = "timestamp", optimize: int = -1) -> Path:
    """Write a pyc for *source* with the interpreter *exe*; return its path."""
    code = (
        "import py_compile, sys\n"
        "m = {'timestamp': py_compile.PycInvalidationMode.TIMESTAMP,"
        " 'checked-hash': py_compile.PycInvalidationMode.CHECKED_HASH,"
        " 'unchecked-hash': py_compile.PycInvalidationMode.UNCHECKED_HASH}[sys.argv[2]]\n"
        "print(py_compile.compile(sys.argv[1], doraise=True, optimize=int(sys.argv[3]),"
        " invalidation_mode=m))\n"
    )
    out = subprocess.run(
        [exe, "-c", code, str(source), mode, str(optimize)],
        capture_output=True,
        text=True,
        check=True,
        env=child_env(),
        timeout=60,
    )
    return Path(out.stdout.strip())


def late_writer_pyc(source: Path, old_text: str) -> Path:
    """The pyc an importer that read *old_text* writes now (atomically, as importlib does): the old
    code under a header taken from the source's stat as it is now, which a restored mtime and the
    same size keep matching."""
    code = compile(old_text, str(source), "exec", dont_inherit=True)
    st = source.stat()
    data = importlib._bootstrap_external._code_to_timestamp_pyc(  # type: ignore[attr-defined]
        code, int(st.st_mtime), st.st_size
    )
    pyc = Path(importlib.util.cache_from_source(str(source)))
    pyc.parent.mkdir(exist_ok=True)
    tmp = pyc.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, pyc)
    return pyc
