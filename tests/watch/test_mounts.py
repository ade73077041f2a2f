"""Filesystem type per root and the observer it gets."""

from __future__ import annotations

import os
from collections import namedtuple
from pathlib import Path

import psutil
import pytest

from cachewatchd.watch.mounts import (
    Mount,
    ObserverChoice,
    choose_observer,
    is_network_fs,
    mount_for,
)

_Part = namedtuple("_Part", "device mountpoint fstype opts")


def _fake_partitions(monkeypatch: pytest.MonkeyPatch, parts: list[_Part]) -> None:
    def fake(all: bool = False) -> list[_Part]:
        assert all is True
        return parts

    monkeypatch.setattr(psutil, "disk_partitions", fake)


def test_mount_for_a_real_directory(tmp_path: Path) -> None:
    mount = mount_for(tmp_path)
    assert mount is not None
    real = os.path.realpath(tmp_path)
    assert real == str(mount.mountpoint) or real.startswith(str(mount.mountpoint).rstrip("/") + "/")
    listed = {(p.mountpoint, p.fstype) for p in psutil.disk_partitions(all=True)}
    assert (str(mount.mountpoint), mount.fstype) in listed


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_mount_for_picks_the_longest_prefix_on_this_machine() -> None:
    mount = mount_for(Path("/dev/shm"))
    assert mount is not None
    assert mount.mountpoint == Path("/dev/shm")
    assert mount.fstype == "tmpfs"


def test_longest_prefix_wins_and_later_mounts_shadow(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_partitions(
        monkeypatch,
        [
            _Part("/dev/sda1", "/", "ext4", "rw"),
            _Part("srv:/export", "/mnt/code", "nfs4", "rw"),
            _Part("/dev/sdb1", "/mnt/codebase", "xfs", "rw"),
            _Part("tmpfs", "/mnt/code", "tmpfs", "rw"),  # mounted over the nfs one
        ],
    )
    assert mount_for(Path("/mnt/code/app/x.py")) == Mount(Path("/mnt/code"), "tmpfs", "tmpfs")
    assert mount_for(Path("/mnt/codebase/a")) == Mount(Path("/mnt/codebase"), "xfs", "/dev/sdb1")
    assert mount_for(Path("/mnt/cod")) == Mount(Path("/"), "ext4", "/dev/sda1")


def test_symlinked_root_is_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    _fake_partitions(
        monkeypatch,
        [_Part("/dev/sda1", "/", "ext4", "rw"), _Part("srv:/x", str(real), "nfs", "rw")],
    )
    mount = mount_for(link)
    assert mount is not None
    assert mount.fstype == "nfs"


@pytest.mark.parametrize(
    "fstype",
    [
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "virtiofs",
        "vboxsf",
        "drvfs",
        "prl_fs",
        "vmhgfs",
        "afpfs",
        "fuse.sshfs",
        "fuse.vmhgfs-fuse",
        "fuse.grpcfuse",
        "fuse.osxfs",
        "fuse",
        "ceph",
        "glusterfs",
        "NFS4",
    ],
)
def test_network_and_shared_filesystems(fstype: str) -> None:
    assert is_network_fs(fstype)


@pytest.mark.parametrize(
    "fstype",
    [
        "ext4",
        "xfs",
        "btrfs",
        "zfs",
        "tmpfs",
        "overlay",
        "apfs",
        "fuseblk",
        "fuse.lxcfs",
        "fuse.fuse-overlayfs",
        "f2fs",
        "",
    ],
)
def test_local_filesystems(fstype: str) -> None:
    assert not is_network_fs(fstype)


def test_choose_observer_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_partitions(
        monkeypatch,
        [_Part("/dev/sda1", "/", "ext4", "rw"), _Part("srv:/export", "/mnt", "nfs4", "rw")],
    )
    assert choose_observer(Path("/home/u/app"), "auto") == ObserverChoice(
        "native", "ext4: native events"
    )
    assert choose_observer(Path("/mnt/app"), "auto") == ObserverChoice(
        "polling", "nfs4 mount /mnt: polling"
    )


def test_choose_observer_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_partitions(
        monkeypatch,
        [_Part("/dev/sda1", "/", "ext4", "rw"), _Part("srv:/export", "/mnt", "nfs4", "rw")],
    )
    assert choose_observer(Path("/home/u/app"), "always") == ObserverChoice(
        "polling", "--poll always"
    )
    assert choose_observer(Path("/home/u/app"), "never") == ObserverChoice("native", "--poll never")
    never_nfs = choose_observer(Path("/mnt/app"), "never")
    assert never_nfs.kind == "native"
    assert "nfs4 mount /mnt" in never_nfs.reason


def test_choose_observer_without_mount_information(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_partitions(monkeypatch, [])
    assert choose_observer(Path("/x"), "auto") == ObserverChoice(
        "native", "filesystem unknown: native events"
    )

    def broken(all: bool = False) -> list[_Part]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(psutil, "disk_partitions", broken)
    choice = choose_observer(Path("/x"), "auto")
    assert choice.kind == "native"
    assert "mounts unreadable" in choice.reason


def test_choose_observer_on_this_machine(tmp_path: Path) -> None:
    choice = choose_observer(tmp_path)
    mount = mount_for(tmp_path)
    assert mount is not None
    expected = "polling" if is_network_fs(mount.fstype) else "native"
    assert choice.kind == expected
    assert mount.fstype in choice.reason
