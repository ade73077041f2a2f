"""What the benchmarks in ``bench/`` share; each script imports from here and none from another:
child environments, the machine header, processes logging JSON lines (the daemon, watchfiles), the
generated trees, timing and PASS/MISS reporting, the tiny ASGI app. Benchmarks drive cachewatchd
only through its command line, its config file and the environment, as a user does.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import os
import platform
import py_compile
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
DEFAULT_WORK = Path(__file__).resolve().parent / ".work"
"""Where generated trees are cached unless ``--work DIR`` says otherwise (gitignored)."""
PER_PACKAGE = 20
BRANCHING = 6  # 6 + 36 + 216 + rest: four levels of nesting at 20k modules
TREE_FORMAT = 1  # bump when a generator's output changes


# --- environment and machine ---------------------------------------------------------------------


def child_env(
    home: Path | None = None, *, python_vars: bool = True, bytecode: bool = False
) -> dict[str, str]:
    """The ambient environment minus ``PYTHONPYCACHEPREFIX``, ``SOURCE_DATE_EPOCH`` (checked-hash
    pycs from compileall) and systemd's variables; *python_vars* False: minus every ``PYTHON*``
    (else ``PYTHONPATH`` may pick a snapshot of cachewatchd). *home*: the XDG config, state, cache
    and runtime dirs under it (no user config, no other daemon's registry). *bytecode*: whether
    the children may write pycs (``PYTHONDONTWRITEBYTECODE``)."""
    drop = ["PYTHONPYCACHEPREFIX", "SOURCE_DATE_EPOCH", "NOTIFY_SOCKET", "WATCHDOG_"]
    drop += ["PYTHON"] * (not python_vars) + ["XDG_"] * (home is not None)
    env = {k: v for k, v in os.environ.items() if not k.startswith(tuple(drop))}
    if home is not None:
        runtime = home / "runtime"
        runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
        for var, sub in (("CONFIG", "config"), ("STATE", "state"), ("CACHE", "cache")):
            env[f"XDG_{var}_HOME"] = str(home / sub)
        env["XDG_RUNTIME_DIR"] = str(runtime)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if not bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def print_header(name: str, env: dict[str, str], cwd: Path) -> None:
    """Date, interpreter, machine, load average, and which cachewatchd a child imports."""
    print(f"{name}  {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"  {platform.python_implementation()} {platform.python_version()} ({sys.executable})")
    machine = f"{platform.machine()}, {platform.system()} {platform.release()}"
    print(f"  {os.cpu_count()} cores, {machine}")
    print(f"  load average at start: {loadavg()}")
    print(f"  {code_version(env, cwd)}")


def git(root: Path, *args: str) -> str:
    argv = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    argv += ["-c", "commit.gpgsign=false", "-C", str(root), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def code_version(env: dict[str, str], cwd: Path) -> str:
    """Which cachewatchd a child started from *cwd* with *env* imports, and its git commit."""
    script = "import cachewatchd, os; print(os.path.dirname(os.path.dirname(cachewatchd.__file__)))"
    argv = [sys.executable, "-B", "-c", script]
    where = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=True)
    tree = Path(where.stdout.strip())
    if not (tree / ".git").exists():
        return f"cachewatchd from {tree}"
    head = git(tree, "rev-parse", "--short", "HEAD")
    dirty = git(tree, "status", "--porcelain", "--untracked-files=no", "--", "cachewatchd")
    changed = f", uncommitted changes in {len(dirty.splitlines())} files" if dirty else ""
    return f"cachewatchd from {tree} (git {head}{changed})"


def enclosing_repo(path: Path) -> Path | None:
    """The git work tree holding *path*: a daemon watching *path* follows its HEAD too."""
    return next((p for p in (path, *path.parents) if (p / ".git").exists()), None)


# --- processes that log JSON lines ---------------------------------------------------------------


@dataclass
class Line:
    recv: float
    """When the bench read the line (``time.time()``)."""
    data: dict[str, Any]

    @property
    def event(self) -> str:
        return str(self.data.get("event", ""))

    @property
    def ts(self) -> float:
        """The process's own timestamp: ``t``, or structlog's UTC ISO ``timestamp``."""
        if "t" in self.data:
            return float(self.data["t"])
        text = str(self.data["timestamp"]).replace("Z", "+00:00")
        return datetime.datetime.fromisoformat(text).timestamp()


class JsonProc:
    """A subprocess (in its own session) whose stdout or stderr carries JSON lines, read on a
    thread as they come; other lines are kept apart to explain an early exit."""

    def __init__(
        self, argv: list[str], env: dict[str, str], *, stream: str = "stderr", cwd: Path
    ) -> None:
        self.lines: list[Line] = []
        self.garbage: list[str] = []
        self._cond = threading.Condition()
        pipes: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        pipes[stream] = subprocess.PIPE
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, text=True, start_new_session=True,
            **pipes,
        )  # fmt: skip
        self._pipe = self.proc.stdout if stream == "stdout" else self.proc.stderr
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._pipe is not None
        for raw in self._pipe:
            recv = time.time()
            try:
                data = json.loads(raw)
            except ValueError:
                data = None
            with self._cond:
                if isinstance(data, dict):
                    self.lines.append(Line(recv, data))
                else:
                    self.garbage.append(raw)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def count(self) -> int:
        with self._cond:
            return len(self.lines)

    def find(self, match: Callable[[Line], bool], start: int, timeout: float) -> Line | None:
        """The first line from index *start* on that matches, waiting up to *timeout* seconds;
        raises if the process exited without printing one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    if match(line):
                        return line
                start = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                if self.proc.poll() is not None and not self._thread.is_alive():
                    tail = "".join(self.garbage[-20:])
                    raise RuntimeError(
                        f"{self.proc.args!r} exited ({self.proc.returncode}):\n{tail}"
                    )
                self._cond.wait(left)

    def events(self, name: str, start: int = 0) -> list[Line]:
        """The lines of event *name* so far."""
        with self._cond:
            return [line for line in self.lines[start:] if line.event == name]

    def stop(self) -> None:
        """TERM, wait, KILL the process group if needed; always leaves nothing behind."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)
            with contextlib.suppress(ProcessLookupError):  # what it left in its group
                os.killpg(self.proc.pid, signal.SIGKILL)
        finally:
            self._thread.join(10)
            if self._pipe is not None:
                self._pipe.close()


def event(name: str, **fields: object) -> Callable[[Line], bool]:
    """Matches a line of event *name* whose data has these *fields*."""
    return lambda line: line.event == name and all(line.data.get(k) == v for k, v in fields.items())


def daemon_argv(*args: str) -> list[str]:
    """``cachewatchd ARGS`` run by this interpreter (``-B``: the daemon writes no pycs of its own;
    ``PYTHONPATH`` in the environment picks another copy of cachewatchd, e.g. a snapshot)."""
    return [sys.executable, "-B", "-m", "cachewatchd", *args]


def start_daemon(
    env: dict[str, str], cwd: Path, roots: Sequence[Path], *extra: str, child: Sequence[str] = ()
) -> JsonProc:
    """``cachewatchd --foreground ROOTS --log-format json EXTRA [-- CHILD]``, once it logged
    ``ready``. *cwd*: not the repository, or ``-m`` would import the working tree from there."""
    argv = daemon_argv("--foreground", *map(str, roots), "--log-format", "json", *extra)
    daemon = JsonProc([*argv, "--", *child] if child else argv, env, cwd=cwd)
    ready = None
    try:
        ready = daemon.find(event("ready"), 0, 600)
    finally:
        if ready is None:
            daemon.stop()
    if ready is None:
        raise RuntimeError("the daemon was not ready within 600 s")
    return daemon


# --- generated trees -----------------------------------------------------------------------------


def package_dirs(count: int) -> list[Path]:
    """Breadth-first package paths, BRANCHING children each, so nesting grows with *count*."""
    result: list[Path] = []
    frontier = [Path()]
    while len(result) < count:
        children: list[Path] = []
        for parent in frontier:
            for i in range(min(BRANCHING, count - len(result) - len(children))):
                children.append(parent / f"pkg{i}")
        result += children
        frontier = children
    return result


def tree_sources(root: Path, modules: int) -> list[Path]:
    """The *modules* source paths of a tree: ``__init__`` + ``mod00``..``mod18`` per package."""
    names = ["__init__"] + [f"mod{j:02d}" for j in range(PER_PACKAGE - 1)]
    dirs = package_dirs(-(-modules // PER_PACKAGE))
    return [root / rel / f"{name}.py" for rel in dirs for name in names][:modules]


Writer = Callable[[int, Path], str]
"""The text of a tree's source from its index and its path relative to the tree's root."""
Extras = Callable[[Path], None] | None


def write_sources(root: Path, modules: int, text: Writer) -> list[Path]:
    """Write each source, in order, with ``text(index, path relative to root)``."""
    sources = tree_sources(root, modules)
    for index, source in enumerate(sources):
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(text(index, source.relative_to(root)), encoding="utf-8")
    return sources


def compile_pyc(source: Path) -> Path:
    mode = py_compile.PycInvalidationMode.TIMESTAMP
    out = py_compile.compile(str(source), doraise=True, invalidation_mode=mode)
    assert out is not None
    return Path(out)


def cache_path(source: Path) -> Path:
    return Path(importlib.util.cache_from_source(str(source)))


def ensure_tree(
    root: Path, modules: int, kind: str, writer: Writer, regenerate: bool, extras: Extras = None
) -> list[Path]:
    """A tree of *modules* sources of *kind*, each with a timestamp pyc, reused while its marker
    matches (pycs gone since are compiled again), else written anew by *writer* (index 0 first);
    ``extras(root)`` may add other files."""
    tag = sys.implementation.cache_tag
    marker = {"format": TREE_FORMAT, "kind": kind, "modules": modules, "tag": tag}
    try:
        found = json.loads((root / ".bench-tree.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        found = None
    if found != marker or regenerate:
        started = time.perf_counter()
        tmp = root.with_name(root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        write_sources(tmp, modules, writer)
        if extras is not None:
            extras(tmp)
        (tmp / ".bench-tree.json").write_text(json.dumps(marker), encoding="utf-8")
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
        print(f"  generated {root} in {time.perf_counter() - started:.1f} s", flush=True)
    sources = tree_sources(root, modules)
    for source in sources:  # after every source was written: no pyc predates a source's ctime
        if not cache_path(source).exists():
            compile_pyc(source)
    return sources


# --- timing and reporting ------------------------------------------------------------------------


def pct(values: Sequence[float], q: int) -> float:
    """The q-th percentile (statistics.quantiles, 'inclusive')."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def interleaved(items: Sequence[T], reps: int, *, warmup: bool = True) -> Iterator[tuple[int, T]]:
    """``(round, item)``: an untimed warm-up round (round -1) if *warmup*, then *reps* rounds with
    the order rotated by one each round, so that no item always runs right after the same other."""
    if warmup:
        yield from ((-1, item) for item in items)
    for rep in range(reps):
        shift = rep % len(items)
        yield from ((rep, item) for item in [*items[shift:], *items[:shift]])


def row(cells: Sequence[object], widths: Sequence[int]) -> str:
    """One table row, indented: a negative width left-aligns its cell."""
    return "  " + "".join(
        f"{c:<{-w}}" if w < 0 else f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)
    )


class Targets:
    """Targets met or missed, in the order checked, printed at the end as PASS/MISS lines."""

    def __init__(self) -> None:
        self.results: list[tuple[str, bool]] = []

    def check(self, name: str, ok: bool) -> bool:
        self.results.append((name, ok))
        return ok

    def ratio(self, name: str, mine: float | None, other: float | None, limit: float) -> bool:
        """*mine* <= *limit* x *other* (seconds); None is "never": it misses, and beats nothing."""
        if mine is None:
            return self.check(f"{name}: never", False)
        if other is None:
            return self.check(f"{name}: {mine:.3f} s vs never", True)
        shown = f"{mine / other:.2f}x ({mine:.3f} vs {other:.3f} s)"
        return self.check(f"{name}: {shown}", mine <= limit * other)

    def report(self, title: str = "targets") -> bool:
        print(f"\n{title}:")
        for name, ok in self.results:
            print(f"  {'PASS' if ok else 'MISS'}  {name}")
        passed = all(ok for _, ok in self.results)
        print("all targets PASS" if passed else "some targets MISS")
        return passed


# --- the tiny ASGI app ---------------------------------------------------------------------------

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


def write_app(directory: Path, value: str) -> Path:
    """``directory/app.py``, an ASGI app answering *value* to every request, with a timestamp pyc
    of it; returns the source."""
    directory.mkdir(parents=True)
    source = directory / "app.py"
    source.write_text(APP.format(value=value), encoding="utf-8")
    compile_pyc(source)
    return source
