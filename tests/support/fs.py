"""Real filesystems for tests: a small tmpfs filled up (ENOSPC for real), a tree another user can
reach."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["full_filesystem", "reachable_tree"]


@contextlib.contextmanager
def full_filesystem(path: Path, *, dirs: tuple[str, ...] = ()) -> Iterator[Path]:
    """A real full filesystem mounted at *path* (created, mode 0700): a 64 KiB tmpfs where the
    directories *dirs* (relative, mode 0700) exist, then filled up; unmounted on exit.

    Skips the test when not root, or when this machine does not let root mount a tmpfs.
    """
    if os.geteuid() != 0:
        pytest.skip("a full filesystem is a small tmpfs, and mounting one needs root")
    path.mkdir(mode=0o700)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        for directory in dirs:
            (path / directory).mkdir(mode=0o700, parents=True)
        fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * 4096):  # until ENOSPC
                    pass
        finally:
            os.close(fd)
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True, timeout=30)


@contextlib.contextmanager
def reachable_tree() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's tmp dirs are private to root); every
    directory below is made removable again at the end, then the tree is removed."""
    path = Path(tempfile.mkdtemp(prefix="cw-perm-")).resolve()
    path.chmod(0o755)
    try:
        yield path
    finally:
        for p in [path, *path.rglob("*")]:
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
        shutil.rmtree(path)
