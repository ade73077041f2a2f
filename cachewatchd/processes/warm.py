"""Warm restarts of the own child: :class:`WarmStarter` decides when a generation is forked from a
preloaded interpreter (:mod:`cachewatchd.processes.preloader`) and when it starts cold.

What to preload is learned: every generation writes the names of the modules it imports to a
pipe (:mod:`cachewatchd.processes.warm_boot`), and once those names have settled a new preloader
importing them is built in the background, to serve the next restart. The first generation is
forked from a preloader that imports nothing (it starts as fast as a cold start, and teaches).

The rules, each falling back to a cold start (the reason logged once as ``warm-fallback``):

- a module under a watched root is never preloaded (skipped, or refused by the preloader's guard);
- a preloader forks only while it has one thread; a module whose import starts one is left out;
- before each fork the stat fingerprint of every file the preloader imported is checked (a ``pip
  install`` in the venv): a change rebuilds it (``preload-stale``), as does a changed environment;
  the rebuild runs in the background and the generations start cold until it is ready (a restart
  waits only for a preloader that imports nothing, the first one);
- a preloader that fails in any way is dropped; a module to blame is left out of the next one;
  after :data:`_GIVE_UP` failures nobody can blame, this child starts cold for good.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from cachewatchd.log import get_logger
from cachewatchd.processes.handover import Launch
from cachewatchd.processes.preloader import Preloader, PreloadError, WarmProcess
from cachewatchd.processes.warm_plan import WarmPlan, warm_plan

__all__ = ["WarmStarter", "warm_starter"]

_SETTLED = 0.5
"""Seconds without a new module name before a preloader for the new names is built."""
_BUILD_TIMEOUT = 120.0
"""Seconds a preloader building in the background may take for its imports (a module that
blocks at import) before it is dropped as a failure."""
_EMPTY_TIMEOUT = 30.0
"""Seconds a restart waits for a preloader that imports nothing (the first generation's)."""
_GIVE_UP = 3
"""Failures without a module to blame after which this child always starts cold."""
_REPORT_LIMIT = 1 << 20
"""Bytes of module names read from one generation (a runaway writer is not followed)."""


class WarmStarter:
    """The preloaders of one own child. Used under the own child's lock (one caller at a time)."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        cwd: Path | None,
        env: Mapping[str, str] | None,
        roots: Sequence[Path],
        session: bool,
        name: str = "child",
    ) -> None:
        self.name = name
        self.cwd = str(cwd) if cwd is not None else os.getcwd()
        self._env = dict(env) if env is not None else None
        self._roots = [os.path.realpath(r) for r in roots]
        self._session = session
        plan, why = warm_plan(command, self.cwd, self._base_env())
        self.reason: str | None = None if plan is not None else why
        """Why this child starts cold (``None`` while warm starts are possible)."""
        self._learned: dict[str, None] = {}
        self._learned_at = 0.0
        self._excluded: set[str] = set()
        self._failures = 0
        self._said: set[str] = set()
        self._announced: set[int] = set()
        self._current: Preloader | None = None
        self._candidate: Preloader | None = None
        self._reports: list[tuple[int, bytearray, list[int]]] = []
        self._lock = threading.RLock()
        self._log = get_logger(__name__)
        self.forks = 0
        """Generations forked from a preloader so far."""

    @property
    def preloader_pid(self) -> int | None:
        """The pid of the preloader the next generation is forked from, if one runs."""
        with self._lock:
            return self._current.pid if self._current is not None else None

    @property
    def learned(self) -> list[str]:
        """The module names the generations imported, in order."""
        return list(self._learned)

    def _base_env(self) -> dict[str, str]:
        return dict(self._env) if self._env is not None else dict(os.environ)

    # -- one generation -----------------------------------------------------------------------
    def spawn(self, launch: Launch, stderr_fd: int) -> WarmProcess | None:
        """Fork the generation *launch* describes, its stderr at *stderr_fd*; ``None``: start it
        cold (why is logged once). Never raises."""
        began = time.monotonic()
        try:
            proc = self._spawn(launch, stderr_fd)
        except Exception as exc:  # noqa: BLE001 - whatever breaks here, the cold start works
            self._fallback(f"the warm start failed ({type(exc).__name__}: {exc})")
            return None
        if proc is not None:
            seconds = round(time.monotonic() - began, 4)
            self._log.debug("warm-fork", target=self.name, pid=proc.pid, seconds=seconds)
        return proc

    def _spawn(self, launch: Launch, stderr_fd: int) -> WarmProcess | None:
        with self._lock:
            if self.reason is not None:
                return None
            handover = launch.handover
            command = handover.command if handover is not None else launch.argv
            env = launch.env if launch.env is not None else self._base_env()
            plan, why = warm_plan(command, self.cwd, env)
            if plan is None:
                self._fallback(why)
                return None
            env = plan.environ(env)
            self._collect()
            try:
                preloader = self._preloader(plan, env)
            except _NotYet:
                return None  # preload-stale said why; the next generation is forked again
            except PreloadError as exc:
                self._fallback(exc.message)
                return None
            fds = [(1, 1), (stderr_fd, 2)]
            if handover is not None:
                fds.append((handover.fd, handover.child_fd))
            return self._fork(preloader, plan, env, fds, handover is not None and handover.sets_pid)

    def _fork(
        self,
        preloader: Preloader,
        plan: WarmPlan,
        env: Mapping[str, str],
        fds: list[tuple[int, int]],
        listen_pid: bool,
    ) -> WarmProcess | None:
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            proc = preloader.fork(
                plan,
                env=env,
                fds=[(devnull, 0), *fds],
                report=write_end,
                session=self._session,
                listen_pid=listen_pid,
            )
        except PreloadError as exc:
            os.close(read_end)
            self._drop(preloader)
            self._fallback(exc.message)
            self._failed(exc)
            return None
        finally:
            os.close(devnull)
            os.close(write_end)
        self._reports.append((read_end, bytearray(), [0]))
        self.forks += 1
        return proc

    def _preloader(self, plan: WarmPlan, env: Mapping[str, str]) -> Preloader:
        """A ready preloader for *plan*: the background one if it is done, the current one if
        it is still good, else a new one (waited for). :class:`PreloadError` when none can be."""
        candidate = self._candidate
        if candidate is not None:
            try:
                if candidate.ready():
                    self._candidate = None
                    self._drop(self._current)
                    self._promote(candidate)
            except PreloadError as exc:
                self._drop(candidate)
                self._failed(exc)
        current = self._current
        if current is not None:
            why = self._unusable(current, plan, env)
            if why is not None:
                self._log.info("preload-stale", target=self.name, reason=why)
                self._drop(current)
        if self._current is not None:
            return self._current
        if self._candidate is None or not self._candidate.serves(plan, env):
            self._drop(self._candidate)
            self._candidate = self._build(plan, env)
        candidate = self._candidate
        if candidate.names:  # its imports take a cold start's time: this generation starts cold
            raise _NotYet("the preloader is still importing")
        self._candidate = None
        try:  # nothing to import (the first generation): ready in a moment
            _wait_ready(candidate)
        except PreloadError as exc:
            self._drop(candidate)
            self._failed(exc)
            raise
        self._promote(candidate)
        return candidate

    def _promote(self, preloader: Preloader) -> None:
        self._current = preloader
        self._announce(preloader)

    def _announce(self, preloader: Preloader) -> None:
        """``preloaded``, once per preloader, when its imports are done."""
        if preloader.pid in self._announced:
            return
        self._announced.add(preloader.pid)
        self._log.info(
            "preloaded",
            target=self.name,
            pid=preloader.pid,
            modules=len(preloader.names),
            files=preloader.files,
            skipped=len(preloader.skipped),
        )

    def _unusable(self, preloader: Preloader, plan: WarmPlan, env: Mapping[str, str]) -> str | None:
        if not preloader.alive:
            return "the preloader exited"
        if not preloader.serves(plan, env):
            return "the command or its environment changed"
        changed = preloader.stale()
        return f"{changed} changed since it was preloaded" if changed is not None else None

    def _wanted(self, plan: WarmPlan) -> list[str]:
        """The learned names a preloader for *plan* imports: not the excluded, nor the module
        ``-m`` runs (run, never imported, as in a cold start: else runpy warns)."""
        main = plan.target if plan.mode == "module" else None
        return [n for n in self._learned if n.split(".")[0] not in self._excluded and n != main]

    def _build(self, plan: WarmPlan, env: Mapping[str, str]) -> Preloader:
        names = self._wanted(plan)
        return Preloader(
            plan, cwd=self.cwd, env=env, names=names, roots=self._roots, session=self._session
        )

    # -- failures -----------------------------------------------------------------------------
    def _failed(self, exc: PreloadError) -> bool:
        """Take *exc* in: leave its culprit out (``True``: worth another build), or count it."""
        if exc.culprit is not None and exc.culprit not in self._excluded:
            self._excluded.add(exc.culprit)
            reason = f"{exc.message}: {exc.culprit} is not preloaded"
            if self._first(reason):
                self._log.warning("preload-skipped", target=self.name, reason=reason)
            return True
        self._failures += 1
        if self._failures >= _GIVE_UP:
            self.reason = f"{exc.message} ({self._failures} preloader failures: cold from now on)"
            if self._first(self.reason):
                self._log.warning("warm-off", target=self.name, reason=self.reason)
        return False

    def _fallback(self, why: str) -> None:
        reason = f"{why}: cold start"
        if self._first(reason):
            self._log.warning("warm-fallback", target=self.name, reason=reason)

    def _first(self, reason: str) -> bool:
        """Whether *reason* is said for the first time (each is said once)."""
        if reason in self._said:
            return False
        self._said.add(reason)
        return True

    # -- learning -----------------------------------------------------------------------------
    def tick(self) -> None:
        """Between restarts: read what the generations imported, and once new names have
        settled, build the preloader that will serve the next restart (in the background)."""
        with self._lock:
            if self.reason is not None:
                return
            self._collect()
            self._check_candidate()
            base = self._current
            if base is None or self._candidate is not None:
                return  # one build at a time: names learned meanwhile wait for the next one
            new = [n for n in self._wanted(base.plan) if n not in base.names]
            if not new or time.monotonic() - self._learned_at < _SETTLED:
                return
            try:
                self._candidate = self._build(base.plan, base.env)
            except PreloadError as exc:
                self._failed(exc)

    def _check_candidate(self) -> None:
        """The background preloader: announced once ready; dropped if it failed, or if its
        imports take over :data:`_BUILD_TIMEOUT` seconds."""
        candidate = self._candidate
        if candidate is None:
            return
        try:
            ready = candidate.ready()
        except PreloadError as exc:
            failure = exc
        else:
            if ready:
                self._announce(candidate)
                return
            if time.monotonic() - candidate.started <= _BUILD_TIMEOUT:
                return
            failure = PreloadError(f"the preloader's imports took over {_BUILD_TIMEOUT:g}s")
        self._drop(candidate)
        self._fallback(failure.message)
        self._failed(failure)

    def _collect(self) -> None:
        kept = []
        for fd, buffer, total in self._reports:
            pending = buffer
            done = False
            while True:
                try:
                    data = os.read(fd, 1 << 16)
                except BlockingIOError:
                    break
                except OSError:
                    data = b""
                if not data:
                    done = True
                    break
                total[0] += len(data)
                pending += data
                if total[0] > _REPORT_LIMIT:
                    done = True
                    break
            *lines, rest = bytes(pending).split(b"\n")
            pending[:] = rest
            for line in lines:
                name = line.decode("utf-8", "replace")
                if name and name not in self._learned:
                    self._learned[name] = None
                    self._learned_at = time.monotonic()
            if done:
                os.close(fd)
            else:
                kept.append((fd, pending, total))
        self._reports = kept

    # -- the end ------------------------------------------------------------------------------
    def _drop(self, preloader: Preloader | None) -> None:
        if preloader is None:
            return
        if preloader is self._current:
            self._current = None
        if preloader is self._candidate:
            self._candidate = None
        with contextlib.suppress(Exception):
            preloader.close()

    def close(self) -> None:
        """Stop the preloaders (the forks they made are the own child's to stop); the next
        generations start cold."""
        with self._lock:
            self.reason = "the warm starter is closed"
            self._drop(self._current)
            self._drop(self._candidate)
            for fd, _, _ in self._reports:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._reports = []


class _NotYet(PreloadError):
    """The preloader is being built: this generation starts cold (nothing to say)."""


def _wait_ready(preloader: Preloader) -> None:
    if not preloader.ready(_EMPTY_TIMEOUT):
        raise PreloadError(f"the preloader did not start within {_EMPTY_TIMEOUT:g}s")


def warm_starter(
    command: Sequence[str], *, cwd: Path | None, roots: Sequence[Path], name: str
) -> WarmStarter | None:
    """A :class:`WarmStarter` for *command*, or ``None`` (logged once) when it is not a Python
    command that can start warm."""
    starter = WarmStarter(
        command, cwd=cwd, env=None, roots=roots, session=sys.version_info < (3, 11), name=name
    )
    if starter.reason is None:
        return starter
    get_logger(__name__).info("warm-off", target=name, reason=starter.reason)
    return None
