"""Daemon benchmark: edit -> cache entry gone, a 10k-file git checkout, idle CPU, RSS, polling.

Phases and targets: **edits** (p99 <= 5 ms from an edit to the daemon's ``invalidated`` stamp,
native; watchfiles with its default step and ``step=1`` on the same edits for comparison; then
``--poll always``), **storm** (a ``git checkout`` of 10k changed modules handled <= 1 s after git
exits, exactly one restart of a managed child), **idle** (<= 0.1 s CPU per 10 min), **rss** (< 60
MB at 100k files), **polling** (one pass over 10k files < 100 ms CPU).
The method in full is in BENCHMARKS.md. From the repository root: ``.venv/bin/python
bench/bench_daemon.py`` (``--quick``: a smoke test of about a minute; ``--phases`` picks phases;
``--daemon-args`` passes public daemon options).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import _harness as h
import psutil

__all__ = ["main"]

WATCHFILES = """\
import json, sys, time
import watchfiles
root, polling, step = sys.argv[1], sys.argv[2] == "poll", int(sys.argv[3])
for changes in watchfiles.watch(root, step=step, force_polling=polling, raise_interrupt=False):
    t = time.time()
    for path in sorted(p for _, p in changes):
        print(json.dumps({"t": t, "event": "changed", "path": path}), flush=True)
"""
SIZES: dict[str, tuple[float, float]] = {  # option -> (default, default with --quick)
    "edits": (200, 10), "modules": (10_000, 200), "big": (100_000, 1000), "storm_runs": (3, 1),
    "idle_seconds": (600, 5), "poll_seconds": (20, 2),
}  # fmt: skip


def module_text(index: int, _: Path | None = None, version: str = "a", extra: str = "") -> str:
    """Module *index* of a daemon tree (the second argument, its path, makes no difference)."""
    return (
        f'"""Module {index}, generated for bench_daemon ({version})."""\n\nimport os\n\n'
        f"VERSION = {version!r}\nLIMIT = {index * 7 % 1000}\n\n\n"
        f"def func(x: int) -> str:\n    return os.path.join(VERSION, str(x + LIMIT))\n{extra}"
    )


@dataclass(frozen=True)
class Bench:
    work: Path
    env: dict[str, str]
    regenerate: bool = False
    daemon_args: tuple[str, ...] = ()
    """``--daemon-args``: more options for every daemon, e.g. ``--reconcile-interval 300``."""

    def tree(self, name: str, modules: int) -> tuple[Path, list[Path]]:
        """``WORK/NAME-N``: N modules with timestamp pycs."""
        root = self.work / f"{name}-{modules}"
        return root, h.ensure_tree(root, modules, "daemon", module_text, self.regenerate)

    def daemon(self, roots: Sequence[Path], *extra: str, child: Sequence[str] = ()) -> h.JsonProc:
        return h.start_daemon(self.env, self.work, roots, *self.daemon_args, *extra, child=child)

    def counters(self, pid: int) -> dict[str, int]:
        """The daemon's own counters, from ``cachewatchd status --json``."""
        argv = h.daemon_argv("status", "--json")
        out = subprocess.run(argv, env=self.env, cwd=self.work, capture_output=True, check=True)
        record = next(r for r in json.loads(out.stdout)["daemons"] if r["pid"] == pid)
        return dict(record["counters"])


def cpu_seconds(pid: int) -> float:
    return sum(psutil.Process(pid).cpu_times()[:2])  # user + system


def tree_cpu_seconds(pid: int) -> float:
    """CPU of *pid* and of its children (the daemon's checking processes)."""
    proc = psutil.Process(pid)
    total = sum(proc.cpu_times()[:2])
    for child in proc.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            continue
    return total


def wait_idle(pid: int, quiet: float = 0.5, busy: float = 0.02, limit: float = 120.0) -> float:
    """Wait until *pid* and its children used less than *busy* s of CPU in *quiet* s (at least
    1 s, at most *limit*); the seconds waited."""
    start = time.monotonic()
    time.sleep(1.0)
    last = tree_cpu_seconds(pid)
    while time.monotonic() - start < limit:
        time.sleep(quiet)
        now = tree_cpu_seconds(pid)
        if now - last < busy:
            break
        last = now
    return time.monotonic() - start


def memory(pid: int) -> tuple[float, float]:
    """(RSS, peak RSS) in MB, from /proc/PID/status."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        kb = {key: value for key, _, value in (line.partition(":") for line in status)}
    return int(kb["VmRSS"].split()[0]) / 1024, int(kb["VmHWM"].split()[0]) / 1024


# --- edits ---------------------------------------------------------------------------------------


def start_watchfiles(root: Path, mode: str, step: int, env: dict[str, str]) -> h.JsonProc:
    """A watchfiles watcher on *root*; returns once it reported a sentinel change."""
    argv = [sys.executable, "-c", WATCHFILES, str(root), mode, str(step)]
    watcher = h.JsonProc(argv, env, stream="stdout", cwd=root.parent)
    sentinel = root / f".bench-ready-{watcher.pid}"
    seen = None
    try:
        for attempt in range(100):
            sentinel.write_text(str(attempt))
            if (seen := watcher.find(h.event("changed", path=str(sentinel)), 0, 0.5)) is not None:
                return watcher
    finally:
        sentinel.unlink(missing_ok=True)
        if seen is None:
            watcher.stop()
    raise RuntimeError(f"watchfiles ({mode}, step {step}) saw nothing for 50 s")


Columns = dict[str, list[float | None]]  # per edit, seconds to the event; None: not in time


def run_edits(
    bench: Bench, poll: bool, root: Path, sources: list[Path], count: int
) -> tuple[str, Columns, int]:
    """*count* edits of distinct modules, one at a time, the clock started when the write closed:
    the daemon's observer, the columns, and the pycs still there when ``invalidated`` arrived."""
    index = {source: i for i, source in enumerate(sources)}
    targets = random.Random(count).sample(sources, count)
    for source in targets:
        if not h.cache_path(source).exists():
            h.compile_pyc(source)
    daemon = bench.daemon([root], "--poll", "always" if poll else "auto")
    observer = next(iter(daemon.events("ready")[0].data["observers"].values()))["observer"]
    watchers: dict[str, h.JsonProc] = {}
    columns: Columns = {"cachewatchd, invalidated stamp": [], "cachewatchd, line read": []}
    pyc_left, deadline, jitter = 0, 10.0 if poll else 5.0, random.Random(7)
    try:
        for wmode, step in [("poll", 50)] if poll else [("native", 50), ("native", 1)]:
            label = f"watchfiles {'force_polling' if poll else 'native'}, step {step} ms"
            watchers[label] = start_watchfiles(root, wmode, step, bench.env)
            columns[label] = []
        for i, source in enumerate(targets):
            time.sleep(jitter.uniform(0, 1.0) if poll else jitter.uniform(0.02, 0.06))
            marks = {"daemon": daemon.count()} | {n: w.count() for n, w in watchers.items()}
            with open(source, "w", encoding="utf-8") as handle:
                handle.write(module_text(index[source], extra=f"\nEDIT = {i}\n"))
            t0 = time.time()
            hit = daemon.find(h.event("invalidated", source=str(source)), marks["daemon"], deadline)
            pyc_left += hit is not None and h.cache_path(source).exists()
            stamps: list[float | None] = [None, None] if hit is None else [hit.ts, hit.recv]
            for label, watcher in watchers.items():
                line = watcher.find(h.event("changed", path=str(source)), marks[label], deadline)
                stamps.append(None if line is None else line.ts)
            for column, stamp in zip(columns.values(), stamps, strict=True):
                column.append(None if stamp is None else stamp - t0)
    finally:
        for watcher in watchers.values():
            watcher.stop()
        daemon.stop()
    return observer, columns, pyc_left


def phase_edits(bench: Bench, args: argparse.Namespace, targets: h.Targets) -> None:
    root, sources = bench.tree("edits", args.modules)
    for mode in ("native", "polling"):
        observer, columns, left = run_edits(bench, mode == "polling", root, sources, args.edits)
        print(f"\nedit -> cache entry gone / event seen, {mode} (daemon observer: {observer}), "
              f"{args.edits} edits (ms)")  # fmt: skip
        widths = (-42, 8, 8, 8, 8, 8)
        print(h.row(("", "p50", "p90", "p99", "max", "missed"), widths))
        for name, values in columns.items():
            ms = [v * 1e3 for v in values if v is not None]
            stats = (h.pct(ms, 50), h.pct(ms, 90), h.pct(ms, 99), max(ms)) if ms else ()
            cells = [f"{x:.1f}" for x in stats] or ["-"] * 4
            print(h.row((name, *cells, len(values) - len(ms)), widths))
            if name.endswith("stamp") and mode == "native":
                p99 = stats[2] if stats else float("inf")
                targets.check(f"edit -> gone p99 native <= 5 ms ({p99:.1f} ms)", p99 <= 5)
        print(f"  pyc still present when the invalidated line arrived: {left}")
        if mode == "native":
            print(f"  load average: {h.loadavg()}")


# --- storm ---------------------------------------------------------------------------------------

STORM_EVENTS = ("invalidated", "rescan", "git-moved", "observer-fallback", "error")


def ensure_git_repo(work: Path, modules: int, regenerate: bool) -> tuple[Path, list[Path]]:
    """Branches ``a`` and ``b`` differing in every module (``b`` is longer); ``a`` checked out."""
    root = work / f"git-{modules}"
    stamp = f"1 {modules}\n"
    marker = root / ".git" / "bench-tree"
    if regenerate or not marker.exists() or marker.read_text() != stamp:
        print(f"  generating git repository {root} ({modules} modules, 2 branches)...", flush=True)
        shutil.rmtree(root, ignore_errors=True)
        for branch, extra in (("a", ""), ("b", "\nEXTRA = 1\n")):
            h.write_sources(root, modules, partial(module_text, version=branch, extra=extra))
            if branch == "a":
                (root / ".gitignore").write_text("__pycache__/\n")
            h.git(root, *(("init", "-q", "-b", "a") if branch == "a" else ("checkout", "-qb", "b")))
            h.git(root, "add", "-A")
            h.git(root, "commit", "-q", "-m", branch)
        h.git(root, "checkout", "-q", "a")
        marker.write_text(stamp)
    return root, h.tree_sources(root, modules)


def storm_once(daemon: h.JsonProc, bench: Bench, repo: Path, sources: list[Path]) -> dict[str, Any]:
    """One checkout of the other branch; the row of the storm table."""
    for source in sources:  # pycs of the checked-out branch, fresh
        h.compile_pyc(source)
    pycs = [h.cache_path(s) for s in sources]
    settled = wait_idle(daemon.pid)  # it verifies every pyc written: not part of the checkout
    before, cpu = bench.counters(daemon.pid), cpu_seconds(daemon.pid)
    target = "b" if h.git(repo, "branch", "--show-current") == "a" else "a"
    new = h.git(repo, "rev-parse", target)
    mark = daemon.count()
    started = time.time()
    h.git(repo, "checkout", "-q", target)
    git_end = time.time()
    moved = daemon.find(h.event("git-moved", new=new), mark, 120)
    while daemon.find(lambda e: e.event in STORM_EVENTS, daemon.count(), 2.0) is not None:
        pass  # until quiet: no storm line for 2 s
    storm = [line for line in daemon.lines[mark:] if line.event in STORM_EVENTS]
    removals = [e.ts for e in storm if e.event == "invalidated" or e.data.get("removed")]
    cpu = cpu_seconds(daemon.pid) - cpu
    after = bench.counters(daemon.pid)
    handled = max(line.ts for line in storm) - git_end if moved and storm else None
    restarts = daemon.events("restarted", mark) + daemon.events("restart-superseded", mark)
    asked = [line.ts - float(line.data.get("seconds", 0)) - git_end for line in restarts]
    return {
        "to": target, "idle s": f"{settled:.1f}", "git s": f"{git_end - started:.2f}",
        "handled s": f"{handled:.3f}" if handled is not None else "never",
        "last rm s": f"{max(removals) - git_end:.3f}" if removals else "-",
        "cpu s": f"{cpu:.2f}", "left": sum(p.exists() for p in pycs),
        "batches": after["batches"] - before["batches"], "events": after["events"] - before["events"],
        "overflow": sum("overflow" in str(e.data.get("reason")) for e in storm if e.event == "rescan"),
        "restarts": len(restarts), "restart s": f"{min(asked):.3f}" if asked else "-",
        "inval. lines": sum(line.event == "invalidated" for line in storm), "handled": handled,
    }  # fmt: skip


def phase_storm(bench: Bench, args: argparse.Namespace, targets: h.Targets) -> None:
    repo, sources = ensure_git_repo(bench.work, args.modules, bench.regenerate)
    if h.git(repo, "status", "--porcelain"):
        h.git(repo, "checkout", "-q", "-f", "a")
    daemon = bench.daemon([repo], child=[sys.executable, "-c", "import signal; signal.pause()"])
    try:
        runs = [storm_once(daemon, bench, repo, sources) for _ in range(args.storm_runs)]
    finally:
        daemon.stop()
    print(f"\ngit checkout of {args.modules} changed modules (pycs of the old branch present)")
    widths = (3, 7, 7, 11, 11, 7, 6, 9, 8, 10, 10, 11, 14)
    for cells in [list(runs[0])[:-1], *(list(r.values())[:-1] for r in runs)]:
        print(h.row(cells, widths))
    print("  handled: last storm event (git-moved comes after the repository audit) - git's exit")
    print("  last rm: last log line that removed something - git's exit; cpu: the daemon's, from")
    print("  just before git until 2 s after the storm; restarts: of a managed child (a sleeper);")
    print("  restart s: when the (first) restart began - git's exit; idle s: waited before git")
    print("  until the daemon and its checking processes used < 20 ms CPU in 0.5 s (it verifies")
    print("  the 10k pycs the round wrote first)")
    handled = [r["handled"] if r["handled"] is not None else float("inf") for r in runs]
    median, worst = statistics.median(handled), max(handled)
    ok = median <= 1.0 and not any(r["left"] for r in runs)  # medians: a shared, noisy machine
    targets.check(
        f"storm handled <= 1 s after git (median {median:.2f} s, worst {worst:.2f} s)", ok
    )
    restarts = [r["restarts"] for r in runs]
    targets.check(f"one restart per checkout ({restarts})", all(n == 1 for n in restarts))


# --- idle, RSS, polling --------------------------------------------------------------------------


def phase_idle(bench: Bench, args: argparse.Namespace, targets: h.Targets) -> None:
    """CPU over --idle-seconds, sampled every second so that the seconds holding a
    reconciliation (a ``rescan`` line) can be told from the rest."""
    root, _ = bench.tree("idle", args.modules)
    seconds: float = args.idle_seconds
    daemon = bench.daemon([root])
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
    busy = set()  # sample intervals that overlap [stamp - 1 s, stamp] of a rescan line
    for stamp in (line.ts for line in lines if line.event == "rescan"):
        busy |= {i for i in range(1, len(samples)) if samples[i - 1][0] < stamp < samples[i][0] + 1}
    reconcile = sum(samples[i][1] - samples[i - 1][1] for i in busy)
    cpu = samples[-1][1] - samples[0][1]
    events = dict(Counter(line.event for line in lines))
    per10 = cpu * 600 / seconds
    print(f"\nidle, {args.modules} modules with pycs, {seconds:.0f} s")
    print(f"  CPU {cpu:.3f} s ({per10:.3f} s per 10 min); RSS {rss:.1f} MB")
    print(f"  of which {reconcile:.3f} s in the {len(busy)} one-second samples around the rescan")
    print(f"  lines (reconciliation audits), {cpu - reconcile:.3f} s elsewhere")
    print(f"  (max sampled {peak_rss:.1f}, peak {hwm:.1f}); events {events}")
    if seconds < 600:
        print("  NOTE: shorter than 10 min: the reconciliation (every 600 s by default) is missing")
    targets.check(f"idle <= 0.1 s CPU per 10 min ({per10:.3f} s)", per10 <= 0.1)


def phase_rss(bench: Bench, args: argparse.Namespace, targets: h.Targets) -> None:
    widths = (-36, 8, 9, 9)
    print("\nRSS after ready + 5 s\n" + h.row(("", "ready s", "RSS MB", "peak MB"), widths))
    for count in (args.modules, args.big):
        root, _ = bench.tree("edits", count)
        started = time.monotonic()
        daemon = bench.daemon([root])
        try:
            ready = time.monotonic() - started
            time.sleep(5.0)
            rss, hwm = memory(daemon.pid)
        finally:
            daemon.stop()
        cells = (f"{count} modules with pycs", f"{ready:.2f}", f"{rss:.1f}", f"{hwm:.1f}")
        print(h.row(cells, widths))
        if count == args.big:
            targets.check(f"RSS < 60 MB at {count} files ({rss:.1f} MB)", rss < 60)


def phase_polling(bench: Bench, args: argparse.Namespace, targets: h.Targets) -> None:
    """One pass of cachewatchd's polling observer (its snapshot + diff) in-process, then the CPU
    per second of a ``--poll always`` daemon. The pass uses internal names, read-only."""
    from watchdog.utils.dirsnapshot import DirectorySnapshot, DirectorySnapshotDiff

    from cachewatchd.cache.walk import WalkOptions
    from cachewatchd.watch.polling import SourceLister, change_stat

    root, _ = bench.tree("edits", args.modules)
    lister = SourceLister(str(root), WalkOptions(), lambda path, exc: None)
    times: list[float] = []
    previous: DirectorySnapshot | None = None
    for _ in range(6):
        t0 = time.process_time()
        snap = DirectorySnapshot(str(root), stat=change_stat, listdir=lister)
        if previous is not None:
            DirectorySnapshotDiff(previous, snap)
        times.append(time.process_time() - t0)
        previous = snap
    daemon = bench.daemon([root], "--poll", "always")
    try:
        time.sleep(3.0)
        cpu0 = cpu_seconds(daemon.pid)
        time.sleep(args.poll_seconds)
        per_second = (cpu_seconds(daemon.pid) - cpu0) / args.poll_seconds
    finally:
        daemon.stop()
    ms = statistics.median(times[1:]) * 1e3
    print(f"\npolling, {args.modules} modules: one pass (snapshot + diff, in-process) {ms:.1f} ms "
          f"CPU for {len(snap.paths)} entries; --poll always daemon: {per_second * 1e3:.1f} ms "
          "CPU per s")  # fmt: skip
    targets.check(f"polling pass, {args.modules} files < 100 ms CPU ({ms:.1f} ms)", ms < 100)


PHASE_FUNCTIONS = {"edits": phase_edits, "storm": phase_storm, "idle": phase_idle,
                   "rss": phase_rss, "polling": phase_polling}  # fmt: skip
PHASES = tuple(PHASE_FUNCTIONS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny trees, few edits")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"of {','.join(PHASES)}")
    for name, (full, quick) in SIZES.items():
        kind = float if name.endswith("seconds") else int
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=kind, help=f"default {full:g}, with --quick {quick:g}")
    parser.add_argument("--work", type=Path, default=h.DEFAULT_WORK, help="trees (bench/.work)")
    parser.add_argument("--regenerate", action="store_true", help="rebuild the cached trees")
    parser.add_argument(
        "--daemon-args", default="", help='e.g. --daemon-args="--reconcile-interval 300"'
    )
    args = parser.parse_args(argv)
    for name, (full, quick) in SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, type(full)(quick if args.quick else full))
    phases = [p for p in args.phases.split(",") if p]
    if unknown := set(phases) - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    work = Path(os.path.realpath(args.work))
    work.mkdir(parents=True, exist_ok=True)
    home = work / f"home-{os.getpid()}"
    bench = Bench(work, h.child_env(home), args.regenerate, tuple(shlex.split(args.daemon_args)))
    h.print_header("bench_daemon", bench.env, work)
    print(f"  phases: {', '.join(phases)}; work: {work}; daemon args: {args.daemon_args or '-'}")
    if (outer := h.enclosing_repo(work)) is not None:
        print(f"  NOTE: {work} is inside the git work tree {outer}: the daemon follows its HEAD")
        print("  too, so commits there during the run trigger audits (--work elsewhere avoids it)")
    targets = h.Targets()
    try:
        for phase in phases:
            PHASE_FUNCTIONS[phase](bench, args, targets)
            print(f"  load average: {h.loadavg()}", flush=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    targets.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
