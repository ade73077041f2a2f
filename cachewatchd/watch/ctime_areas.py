"""Where under the roots ctime cannot be trusted (``AuditOptions.ctime_untrusted``), cheaply.

``scan`` asks on every run, so the mount table is read from ``/proc/self/mounts`` (psutil costs
20 ms of import) and only the mounts that hold a root or lie below one are looked at; the rules of
:func:`cachewatchd.watch.mounts.ctime_trusted` are imported only for a type that is not plainly a
local disk filesystem (a few ms of a scan's start-up otherwise).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ctime_untrusted_areas"]

_PLAINLY_LOCAL = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "tmpfs", "overlay", "bcachefs"}
)
"""Types whose ctime moves on every change (a subset of what ``ctime_trusted`` says yes to)."""


def _unescape(field: str) -> str:
    """A mountpoint as ``/proc/self/mounts`` writes it (space, tab, newline, backslash octal)."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _under(path: str, top: str) -> bool:
    return top in (os.sep, path) or path.startswith(top.rstrip(os.sep) + os.sep)


def _trusted(fstype: str) -> bool:
    if fstype in _PLAINLY_LOCAL:
        return True
    from cachewatchd.watch.mounts import ctime_trusted

    return ctime_trusted(fstype)


def ctime_untrusted_areas(
    roots: Sequence[Path], table: Sequence[Sequence[str]] | None = None
) -> tuple[Path, ...]:
    """Each root (resolved) on a filesystem whose ctime cannot be trusted, and each such mount
    below a root. *table*: mountpoint and type per mount, as ``/proc/self/mounts`` escapes them
    (default: read from there; without it, psutil's table through ``ctime_trusted_at``)."""
    if table is None:
        try:
            with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as f:
                table = [line.split()[1:3] for line in f if line.count(" ") >= 3]
        except OSError:
            from cachewatchd.watch.mounts import ctime_trusted_at

            return tuple(root for root in roots if not ctime_trusted_at(root))
    mounts = [(_unescape(point), fstype) for point, fstype in table]
    found: list[Path] = []
    for root in roots:
        top = os.path.realpath(root)
        holder, holder_type = "", ""
        for point, fstype in mounts:
            if _under(top, point) and len(point) >= len(holder):
                holder, holder_type = point, fstype  # the last of equal points shadows
            elif point != top and _under(point, top) and not _trusted(fstype):
                found.append(Path(point))
        if holder and not _trusted(holder_type):
            found.append(Path(top))
    return tuple(dict.fromkeys(found))
