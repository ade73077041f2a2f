"""Where under the roots ctime cannot be trusted (``AuditOptions.ctime_untrusted``), cheaply.

``scan`` asks on every run, so the mount table is read from ``/proc/self/mounts`` (psutil costs
20 ms of import) and only the mounts that hold a root or lie below one are looked at. Which types
keep a real ctime is the caller's rule (``cachewatchd.watch.mounts.ctime_trusted``, a layer
above): it is asked only for a type that is not plainly a local disk filesystem, so a scan of a
local tree does not import the watch layer.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from cachewatchd.cache.named import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from cachewatchd.cache.pyc import StrPath

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


def ctime_untrusted_areas(
    roots: Sequence[StrPath],
    trusted: Callable[[str], bool],
    table: Sequence[Sequence[str]] | None = None,
) -> tuple[Path, ...] | None:
    """Each root (resolved) on a filesystem whose ctime cannot be trusted, and each such mount
    below a root; *trusted* (fstype) says which types keep a real ctime. *table*: mountpoint and
    type per mount, as ``/proc/self/mounts`` escapes them (default: read from there). ``None``
    when there is no such table (not Linux): the caller asks psutil."""
    if table is None:
        try:
            with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as f:
                table = [line.split()[1:3] for line in f if line.count(" ") >= 3]
        except OSError:
            return None

    def keeps_ctime(fstype: str) -> bool:
        return fstype in _PLAINLY_LOCAL or trusted(fstype)

    mounts = [(_unescape(point), fstype) for point, fstype in table]
    found: list[str] = []
    for root in roots:
        top = os.path.realpath(root)
        holder, holder_type = "", ""
        for point, fstype in mounts:
            if _under(top, point) and len(point) >= len(holder):
                holder, holder_type = point, fstype  # the last of equal points shadows
            elif point != top and _under(point, top) and not keeps_ctime(fstype):
                found.append(point)
        if holder and not keeps_ctime(holder_type):
            found.append(top)
    if not found:
        return ()
    from pathlib import Path  # only for what was found: none on a local disk

    return tuple(Path(area) for area in dict.fromkeys(found))
