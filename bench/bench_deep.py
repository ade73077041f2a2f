"""Deep-scan benchmark: ``scan --deep`` with the verification index against plain ``scan``.

Issue 9's targets: a repeated ``scan --deep`` of an unchanged 20k-module tree costs at most 2x a
plain ``scan`` (the index settles every pyc its exact check already settled: no compile, no
unmarshal), and the first ``--deep`` of the stdlib + site-packages on all cores (a fresh index:
every pyc of this Python compiled and compared in the checking processes).

Whole processes (start-up counts), the generated tree of ``bench_scan.py`` (``_scan_trees.py``) (cached under ``--work``),
an index of the benchmark's own (``CACHEWATCHD_CACHE_DIR``). Plain and repeated deep rounds are
interleaved; medians and min. The first deep runs are timed once per fresh index (``--firsts``).

``.venv/bin/python bench/bench_deep.py`` (``--quick``: 500 modules, a smoke test).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _harness as h
import _scan_trees as scan

__all__ = ["main"]

TARGET = 2.0
"""Repeated ``--deep`` <= this x plain ``scan`` on the generated tree."""


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def command(name: str, roots: list[str], *flags: str) -> scan.Command:
    argv = [str(scan.BIN / "cachewatchd"), "scan", *roots, "--json", *flags]
    return scan.Command(name, argv, ok_codes=frozenset({0, 1}))


def first_deep(roots: list[str], env: dict[str, str], jobs: int, runs: int) -> list[float]:
    """Wall times of ``scan --deep --jobs JOBS`` each with a fresh, empty index."""
    walls = []
    for _ in range(runs):
        index = Path(tempfile.mkdtemp(prefix="cw-index-"))
        try:
            cmd = command(f"first --deep --jobs {jobs}", roots, "--deep", "--jobs", str(jobs))
            wall, cpu = scan.run_once(cmd, {**env, "CACHEWATCHD_CACHE_DIR": str(index)})
            size = sum(p.stat().st_size for p in index.iterdir()) >> 20
            print(f"  {cmd.name}: {wall:.2f} s wall, {cpu:.2f} s CPU, index {size} MiB")
            walls.append(wall)
        finally:
            shutil.rmtree(index, ignore_errors=True)
    return walls


def repeated(roots: list[str], env: dict[str, str], reps: int) -> tuple[float, float]:
    """Medians of plain ``scan`` and of a repeated ``scan --deep`` (index filled first)."""
    plain = command("scan", roots)
    deep = command("scan --deep (index warm)", roots, "--deep")
    started = time.perf_counter()
    scan.run_once(command("fill", roots, "--deep", "--jobs", str(cores())), env)
    print(f"  filling the index (--deep, all cores): {time.perf_counter() - started:.2f} s")
    scan.time_commands([plain, deep], reps, env)
    widths = (-28, 10, 10, 10)
    print(h.row(("command", "median s", "min s", "CPU s"), widths))
    for cmd in (plain, deep):
        cells = (cmd.name, statistics.median(cmd.walls), min(cmd.walls))
        print(
            h.row(
                (
                    *[f"{c:.3f}" if isinstance(c, float) else c for c in cells],
                    f"{statistics.median(cmd.cpus):.3f}",
                ),
                widths,
            )
        )
    return statistics.median(deep.walls), statistics.median(plain.walls)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 modules, 2 rounds, 1 first run")
    parser.add_argument("--modules", type=int, help="size of the generated tree (default 20000)")
    parser.add_argument("--reps", type=int, help="timed rounds (default 11)")
    parser.add_argument("--firsts", type=int, help="first --deep runs per tree (default 3)")
    parser.add_argument("--no-real", action="store_true", help="skip stdlib + site-packages")
    parser.add_argument(
        "--work", type=Path, default=h.DEFAULT_WORK, help="where trees are cached (bench/.work)"
    )
    args = parser.parse_args(argv)
    modules = args.modules or (500 if args.quick else 20000)
    reps = args.reps or (2 if args.quick else 11)
    firsts = args.firsts or (1 if args.quick else 3)
    work = Path(os.path.realpath(args.work))
    work.mkdir(parents=True, exist_ok=True)
    env = h.child_env(python_vars=False)
    h.print_header("bench_deep", env, work)
    root = [str(scan.generated_tree(work, modules, regenerate=False))]
    targets = h.Targets()
    with tempfile.TemporaryDirectory(prefix="cw-index-") as index:
        indexed = {**env, "CACHEWATCHD_CACHE_DIR": index}
        print(f"\ngenerated tree, {modules} modules: repeated --deep vs plain scan")
        deep, plain = repeated(root, indexed, reps)
        targets.ratio(
            f"repeated --deep <= {TARGET:g}x scan ({modules} modules)", deep, plain, TARGET
        )
    print(f"\ngenerated tree, {modules} modules: the first --deep")
    first_deep(root, env, cores(), firsts)
    if not args.no_real:
        print(f"\nstdlib + site-packages: the first --deep on all {cores()} cores")
        real = scan.real_tree()
        walls = first_deep(real, env, cores(), firsts)
        print(f"  median {statistics.median(walls):.2f} s")
        print("  and with --jobs 1, for comparison:")
        first_deep(real, env, 1, 1)
    print(f"\nload average at end: {h.loadavg()}")
    targets.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
