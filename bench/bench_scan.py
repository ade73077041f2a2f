"""Scan benchmark: ``cachewatchd scan`` against find, compileall and pyclean, whole processes.

Trees: a generated project of 20k modules with timestamp pycs (cached under ``--work DIR``, default
``bench/.work/``) and the running interpreter's stdlib + site-packages. Each command is timed as a
whole process (startup counts) on a warm cache, rounds interleaved, median and min reported.
Targets, on the generated tree: cachewatchd <= 0.5x compileall and <= 4x find. In-process rows show
the engine alone and the floor of its system calls, to tell engine cost from startup.

Run from the repository root with the venv holding cachewatchd and pyclean (``pip install -e
'.[bench]'``): ``.venv/bin/python bench/bench_scan.py`` (``--quick``: a smoke test of a few seconds).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import py_compile
import re
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import _harness as h
from _scan_trees import BIN, Command, generated_tree, real_tree, time_commands

__all__ = ["main"]

TARGETS = (("compileall", 0.5), ("find", 4.0))


@dataclass
class Inventory:
    sources: int = 0
    cache_entries: int = 0
    needs_compile: list[str] = field(default_factory=list)
    """Sources compileall would (try to) compile: no pyc, or a header that disagrees."""


# --- the trees -----------------------------------------------------------------------------------


# --- inventory and safety checks -----------------------------------------------------------------


def compileall_would_compile(path: str) -> bool:
    """compileall's own up-to-date test (3.11): the first 12 bytes of the opt-0 pyc."""
    try:
        mtime = int(os.stat(path).st_mtime) & 0xFFFFFFFF
        expect = struct.pack("<4sLL", importlib.util.MAGIC_NUMBER, 0, mtime)
        with open(importlib.util.cache_from_source(path), "rb") as f:
            return f.read(12) != expect
    except OSError:
        return True


def inventory(roots: list[str]) -> Inventory:
    inv = Inventory()
    for root in roots:
        for dirpath, _, filenames in os.walk(root):
            if os.path.basename(dirpath) == "__pycache__":
                inv.cache_entries += sum(f.endswith(".pyc") for f in filenames)
                continue
            for name in sorted(filenames):
                if name.endswith((".pyc", ".pyo")):
                    inv.cache_entries += 1
                elif name.endswith(".py"):
                    inv.sources += 1
                    if compileall_would_compile(os.path.join(dirpath, name)):
                        inv.needs_compile.append(os.path.join(dirpath, name))
    return inv


def snapshot(roots: list[str]) -> dict[str, tuple[int, int, int]]:
    """(mtime_ns, size, inode) of every pyc, to prove the compared tools wrote nothing."""
    snap: dict[str, tuple[int, int, int]] = {}
    for root in roots:
        for dirpath, _, filenames in os.walk(root):
            for name in filenames:
                if name.endswith((".pyc", ".pyo")):
                    st = os.stat(os.path.join(dirpath, name))
                    snap[os.path.join(dirpath, name)] = (st.st_mtime_ns, st.st_size, st.st_ino)
    return snap


def prepare_tools() -> str:
    """Give cachewatchd's modules pycs, as an installed package has (checked-hash: never stale)."""
    spec = importlib.util.find_spec("cachewatchd")
    if spec is None or spec.origin is None:
        raise SystemExit("bench_scan: cachewatchd is not importable from this interpreter")
    package = Path(spec.origin).parent
    sources = sorted(package.rglob("*.py"))
    for source in sources:
        py_compile.compile(
            str(source), doraise=True, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH
        )
    return f"{package}: {len(sources)} modules given checked-hash pycs (an edit never goes stale)"


# --- timing --------------------------------------------------------------------------------------


def tree_commands(roots: list[str], needs_compile: list[str]) -> list[Command]:
    exclude = []
    if needs_compile:  # exact paths: compileall then writes nothing
        exclude = ["-x", "^(?:" + "|".join(map(re.escape, needs_compile)) + ")$"]
    scan = [str(BIN / "cachewatchd"), "scan", *roots, "--json"]
    return [
        Command("cachewatchd", scan, frozenset({0, 1})),
        Command("find", ["find", *roots, "-name", "*.py", "-o", "-name", "*.pyc"]),
        Command("compileall", [sys.executable, "-m", "compileall", "-q", *exclude, *roots]),
        Command("pyclean", [str(BIN / "pyclean"), "--dry-run", *roots]),
    ]


def io_floor(roots: list[str]) -> int:
    """The system calls a scan cannot avoid, in a bare loop: walk, stat each source, open +
    fstat + read 16 bytes + close each ``__pycache__`` pyc. No judging, no objects kept."""
    count = 0
    stack = list(roots)
    while stack:
        with os.scandir(stack.pop()) as it:
            entries = list(it)
        sources = {e.name: e for e in entries if e.name.endswith(".py")}
        for e in entries:
            if e.name == "__pycache__":
                with os.scandir(e.path) as it:
                    for c in it:
                        source = sources.get(c.name.split(".", 1)[0] + ".py")
                        if source is not None and c.name.endswith(".pyc"):
                            source.stat()
                            fd = os.open(c.path, os.O_RDONLY | os.O_NONBLOCK)
                            os.fstat(fd)
                            os.read(fd, 16)
                            os.close(fd)
                            count += 1
            elif e.is_dir(follow_symlinks=False):
                stack.append(e.path)
    return count


def in_process(roots: list[str], reps: int) -> list[tuple[str, float, float]]:
    """Median and min seconds of the public ``cachewatchd.audit()`` in this process, and of the
    bare I/O loop."""
    from cachewatchd import audit

    paths = [Path(r) for r in roots]
    rows: list[tuple[str, Callable[[], object]]] = [
        ("audit() in-process", lambda: audit(paths)),
        ("I/O floor, bare loop", lambda: io_floor(roots)),
    ]
    out = []
    for name, fn in rows:
        times = []
        for _ in range(reps + 1):
            gc.collect()
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        out.append((name, statistics.median(times[1:]), min(times[1:])))
    return out


def scan_summary(roots: list[str], env: dict[str, str]) -> dict[str, int]:
    argv = [str(BIN / "cachewatchd"), "scan", *roots, "--json"]
    proc = subprocess.run(argv, capture_output=True, env=env, check=False)
    summary: dict[str, int] = json.loads(proc.stdout)["summary"]
    return summary


# --- reporting -----------------------------------------------------------------------------------


WIDTHS = (-22, 9, 8, 7, 11, 14)


def report_tree(commands: list[Command], engine: list[tuple[str, float, float]], n: int) -> None:
    print(h.row(("command", "median s", "min s", "cpu s", "entries/s", "cachewatchd/x"), WIDTHS))
    cw = statistics.median(commands[0].walls)
    for cmd in commands:
        med = statistics.median(cmd.walls)
        ratio = f"{cw / med:.2f}x" if cmd is not commands[0] else ""
        cpu = statistics.median(cmd.cpus)
        cells = (
            cmd.name,
            f"{med:.3f}",
            f"{min(cmd.walls):.3f}",
            f"{cpu:.3f}",
            f"{n / med / 1e3:.1f}k",
        )
        print(h.row((*cells, ratio), WIDTHS))
    for name, med, low in engine:
        print(h.row((name, f"{med:.3f}", f"{low:.3f}", "", f"{n / med / 1e3:.1f}k", ""), WIDTHS))


def check_targets(commands: list[Command], targets: h.Targets) -> None:
    """The targets on the generated tree: whole processes, medians."""
    medians = {c.name: statistics.median(c.walls) for c in commands}
    for other, limit in TARGETS:
        name = f"cachewatchd <= {limit}x {other} (generated tree, whole process, medians)"
        targets.ratio(name, medians["cachewatchd"], medians[other], limit)


def bench_tree(title: str, roots: list[str], reps: int, env: dict[str, str]) -> list[Command]:
    inv = inventory(roots)
    print(f"\n{title}: {' '.join(roots)}")
    print(f"  {inv.sources} .py sources, {inv.cache_entries} cache entries")
    if inv.needs_compile:
        print(f"  {len(inv.needs_compile)} sources have no up-to-date pyc (compileall's test);")
        print("  compileall gets them as exact -x paths so that it writes nothing, e.g.:")
        for path in inv.needs_compile[:4]:
            print(f"    {path}")
    summary = scan_summary(roots, env)
    entries = sum(summary.values())
    print(f"  cachewatchd judges {entries} entries: {summary}")
    if summary.get("fresh") != entries:
        print("  NOTE: not every entry is fresh (for the generated tree: run with --regenerate)")
    before = snapshot(roots)
    commands = tree_commands(roots, inv.needs_compile)
    time_commands(commands, reps, env)
    engine = in_process(roots, reps)
    unchanged = snapshot(roots) == before
    print(f"  pycs unchanged after all runs (nothing wrote): {'yes' if unchanged else 'NO'}")
    print(f"  {reps} rounds, whole processes, load average now {h.loadavg()}")
    report_tree(commands, engine, entries)
    return commands


def startup(env: dict[str, str], reps: int, work: Path) -> None:
    empty = work / "empty"
    empty.mkdir(parents=True, exist_ok=True)
    commands = [
        Command("python -c pass", [sys.executable, "-c", "pass"]),
        Command("cachewatchd --version", [str(BIN / "cachewatchd"), "--version"]),
        Command("scan of an empty dir", [str(BIN / "cachewatchd"), "scan", str(empty), "--json"]),
    ]
    time_commands(commands, reps, env)
    print("\nstartup, whole process")
    for cmd in commands:
        med, low = statistics.median(cmd.walls), min(cmd.walls)
        print(f"  {cmd.name:<24}{med:>8.3f} s median{low:>8.3f} s min")
    argv = [sys.executable, "-X", "importtime", "-m", "cachewatchd", "scan", str(empty), "--json"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    top: list[tuple[int, str]] = []
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit() and not parts[2].startswith("   "):
            top.append((int(parts[1]), parts[2].strip()))
    top.sort(reverse=True)
    print(f"  python -X importtime -m cachewatchd scan: {sum(t for t, _ in top) / 1e3:.1f} ms")
    for us, name in top[:8]:
        print(f"    {us / 1e3:>7.1f} ms  {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 500 modules, 2 rounds (1 on the real tree)",
    )
    parser.add_argument("--modules", type=int, help="size of the generated tree (default 20000)")
    parser.add_argument("--reps", type=int, help="timed rounds per tree (default 15)")
    parser.add_argument("--regenerate", action="store_true", help="rebuild the cached tree")
    parser.add_argument("--no-real", action="store_true", help="skip stdlib + site-packages")
    parser.add_argument(
        "--work", type=Path, default=h.DEFAULT_WORK, help="where trees are cached (bench/.work)"
    )
    args = parser.parse_args(argv)
    modules = args.modules or (500 if args.quick else 20000)
    reps = args.reps or (2 if args.quick else 15)
    work = Path(os.path.realpath(args.work))
    work.mkdir(parents=True, exist_ok=True)
    env = h.child_env(python_vars=False)
    h.print_header("bench_scan", env, work)
    print(f"  {prepare_tools()}")
    root = generated_tree(work, modules, args.regenerate)
    commands = bench_tree(f"generated tree, {modules} modules", [str(root)], reps, env)
    targets = h.Targets()
    check_targets(commands, targets)
    if not args.no_real:
        real_reps = 1 if args.quick else max(3, reps // 2)
        bench_tree("real tree, stdlib + site-packages", real_tree(), real_reps, env)
    startup(env, reps, work)
    print(f"\nload average at end: {h.loadavg()}")
    targets.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
