"""``doctor`` on network and FUSE mounts: the mount table is faked, the probe file is real."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path

import psutil
import pytest

from cachewatchd.config.settings import RootPlan
from cachewatchd.doctor.findings import Finding
from cachewatchd.doctor.fs_checks import probe_root
from cachewatchd.watch.mounts import PollMode

_Part = namedtuple("_Part", "device mountpoint fstype opts")
NFS_DEFAULTS = "rw,relatime,vers=4.2,rsize=1048576,hard,proto=tcp,timeo=600,sec=sys"


def _mounts(monkeypatch: pytest.MonkeyPatch, *extra: _Part) -> None:
    real = psutil.disk_partitions

    def fake(all: bool = False) -> list[object]:
        return [*real(all=True), *extra]

    monkeypatch.setattr(psutil, "disk_partitions", fake)


def _findings(root: Path, poll: PollMode = "auto") -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {}
    for finding in probe_root(RootPlan(root, poll, "command line"), timeout=5):
        out.setdefault(finding.id, []).append(finding)
    return out


def test_a_network_root_needs_polling_although_its_probe_event_arrives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path.resolve()
    _mounts(monkeypatch, _Part("srv:/x", str(root), "nfs4", NFS_DEFAULTS))
    (events,) = _findings(root)["events"]
    assert events.severity == "info"
    assert events.message == (
        "native events arrive for changes made here, but a change made on another machine or on "
        "the other side of this nfs4 mount never raises one: polling is needed"
    )
    assert "polling is not needed" not in events.message
    # forced to native events there: a warning, with what to do
    (events,) = _findings(root, "never")["events"]
    assert events.severity == "warning"
    assert "--poll always" in events.action


@pytest.mark.parametrize(
    ("options", "seconds"),
    [
        (NFS_DEFAULTS, 60),
        (NFS_DEFAULTS + ",acregmin=1,acregmax=1,acdirmin=1,acdirmax=1", 1),  # actimeo=1
        (NFS_DEFAULTS + ",acregmax=5", 60),  # directories still cached 60 s
        (NFS_DEFAULTS + ",actimeo=7", 7),
        (NFS_DEFAULTS + ",noac", None),
        (NFS_DEFAULTS + ",acregmin=0,acregmax=0,acdirmin=0,acdirmax=0", None),
    ],
)
def test_nfs_attribute_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: str, seconds: int | None
) -> None:
    root = tmp_path.resolve()
    _mounts(monkeypatch, _Part("srv:/x", str(root), "nfs", options))
    found = _findings(root).get("nfs-attribute-cache", [])
    if seconds is None:
        assert found == []
        return
    (finding,) = found
    assert finding.severity == "info"
    assert f"caches file attributes for up to {seconds} s" in finding.message
    assert "by the daemon and by Python itself" in finding.message


def test_mounts_below_a_local_root_are_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path.resolve()
    (root / "data").mkdir()
    (root / "ssh").mkdir()
    _mounts(
        monkeypatch,
        _Part("srv:/x", str(root / "data"), "nfs", NFS_DEFAULTS),
        _Part("u@h:/", str(root / "ssh"), "fuse.sshfs", "rw"),
    )
    found = _findings(root)
    assert "native events" in found["filesystem"][0].message
    below = [f.message for f in found["mount-below"]]
    assert below == [
        f"nfs mounted at {root / 'data'} below this root; nfs mount {root / 'data'}: polling",
        f"fuse.sshfs mounted at {root / 'ssh'} below this root; "
        f"fuse.sshfs mount {root / 'ssh'}: polling",
    ]
    assert len(found["nfs-attribute-cache"]) == 1
    assert found["events"][0].message == "native events arrive"
    assert "mount-below" not in _findings(root, "always")
