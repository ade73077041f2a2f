"""Mounted trees for the real-mount tests: the same steps on this machine (FUSE) or in a guest (NFS).

A :class:`Tree` holds mounts (client side and other side of each) and runs the steps of a test where
the mounts are: :class:`LocalTree` in this process (bindfs, sshfs), :class:`GuestTree` inside the
user-mode-linux guest that serves and mounts NFS (the host cannot see its export). Both use
:mod:`tests.support.mount_edits` for the edits, so every mount gets exactly the same ones.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tests.support import mount_edits
from tests.support.daemon import REPO, DaemonProc, cli, isolated_env
from tests.support.uml import Guest
from tests.support.wait import wait_until

__all__ = ["GuestTree", "HostView", "LocalTree", "Side", "Tree"]


@dataclass(frozen=True)
class Side:
    client: Path
    """The mountpoint: the tree as the client's programs see it."""
    other: Path
    """The same tree on the other side (server's export, the directory a FUSE mount shows)."""
    fstype: str


class RunningDaemon(Protocol):
    def ready(self) -> dict[str, Any]: ...
    def stderr(self) -> str: ...


class Tree(Protocol):
    kind: str
    root: Path
    """A local directory (native events) holding every mount below it."""
    mounts: dict[str, Side]

    def prepare(self, sub: str) -> dict[str, list[str]]: ...
    def apply(self, sub: str) -> None: ...
    def left(self, pycs: dict[str, list[str]]) -> dict[str, list[str]]: ...
    def states(self, pycs: dict[str, list[str]]) -> dict[str, str]: ...
    def evidence(self, pycs: dict[str, list[str]]) -> dict[str, object]: ...
    def cli(self, args: Sequence[str]) -> tuple[int, str]: ...
    def daemon(self, root: Path) -> contextlib.AbstractContextManager[RunningDaemon]: ...
    def only(self, name: str) -> Tree: ...
    def mkdir(self, path: Path) -> None: ...


class _Only:
    def only(self, name: str) -> Any:
        """The same tree with one of its mounts."""
        one = copy.copy(self)
        one.mounts = {name: self.mounts[name]}  # type: ignore[attr-defined]
        return one


class HostView:
    """The pycs as this machine sees them."""

    def left(self, pycs: dict[str, list[str]]) -> dict[str, list[str]]:
        return mount_edits.left(pycs)

    def states(self, pycs: dict[str, list[str]]) -> dict[str, str]:
        return mount_edits.cpython_states(pycs)

    def evidence(self, pycs: dict[str, list[str]]) -> dict[str, object]:
        return mount_edits.evidence(pycs)


class LocalTree(HostView, _Only):
    """Mounts on this machine; the daemon and the CLI run here."""

    kind = "fuse"

    def __init__(self, root: Path, mounts: dict[str, Side], home: Path) -> None:
        self.root = root
        self.mounts = mounts
        self.env = isolated_env(home)
        self.scratch = home / "scratch"
        self.scratch.mkdir(parents=True, exist_ok=True)

    def mkdir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)

    def prepare(self, sub: str) -> dict[str, list[str]]:
        pycs = {}
        for name, side in self.mounts.items():
            (side.client / sub).mkdir(parents=True)
            for case, paths in mount_edits.prepare_all(side.client / sub).items():
                pycs[f"{name}:{case}"] = paths
        return pycs

    def apply(self, sub: str) -> None:
        for side in self.mounts.values():
            mount_edits.apply_all(side.client / sub, side.other / sub, self.scratch)

    def cli(self, args: Sequence[str]) -> tuple[int, str]:
        done = cli(list(args), self.env)
        return done.returncode, done.stdout + done.stderr

    @contextlib.contextmanager
    def daemon(self, root: Path) -> Iterator[RunningDaemon]:
        with DaemonProc(
            [str(root), "--poll-interval", "0.2", "--log-level", "debug"], self.env
        ) as daemon:
            yield daemon
            code = daemon.stop()
            assert code == 0, daemon.stderr()
            assert "Traceback" not in daemon.stderr()


class _GuestDaemon:
    def __init__(self, guest: Guest, log: Path, pid: int) -> None:
        self.guest, self.log, self.pid = guest, log, pid

    def lines(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not self.log.exists():  # the guest's shell makes it as the daemon starts
            return out
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def stderr(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def ready(self) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [e for e in self.lines() if e.get("event") == "ready"]
            return bool(found)

        if not wait_until(seen, 60, raise_on_timeout=False):
            raise AssertionError(f"the guest's daemon is not ready:\n{self.log.read_text()}")
        return found[0]


class GuestTree(_Only):
    """Mounts inside the guest; the daemon, the CLI and the edits run there too."""

    kind = "nfs"

    def __init__(self, guest: Guest, root: Path, mounts: dict[str, Side], home: Path) -> None:
        self.guest = guest
        self.root = root
        self.mounts = mounts
        self.home = home
        self.scratch = Path("/run/scratch")  # the guest's own tmpfs: rsync's source files
        env = isolated_env(home)
        keep = [k for k in env if k.startswith("XDG_")]
        self._env = " ".join(f"{k}={env[k]}" for k in keep) + f" PYTHONPATH={REPO}"
        self._python = sys.executable
        self._count = itertools.count(1)  # shared with the copies of :meth:`only`

    def _py(self, args: str, timeout: float = 120) -> str:
        return self.guest.run(f"cd {REPO} && env {self._env} {self._python} {args}", timeout)

    def _json_file(self, data: object) -> Path:
        path = self.home / f"data-{next(self._count)}.json"
        path.write_text(json.dumps(data))
        return path

    def mkdir(self, path: Path) -> None:
        self.guest.run(f"mkdir -p {path}")

    def prepare(self, sub: str) -> dict[str, list[str]]:
        pycs = {}
        for name, side in self.mounts.items():
            self.guest.run(f"mkdir -p {side.client / sub}")
            out = self._py(f"-m tests.support.mount_edits prepare {side.client / sub}")
            for case, paths in json.loads(out).items():
                pycs[f"{name}:{case}"] = paths
        return pycs

    def apply(self, sub: str) -> None:
        self.guest.run(f"mkdir -p {self.scratch}")
        for side in self.mounts.values():
            args = f"{side.client / sub} {side.other / sub} {self.scratch}"
            self._py(f"-m tests.support.mount_edits apply {args}")

    def left(self, pycs: dict[str, list[str]]) -> dict[str, list[str]]:
        out = self._py(f"-m tests.support.mount_edits left {self._json_file(pycs)}")
        result: dict[str, list[str]] = json.loads(out)
        return result

    def states(self, pycs: dict[str, list[str]]) -> dict[str, str]:
        out = self._py(f"-m tests.support.mount_edits states {self._json_file(pycs)}")
        result: dict[str, str] = json.loads(out)
        return result

    def evidence(self, pycs: dict[str, list[str]]) -> dict[str, object]:
        out = self._py(f"-m tests.support.mount_edits evidence {self._json_file(pycs)}")
        result: dict[str, object] = json.loads(out)
        return result

    def cli(self, args: Sequence[str]) -> tuple[int, str]:
        rc = self.home / f"rc-{next(self._count)}"
        out = self._py(f"-m cachewatchd {' '.join(args)}; echo $? > {rc}")
        return int(rc.read_text()), out

    @contextlib.contextmanager
    def daemon(self, root: Path) -> Iterator[RunningDaemon]:
        log = self.home / f"daemon-{next(self._count)}.log"
        args = f"--foreground {root} --poll-interval 0.2 --log-format json --log-level debug"
        start = f"-m cachewatchd {args} > /dev/null 2> {log} & echo $!"
        pid = int(self._py(start).strip().splitlines()[-1])
        daemon = _GuestDaemon(self.guest, log, pid)
        try:
            yield daemon
        finally:
            stopped = self.guest.run(_stop_script(pid), timeout=60, check=False)
        assert "stopped" in stopped, f"the guest's daemon did not stop:\n{log.read_text()}"
        assert "Traceback" not in log.read_text(), log.read_text()


def _stop_script(pid: int) -> str:
    """TERM, then wait until the process is gone or a zombie (the guest's PID 1 never reaps it)."""
    term = int(signal.SIGTERM)
    state = f"$(cut -d' ' -f3 /proc/{pid}/stat 2>/dev/null)"
    return (
        f'kill -{term} {pid}; i=0; while s={state}; [ -n "$s" ] && [ "$s" != Z ]; do '
        f"i=$((i+1)); [ $i -gt 300 ] && {{ kill -9 {pid}; echo killed; exit 1; }}; "
        "busybox usleep 100000; done; echo stopped"
    )
