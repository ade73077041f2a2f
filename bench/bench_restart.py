"""Restart benchmark: edit -> first HTTP response with the new code, three ways, one run.

Stacks, each serving a tiny ASGI app (``VALUE = '...'``) with uvicorn on 127.0.0.1:

- ``cachewatchd + child``: ``cachewatchd --foreground APP -- python -m uvicorn app:app ...``
- ``cachewatchd + supervisord``: supervisord (unix socket) runs uvicorn as program ``web``; the
  daemon restarts it through a ``[[process]] supervisor = {...}`` table of its config.
- ``uvicorn --reload``: uvicorn's own reloader (watchfiles).

Edits, with a timestamp pyc of the old code present (the servers write pycs too):
``ordinary`` changes the value, and with it the size and the mtime; ``restored`` keeps the size and
puts the mtime back (``cp -p``, ``tar x``, ``rsync -t``), so the pyc still matches the source's
header and a plain restart imports the old code. Still the old value at the deadline: ``never``.

Each repetition starts the stack afresh in a new directory, waits until it serves the old value,
waits 1-1.2 s (uvicorn's reloader starts watching 0.25 s after its child; the random part spreads
the edit over uvicorn's 100 ms main-loop tick, whose phase decides how long a graceful stop takes:
with a fixed wait every repetition hit the same phase), edits, and from the moment the edit
returned asks ``GET /`` every 5 ms (a fresh connection each time) until the new value comes back or
the deadline passes. Stacks and edit kinds are interleaved within each repetition.
Target: no slower than ``uvicorn --reload`` where it is correct (medians).

From the repository root: ``.venv/bin/python bench/bench_restart.py`` (``--quick``: one repetition,
a smoke test; ``--daemon-args`` passes public options to both daemons).
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import _harness as h
import psutil

__all__ = ["main"]

OLD = "old-value"
NEW = {"ordinary": "new-value-ordinary-edit", "restored": "new-value"}
KINDS = tuple(NEW)
assert len(NEW["restored"]) == len(OLD)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fetch(port: int) -> str | None:
    """Body of ``GET http://127.0.0.1:port/`` or None (nothing listening, error, not 200)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        body: str | None = resp.read().decode() if resp.status == 200 else None
    except (OSError, http.client.HTTPException):
        body = None
    finally:
        conn.close()
    return body


def wait_value(port: int, value: str, timeout: float) -> bool:
    """Whether the server answers *value* within *timeout* seconds (asked every 5 ms)."""
    deadline = time.time() + timeout
    while (answer := fetch(port)) != value and time.time() < deadline:
        time.sleep(0.005)
    return answer == value


def uvicorn_argv(port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port),
        "--lifespan", "off", "--log-level", "warning", *extra,
    ]  # fmt: skip


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kill_all(procs: list[psutil.Process]) -> None:
    """KILL whatever of *procs* is still running (psutil checks create_time: no pid reuse)."""
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(procs, timeout=10)


# --- stacks ----------------------------------------------------------------------------------------


class Stack(ABC):
    name: str

    def __init__(self, app: Path, port: int, env: dict[str, str], daemon_args: list[str]) -> None:
        self.app, self.port, self.env, self.daemon_args = app, port, env, daemon_args
        self.tracked: list[psutil.Process] = []

    @abstractmethod
    def start(self) -> None:
        """Start everything; return once the old value is served."""

    @abstractmethod
    def stop_own(self) -> None:
        """Stop the processes started by :meth:`start`, politely."""

    def stop(self) -> None:
        """Stop politely, then KILL every process seen meanwhile, by pid."""
        for proc in list(self.tracked):
            self.tracked += descendants(proc.pid)
        try:
            self.stop_own()
        finally:
            kill_all(self.tracked)

    def track(self, pid: int) -> None:
        try:
            self.tracked.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            return

    def breakdown(self, t0: float) -> dict[str, float]:
        """Times (s after the edit) of the daemon's own events, where there is a daemon."""
        return {}

    def served(self, timeout: float = 30) -> None:
        if not wait_value(self.port, OLD, timeout):
            raise RuntimeError(f"{self.name}: port {self.port} never served {OLD!r}")


class DaemonStack(Stack):
    """Common part of the two cachewatchd stacks."""

    daemon: h.JsonProc | None = None

    def start_daemon(self, *args: str, child: list[str] | None = None) -> None:
        extra = [*self.daemon_args, *args]
        self.daemon = h.start_daemon(self.env, self.app, [self.app], *extra, child=child or [])
        self.track(self.daemon.pid)

    def stop_own(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()

    def breakdown(self, t0: float) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.daemon is None:
            return out
        for name in ("invalidated", "restarted"):
            found = [e.ts - t0 for e in self.daemon.events(name) if e.ts >= t0]
            if found:
                out[name] = found[0]
        return out


class ChildStack(DaemonStack):
    name = "cachewatchd + child"

    def start(self) -> None:
        self.start_daemon(child=uvicorn_argv(self.port))
        self.served()


class SupervisordStack(DaemonStack):
    name = "cachewatchd + supervisord"
    supervisord: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        base = self.app.parent
        sock = base / "s.sock"  # the temp dir's path is short: AF_UNIX allows 108 bytes
        program = " ".join(uvicorn_argv(self.port))
        conf = base / "supervisord.conf"
        conf.write_text(
            f"[unix_http_server]\nfile = {sock}\nchmod = 0700\n\n"
            f"[supervisord]\nnodaemon = true\nsilent = true\nloglevel = warn\n"
            f"logfile = {base}/supervisord.log\npidfile = {base}/supervisord.pid\n"
            f"childlogdir = {base}\n\n[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
            f"[program:web]\ncommand = {program}\ndirectory = {self.app}\n"
            "stopwaitsecs = 5\nstopasgroup = true\nkillasgroup = true\n"
            f"redirect_stderr = true\nstdout_logfile = {base}/web.log\n"
        )
        self.supervisord = subprocess.Popen(
            [sys.executable, "-B", "-m", "supervisor.supervisord", "-n", "-c", str(conf)],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.track(self.supervisord.pid)
        self.served()
        config = base / "cachewatchd.toml"
        config.write_text(
            f'[[process]]\nname = "web"\nsupervisor = {{ url = "unix://{sock}", program = "web" }}\n'
        )
        self.start_daemon("--config", str(config))

    def stop_own(self) -> None:
        try:
            super().stop_own()
        finally:
            if self.supervisord is not None and self.supervisord.poll() is None:
                self.supervisord.send_signal(signal.SIGTERM)
                self.supervisord.wait(30)


class ReloadStack(Stack):
    name = "uvicorn --reload"
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = uvicorn_argv(self.port, "--reload")
        argv[argv.index("warning")] = "info"  # to see which reloader it uses
        with open(self.app.parent / "uvicorn.log", "wb") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=self.app,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.track(self.proc.pid)
        self.served()

    def reloader(self) -> str:
        text = (self.app.parent / "uvicorn.log").read_text(errors="replace")
        return (
            "WatchFiles" if "WatchFiles" in text else "StatReload" if "StatReload" in text else "?"
        )

    def stop_own(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


STACKS: tuple[type[Stack], ...] = (ChildStack, SupervisordStack, ReloadStack)


# --- one measurement -------------------------------------------------------------------------------


def edit(source: Path, kind: str) -> float:
    """Apply the edit; return the wall-clock time at which it was complete."""
    before = source.stat()
    text = source.read_text(encoding="utf-8").replace(repr(OLD), repr(NEW[kind]))
    with open(source, "w", encoding="utf-8") as handle:
        handle.write(text)
    if kind == "restored":
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    return time.time()


@dataclass
class Sample:
    seconds: float | None
    """Edit -> first response with the new value; None: never within the deadline."""
    last: str | None
    """What the server answered last."""
    breakdown: dict[str, float] = field(default_factory=dict)
    note: str = ""


def measure(
    stack_type: type[Stack],
    kind: str,
    base: Path,
    env: dict[str, str],
    args: argparse.Namespace,
    settle: float,
) -> Sample:
    app = base / "app"
    source = h.write_app(app, OLD)
    stack = stack_type(app, free_port(), env, shlex.split(args.daemon_args))
    deadline: float = args.deadline
    try:
        stack.start()
        time.sleep(settle)
        t0 = edit(source, kind)
        sample = Sample(None, None)
        while time.time() - t0 < deadline:
            sample.last = fetch(stack.port) or sample.last
            if sample.last == NEW[kind]:
                sample.seconds = time.time() - t0  # when the response arrived
                break
            time.sleep(0.005)
        sample.breakdown = stack.breakdown(t0)
    finally:
        stack.stop()
    if isinstance(stack, ReloadStack):
        sample.note = f"reloader: {stack.reloader()}"
    return sample


# --- main ------------------------------------------------------------------------------------------


def report(
    samples: dict[tuple[str, str], list[Sample]], args: argparse.Namespace
) -> dict[tuple[str, str], float | None]:
    """Print the table; return the medians (None: never, at least once)."""
    print(f"\nedit -> first response with the new code, {args.reps} repetitions (seconds)")
    widths = (-10, -28, 8, 8, 8, 7)
    print(h.row(("edit", "stack", "median", "min", "max", "never"), widths) + "  detail")
    medians: dict[tuple[str, str], float | None] = {}
    for (kind, name), runs in samples.items():
        times = [s.seconds for s in runs if s.seconds is not None]
        never = len(runs) - len(times)
        med = statistics.median(times) if times and never == 0 else None
        medians[kind, name] = med
        stats = (
            [f"{med:.3f}", f"{min(times):.3f}", f"{max(times):.3f}"] if med else ["never", "", ""]
        )
        detail = ""
        for key in ("invalidated", "restarted"):
            values = [s.breakdown[key] for s in runs if key in s.breakdown]
            if values:
                detail += f"{key} {statistics.median(values):.3f}  "
        if never:
            detail += f"still served {sorted({str(s.last) for s in runs if s.seconds is None})}"
        print(h.row((kind, name, *stats, never), widths) + f"  {detail}")
    print(f"  never: the new value was not served within {args.deadline:g} s")
    print(
        "  detail: medians of the daemon's own log stamps, s after the edit (restarted = act done)"
    )
    return medians


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: one repetition")
    parser.add_argument("--reps", type=int, help="repetitions per stack and edit (5)")
    parser.add_argument("--deadline", type=float, default=10.0, help="seconds before 'never'")
    parser.add_argument(
        "--daemon-args", default="", help='e.g. --daemon-args="--reconcile-interval 300"'
    )
    parser.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()), help="temp dirs go here ($TMPDIR)"
    )  # short: supervisord's socket path must fit in 108 bytes
    args = parser.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 5)
    samples: dict[tuple[str, str], list[Sample]] = {
        (kind, stack.name): [] for kind in KINDS for stack in STACKS
    }
    jitter = random.Random(4)
    with tempfile.TemporaryDirectory(prefix="cw-rb-", dir=args.work) as tmp:
        env = h.child_env(Path(tmp) / "home", bytecode=True)  # servers write pycs, as in production
        h.print_header("bench_restart", env, Path(tmp))
        print(f"  both daemons also get: {args.daemon_args or '-'}")
        for rep in range(args.reps):
            for kind in KINDS:
                for stack in STACKS:
                    base = Path(tmp) / f"{rep}-{kind}-{stack.__name__}"
                    base.mkdir()
                    settle = 1.0 + jitter.uniform(0, 0.2)  # see the module docstring
                    sample = measure(stack, kind, base, env, args, settle)
                    samples[kind, stack.name].append(sample)
                    shown = f"{sample.seconds:.3f} s" if sample.seconds is not None else "never"
                    print(f"  rep {rep} {kind:<9} {stack.name:<26} {shown}  {sample.note}")
    print(f"  load average at end: {h.loadavg()}")
    medians = report(samples, args)
    targets = h.Targets()
    for kind in KINDS:  # no slower than uvicorn --reload where it is correct; correct everywhere
        reload = medians.get((kind, ReloadStack.name))
        for stack in (ChildStack, SupervisordStack):
            name = f"{kind} edit, {stack.name} no slower than uvicorn --reload (median)"
            targets.ratio(name, medians.get((kind, stack.name)), reload, 1.0)
    targets.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
