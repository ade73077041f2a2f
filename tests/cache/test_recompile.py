"""``clean --recompile`` on a full disk: a real tmpfs of a few hundred KiB, mounted by the test."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachewatchd.cache.audit import State, audit
from cachewatchd.cache.clean import clean
from cachewatchd.cache.recompile import write_pyc
from cachewatchd.cli import main
from tests.support.pycs import write
from tests.support.wait import compile_pyc

TAG = sys.implementation.cache_tag
SIZE = 512 << 10


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A fresh tmpfs of :data:`SIZE` bytes, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = Path(tempfile.mkdtemp(prefix="cw-full-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0755", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if mounted.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield where.resolve()
    finally:
        subprocess.run(["umount", str(where)], check=True, timeout=30)
        where.rmdir()


def fill(disk: Path, leave: int) -> None:
    """Take all the free space of *disk* but *leave* bytes."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    assert free > leave
    (disk / "filler").write_bytes(b"\0" * (free - leave))


def big_module(size: int) -> str:
    """A module whose pyc is about *size* bytes (one string constant)."""
    return f"S = {'a' * size!r}\n"


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".pyc"))


def test_recompile_on_a_full_disk_reports_the_source_and_leaves_no_broken_pyc(
    small_disk: Path,
) -> None:
    big = write(small_disk / "big.py", "X = 1\n")
    small = write(small_disk / "small.py", "Y = 1\n")
    compile_pyc(big)
    compile_pyc(small)
    big.write_text(big_module(150_000))  # both pycs now outdated: clean removes them
    small.write_text("Y = 22\n")
    fill(small_disk, 64 << 10)  # room for the small pyc, not for the 150 KB one

    result = clean([small_disk], recompile=True)

    cache = small_disk / "__pycache__"
    assert set(result.removed) == {cache / f"big.{TAG}.pyc", cache / f"small.{TAG}.pyc"}
    assert result.recompiled == (cache / f"small.{TAG}.pyc",)
    assert result.errors == ((big, f"big.{TAG}.pyc not written: No space left on device"),)
    assert not (cache / f"big.{TAG}.pyc").exists()  # py_compile left a truncated one here
    assert leftovers(cache) == []
    assert {e.path.name: e.state for e in audit([small_disk], None).entries} == {}
    assert audit([small_disk]).summary()[State.FRESH.value] == 1


def test_the_console_says_which_source_was_not_recompiled(
    small_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = write(small_disk / "big.py", "X = 1\n")
    compile_pyc(big)
    big.write_text(big_module(150_000))
    fill(small_disk, 64 << 10)
    assert main(["clean", "--recompile", str(small_disk)]) == 3
    out, err = capsys.readouterr()
    assert "recompiled" not in out
    assert err == f"cachewatchd: {big}: big.{TAG}.pyc not written: No space left on device\n"


def test_a_failed_write_keeps_the_old_file_and_no_temporary(small_disk: Path) -> None:
    target = small_disk / "__pycache__" / f"m.{TAG}.pyc"
    write_pyc(target, b"old bytes")
    fill(small_disk, 16 << 10)
    with pytest.raises(OSError, match="No space left"):
        write_pyc(target, b"x" * (100 << 10))
    assert target.read_bytes() == b"old bytes"
    assert leftovers(target.parent) == []


def test_a_written_pyc_is_the_one_cpython_writes(tmp_path: Path) -> None:
    source = write(tmp_path / "m.py", "X = 1\n\ndef f():\n    return X\n")
    pyc = compile_pyc(source)
    expected = pyc.read_bytes()
    result = clean([tmp_path.resolve()], fresh=True, recompile=True)
    assert result.recompiled == (pyc,)
    assert pyc.read_bytes() == expected
    assert oct(pyc.stat().st_mode & 0o777) == oct((source.stat().st_mode | 0o200) & 0o666)


@pytest.mark.parametrize("mode", ["checked-hash", "unchecked-hash"])
def test_hash_pycs_are_written_as_cpython_writes_them(tmp_path: Path, mode: str) -> None:
    source = write(tmp_path / "m.py", "X = 1\n")
    expected = compile_pyc(source, mode=mode).read_bytes()
    result = clean([tmp_path.resolve()], fresh=True, recompile=True, invalidation_mode=mode)  # type: ignore[arg-type]
    (pyc,) = result.recompiled
    assert pyc.read_bytes() == expected


def test_a_source_that_does_not_compile_is_reported(tmp_path: Path) -> None:
    source = write(tmp_path / "m.py", "X = 1\n")
    compile_pyc(source)
    source.write_text("X = (\n")
    result = clean([tmp_path.resolve()], recompile=True)
    assert result.recompiled == ()
    assert result.errors == (
        (source, "does not compile: SyntaxError: '(' was never closed (m.py, line 1)"),
    )
