"""Compile fresh caches for the running interpreter after a clean.

The sources are compiled in a checking process (:mod:`cachewatchd.cache.checks`: a source that
exhausts the compiler's recursion, memory or time cannot harm this process), and each pyc is
written the safe way: a temporary file in the cache directory, every byte written (a short write
is retried, then fails: ``py_compile`` ignores short writes and leaves a truncated pyc on a full
disk), its size checked, ``fsync``, then renamed over the cache file. A failure leaves no pyc and
is reported for that source; the others go on.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import os
import stat
import sys
from collections.abc import Iterable
from pathlib import Path

from cachewatchd.cache.checks import CheckPool, PycBytes
from cachewatchd.cache.states import Entry

__all__ = ["recompile", "write_pyc"]

_MODES = ("timestamp", "checked-hash", "unchecked-hash")


def _default_mode() -> str:
    return "checked-hash" if os.environ.get("SOURCE_DATE_EPOCH") else "timestamp"


def recompile(
    entries: Iterable[Entry], mode: str | None = None, *, checks: CheckPool | None = None
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Compile each entry's source for this interpreter at the entry's opt level.

    Entries of another interpreter's tag, or without a source, are skipped. Returns the pycs
    written and the failures (a source that does not compile, a pyc that cannot be written: each
    reported, not raised). *checks* runs the compiles (default: a pool of its own, closed here).
    """
    invalidation = mode or _default_mode()
    if invalidation not in _MODES:
        raise ValueError(f"invalidation mode must be one of {', '.join(_MODES)}")
    tag = sys.implementation.cache_tag
    done: list[Path] = []
    failed: list[tuple[Path, str]] = []
    seen: set[tuple[Path, int]] = set()
    with contextlib.ExitStack() as stack:
        pool = checks if checks is not None else stack.enter_context(CheckPool())
        for entry in entries:
            if entry.source is None or entry.kind == "legacy" or entry.tag != tag:
                continue
            level = int(entry.opt) if entry.opt.isdigit() else 0
            if (entry.source, level) in seen:
                continue
            seen.add((entry.source, level))
            error = _compile_one(pool, entry.source, level, invalidation, done)
            if error is not None:
                failed.append((entry.source, error))
    return done, failed


def _compile_one(
    pool: CheckPool, source: Path, level: int, mode: str, done: list[Path]
) -> str | None:
    """Write the pyc of *source*; the error text when it cannot be."""
    try:
        cfile = Path(importlib.util.cache_from_source(str(source), optimization=level or ""))
    except (ValueError, NotImplementedError) as exc:
        return str(exc)
    compiled = pool.compile(str(source), level, mode)
    if not isinstance(compiled, PycBytes):
        if compiled.result == "no_compile":
            return f"does not compile: {compiled.detail}"
        if compiled.result == "failed":
            return f"not compiled: the checking process {compiled.detail}"
        return f"not compiled: {compiled.detail}"
    try:
        write_pyc(cfile, compiled.data, _source_mode(source))
    except OSError as exc:
        return f"{cfile.name} not written: {exc.strerror or exc}"
    done.append(cfile)
    return None


def _source_mode(source: Path) -> int:
    """The pyc's permissions, as CPython's import gives them: the source's, writable by owner."""
    try:
        mode = source.stat().st_mode
    except OSError:
        mode = 0o666
    return (mode | 0o200) & 0o666


def write_pyc(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Put *data* at *path* whole or not at all: temporary file, full write, size check, fsync,
    rename. Raises :class:`OSError` (the temporary file removed, *path* untouched) on failure.

    Refuses, like ``py_compile``, to replace a symlink or a non-regular file.
    """
    try:
        st = path.lstat()
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EEXIST, "exists and is not a regular file", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                if written <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
                view = view[written:]
            os.fsync(fd)
            size = os.fstat(fd).st_size
            if size != len(data):
                raise OSError(errno.EIO, f"wrote {size} of {len(data)} bytes", str(tmp))
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """Make the rename durable (best effort: not every filesystem can sync a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
