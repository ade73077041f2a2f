"""Where ``scan`` and the daemon cannot trust ctime: roots on sshfs-like mounts, and such mounts
below a root, read from the mount table (``/proc/self/mounts`` escapes spaces as ``\\040``)."""

from __future__ import annotations

from pathlib import Path

from cachewatchd.cache.mount_table import ctime_untrusted_areas
from cachewatchd.watch.mounts import ctime_trusted, ctime_untrusted_in

TABLE = [
    ("/", "ext4"),
    ("/home/u/proj/remote\\040dir", "fuse.sshfs"),
    ("/home/u/proj/nfs", "nfs4"),
    ("/mnt/box", "fuse.sshfs"),
    ("/mnt/box/inner", "ext4"),
]


def test_a_root_on_sshfs_is_untrusted() -> None:
    assert ctime_untrusted_areas([Path("/mnt/box/src")], ctime_trusted, TABLE) == (
        Path("/mnt/box/src"),
    )


def test_a_local_root_lists_the_untrusted_mounts_below_it() -> None:
    found = ctime_untrusted_areas([Path("/home/u/proj")], ctime_trusted, TABLE)
    assert found == (Path("/home/u/proj/remote dir"),)  # NFS keeps a real ctime


def test_a_local_mount_over_sshfs_is_trusted() -> None:
    assert ctime_untrusted_areas([Path("/mnt/box/inner")], ctime_trusted, TABLE) == ()


def test_this_machine_answers_without_failing() -> None:
    assert isinstance(ctime_untrusted_in([Path("/")]), tuple)
