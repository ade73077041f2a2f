"""Where cachewatchd keeps its files (platformdirs locations, the log file of a detached daemon),
whether a path lies under a root, and reading a small file that must be a regular file.

Every location function computes its answer from the environment at call time (``XDG_*`` variables
are honoured through platformdirs), creates the directory on demand with mode ``0o700`` and returns
it. platformdirs is imported by them, not here: :func:`is_under` must stay cheap to import.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import sys
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "APP_NAME",
    "FileTooLargeError",
    "NotRegularFileError",
    "config_dir",
    "daemon_log_file",
    "is_under",
    "log_dir",
    "read_regular",
    "runtime_dir",
    "state_dir",
]

APP_NAME = "cachewatchd"
_DIR_MODE = 0o700


def is_under(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """Whether *path* is *root* or lies below it (``/a/b`` is under ``/a``, ``/ab`` is not).

    Lexical, on normalized paths (a :class:`~pathlib.Path`, or an ``abspath``/``realpath``
    result): nothing is resolved, so resolve both first where symlinks matter. Cheap enough for
    every path of a 10k-file batch.
    """
    p, r = os.fspath(path), os.fspath(root)
    return p == r or p.startswith(r if r.endswith(os.sep) else r + os.sep)


class NotRegularFileError(OSError):
    """:func:`read_regular` found a FIFO, a device, a socket or a directory where a file belongs."""


class FileTooLargeError(OSError):
    """:func:`read_regular` found a file larger than the caller's limit."""


_CHUNK = 1 << 16

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_regular(path: str | os.PathLike[str], limit: int) -> bytes:
    """The content of *path*, which must be a regular file of at most *limit* bytes.

    Opened with ``O_NONBLOCK`` (a FIFO opens at once instead of waiting for a writer) and
    ``O_NOCTTY``, then judged by ``fstat`` of what was opened: no race between a check and the read.
    Symlinks are followed. Raises :class:`NotRegularFileError` for anything but a regular file
    (``strerror`` says what it is: ``"a FIFO, not a regular file"``), :class:`FileTooLargeError`
    beyond *limit* bytes (also when a file grows while it is read), and the ``open``/``read``
    :class:`OSError` otherwise (``FileNotFoundError``, ``PermissionError``...). Never blocks.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = _kind(mode)
            reason = what if what == "not a regular file" else f"{what}, not a regular file"
            raise NotRegularFileError(errno.EINVAL, reason, os.fspath(path))
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(limit + 1 - size, _CHUNK))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
        raise FileTooLargeError(errno.EFBIG, f"larger than {limit} bytes", os.fspath(path))
    finally:
        os.close(fd)


def _ensure(path: Path) -> Path:
    """Create *path* (and missing parents) private to the user; return it."""
    path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    return path


def config_dir() -> Path:
    """The user's config directory, e.g. ``~/.config/cachewatchd`` (created on demand)."""
    import platformdirs

    return _ensure(Path(platformdirs.user_config_dir(APP_NAME)))


def state_dir() -> Path:
    """The user's state directory, e.g. ``~/.local/state/cachewatchd`` (created on demand)."""
    import platformdirs

    return _ensure(Path(platformdirs.user_state_dir(APP_NAME)))


def log_dir() -> Path:
    """The user's log directory, e.g. ``~/.local/state/cachewatchd/log`` (created on demand)."""
    import platformdirs

    return _ensure(Path(platformdirs.user_log_dir(APP_NAME)))


def daemon_log_file(roots: Iterable[str | os.PathLike[str]]) -> Path:
    """The log file of the detached daemon watching *roots* (resolved paths), in :func:`log_dir`:
    ``cachewatchd-<12 hex digits>.log``, the digits a hash of the sorted roots. One file per set of
    roots, the same for the same set whatever its order; the directory is created on demand."""
    key = "\0".join(sorted({os.fspath(root) for root in roots}))
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return log_dir() / f"{APP_NAME}-{digest}.log"


def _usable_xdg_runtime_dir() -> Path | None:
    """``$XDG_RUNTIME_DIR`` when it is what the XDG spec promises: an absolute directory, not a
    symlink, owned by this user, mode 0700. ``None`` otherwise."""
    value = os.environ.get("XDG_RUNTIME_DIR", "")
    if not value or not os.path.isabs(value):
        return None
    try:
        st = os.lstat(value)
    except (OSError, ValueError):
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        return None
    return Path(value)


def runtime_dir() -> Path:
    """The user's runtime directory, e.g. ``$XDG_RUNTIME_DIR/cachewatchd`` (created on demand).

    On Linux and other XDG systems it is used only when ``$XDG_RUNTIME_DIR`` is set and private to
    the user; otherwise (and when it cannot be created) the state directory stands in. platformdirs'
    own fallbacks (``/tmp/runtime-<uid>``, with a warning) are not used: the answer must be the same
    on every call, since the daemon registry lives here.
    """
    if sys.platform == "darwin":
        import platformdirs

        candidate = Path(platformdirs.user_runtime_dir(APP_NAME))
    else:
        base = _usable_xdg_runtime_dir()
        if base is None:
            return state_dir()
        candidate = base / APP_NAME
    try:
        return _ensure(candidate)
    except OSError:
        return state_dir()
