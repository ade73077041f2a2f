"""Soak benchmark: the daemon for N minutes under random edits, git operations and pyc writers.

The real daemon (``cachewatchd --foreground ROOT --log-format json``) watches a generated project
that is a git repository with three branches. An importer process, run without
``PYTHONDONTWRITEBYTECODE``, imports modules of the tree every few ms (half of the time one of the
20 most recently changed), so pycs are written all the time, some while their source is being
edited. For ``--minutes`` the script applies operations drawn from a seeded RNG and keeps a model
of every file they leave: in-place edits, same-size edits with the mtime put back, atomic saves,
creates, deletes, renames and swaps, directory renames, directories moved out of the root (edited
there) and back, ``mkdir -p`` storms; every ~``--git-every`` s a checkpoint, then 2-4 of ``git
checkout``, ``git stash`` / ``stash pop``, ``git commit``. A checkpoint, and the end, wait until
the daemon's log is quiet, its second looks included, and check: no pyc that this Python would
load holds other code than its source (an exact check of its own and ``cachewatchd scan --deep
--json``), no file lost or changed. Checkpoints come before the git operations because each of
those makes the daemon audit the repository, which would repair, and hide, what its events missed.
At the end also: the daemon's RSS, fds and threads flat, no errors. Method and results:
BENCHMARKS.md, ``## soak``. From the repository root: ``.venv/bin/python bench/bench_soak.py
--minutes 5`` (``--quick``: 30 s on a small tree).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import _harness as h
import _soak_checks as sc
import _soak_ops as so
import _soak_tree as tr

__all__ = ["main"]

IMPORTER = """\
import importlib, importlib.util, json, os, random, signal, sys, time
root, rng, stop = sys.argv[1], random.Random(int(sys.argv[2])), []
sys.path.insert(0, root)
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
stats = {"event": "importer", "imports": 0, "failed": 0, "written": 0}

def scan():  # (ctime, dotted name, path) of every module of the packages under root
    found = []
    for top, dirs, files in os.walk(root):
        rel = os.path.relpath(top, root)
        parts = [] if rel == "." else rel.split(os.sep)
        dirs[:] = [d for d in dirs if os.path.exists(os.path.join(top, d, "__init__.py"))]
        for name in files:
            if name.endswith(".py") and (parts or name != "__init__.py"):
                mod = parts + ([] if name == "__init__.py" else [name[:-3]])
                try:
                    found.append((os.stat(os.path.join(top, name)).st_ctime_ns, ".".join(mod),
                                  os.path.join(top, name)))
                except OSError:
                    pass
    return found

def pyc_id(path):
    try:
        st = os.stat(importlib.util.cache_from_source(path))
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns

names, hot, refresh, report = [], [], 0.0, 0.0
while not stop:
    now = time.monotonic()
    if now >= refresh:
        found = scan()
        names = [(m, p) for _, m, p in found]
        hot = [(m, p) for _, m, p in sorted(found, reverse=True)[:20]]
        for key, mod in list(sys.modules.items()):
            if str(getattr(mod, "__file__", None)).startswith(root + os.sep):
                del sys.modules[key]
        importlib.invalidate_caches()
        refresh = now + 0.5
    if now >= report:
        print(json.dumps(stats), flush=True)
        report = now + 1.0
    if not names:
        time.sleep(0.01)
        continue
    name, path = rng.choice(hot if rng.random() < 0.5 else names)
    before = pyc_id(path)
    sys.modules.pop(name, None)
    try:
        importlib.import_module(name)
        stats["imports"] += 1
    except Exception:
        stats["failed"] += 1
    after = pyc_id(path)
    stats["written"] += after is not None and after != before
    time.sleep(rng.uniform(0.001, 0.004))
print(json.dumps(stats), flush=True)
"""
SIZES: dict[str, tuple[float, float]] = {
    "minutes": (5.0, 0.5), "modules": (600, 60), "git_every": (20.0, 8.0),
}  # fmt: skip
WEIGHTS = {"edit": 18, "edit-restored": 18, "atomic-save": 14, "create": 8, "delete": 7,
           "rename": 8, "dir-rename": 3, "park": 4, "storm": 2, "rmtree": 2}  # fmt: skip
PARKED_WEIGHTS = {"unpark": 5, "edit-parked": 6}
GIT_WEIGHTS = {"checkout": 3, "stash": 2, "commit": 1}
SECOND_LOOK = 10.0  # the daemon's last second look, seconds after an invalidation (README)
RSS_SLOPE_MAX = 1.0  # MB per minute over the second half of the operations


# --- the run ---------------------------------------------------------------------------------------

DANGER = ("stale", "suspect", "sourceless", "corrupt")


class Run:
    """One soak: cycles of file operations, a checkpoint and a burst of git operations; the
    checks of each checkpoint and of the end, and what they found."""

    def __init__(self, soak: so.Soak, daemon: h.JsonProc, env: dict[str, str], cwd: Path) -> None:
        self.soak, self.daemon, self.env, self.cwd = soak, daemon, env, cwd
        self.checks: list[dict[str, Any]] = []
        self.findings: list[dict[str, Any]] = []

    def check_tree(self, at: str, settled: float | None) -> None:
        """The exact check of every pyc, ``scan --deep --json`` and the files against the model;
        the daemon has settled (its second looks are done), so anything wrong is a miss."""
        t = time.time() - self.soak.started
        pycs, loadable, wrong = sc.wrong_pycs(self.soak.root)
        argv = h.daemon_argv("scan", "--deep", "--json", str(self.soak.root))
        done = subprocess.run(argv, env=self.env, cwd=self.cwd, capture_output=True, text=True,
                              check=False)  # fmt: skip
        scan = json.loads(done.stdout) if done.stdout.strip() else {"summary": {}, "entries": []}
        bad = [e for e in scan["entries"] if e["state"] in DANGER
               and (e["state"] != "suspect" or e["tag"] == sc.TAG)]  # fmt: skip
        files = tr.compare(self.soak.files, self.soak.root)
        self.findings += [{**w, "at": at} for w in wrong]
        self.findings += [
            {"source": e["source"], "pyc": e["path"], "scan": e, "at": at} for e in bad
        ]
        self.findings += [
            {"rel": r, "kind": k, "at": at} for k in ("lost", "changed") for r in files[k]
        ]
        self.checks.append({"at": at, "t": t, "settle": settled, "pycs": pycs, "loadable": loadable,
                            "wrong": len(wrong), "scan": scan["summary"], "scan_bad": len(bad),
                            "scan_exit": done.returncode, "scan_errors": len(scan.get("errors") or []),
                            **{k: len(v) for k, v in files.items()}})  # fmt: skip

    def pause(self) -> None:
        """Mostly ~30 ms; one in 20 0.5-2 s (batches close, watchdog's move pairing expires)."""
        rng = self.soak.rng
        time.sleep(rng.uniform(0.5, 2.0) if rng.random() < 0.05 else min(rng.expovariate(33), 0.3))

    def operate(self, minutes: float, git_every: float, sampler: sc.Sampler) -> str | None:
        """Until *minutes* are over: file operations for about *git_every* s, a checkpoint (the
        parked directories back, the daemon settled, the tree checked: a miss of the event path is
        seen before a git audit could repair it), 2-4 git operations. The failure that stopped
        them, if one did."""
        soak, start = self.soak, time.monotonic()
        end, progress = start + minutes * 60, start + 30
        sampler.phase = "ops"
        try:
            while time.monotonic() < end:
                until = min(time.monotonic() + soak.rng.uniform(0.5, 1.5) * git_every, end)
                while (now := time.monotonic()) < until:
                    soak.step({**WEIGHTS, **(PARKED_WEIGHTS if soak.parked else {})})
                    if now >= progress:
                        print(f"  +{now - start:.0f} s: {len(soak.ops)} operations, "
                              f"{len(self.checks)} checkpoints, load {h.loadavg()}", flush=True)  # fmt: skip
                        progress += 30
                    self.pause()
                if time.monotonic() >= end:
                    break
                soak.unpark_all()
                self.check_tree(f"checkpoint {len(self.checks) + 1}",
                                sc.settle(self.daemon, self.env, self.cwd, SECOND_LOOK + 2.0))  # fmt: skip
                late = end - time.monotonic() < git_every / 2  # no checkout just before the end
                for _ in range(0 if late else soak.rng.randint(2, 4)):
                    soak.step(GIT_WEIGHTS)
                    self.pause()
            soak.unpark_all()
        except (OSError, subprocess.CalledProcessError) as exc:
            stderr = getattr(exc, "stderr", None) or ""
            return (
                f"operation #{len(soak.ops)} failed: {type(exc).__name__}: {exc} {stderr}".strip()
            )
        return None

    def report(self, targets: h.Targets) -> None:
        widths = (-14, 6, 8, 6, 9, 6, 18, 6, 10, 7)
        print("\nchecks (after the daemon settled; wrong: loadable pycs holding other code)")
        print(h.row(("", "+s", "settle", "pycs", "loadable", "wrong", "scan stale/susp.",
                     "exit", "lost/chg", "unexp"), widths))  # fmt: skip
        for c in self.checks:
            settle_s = "never" if c["settle"] is None else f"{c['settle']:.1f}"
            scan = f"{c['scan'].get('stale', '?')}/{c['scan'].get('suspect', '?')}"
            print(h.row((c["at"], f"{c['t']:.0f}", settle_s, c["pycs"], c["loadable"], c["wrong"],
                         scan, c["scan_exit"], f"{c['lost']}/{c['changed']}", c["unexpected"]),
                        widths))  # fmt: skip
        n, end = len(self.checks) - 1, self.checks[-1]
        settles = [c["settle"] for c in self.checks]
        shown = "never" if None in settles else f"{max(s or 0 for s in settles):.1f} s at most"
        targets.check(f"daemon quiet within {sc.SETTLE_MAX:.0f} s at every check ({shown})",
                      None not in settles)  # fmt: skip
        wrong = sum(c["wrong"] for c in self.checks)
        targets.check(f"stale left == 0, exact check of every loadable pyc, {n} checkpoints + the "
                      f"end: {wrong} (end: {end['wrong']} of {end['loadable']})", wrong == 0)  # fmt: skip
        totals = {k: sum(int(c["scan"].get(k, 0)) for c in self.checks) for k in DANGER}
        exits = sorted({c["scan_exit"] for c in self.checks})
        ok = sum(c["scan_bad"] for c in self.checks) == 0 and set(exits) <= {0, 3}
        targets.check(f"stale left == 0, scan --deep: {totals} (suspect of any Python), exit "
                      f"{'/'.join(map(str, exits))}", ok)  # fmt: skip
        lost = sum(c["lost"] + c["changed"] for c in self.checks)
        early = sum(e["kind"] != "unexpected" for e in self.soak.early.values())
        targets.check(f"files lost == 0: lost or changed at the checks {lost}, at git operations "
                      f"{early}; {len(self.soak.files)} files expected at the end", lost + early == 0)  # fmt: skip


def resources(
    samples: list[sc.Sample], before: sc.Sample, after: sc.Sample, targets: h.Targets
) -> None:
    ops = [s for s in samples if s.phase == "ops"]
    if not ops:
        print("  no samples during the operations")
        return
    mid = (ops[0].t + ops[-1].t) / 2
    widths = (-10, 8, 8, 8, 8, 16, 8)
    print("\ndaemon resources (sampled during the operations; rest: before them, after settle)")
    print(h.row(("", "rest", "first", "last", "max", "slope 2nd half", "rest"), widths))
    trends = {}
    for field in ("rss", "fds", "threads", "children"):
        values = [getattr(s, field) for s in ops]
        trends[field] = sc.slope([(s.t, getattr(s, field)) for s in ops if s.t >= mid])
        cells = [getattr(before, field), values[0], values[-1], max(values), getattr(after, field)]
        shown = [f"{v:.1f}" if field == "rss" else str(v) for v in cells]
        print(h.row((field, *shown[:4], f"{trends[field]:+.2f}/min", shown[4]), widths))
    print(f"  {len(samples)} samples; load average (1 min) max {max(s.load for s in samples):.2f}")
    rss = [s.rss for s in ops]
    targets.check(f"RSS flat: slope over the 2nd half of the operations {trends['rss']:+.2f} "
                  f"MB/min < {RSS_SLOPE_MAX} (first {rss[0]:.1f}, last {rss[-1]:.1f}, max "
                  f"{max(rss):.1f} MB)", trends["rss"] < RSS_SLOPE_MAX)  # fmt: skip
    for field in ("fds", "threads"):
        b, a, m = getattr(before, field), getattr(after, field), max(getattr(s, field) for s in ops)
        targets.check(f"{field} flat: at rest {b} before, {a} after (max {m})", a <= b)


def check_daemon(daemon: h.JsonProc, record: dict[str, Any], alive: bool, t: h.Targets) -> None:
    events = Counter(line.event for line in daemon.lines)
    bad = [line for line in daemon.lines if line.event in ("error", "thread-died")]
    print(f"\ndaemon: counters {record['counters']}; state {record.get('state')}")
    print(f"  log events: {dict(events)}")
    reasons = Counter(str(line.data.get("reason")) for line in daemon.events("rescan"))
    looks = [line for line in daemon.events("invalidated") if line.data.get("reason")]
    print(f"  rescans by reason: {dict(reasons)}; second looks that removed a pyc: {len(looks)}")
    for line in bad[:10]:
        print(f"  {line.event}: {json.dumps(line.data)[:300]}")
    errors = record["counters"].get("errors", 0)
    t.check(f"daemon errors == 0: counter {errors}, error/thread-died lines {len(bad)}",
            errors == 0 and not bad)  # fmt: skip
    t.check("daemon alive until stopped", alive)


def soak_run(args: argparse.Namespace, soak: so.Soak, env: dict[str, str], work: Path) -> bool:
    """The daemon, the importer and the operations; the checks; True if every target passed."""
    soak_dir, targets = soak.root.parent, h.Targets()
    daemon = h.start_daemon(env, work, [soak.root])
    importer: h.JsonProc | None = None
    sampler = sc.Sampler(daemon.pid, args.sample_every)
    run = Run(soak, daemon, env, work)
    try:
        ready = daemon.events("ready")[0].data["observers"][str(soak.root)]
        print(f"  daemon pid {daemon.pid}: {ready['observer']} ({ready['reason']})", flush=True)
        sc.settle(daemon, env, work, 0.0)
        before = sampler.take()
        sampler.start()
        argv = [sys.executable, "-c", IMPORTER, str(soak.root), str(args.seed + 1)]
        importer_env = h.child_env(soak_dir / "home", bytecode=True)
        importer = h.JsonProc(argv, importer_env, stream="stdout", cwd=soak_dir)
        soak.started = time.time()
        aborted = run.operate(args.minutes, args.git_every, sampler)
        took = time.time() - soak.started
        importer_alive = importer.proc.poll() is None
        importer.stop()
        stats = importer.events("importer")[-1].data if importer.events("importer") else {}
        sampler.phase = "settle"
        run.check_tree("end", sc.settle(daemon, env, work, SECOND_LOOK + 2.0))
        after = sampler.take()
        sampler.stop()
        record, alive = sc.status(env, work, daemon.pid), daemon.proc.poll() is None
        ops = Counter(o["op"] for o in soak.ops)
        print(f"\noperations: {len(soak.ops)} in {took:.0f} s, checkpoints included: {dict(ops)}")
        print(f"importer: {stats.get('imports')} imports, {stats.get('failed')} failed, "
              f"{stats.get('written')} pycs written; load average {h.loadavg()}")  # fmt: skip
        targets.check(f"operations ran to the end{': ' + aborted if aborted else ''}",
                      aborted is None)  # fmt: skip
        targets.check("importer ran throughout", importer_alive)
        run.report(targets)
        resources(sampler.samples, before, after, targets)
        check_daemon(daemon, record, alive, targets)
    finally:
        sampler.stop()
        if importer is not None:
            importer.stop()
        daemon.stop()
        for name, rows in (("daemon", [ln.data for ln in daemon.lines]), ("checks", run.checks),
                           ("samples", [s._asdict() for s in sampler.samples])):  # fmt: skip
            with open(soak_dir / f"{name}.jsonl", "w", encoding="utf-8") as out:
                out.writelines(json.dumps(row) + "\n" for row in rows)
    for finding in run.findings[:10]:
        print(f"\nFINDING {json.dumps(finding)}")
        print("\n".join(sc.explain(finding, soak, daemon)))
    (soak_dir / "findings.json").write_text(json.dumps(run.findings, indent=1), encoding="utf-8")
    return targets.report()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 30 s, a small tree")
    parser.add_argument("--minutes", type=float, help="of operations (default 5, --quick 0.5)")
    parser.add_argument("--modules", type=int, help="of the generated tree (600, --quick 60)")
    parser.add_argument("--git-every", type=float, help="seconds between checkpoints (20, 8)")
    parser.add_argument("--seed", type=int, default=1, help="of the operations' RNG (1)")
    parser.add_argument("--sample-every", type=float, default=2.0, help="seconds (2)")
    parser.add_argument("--work", type=Path, default=h.DEFAULT_WORK, help="(bench/.work)")
    parser.add_argument("--keep", action="store_true", help="keep the tree and logs even on PASS")
    args = parser.parse_args(argv)
    for name, (full, quick) in SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, type(full)(quick if args.quick else full))
    work = Path(os.path.realpath(args.work))
    soak_dir = work / f"soak-{os.getpid()}"
    root, parking = soak_dir / "tree", soak_dir / "parked"
    for directory in (root, parking):
        directory.mkdir(parents=True)
    env = h.child_env(soak_dir / "home")
    h.print_header("bench_soak", env, work)
    print(f"  {args.minutes:g} min of operations, {args.modules} modules, a checkpoint and git "
          f"operations every ~{args.git_every:g} s, seed {args.seed}; in {soak_dir}")  # fmt: skip
    if (outer := h.enclosing_repo(work)) is not None:
        print(f"  NOTE: {work} is inside the git work tree {outer} (--work elsewhere avoids it)")
    with open(soak_dir / "ops.jsonl", "w", encoding="utf-8") as log:
        soak = so.Soak(root, parking, args.seed, log)
        soak.generate(args.modules)
        print(f"  tree: {len(soak.files)} files, branches {', '.join(soak.branches)}", flush=True)
        passed = soak_run(args, soak, env, work)
    if passed and not args.keep:
        shutil.rmtree(soak_dir, ignore_errors=True)
    else:
        print(f"kept {soak_dir}: ops, daemon, checks, samples (.jsonl), findings.json, tree/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
