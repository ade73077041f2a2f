"""Shared fixtures: leak checks, condition waits, real pycs."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import psutil
import pytest

from tests.support.wait import wait_until

if TYPE_CHECKING:
    from tests.support.dockerd import Dockerd
    from tests.support.servers import Reaper

_PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture(scope="session", autouse=True)
def _adopt_orphans() -> None:
    """Make this pytest process a child subreaper (Linux): processes the tests detach — the
    daemon without --foreground, servers relaunched after a restart — are re-parented here instead
    of to init, so the leak check below sees them too."""
    if sys.platform != "linux":
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


@pytest.fixture(scope="session", autouse=True)
def _private_verification_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Audits remember exact checks in the verification index (cachewatchd/cache/index.py): the
    session's own, never the developer's ``~/.cache/cachewatchd``. Children inherit it."""
    old = os.environ.get("CACHEWATCHD_CACHE_DIR")
    os.environ["CACHEWATCHD_CACHE_DIR"] = str(tmp_path_factory.mktemp("verification-index"))
    yield
    if old is None:
        os.environ.pop("CACHEWATCHD_CACHE_DIR", None)
    else:
        os.environ["CACHEWATCHD_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def _no_leaked_threads_or_children() -> Iterator[None]:
    """Every test must stop the threads and child processes it starts."""
    before_threads = set(threading.enumerate())
    me = psutil.Process()
    before_children = {p.pid for p in me.children(recursive=True)}
    yield

    def no_new_threads() -> bool:
        return not [t for t in threading.enumerate() if t not in before_threads and t.is_alive()]

    def no_new_children() -> bool:
        alive = []
        for p in me.children(recursive=True):
            if p.pid in before_children:
                continue
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                continue
        return not alive

    leaked_threads = not wait_until(no_new_threads, timeout=5, raise_on_timeout=False)
    _reap_adopted_zombies(me)
    leaked_children = not wait_until(no_new_children, timeout=5, raise_on_timeout=False)
    if leaked_children:
        left = [p for p in me.children(recursive=True) if p.pid not in before_children]
        for p in left:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(left, timeout=5)
        pytest.fail(f"test leaked child processes: {[p.pid for p in left]}")
    if leaked_threads:
        names = [t.name for t in threading.enumerate() if t not in before_threads]
        pytest.fail(f"test leaked threads: {names}")


def _reap_adopted_zombies(me: psutil.Process) -> None:
    """Collect the exit status of orphans re-parented here that have died (see _adopt_orphans)."""
    for child in me.children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
        except (psutil.NoSuchProcess, ChildProcessError):
            continue


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    """Stops, by pid, every process the test started or had cachewatchd relaunch (see Reaper)."""
    from tests.support.servers import Reaper  # imports child_env from here

    with Reaper() as r:
        yield r


@pytest.fixture(scope="session")
def _dockerd_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dockerd | str]:
    """The session's private dockerd and image, or why it cannot run (tests/support/dockerd.py)."""
    from tests.support.dockerd import session_dockerd

    with session_dockerd(tmp_path_factory.getbasetemp()) as daemon:
        yield daemon


@pytest.fixture
def dockerd(_dockerd_session: Dockerd | str) -> Iterator[Dockerd]:
    """A real dockerd (one per session; see tests/support/dockerd.py); skips, saying why, where
    dockerd cannot run. Every container is removed after the test."""
    if isinstance(_dockerd_session, str):
        pytest.skip(_dockerd_session)
    yield _dockerd_session
    _dockerd_session.remove_all()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove bytecode-related variables the developer machine may export."""
    for var in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX", "SOURCE_DATE_EPOCH", "NO_COLOR"):
        monkeypatch.delenv(var, raising=False)


def child_env(**extra: str) -> dict[str, str]:
    """An environment for child interpreters that may write pycs."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONDONTWRITEBYTECODE"}}
    env.update(extra)
    return env
