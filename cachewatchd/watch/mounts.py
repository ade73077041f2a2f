"""Which filesystem a root (and every mount below it) lives on, and whether the kernel can tell us
about changes there.

inotify only reports changes made through the local kernel. On network and virtual filesystems (NFS, SMB,
9p/WSL, virtiofs and most FUSE mounts) another machine or the host changes files behind its back, so such
roots are polled instead, and so is a network mount *below* a local root (:func:`polled_mounts`).
A filesystem type known neither way (UML's ``hostfs``, a new FUSE type) is judged by a probe
(:mod:`cachewatchd.watch.probe`: does a file written there raise an event?) when the caller gives one.
The mount is the one with the longest mountpoint that is a prefix of the resolved root, taken from
``psutil.disk_partitions(all=True)``.

:func:`ctime_trusted` tells whether a filesystem's ``st_ctime`` moves on every change (sshfs's does
not: content evidence is needed there).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

__all__ = [
    "POLL_MODES",
    "EventsProbe",
    "Mount",
    "ObserverChoice",
    "ObserverKind",
    "PollMode",
    "choose_observer",
    "ctime_trusted",
    "ctime_trusted_at",
    "ctime_untrusted_in",
    "is_known_local",
    "is_network_fs",
    "known_local_at",
    "mount_for",
    "mounts_below",
    "polled_mounts",
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
        "fakeowner",  # Docker Desktop 4.15+: a container's bind mount, over virtiofs
        "vboxsf",
        "drvfs",
        "prl_fs",
        "vmhgfs",
        "fuse",
    }
)
# FUSE filesystems that are local views of local data: the kernel sees every change made through them.
_LOCAL_FUSE = frozenset({"fuse.lxcfs", "fuse.fuse-overlayfs", "fuse.portal", "fuse.gocryptfs"})
# Filesystems of local disks and memory: every change goes through this kernel, which reports it.
_LOCAL_TYPES = frozenset(
    {
        *("ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "jfs", "reiserfs", "bcachefs"),
        *("nilfs2", "tmpfs", "ramfs", "overlay", "overlayfs", "aufs", "squashfs", "erofs"),
        *("iso9660", "udf", "vfat", "msdos", "exfat", "ntfs", "ntfs3", "hfs", "hfsplus", "fuseblk"),
        *("apfs", "ufs", "ffs", "devtmpfs", "rootfs"),
    }
)
# Kernel and pseudo filesystems: no sources there, never polled or probed (a mount below a root,
# such as /proc when the root is /). autofs is the trigger of a mount that shows over it.
_PSEUDO_TYPES = frozenset(
    {
        *("proc", "sysfs", "devpts", "cgroup", "cgroup2", "securityfs", "debugfs", "tracefs"),
        *("bpf", "pstore", "mqueue", "hugetlbfs", "configfs", "fusectl", "binfmt_misc", "nsfs"),
        *("efivarfs", "selinuxfs", "autofs", "rpc_pipefs", "nfsd", "sockfs", "pipefs"),
    }
)
# FUSE filesystems that pass the backing files' ctime through (any change moves it).
_CTIME_FUSE = frozenset({"fuse.bindfs", "fuse.fuse-overlayfs", "fuse.gocryptfs", "fuse.lxcfs"})
# Network filesystems whose server keeps a real ctime (NFS, SMB, the cluster filesystems).
_CTIME_UNTRUSTED = frozenset({"sshfs", "fuse", "davfs", "afpfs", "vboxsf", "vmhgfs", "prl_fs"})

EventsProbe = Callable[[Path], "bool | None"]
"""Do native events arrive for a change made in this directory? ``None``: could not be probed."""


@dataclass(frozen=True)
class Mount:
    """The mount a path lives on."""

    mountpoint: Path
    fstype: str
    device: str
    options: str = field(default="", compare=False)
    """The mount options as listed (``rw,vers=4.2,actimeo=3...``)."""


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


def is_known_local(fstype: str) -> bool:
    """True for the filesystems of local disks and memory (ext4, xfs, btrfs, tmpfs, overlay...) and
    the FUSE filesystems that only show local data: every change there raises an inotify event."""
    name = fstype.strip().lower()
    return name in _LOCAL_TYPES or name in _LOCAL_FUSE


def ctime_trusted(fstype: str) -> bool:
    """True when every change of a file on *fstype* moves its ``st_ctime``.

    False for sshfs (SFTP has no ctime: it reports the mtime, in whole seconds, so an edit that puts
    the mtime back is invisible), for FUSE types not known to pass the backing ctime through (plain
    ``fuse``, ``fuse.*``), and for host shares that fake it: there only a hash of the content tells
    that a file changed. Local filesystems, NFS, SMB and cluster filesystems keep a real ctime.
    """
    name = fstype.strip().lower()
    if name in _CTIME_FUSE:
        return True
    return not (name in _CTIME_UNTRUSTED or name.startswith("fuse."))


def ctime_trusted_at(path: Path) -> bool:
    """:func:`ctime_trusted` for the filesystem holding *path* (True when it cannot be told)."""
    try:
        mount = mount_for(path)
    except OSError:
        return True
    return mount is None or ctime_trusted(mount.fstype)


def known_local_at(path: Path) -> bool:
    """:func:`is_known_local` for the filesystem holding *path* (False when it cannot be told)."""
    try:
        mount = mount_for(path)
    except OSError:
        return False
    return mount is not None and is_known_local(mount.fstype)


def ctime_untrusted_in(roots: Sequence[Path]) -> tuple[Path, ...]:
    """Where under *roots* ctime cannot be trusted (``AuditOptions.ctime_untrusted``): each root
    on such a filesystem and each such mount below a root."""
    from cachewatchd.cache.mount_table import ctime_untrusted_areas

    found = ctime_untrusted_areas(roots, ctime_trusted)
    if found is None:
        found = tuple(root for root in roots if not ctime_trusted_at(root))
        found += tuple(
            m.mountpoint for r in roots for m in mounts_below(r) if not ctime_trusted(m.fstype)
        )
    return found


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
            best = Mount(Path(point), part.fstype, part.device, part.opts)
    return best


def mounts_below(root: Path) -> list[Mount]:
    """The mounts strictly below *root* (resolved) that are visible there, outermost first.

    A mountpoint listed twice counts once, as its last mount (which shadows the earlier one).
    """
    import psutil

    top = os.path.realpath(root)
    found: dict[str, Mount] = {}
    for part in psutil.disk_partitions(all=True):
        point = part.mountpoint
        if point != top and _is_under(point, top):
            found.pop(point, None)
            found[point] = Mount(Path(point), part.fstype, part.device, part.opts)
    return sorted(found.values(), key=lambda m: len(m.mountpoint.parts))


def polled_mounts(
    root: Path, probe: EventsProbe | None = None, *, mounts: Sequence[Mount] | None = None
) -> list[tuple[Mount, str]]:
    """The mounts below a natively watched *root* whose subtrees need polling, with why.

    A network or FUSE mount needs it; so does a mount of a type known neither way when *probe*
    says that no event arrives there (or cannot tell). Only the outermost such mounts are listed:
    a poller covers everything below its mount.
    """
    chosen: list[tuple[Mount, str]] = []
    for mount in mounts_below(root) if mounts is None else mounts:
        if any(_is_under(str(mount.mountpoint), str(m.mountpoint)) for m, _ in chosen):
            continue
        reason = _needs_polling(mount, probe)
        if reason is not None:
            chosen.append((mount, reason))
    return chosen


def _needs_polling(mount: Mount, probe: EventsProbe | None) -> str | None:
    if mount.fstype.strip().lower() in _PSEUDO_TYPES:
        return None
    where = f"{mount.fstype} mount {mount.mountpoint}"
    if is_network_fs(mount.fstype):
        return f"{where}: polling"
    if is_known_local(mount.fstype) or probe is None:
        return None
    arrived = probe(mount.mountpoint)
    if arrived:
        return None
    return f"{where}: {_UNPROBED if arrived is None else _NO_EVENT}: polling"


_NO_EVENT = "no native event arrived for a probe file"
_UNPROBED = "events could not be probed (not writable, or no watcher)"


def _is_under(target: str, mountpoint: str) -> bool:
    if mountpoint == os.sep:
        return True
    return target == mountpoint or target.startswith(mountpoint.rstrip(os.sep) + os.sep)


def choose_observer(
    root: Path,
    mode: PollMode = "auto",
    forced_by: str | None = None,
    probe: EventsProbe | None = None,
) -> ObserverChoice:
    """Pick the observer for *root*: native events where the kernel sees changes, polling elsewhere.

    ``mode`` is the user's override: ``"always"`` polls, ``"never"`` uses native events even on a
    network mount (the reason then says what would have been chosen). *forced_by* is where the
    override came from, the reason given for it (default ``"--poll <mode>"``; the settings name
    the config file or the project's ``pyproject.toml`` when it came from there). With *probe*, a
    filesystem known neither as local nor as network is probed: polled unless an event arrives.
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
    if remote and mount is not None:
        return ObserverChoice("polling", f"{mount.fstype} mount {mount.mountpoint}: polling")
    if mount is not None and is_known_local(mount.fstype):
        return ObserverChoice("native", f"{mount.fstype}: native events")
    name = unknown if mount is None else mount.fstype
    arrived = probe(root) if probe is not None else True
    if arrived is None:
        return ObserverChoice("polling", f"{name}: {_UNPROBED}: polling")
    if not arrived:
        return ObserverChoice("polling", f"{name}: {_NO_EVENT}: polling")
    checked = " (probed)" if probe is not None else ""
    return ObserverChoice("native", f"{name}: native events{checked}")
