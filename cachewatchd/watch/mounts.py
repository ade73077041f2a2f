"""Which filesystem a root lives on, and whether the kernel can tell us about changes there.

inotify only reports changes made through the local kernel. On network and virtual filesystems (NFS, SMB,
9p/WSL, virtiofs and most FUSE mounts) another machine or the host changes files behind its back, so such
roots are polled instead. The mount is the one with the longest mountpoint that is a prefix of the
resolved root, taken from ``psutil.disk_partitions(all=True)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

__all__ = [
    "POLL_MODES",
    "Mount",
    "ObserverChoice",
    "ObserverKind",
    "PollMode",
    "choose_observer",
    "is_network_fs",
    "mount_for",
]

ObserverKind = Literal["native", "polling"]
PollMode = Literal["auto", "always", "never"]
"""The user's polling override: ``"auto"`` lets the filesystem decide (:func:`choose_observer`)."""
POLL_MODES: tuple[PollMode, ...] = get_args(PollMode)
"""The choices of ``--poll`` and of ``poll`` in a config, in order."""

# Filesystems whose content can change without the local kernel seeing it.
_REMOTE_TYPES = frozenset(
    {
        # network filesystems
        "nfs",
        "nfs4",
        "cifs",
        "smb",
        "smb2",
        "smb3",
        "smbfs",
        "afpfs",
        "ncpfs",
        "afs",
        "coda",
        "davfs",
        "sshfs",
        # cluster filesystems: other nodes write behind our back
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "gfs2",
        "ocfs2",
        "beegfs",
        # host <-> guest shares (VMs, WSL, Docker Desktop)
        "9p",
        "virtiofs",
        "vboxsf",
        "drvfs",
        "prl_fs",
        "vmhgfs",
        "fuse",
    }
)
# FUSE filesystems that are local views of local data: the kernel sees every change made through them.
_LOCAL_FUSE = frozenset({"fuse.lxcfs", "fuse.fuse-overlayfs", "fuse.portal", "fuse.gocryptfs"})


@dataclass(frozen=True)
class Mount:
    """The mount a path lives on."""

    mountpoint: Path
    fstype: str
    device: str


@dataclass(frozen=True)
class ObserverChoice:
    """How one root is watched, and why (shown in logs and ``status``)."""

    kind: ObserverKind
    reason: str


def is_network_fs(fstype: str) -> bool:
    """True when changes on *fstype* may not reach inotify (network, cluster, host-shared, FUSE).

    Every ``fuse.*`` type counts (sshfs, gvfs, osxfs, grpcfuse, bindfs...: changes made on the far side
    bypass the local kernel), except a few FUSE filesystems that only show local data (lxcfs,
    fuse-overlayfs of rootless containers, gocryptfs). ``fuseblk`` (ntfs-3g, exfat on a local disk) is
    local.
    """
    name = fstype.strip().lower()
    if name in _LOCAL_FUSE:
        return False
    if name.startswith("fuse."):
        return True
    return name in _REMOTE_TYPES


def mount_for(path: Path) -> Mount | None:
    """The mount holding *path* (resolved), or ``None`` when psutil lists no mount for it."""
    import psutil

    target = os.path.realpath(path)
    best: Mount | None = None
    best_len = -1
    for part in psutil.disk_partitions(all=True):
        point = part.mountpoint
        if not _is_under(target, point):
            continue
        # ">=": a later mount on the same point shadows the earlier one
        if len(point) >= best_len:
            best_len = len(point)
            best = Mount(Path(point), part.fstype, part.device)
    return best


def _is_under(target: str, mountpoint: str) -> bool:
    if mountpoint == os.sep:
        return True
    return target == mountpoint or target.startswith(mountpoint.rstrip(os.sep) + os.sep)


def choose_observer(
    root: Path, mode: PollMode = "auto", forced_by: str | None = None
) -> ObserverChoice:
    """Pick the observer for *root*: native events where the kernel sees changes, polling elsewhere.

    ``mode`` is the user's override: ``"always"`` polls, ``"never"`` uses native events even on a
    network mount (the reason then says what would have been chosen). *forced_by* is where the
    override came from, the reason given for it (default ``"--poll <mode>"``; the settings name
    the config file or the project's ``pyproject.toml`` when it came from there).
    """
    forced = forced_by or f"--poll {mode}"
    if mode == "always":
        return ObserverChoice("polling", forced)
    try:
        mount = mount_for(root)
    except OSError as exc:  # psutil reads /proc/self/mounts
        mount = None
        unknown = f"mounts unreadable ({exc.strerror or exc})"
    else:
        unknown = "filesystem unknown"
    remote = mount is not None and is_network_fs(mount.fstype)
    if mode == "never":
        if remote and mount is not None:
            return ObserverChoice(
                "native", f"{forced} (on {mount.fstype} mount {mount.mountpoint})"
            )
        return ObserverChoice("native", forced)
    if mount is None:
        return ObserverChoice("native", f"{unknown}: native events")
    if remote:
        return ObserverChoice("polling", f"{mount.fstype} mount {mount.mountpoint}: polling")
    return ObserverChoice("native", f"{mount.fstype}: native events")
