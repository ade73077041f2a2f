"""Daemon benchmark (issue 3): edit -> cache entry gone, a 10k-file git checkout, idle CPU and RSS.

Side by side in one run, on trees generated under ``bench/.work/`` (``--work`` to move them):

- **edits**: 200 edits of distinct modules (each with a timestamp pyc). For each edit the clock
  starts when ``write()`` + ``close()`` returned; cachewatchd's time is the timestamp of its
  ``invalidated`` log line (stamped right after the unlink returned, so the entry is gone by then);
  the time the bench *read* that line is shown too. watchfiles runs in subprocesses on the same tree
  and its time is taken right after ``watchfiles.watch`` yielded the change (default ``step=50`` ms,
  what uvicorn gets, and ``step=1`` ms, close to the bare inotify floor). Native first (watchfiles
  native), then ``--poll always`` at the default interval (watchfiles ``force_polling``).
- **storm**: a git repository whose two branches differ in every one of 10k modules, with pycs
  of the checked-out branch; ``git checkout`` of the other branch. Time from git's exit to the
  daemon's last log event of the storm (``git-moved`` comes after the repository audit), whether
  every pyc is gone, batches (the daemon's own counter), overflows, and restarts of a managed child.
- **idle**: CPU (user + system) of the daemon pid over ``--idle-seconds`` (600 for the target),
  watching 10k modules with pycs; reconciliation audits (every 300 s) included.
- **rss**: RSS (and the peak, VmHWM) of a daemon watching 10k and 100k modules with pycs.
- **polling**: CPU of one polling pass over 10k modules (the snapshot cachewatchd's polling
  observer takes, in-process) and of a ``--poll always`` daemon per second.

Targets (issue 3): p99 < 50 ms native; storm handled within 2 s after git finishes; idle < 0.5 s CPU
per 10 minutes; RSS < 60 MB at 100k files. DESIGN §6 adds: polling pass of 10k files < 100 ms CPU.

Run from the repository root with the dev venv: ``/work/venv/bin/python bench/bench_daemon.py``
(``--idle-seconds 30`` for a quick run; ``--phases`` to pick phases).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import py_compile
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from bench_scan import package_dirs  # the same tree shape as the scan benchmark

__all__ = ["main"]

WORK = Path(__file__).resolve().parent / ".work"
TREE_FORMAT = 1  # bump when the generator's output changes
PER_PACKAGE = 20
PHASES = ("edits", "storm", "idle", "rss", "polling")
WATCHFILES = """\
import json, sys, time
import watchfiles
root, polling, step = sys.argv[1], sys.argv[2] == "poll", int(sys.argv[3])
for changes in watchfiles.watch(root, step=step, force_polling=polling, raise_interrupt=False):
    t = time.time()
    print(json.dumps({"t": t, "paths": sorted(p for _, p in changes)}), flush=True)
"""
WHAT_IF = """\
import sys, time
import cachewatchd.processes.os_procs as procs
from cachewatchd.daemon.loop import Daemon
patches = dict(p.split("=", 1) for p in sys.argv.pop(1).split(",") if p)
if "quiet" in patches:
    Daemon.__init__.__kwdefaults__["quiet"] = float(patches["quiet"])
if "wait_step" in patches:
    def wait_gone(pending, timeout, step=float(patches["wait_step"])):
        deadline = time.monotonic() + timeout
        while True:
            pending = [p for p in pending if procs._alive(p)]
            if not pending or time.monotonic() >= deadline:
                return pending
            time.sleep(step)
    procs._wait_gone = wait_gone
from cachewatchd.cli import main
sys.exit(main(sys.argv[1:]))
"""
WHAT_IFS = ("quiet", "wait_step")
"""What-if patches of the daemon (never the shipped behaviour): ``quiet=S`` the batch debounce
quiet period; ``wait_step=S`` polls for a stopped process every S s instead of backing off."""


def daemon_argv(what_if: str = "") -> list[str]:
    """How to start ``cachewatchd``, with what-if patches (``quiet=0.02,wait_step=0.005``)."""
    for patch in filter(None, what_if.split(",")):
        name, _, value = patch.partition("=")
        if name not in WHAT_IFS or not value.replace(".", "", 1).isdigit():
            raise SystemExit(f"bad --what-if {patch!r}: use {'=S,'.join(WHAT_IFS)}=S")
    if what_if:
        return [sys.executable, "-B", "-c", WHAT_IF, what_if]
    return [sys.executable, "-B", "-m", "cachewatchd"]


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def pct(values: Sequence[float], q: int) -> float:
    """The q-th percentile (statistics.quantiles, 'inclusive')."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def isolated_env(home: Path) -> dict[str, str]:
    """Our environment with config, state, logs and the daemon registry under *home*."""
    skip = ("XDG_", "NOTIFY_SOCKET", "WATCHDOG_", "PYTHONPYCACHEPREFIX")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    runtime = home / "runtime"
    runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
    for var, sub in (("CONFIG", "config"), ("STATE", "state"), ("CACHE", "cache")):
        env[f"XDG_{var}_HOME"] = str(home / sub)
    env["XDG_RUNTIME_DIR"] = str(runtime)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


# --- generated trees -----------------------------------------------------------------------------


def tree_sources(root: Path, modules: int) -> list[Path]:
    names = ["__init__"] + [f"mod{j:02d}" for j in range(PER_PACKAGE - 1)]
    out = [
        root / rel / f"{n}.py" for rel in package_dirs(-(-modules // PER_PACKAGE)) for n in names
    ]
    return out[:modules]


def module_text(index: int, version: str, extra: str = "") -> str:
    return (
        f'"""Module {index}, generated for bench_daemon ({version})."""\n\nimport os\n\n'
        f"VERSION = {version!r}\nLIMIT = {index * 7 % 1000}\n\n\n"
        f"def func(x: int) -> str:\n    return os.path.join(VERSION, str(x + LIMIT))\n{extra}"
    )


def compile_pyc(source: Path) -> Path:
    out = py_compile.compile(
        str(source), doraise=True, invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP
    )
    assert out is not None
    return Path(out)


def cache_path(source: Path) -> Path:
    return Path(importlib.util.cache_from_source(str(source)))


def write_tree(root: Path, modules: int, version: str) -> list[Path]:
    sources = tree_sources(root, modules)
    for i, source in enumerate(sources):
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(module_text(i, version), encoding="utf-8")
    return sources


def ensure_tree(work: Path, name: str, modules: int, regenerate: bool) -> tuple[Path, list[Path]]:
    """A tree of *modules* sources with timestamp pycs (missing pycs are compiled again)."""
    root = Path(os.path.realpath(work)) / name
    stamp = f"{TREE_FORMAT} {modules}\n"
    marker = root / ".bench-tree"
    if regenerate or not marker.exists() or marker.read_text() != stamp:
        print(f"  generating {root} ({modules} modules with pycs)...", flush=True)
        shutil.rmtree(root, ignore_errors=True)
        write_tree(root, modules, "a")
        marker.write_text(stamp)
    sources = tree_sources(root, modules)
    for source in sources:
        if not cache_path(source).exists():
            compile_pyc(source)
    return root, sources


def git(root: Path, *args: str) -> str:
    argv = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    argv += ["-c", "commit.gpgsign=false", "-C", str(root), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def ensure_git_repo(work: Path, modules: int, regenerate: bool) -> tuple[Path, list[Path]]:
    """Branches ``a`` and ``b`` differing in every module (``b`` is longer); ``a`` checked out."""
    root = Path(os.path.realpath(work)) / f"git-{modules}"
    stamp = f"{TREE_FORMAT} {modules}\n"
    marker = root / ".git" / "bench-tree"
    if regenerate or not marker.exists() or marker.read_text() != stamp:
        print(f"  generating git repository {root} ({modules} modules, 2 branches)...", flush=True)
        shutil.rmtree(root, ignore_errors=True)
        sources = write_tree(root, modules, "a")
        (root / ".gitignore").write_text("__pycache__/\n")
        git(root, "init", "-q", "-b", "a")
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "a")
        git(root, "checkout", "-q", "-b", "b")
        for i, source in enumerate(sources):
            source.write_text(module_text(i, "b", "\nEXTRA = 1\n"), encoding="utf-8")
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "b")
        git(root, "checkout", "-q", "a")
        marker.write_text(stamp)
    return root, tree_sources(root, modules)


def code_version(env: dict[str, str], cwd: Path) -> str:
    """Which cachewatchd a daemon started from *cwd* with *env* imports, and its git commit."""
    script = "import cachewatchd, os; print(os.path.dirname(os.path.dirname(cachewatchd.__file__)))"
    argv = [sys.executable, "-B", "-c", script]
    where = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=True)
    tree = where.stdout.strip()
    if not (Path(tree) / ".git").exists():
        return f"cachewatchd from {tree}"
    head = git(Path(tree), "rev-parse", "--short", "HEAD")
    dirty = git(Path(tree), "status", "--porcelain", "--untracked-files=no", "--", "cachewatchd")
    changed = f", uncommitted changes in {len(dirty.splitlines())} files" if dirty else ""
    return f"cachewatchd from {tree} (git {head}{changed})"


def enclosing_repo(path: Path) -> Path | None:
    for parent in path.parents:
        if (parent / ".git").exists():
            return parent
    return None


# --- processes that print JSON lines -------------------------------------------------------------


@dataclass
class Line:
    recv: float
    data: dict[str, Any]

    @property
    def event(self) -> str:
        return str(self.data.get("event", ""))

    @property
    def ts(self) -> float:
        """The daemon's own timestamp (structlog, UTC ISO with microseconds), or ``t``."""
        if "t" in self.data:
            return float(self.data["t"])
        text = str(self.data["timestamp"]).replace("Z", "+00:00")
        return datetime.datetime.fromisoformat(text).timestamp()


class JsonProc:
    """A subprocess whose stdout or stderr carries JSON lines, read on a thread as they come."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        *,
        stream: str = "stderr",
        cwd: Path | None = None,
    ) -> None:
        self.lines: list[Line] = []
        self.garbage: list[str] = []
        self._cond = threading.Condition()
        pipes: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        pipes[stream] = subprocess.PIPE
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
            **pipes,
        )
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
        """The first line from index *start* on that matches, waiting up to *timeout* seconds."""
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
            for proc in _group_members(self.proc.pid):
                proc.kill()
        finally:
            self._thread.join(10)
            if self._pipe is not None:
                self._pipe.close()


def _group_members(pgid: int) -> list[psutil.Process]:
    """Processes still in process group *pgid* (children the leader left behind)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                found.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


@dataclass(frozen=True)
class Bench:
    work: Path
    env: dict[str, str]
    regenerate: bool = False
    what_if: str = ""
    """``--what-if quiet=S,...``: patches for a what-if run, see :data:`WHAT_IFS`."""

    def tree(self, name: str, modules: int) -> tuple[Path, list[Path]]:
        return ensure_tree(self.work, f"{name}-{modules}", modules, self.regenerate)


def start_daemon(
    bench: Bench, roots: Sequence[Path], *extra: str, child: Sequence[str] = ()
) -> JsonProc:
    env = bench.env
    argv = [*daemon_argv(bench.what_if), "--foreground", *map(str, roots)]
    argv += ["--log-format", "json", *extra]
    if child:
        argv += ["--", *child]
    daemon = JsonProc(argv, env, cwd=bench.work)  # not the repo: -m/-c put the cwd on sys.path
    ready = None
    try:
        ready = daemon.find(lambda e: e.event == "ready", 0, 600)
    finally:
        if ready is None:
            daemon.stop()
    if ready is None:
        raise RuntimeError("the daemon was not ready within 600 s")
    return daemon


def start_watchfiles(root: Path, mode: str, step: int, env: dict[str, str]) -> JsonProc:
    """A watchfiles watcher on *root*; returns once it reported a sentinel change."""
    argv = [sys.executable, "-c", WATCHFILES, str(root), mode, str(step)]
    watcher = JsonProc(argv, env, stream="stdout", cwd=root.parent)
    sentinel = root / f".bench-ready-{watcher.pid}"
    seen = None
    try:
        for attempt in range(100):
            sentinel.write_text(str(attempt))
            seen = watcher.find(mentions(str(sentinel)), 0, 0.5)
            if seen is not None:
                break
    finally:
        sentinel.unlink(missing_ok=True)
        if seen is None:
            watcher.stop()
    if seen is None:
        raise RuntimeError(f"watchfiles ({mode}, step {step}) saw nothing for 50 s")
    return watcher


def mentions(path: str) -> Callable[[Line], bool]:
    """A watchfiles line that lists *path*."""
    return lambda line: path in line.data["paths"]


def invalidated(source: str) -> Callable[[Line], bool]:
    """The daemon's ``invalidated`` line for *source*."""
    return lambda line: line.event == "invalidated" and line.data.get("source") == source


def status_counters(env: dict[str, str], pid: int, cwd: Path) -> dict[str, int]:
    argv = [sys.executable, "-B", "-m", "cachewatchd", "status", "--json"]
    out = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=True).stdout
    for record in json.loads(out)["daemons"]:
        if record["pid"] == pid:
            counters: dict[str, int] = record["counters"]
            return counters
    raise RuntimeError(f"daemon {pid} not in cachewatchd status")


# --- edits -----------------------------------------------------------------------------------------


@dataclass
class EditRun:
    mode: str
    columns: dict[str, list[float]] = field(default_factory=dict)
    misses: dict[str, int] = field(default_factory=dict)
    pyc_left: int = 0
    """Edits whose pyc still existed when the invalidated line arrived (must be 0)."""


def run_edits(bench: Bench, mode: str, root: Path, sources: list[Path], count: int) -> EditRun:
    index = {source: i for i, source in enumerate(sources)}
    targets = random.Random(count).sample(sources, count)
    for source in targets:
        if not cache_path(source).exists():
            compile_pyc(source)
    poll = mode == "polling"
    daemon = start_daemon(bench, [root], "--poll", "always" if poll else "auto")
    observer = next(iter(daemon.events("ready")[0].data["observers"].values()))["observer"]
    watchers: dict[str, JsonProc] = {}
    run = EditRun(f"{mode} (daemon observer: {observer})")
    try:
        specs = [("poll", 50)] if poll else [("native", 50), ("native", 1)]
        for wmode, step in specs:
            label = f"watchfiles {'force_polling' if poll else 'native'}, step {step} ms"
            watchers[label] = start_watchfiles(root, wmode, step, bench.env)
        deadline = 10.0 if poll else 5.0
        names = ["cachewatchd, invalidated stamp", "cachewatchd, line read", *watchers]
        run.columns = {n: [] for n in names}
        run.misses = dict.fromkeys(names, 0)
        jitter = random.Random(7)
        for i, source in enumerate(targets):
            time.sleep(jitter.uniform(0, 1.0) if poll else jitter.uniform(0.02, 0.06))
            marks = {"daemon": daemon.count()} | {n: w.count() for n, w in watchers.items()}
            text = module_text(index[source], "a", f"\nEDIT = {i}\n")
            with open(source, "w", encoding="utf-8") as handle:
                handle.write(text)
            t0 = time.time()
            name = str(source)
            hit = daemon.find(invalidated(name), marks["daemon"], deadline)
            if hit is None:
                run.misses[names[0]] += 1
                run.misses[names[1]] += 1
            else:
                run.pyc_left += cache_path(source).exists()
                run.columns[names[0]].append(hit.ts - t0)
                run.columns[names[1]].append(hit.recv - t0)
            for label, watcher in watchers.items():
                seen = watcher.find(mentions(name), marks[label], deadline)
                if seen is None:
                    run.misses[label] += 1
                else:
                    run.columns[label].append(seen.ts - t0)
    finally:
        for watcher in watchers.values():
            watcher.stop()
        daemon.stop()
    return run


def report_edits(run: EditRun, count: int) -> None:
    print(f"\nedit -> cache entry gone / event seen, {run.mode}, {count} edits (ms)")
    print(f"  {'':<42}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}{'missed':>8}")
    for name, values in run.columns.items():
        ms = [v * 1e3 for v in values]
        if ms:
            row = "".join(f"{x:>8.1f}" for x in (pct(ms, 50), pct(ms, 90), pct(ms, 99), max(ms)))
        else:
            row = f"{'-':>32}"
        print(f"  {name:<42}{row}{run.misses[name]:>8}")
    print(f"  pyc still present when the invalidated line arrived: {run.pyc_left}")


# --- storm -----------------------------------------------------------------------------------------

STORM_EVENTS = ("invalidated", "rescan", "git-moved", "observer-fallback", "error")


@dataclass
class StormRun:
    branch: str
    git_seconds: float
    handled: float | None
    last_removal: float | None
    left: int
    batches: int
    events: int
    overflows: int
    restarts: int
    invalidated_lines: int
    cpu: float
    """CPU seconds the daemon spent from just before git started until 2 s after the storm."""


def storm_once(daemon: JsonProc, bench: Bench, repo: Path, sources: list[Path]) -> StormRun:
    for source in sources:  # pycs of the checked-out branch, fresh
        compile_pyc(source)
    pycs = [cache_path(s) for s in sources]
    time.sleep(1.0)
    before = status_counters(bench.env, daemon.pid, bench.work)
    cpu = cpu_seconds(daemon.pid)
    target = "b" if git(repo, "branch", "--show-current") == "a" else "a"
    new = git(repo, "rev-parse", target)
    mark = daemon.count()
    started = time.time()
    git(repo, "checkout", "-q", target)
    git_end = time.time()
    moved = daemon.find(lambda e: e.event == "git-moved" and e.data.get("new") == new, mark, 120)
    # then quiet: no storm event for 2 s
    while True:
        last = daemon.count()
        if daemon.find(lambda e: e.event in STORM_EVENTS, last, 2.0) is None:
            break
    storm = [line for line in daemon.lines[mark:] if line.event in STORM_EVENTS]
    removals = [
        line.ts for line in storm if line.event == "invalidated" or line.data.get("removed")
    ]
    cpu = cpu_seconds(daemon.pid) - cpu
    after = status_counters(bench.env, daemon.pid, bench.work)
    return StormRun(
        cpu=cpu,
        branch=target,
        git_seconds=git_end - started,
        handled=max(line.ts for line in storm) - git_end if moved and storm else None,
        last_removal=max(removals) - git_end if removals else None,
        left=sum(p.exists() for p in pycs),
        batches=after["batches"] - before["batches"],
        events=after["events"] - before["events"],
        overflows=sum(
            "overflow" in str(line.data.get("reason", ""))
            for line in storm
            if line.event == "rescan"
        ),
        restarts=len(daemon.events("restarted", mark)),
        invalidated_lines=sum(line.event == "invalidated" for line in storm),
    )


def run_storm(bench: Bench, modules: int, runs: int) -> list[StormRun]:
    repo, sources = ensure_git_repo(bench.work, modules, bench.regenerate)
    if git(repo, "status", "--porcelain"):
        git(repo, "checkout", "-q", "-f", "a")
    child = [sys.executable, "-c", "import signal; signal.pause()"]
    daemon = start_daemon(bench, [repo], child=child)
    try:
        return [storm_once(daemon, bench, repo, sources) for _ in range(runs)]
    finally:
        daemon.stop()


def report_storm(runs: list[StormRun], modules: int) -> None:
    print(f"\ngit checkout of {modules} changed modules (pycs of the old branch present)")
    head = ("to", "git s", "handled s", "last rm s", "cpu s", "left", "batches", "events",
            "overflow", "restarts", "inval. lines")  # fmt: skip
    print("  " + "".join(f"{h:>{w}}" for h, w in zip(head, WIDTHS, strict=True)))
    for r in runs:
        cells = (r.branch, f"{r.git_seconds:.2f}",
                 f"{r.handled:.3f}" if r.handled is not None else "never",
                 f"{r.last_removal:.3f}" if r.last_removal is not None else "-",
                 f"{r.cpu:.2f}", r.left, r.batches, r.events, r.overflows, r.restarts,
                 r.invalidated_lines)  # fmt: skip
        print("  " + "".join(f"{c:>{w}}" for c, w in zip(cells, WIDTHS, strict=True)))
    print("  handled: last storm event (git-moved comes after the repository audit) - git's exit")
    print("  last rm: last log line that removed something - git's exit; cpu: the daemon's")
    print("  restarts: of a managed child (a sleeper) started with the daemon")


WIDTHS = (3, 7, 11, 11, 7, 6, 9, 8, 10, 10, 14)


# --- idle, RSS, polling ------------------------------------------------------------------------------


def memory(pid: int) -> tuple[float, float]:
    """(RSS, peak RSS) in MB, from /proc/PID/status."""
    fields: dict[str, float] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def run_idle(bench: Bench, root: Path, seconds: float) -> dict[str, Any]:
    """CPU over *seconds*, sampled every second so that the seconds holding a reconciliation
    (a ``rescan`` line) can be told from the rest."""
    daemon = start_daemon(bench, [root])
    try:
        time.sleep(3.0)
        mark, start = daemon.count(), time.monotonic()
        samples = [(time.time(), cpu_seconds(daemon.pid))]
        peak_rss = 0.0
        while (left := seconds - (time.monotonic() - start)) > 0:
            time.sleep(min(1.0, left))
            samples.append((time.time(), cpu_seconds(daemon.pid)))
            if len(samples) % 10 == 0:
                peak_rss = max(peak_rss, memory(daemon.pid)[0])
        rss, hwm = memory(daemon.pid)
        lines = daemon.lines[mark:]
    finally:
        daemon.stop()
    rescans = [line.ts for line in lines if line.event == "rescan"]
    busy = set()  # sample intervals that overlap [stamp - 1 s, stamp] of a rescan line
    for stamp in rescans:
        busy |= {
            i
            for i in range(1, len(samples))
            if samples[i - 1][0] < stamp and samples[i][0] > stamp - 1
        }
    reconcile = sum(samples[i][1] - samples[i - 1][1] for i in busy)
    kinds: dict[str, int] = {}
    for line in lines:
        kinds[line.event] = kinds.get(line.event, 0) + 1
    return {"seconds": seconds, "cpu": samples[-1][1] - samples[0][1], "reconcile": reconcile,
            "busy": len(busy), "rss": rss, "rss_max": peak_rss, "hwm": hwm, "events": kinds}  # fmt: skip


def run_rss(bench: Bench, root: Path) -> dict[str, float]:
    started = time.monotonic()
    daemon = start_daemon(bench, [root])
    try:
        ready = time.monotonic() - started
        time.sleep(5.0)
        rss, hwm = memory(daemon.pid)
        return {"ready": ready, "rss": rss, "hwm": hwm, "cpu": cpu_seconds(daemon.pid)}
    finally:
        daemon.stop()


def run_polling(bench: Bench, root: Path, seconds: float) -> dict[str, float]:
    from watchdog.utils.dirsnapshot import DirectorySnapshot, DirectorySnapshotDiff

    from cachewatchd.cache.walk import WalkOptions
    from cachewatchd.watch.polling import SourceLister, change_stat

    lister = SourceLister(str(root), WalkOptions(), lambda path, exc: None)
    times = []
    previous = None
    for _ in range(6):
        t0 = time.process_time()
        snap = DirectorySnapshot(str(root), stat=change_stat, listdir=lister)
        if previous is not None:
            DirectorySnapshotDiff(previous, snap)
        times.append(time.process_time() - t0)
        previous = snap
    daemon = start_daemon(bench, [root], "--poll", "always")
    try:
        time.sleep(3.0)
        cpu0 = cpu_seconds(daemon.pid)
        time.sleep(seconds)
        per_second = (cpu_seconds(daemon.pid) - cpu0) / seconds
    finally:
        daemon.stop()
    return {"pass": statistics.median(times[1:]), "entries": len(previous.paths) if previous else 0,
            "daemon_per_s": per_second}  # fmt: skip


# --- main ------------------------------------------------------------------------------------------

Results = dict[str, bool]
"""Target description -> met."""


def phase_edits(bench: Bench, args: argparse.Namespace, results: Results) -> None:
    root, sources = bench.tree("edits", args.modules)
    native = run_edits(bench, "native", root, sources, args.edits)
    report_edits(native, args.edits)
    p99 = pct(native.columns["cachewatchd, invalidated stamp"], 99) * 1e3
    results[f"edit -> gone p99 native < 50 ms ({p99:.1f} ms)"] = p99 < 50
    print(f"  load average: {loadavg()}")
    report_edits(run_edits(bench, "polling", root, sources, args.edits), args.edits)


def phase_storm(bench: Bench, args: argparse.Namespace, results: Results) -> None:
    storms = run_storm(bench, args.modules, args.storm_runs)
    report_storm(storms, args.modules)
    worst = max((r.handled if r.handled is not None else float("inf")) for r in storms)
    ok = worst < 2.0 and not any(r.left for r in storms)
    results[f"storm handled < 2 s after git (worst {worst:.2f} s)"] = ok


def phase_idle(bench: Bench, args: argparse.Namespace, results: Results) -> None:
    root, _ = bench.tree("idle", args.modules)
    idle = run_idle(bench, root, args.idle_seconds)
    per10 = idle["cpu"] * 600 / idle["seconds"]
    print(f"\nidle, {args.modules} modules with pycs, {idle['seconds']:.0f} s")
    print(f"  CPU {idle['cpu']:.3f} s ({per10:.3f} s per 10 min); RSS {idle['rss']:.1f} MB")
    print(f"  of which {idle['reconcile']:.3f} s in the {idle['busy']} one-second samples around "
          f"the rescan lines (reconciliation audits), {idle['cpu'] - idle['reconcile']:.3f} s "
          "elsewhere")  # fmt: skip
    print(f"  (max sampled {idle['rss_max']:.1f}, peak {idle['hwm']:.1f}); events {idle['events']}")
    if idle["seconds"] < 600:
        print("  NOTE: shorter than 10 min: reconciliations (every 300 s) may be missing")
    results[f"idle < 0.5 s CPU per 10 min ({per10:.3f} s)"] = per10 < 0.5


def phase_rss(bench: Bench, args: argparse.Namespace, results: Results) -> None:
    print(f"\nRSS after ready + 5 s{'':<20}ready s   RSS MB  peak MB")
    for count in (args.modules, args.big):
        root, _ = bench.tree("edits", count)
        rss = run_rss(bench, root)
        print(f"  {count:>7} modules with pycs{'':>8}{rss['ready']:>7.2f}{rss['rss']:>9.1f}"
              f"{rss['hwm']:>9.1f}")  # fmt: skip
        if count == args.big:
            results[f"RSS < 60 MB at {count} files ({rss['rss']:.1f} MB)"] = rss["rss"] < 60


def phase_polling(bench: Bench, args: argparse.Namespace, results: Results) -> None:
    root, _ = bench.tree("edits", args.modules)
    poll = run_polling(bench, root, args.poll_seconds)
    print(f"\npolling, {args.modules} modules: one pass (snapshot + diff, in-process) "
          f"{poll['pass'] * 1e3:.1f} ms CPU for {poll['entries']:.0f} entries; "
          f"--poll always daemon: {poll['daemon_per_s'] * 1e3:.1f} ms CPU per s")  # fmt: skip
    results[f"polling pass, 10k files < 100 ms CPU ({poll['pass'] * 1e3:.1f} ms)"] = (
        poll["pass"] < 0.1
    )


PHASE_FUNCTIONS = {
    "edits": phase_edits,
    "storm": phase_storm,
    "idle": phase_idle,
    "rss": phase_rss,
    "polling": phase_polling,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--phases", default=",".join(PHASES), help=f"of {','.join(PHASES)}")
    parser.add_argument("--edits", type=int, default=200, help="edits per observer (200)")
    parser.add_argument("--modules", type=int, default=10_000, help="tree and storm size (10000)")
    parser.add_argument("--big", type=int, default=100_000, help="large RSS tree (100000)")
    parser.add_argument("--storm-runs", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=600.0)
    parser.add_argument("--poll-seconds", type=float, default=20.0)
    parser.add_argument("--work", type=Path, default=WORK, help="where trees live (bench/.work)")
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument("--what-if", default="", help="patches, e.g. quiet=0.02 (see WHAT_IFS)")
    args = parser.parse_args(argv)
    phases = [p for p in args.phases.split(",") if p]
    if unknown := set(phases) - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    work = Path(os.path.realpath(args.work))
    home = work / f"home-{os.getpid()}"
    daemon_argv(args.what_if)  # validates
    bench = Bench(work, isolated_env(home), args.regenerate, args.what_if)
    print(f"bench_daemon  {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"  {platform.python_implementation()} {platform.python_version()} ({sys.executable})")
    print(
        f"  {os.cpu_count()} cores, {platform.machine()}, {platform.system()} {platform.release()}"
    )
    print(f"  load average at start: {loadavg()}; phases: {', '.join(phases)}; work: {work}")
    print(f"  {code_version(bench.env, work)}")
    if args.what_if:
        print(f"  WHAT-IF run, the daemon is patched: {args.what_if}")
    if (outer := enclosing_repo(work)) is not None:
        print(f"  NOTE: {work} is inside the git work tree {outer}: the daemon follows its HEAD")
        print("  too, so commits there during the run trigger audits (--work elsewhere avoids it)")
    results: Results = {}
    try:
        for phase in phases:
            PHASE_FUNCTIONS[phase](bench, args, results)
            print(f"  load average: {loadavg()}", flush=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print("\ntargets:")
    for name, ok in results.items():
        print(f"  {'PASS' if ok else 'MISS'}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
