"""Restart benchmark (issue 4): edit -> first HTTP response with the new code, three ways, one run.

Stacks, each serving a tiny ASGI app (``VALUE = '...'``) with uvicorn on 127.0.0.1:

- ``cachewatchd + child``: ``cachewatchd --foreground APP -- python -m uvicorn app:app ...``
- ``cachewatchd + supervisord``: supervisord (unix socket) runs uvicorn as program ``web``; the
  daemon restarts it through a ``[[process]] supervisor = {...}`` table of its config.
- ``uvicorn --reload``: uvicorn's own reloader (watchfiles).

Edits, with a timestamp pyc of the old code present and pycs written by the servers (the children's
environment has no ``PYTHONDONTWRITEBYTECODE``):

- ``ordinary``: the value changes, and with it the size and the mtime.
- ``restored``: same size, mtime restored (``cp -p``, ``tar x``, ``rsync -t``): the pyc still matches the
  source's header, so a plain restart imports the old code. A stack that keeps serving the old value
  until the deadline is reported as ``never``.

Each repetition starts the stack afresh in a new directory, waits until it serves the old value,
waits 1-1.2 s (uvicorn's reloader starts watching 0.25 s after its child; the random part spreads
the edit over uvicorn's 100 ms main-loop tick, whose phase decides how long a graceful stop takes:
with a fixed wait every repetition hit the same phase), edits, and from the moment the edit
returned asks ``GET /`` every 5 ms (a fresh connection each time) until the new value comes back or
the deadline passes. Stacks and edit kinds are interleaved within each repetition.
Target: no slower than ``uvicorn --reload`` where it is correct (medians).

Run from the repository root with the dev venv: ``/work/venv/bin/python bench/bench_restart.py``.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import os
import platform
import py_compile
import random
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

import psutil
from bench_daemon import JsonProc, code_version, daemon_argv, isolated_env, loadavg

__all__ = ["main"]

APP = """\
VALUE = {value!r}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = VALUE.encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({{"type": "http.response.start", "status": 200, "headers": headers}})
    await send({{"type": "http.response.body", "body": body}})
"""
OLD = "old-value"
NEW = {"ordinary": "new-value-ordinary-edit", "restored": "new-value"}
KINDS = tuple(NEW)
assert len(NEW["restored"]) == len(OLD)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


def wait_value(port: int, value: str, timeout: float) -> float | None:
    """Seconds until the server answers *value*, or None after *timeout* seconds."""
    start = time.time()
    while time.time() - start < timeout:
        if fetch(port) == value:
            return time.time() - start
        time.sleep(0.005)
    return None


def uvicorn_argv(port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port),
        "--lifespan", "off", "--log-level", "warning", *extra,
    ]  # fmt: skip


def server_env(home: Path) -> dict[str, str]:
    """Isolated cachewatchd dirs; servers may write pycs, as in production."""
    env = isolated_env(home)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


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

    def __init__(self, app: Path, port: int, env: dict[str, str], what_if: str = "") -> None:
        self.app, self.port, self.env, self.what_if = app, port, env, what_if
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
        if wait_value(self.port, OLD, timeout) is None:
            raise RuntimeError(f"{self.name}: port {self.port} never served {OLD!r}")


class DaemonStack(Stack):
    """Common part of the two cachewatchd stacks."""

    daemon: JsonProc | None = None

    def start_daemon(self, *args: str) -> None:
        argv = [*daemon_argv(self.what_if), "--foreground", str(self.app)]
        self.daemon = JsonProc([*argv, "--log-format", "json", *args], self.env, cwd=self.app)
        self.track(self.daemon.pid)
        if self.daemon.find(lambda e: e.event == "ready", 0, 60) is None:
            raise RuntimeError(f"{self.name}: the daemon was not ready within 60 s")

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
        self.start_daemon("--", *uvicorn_argv(self.port))
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


def write_app(app: Path) -> Path:
    app.mkdir(parents=True)
    source = app / "app.py"
    source.write_text(APP.format(value=OLD), encoding="utf-8")
    mode = py_compile.PycInvalidationMode.TIMESTAMP
    py_compile.compile(str(source), doraise=True, invalidation_mode=mode)
    return source


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
    source = write_app(app)
    stack = stack_type(app, free_port(), env, args.what_if)
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


def report(samples: dict[tuple[str, str], list[Sample]], reps: int, deadline: float) -> bool:
    print(f"\nedit -> first response with the new code, {reps} repetitions (seconds)")
    print(f"  {'edit':<10}{'stack':<28}{'median':>8}{'min':>8}{'max':>8}  never  detail")
    medians: dict[tuple[str, str], float | None] = {}
    for (kind, name), runs in samples.items():
        times = [s.seconds for s in runs if s.seconds is not None]
        never = len(runs) - len(times)
        med = statistics.median(times) if times and never == 0 else None
        medians[kind, name] = med
        cells = (
            f"{med:>8.3f}{min(times):>8.3f}{max(times):>8.3f}"
            if med is not None
            else f"{'never':>8}{'':>16}"
        )
        detail = ""
        for key in ("invalidated", "restarted"):
            values = [s.breakdown[key] for s in runs if key in s.breakdown]
            if values:
                detail += f"{key} {statistics.median(values):.3f}  "
        if never:
            detail += f"still served {sorted({str(s.last) for s in runs if s.seconds is None})}"
        print(f"  {kind:<10}{name:<28}{cells}{never:>7}  {detail}")
    print(f"  never: the new value was not served within {deadline:g} s")
    print(
        "  detail: medians of the daemon's own log stamps, s after the edit (restarted = act done)"
    )
    passed = True
    print("\ntargets (no slower than uvicorn --reload where it is correct; correct everywhere):")
    for kind in KINDS:
        reload = medians.get((kind, ReloadStack.name))
        for stack in (ChildStack, SupervisordStack):
            mine = medians.get((kind, stack.name))
            ok = mine is not None and (reload is None or mine <= reload)
            passed &= ok
            versus = f"{reload:.3f} s" if reload is not None else "never"
            shown = f"{mine:.3f} s" if mine is not None else "never"
            print(f"  {'PASS' if ok else 'MISS'}  {kind:<9} {stack.name}: {shown} vs {versus}")
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions per stack and edit (5)")
    parser.add_argument("--deadline", type=float, default=10.0, help="seconds before 'never'")
    parser.add_argument("--what-if", default="", help="patch the daemon, e.g. quiet=0.02")
    args = parser.parse_args(argv)
    daemon_argv(args.what_if)  # validates
    print(f"bench_restart  {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"  {platform.python_implementation()} {platform.python_version()} ({sys.executable})")
    print(
        f"  {os.cpu_count()} cores, {platform.machine()}, {platform.system()} {platform.release()}"
    )
    print(f"  load average at start: {loadavg()}")
    if args.what_if:
        print(f"  WHAT-IF run, the daemon is patched: {args.what_if}")
    samples: dict[tuple[str, str], list[Sample]] = {
        (kind, stack.name): [] for kind in KINDS for stack in STACKS
    }
    jitter = random.Random(4)
    with tempfile.TemporaryDirectory(prefix="cw-rb-", dir="/tmp") as tmp:
        env = server_env(Path(tmp) / "home")
        print(f"  {code_version(env, Path(tmp))}")
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
    print(f"  load average at end: {loadavg()}")
    passed = report(samples, args.reps, args.deadline)
    print("all targets PASS" if passed else "some targets MISS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
