"""Real mounts: the daemon and ``scan`` on FUSE (bindfs, sshfs) and NFS (v3, v4.2) trees.

Every edit kind (in place, restored mtime with the same size, atomic save, ``rsync -t``
replacement, create, delete, rename, directory rename) is made from both sides of each mount
(:mod:`tests.support.mount_edits`): through the mount, and on the other side (the directory bindfs
shows, the directory sshd serves, the NFS server's export), where no event reaches the client's
inotify. The daemon runs on the client side: a network or FUSE mount below its local root gets a
poller of its own, a root on such a mount is polled. Every stale pyc must go; ``scan`` must say what
CPython does with each pyc.

FUSE (bindfs, sshfs with a private sshd on 127.0.0.1) runs on this machine. NFS runs in a
user-mode-linux guest whose root is this machine's ``/``: it serves an ext4 disk over NFS on its own
loopback, mounts it (v3 and v4.2) below a tmpfs root, and runs the daemon, the edits and the CLI
itself (:mod:`tests.support.uml`). Each part skips with the reason when it cannot run here
(``.ci/run`` installs what they need); one mount set, one guest boot, serves the whole module.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import psutil
import pytest

from tests.support import mount_edits
from tests.support.mount_trees import GuestTree, HostView, LocalTree, RunningDaemon, Side, Tree
from tests.support.mounts import bindfs, sshfs
from tests.support.uml import booted, unavailable
from tests.support.wait import wait_until

pytestmark = pytest.mark.skipif(not Path("/proc/self/mounts").exists(), reason="Linux only")


@pytest.fixture(scope="module", params=["fuse", "nfs"])
def tree(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Tree]:
    if shutil.which("rsync") is None:
        pytest.skip("rsync is not installed (apt-get install rsync): its edit cannot be made")
    base = tmp_path_factory.mktemp(request.param).resolve()
    if request.param == "fuse":
        yield from _fuse(base)
    else:
        yield from _nfs(base)


def _fuse(base: Path) -> Iterator[Tree]:
    root = base / "proj"
    root.mkdir()
    with (
        bindfs(base / "bind-other", root / "bind") as bound,
        sshfs(base / "ssh-other", root / "ssh", base / "sshd") as ssh,
    ):
        mounts = {
            "bindfs": Side(bound.client, bound.other, bound.fstype),
            "sshfs": Side(ssh.client, ssh.other, ssh.fstype),
        }
        yield LocalTree(root, mounts, base / "home")


def _nfs(base: Path) -> Iterator[Tree]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"no NFS guest: {reason}")
    export, root, home = base / "export", base / "proj", base / "home"
    for path in (export, root, home):
        path.mkdir()
    with booted(base / "guest") as guest:
        for step in (
            f"busybox mount -t ext4 /dev/ubdb {export} && mkdir {export}/v3 {export}/v4",
            "rpcbind -w",
            f"exportfs -o rw,sync,no_subtree_check,no_root_squash,insecure,fsid=0 127.0.0.1:{export}",
            "rpc.mountd -N 2",
            "rpc.nfsd -G 10 -L 10 4",
            f"busybox mount -t tmpfs proj {root} && mkdir {root}/nfs3 {root}/nfs4",
            # attributes cached 1 s (default: up to 60 s, README: "Docker, NFS, WSL")
            f"mount -t nfs -o vers=3,nolock,actimeo=1 127.0.0.1:{export}/v3 {root}/nfs3",
            f"mount -t nfs -o vers=4.2,actimeo=1 127.0.0.1:/v4 {root}/nfs4",
        ):
            guest.run(step, timeout=120)
        mounts = {
            "nfs3": Side(root / "nfs3", export / "v3", "nfs"),
            "nfs4.2": Side(root / "nfs4", export / "v4", "nfs4"),
        }
        yield GuestTree(guest, root, mounts, home)


@pytest.fixture(autouse=True)
def _no_leaked_threads_or_children() -> Iterator[None]:
    """The conftest's leak check, except for the guest's processes: user-mode-linux runs every guest
    process as a process of its own here, and they belong to the module's guest (stopped by pid at
    the end of the module)."""
    before_threads = set(threading.enumerate())
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield

    def ours() -> list[psutil.Process]:
        found = []
        for proc in me.children(recursive=True):
            try:
                if proc.pid in before or proc.status() == psutil.STATUS_ZOMBIE or _in_guest(proc):
                    continue
            except psutil.NoSuchProcess:
                continue
            found.append(proc)
        return found

    if not wait_until(lambda: not ours(), 5, raise_on_timeout=False):
        left = ours()
        for proc in left:
            proc.kill()
        pytest.fail(f"test leaked child processes: {[p.pid for p in left]}")

    def new_threads() -> list[str]:
        return [t.name for t in threading.enumerate() if t not in before_threads and t.is_alive()]

    if not wait_until(lambda: not new_threads(), 5, raise_on_timeout=False):
        pytest.fail(f"test leaked threads: {new_threads()}")


def _in_guest(proc: psutil.Process) -> bool:
    for each in [proc, *proc.parents()]:
        cmdline = each.cmdline()
        if cmdline and cmdline[0].endswith("linux.uml"):
            return True
    return False


class _View(Protocol):
    """Where the pycs are looked at: a tree's client side, or this machine (:class:`HostView`)."""

    def left(self, pycs: dict[str, list[str]]) -> dict[str, list[str]]: ...
    def states(self, pycs: dict[str, list[str]]) -> dict[str, str]: ...
    def evidence(self, pycs: dict[str, list[str]]) -> dict[str, object]: ...


def _all_gone(
    tree: _View, pycs: dict[str, list[str]], daemon: RunningDaemon, timeout: float = 30
) -> None:
    left: dict[str, list[str]] = {}

    def gone() -> bool:
        left.clear()
        left.update(tree.left(pycs))
        return not left

    if not wait_until(gone, timeout, interval=0.2, raise_on_timeout=False):
        cases = [path.split("/pkg")[0] + "/" for paths in left.values() for path in paths]
        log = daemon.stderr().splitlines()
        lines = [line for line in log if any(c in line for c in cases)]
        lines += [line for line in log if '"invalidated"' not in line][-40:]
        about = "\n".join(lines[-80:]) or "\n".join(log[-40:])
        pytest.fail(
            f"stale pycs left after {timeout:g} s: {json.dumps(left, indent=1)}\n"
            f"what CPython makes of them now: {tree.states(left)}\n"
            f"what this host sees: {json.dumps(tree.evidence(left))}\n"
            f"the daemon's lines about them:\n{about}"
        )


def _unchanged_until_the_edit(tree: Tree, pycs: dict[str, list[str]]) -> None:
    """The daemon started with every pyc in place and fresh: it must keep them until the edit."""
    before = {case: paths for case, paths in pycs.items() if "create-" not in case}
    assert tree.left(before) == before


def test_daemon_on_a_local_root_polls_the_mounts_below_it(tree: Tree) -> None:
    pycs = tree.prepare("below")
    with tree.daemon(tree.root) as daemon:
        observer = daemon.ready()["observers"][str(tree.root)]
        assert observer["observer"] == "native", observer
        for side in tree.mounts.values():
            assert f"{side.fstype} mount {side.client}: polling" in observer["reason"]
        _unchanged_until_the_edit(tree, pycs)
        tree.apply("below")
        _all_gone(tree, pycs, daemon)


def test_daemon_on_the_mount_itself_polls(tree: Tree) -> None:
    for name, side in tree.mounts.items():
        root = side.client / "as-root"
        one = tree.only(name)
        pycs = one.prepare("as-root")
        with tree.daemon(root) as daemon:
            observer = daemon.ready()["observers"][str(root)]
            reason = f"{side.fstype} mount {side.client}: polling"
            assert (observer["observer"], observer["reason"]) == ("polling", reason)
            _unchanged_until_the_edit(one, pycs)
            one.apply("as-root")
            _all_gone(one, pycs, daemon)


def test_scan_says_what_cpython_does_after_every_edit(tree: Tree) -> None:
    pycs = tree.prepare("scan")
    tree.apply("scan")
    roots = [str(side.client / "scan") for side in tree.mounts.values()]
    for _ in range(5):  # attributes cached on the client may still change under the scan
        before = tree.states(pycs)
        code, out = tree.cli(["scan", "--json", *roots])
        if tree.states(pycs) == before:
            break
    assert code in {0, 1}, out
    document = json.loads(out[out.index("{") :])
    verdicts = {e["path"]: e["state"] for e in document["entries"]}
    wrong = {
        pyc: f"scan: {verdicts.get(pyc, 'fresh')}, CPython: {want}"
        for pyc, want in before.items()
        if verdicts.get(pyc, "fresh") != want
    }
    assert not wrong, json.dumps(wrong, indent=1)


def test_doctor_says_that_the_other_side_raises_no_event(tree: Tree) -> None:
    for side in tree.mounts.values():
        _, out = tree.cli(["doctor", "--json", str(side.client)])
        document = json.loads(out[out.index("{") :])
        found = {f["id"]: f for f in document["findings"]}
        assert "never raises one: polling is needed" in found["events"]["message"]
        if side.fstype.startswith("nfs"):
            assert "for up to 1 s" in found["nfs-attribute-cache"]["message"]
    _, out = tree.cli(["doctor", "--json", str(tree.root)])
    below = [f for f in json.loads(out[out.index("{") :])["findings"] if f["id"] == "mount-below"]
    assert len(below) == len(tree.mounts), below


@pytest.mark.parametrize("tree", ["nfs"], indirect=True)  # hostfs exists only inside the guest
def test_an_unknown_filesystem_is_probed_and_polled(tree: Tree, tmp_path: Path) -> None:
    """The guest's root filesystem is hostfs (this machine's files), a type known neither as local
    nor as network, and it raises no inotify event at all: the daemon's probe finds that out and
    polls; edits made on this machine (the other side of hostfs) are seen."""
    root = tmp_path / "hostfs-root"
    root.mkdir()
    pycs = mount_edits.prepare_all(root)
    with tree.daemon(root) as daemon:
        observer = daemon.ready()["observers"][str(root)]
        reason = "hostfs: no native event arrived for a probe file: polling"
        assert (observer["observer"], observer["reason"]) == ("polling", reason)
        mount_edits.apply_all(root, root, tmp_path)
        _all_gone(HostView(), pycs, daemon)
