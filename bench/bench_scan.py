"""Scan benchmark: ``cachewatchd scan`` against find, compileall and pyclean, whole processes.

Trees: a generated project of 20k modules with timestamp pycs (cached under ``bench/.work/``) and the
running interpreter's stdlib + site-packages. Each command is timed as a whole process (startup
counts) on a warm cache, rounds interleaved, median and min reported. Targets (issue 2), on the
generated tree: cachewatchd <= 0.5x compileall and <= 4x find. In-process rows show the engine alone
and the floor of its system calls, to tell engine cost from startup.

Run with the venv holding cachewatchd and pyclean: ``/work/venv/bin/python bench/bench_scan.py``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import json
import os
import platform
import py_compile
import random
import re
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["main"]

WORK = Path(__file__).resolve().parent / ".work"
TREE_FORMAT = 1  # bump when the generator's output changes
MODULES_PER_PACKAGE = 20
BRANCHING = 6  # 6 + 36 + 216 + rest: four levels of nesting at 20k modules
TARGETS = (("compileall", 0.5), ("find", 4.0))
BIN = Path(sys.executable).parent  # not resolved: the venv's own bin directory


@dataclass
class Command:
    name: str
    argv: list[str]
    ok_codes: frozenset[int] = frozenset({0})
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)


@dataclass
class Inventory:
    sources: int = 0
    cache_entries: int = 0
    needs_compile: list[str] = field(default_factory=list)
    """Sources compileall would (try to) compile: no pyc, or a header that disagrees."""


def child_env() -> dict[str, str]:
    """The ambient environment minus every PYTHON* variable and SOURCE_DATE_EPOCH, plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.pop("SOURCE_DATE_EPOCH", None)  # would switch compileall to checked-hash pycs
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # timed runs write nothing; pycs are prepared explicitly
    return env


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- the generated tree ------------------------------------------------------------------------


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


def module_source(rng: random.Random, name: str) -> str:
    """A plausible module of a few hundred bytes."""
    lines = [f'"""{name}: generated for the cachewatchd scan benchmark."""', "", "import os", ""]
    lines.append(f"LIMIT_{rng.randrange(100)} = {rng.randrange(10**6)}")
    for f in range(rng.randint(1, 3)):
        lines += ["", f"def func_{f}(x: int, y: int = {rng.randrange(100)}) -> int:"]
        lines += ["    total = x + y", f"    for i in range({rng.randrange(2, 50)}):"]
        lines += [f"        total += i * {rng.randrange(1, 9)}", "    return total"]
    if rng.random() < 0.5:
        lines += [
            "",
            f"class Thing{rng.randrange(100)}:",
            "    def __init__(self, v: int) -> None:",
        ]
        lines += ["        self.v = v", "", "    def path(self) -> str:"]
        lines += ["        return os.path.join('x', str(self.v))"]
    return "\n".join(lines) + "\n"


def generate_tree(root: Path, modules: int) -> None:
    """Write *modules* sources in packages of MODULES_PER_PACKAGE, then a timestamp pyc for each."""
    rng = random.Random(modules)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    sources: list[Path] = []
    for index, rel in enumerate(package_dirs(-(-modules // MODULES_PER_PACKAGE))):
        pkg = tmp / rel
        pkg.mkdir(parents=True)
        names = ["__init__"] + [f"mod{j:02d}" for j in range(MODULES_PER_PACKAGE - 1)]
        for name in names[: modules - len(sources)]:
            path = pkg / f"{name}.py"
            path.write_text(module_source(rng, f"{rel}.{name}"), encoding="utf-8")
            sources.append(path)
        if index % 4 == 0:
            (pkg / "data.json").write_text('{"answer": 42}\n', encoding="utf-8")
        if len(rel.parts) == 1:
            (pkg / "README.md").write_text(f"# {rel}\n", encoding="utf-8")
    for path in sources:  # after every source: no pyc predates a source's ctime
        py_compile.compile(
            str(path), doraise=True, invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP
        )
    (tmp / ".bench-tree.json").write_text(json.dumps(tree_marker(modules)), encoding="utf-8")
    tmp.rename(root)


def tree_marker(modules: int) -> dict[str, object]:
    return {"format": TREE_FORMAT, "modules": modules, "tag": sys.implementation.cache_tag}


def ensure_tree(modules: int, regenerate: bool) -> Path:
    root = WORK / f"tree-{modules}"
    try:
        found = json.loads((root / ".bench-tree.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        found = None
    if found == tree_marker(modules) and not regenerate:
        print(f"reusing {root}")
        return root
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    generate_tree(root, modules)
    print(f"generated {root} in {time.perf_counter() - started:.1f} s")
    return root


def real_tree() -> list[str]:
    """The interpreter's stdlib, plus site-packages when it is not inside the stdlib."""
    paths = sysconfig.get_paths()
    roots = [paths["stdlib"]]
    for key in ("purelib", "platlib"):
        p = paths[key]
        if os.path.isdir(p) and not any(p == r or p.startswith(r + os.sep) for r in roots):
            roots.append(p)
    return roots


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


def run_once(cmd: Command, env: dict[str, str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(
        cmd.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, check=False
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in cmd.ok_codes:
        tail = proc.stderr.decode(errors="replace")[-600:]
        raise SystemExit(f"bench_scan: {cmd.name} exited {proc.returncode}: {cmd.argv}\n{tail}")
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def time_commands(commands: list[Command], reps: int, env: dict[str, str]) -> None:
    """One untimed warm-up round, then *reps* rounds, the order rotated every round."""
    for cmd in commands:
        run_once(cmd, env)
    for rep in range(reps):
        shift = rep % len(commands)
        for cmd in commands[shift:] + commands[:shift]:
            wall, cpu = run_once(cmd, env)
            cmd.walls.append(wall)
            cmd.cpus.append(cpu)


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
    """Median and min seconds of audit() in this process, and of the bare I/O loop."""
    from cachewatchd.cache.audit import audit

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


def report_tree(commands: list[Command], engine: list[tuple[str, float, float]], n: int) -> None:
    print(
        f"  {'command':<22}{'median s':>9}{'min s':>8}{'cpu s':>7}{'entries/s':>11}  cachewatchd/x"
    )
    cw = statistics.median(commands[0].walls)
    for cmd in commands:
        med = statistics.median(cmd.walls)
        ratio = f"{cw / med:.2f}x" if cmd is not commands[0] else ""
        cpu = statistics.median(cmd.cpus)
        print(
            f"  {cmd.name:<22}{med:>9.3f}{min(cmd.walls):>8.3f}{cpu:>7.3f}{n / med / 1e3:>10.1f}k  {ratio}"
        )
    for name, med, low in engine:
        print(f"  {name:<22}{med:>9.3f}{low:>8.3f}{'':>7}{n / med / 1e3:>10.1f}k")


def check_targets(commands: list[Command]) -> bool:
    medians = {c.name: statistics.median(c.walls) for c in commands}
    passed = True
    for other, limit in TARGETS:
        ratio = medians["cachewatchd"] / medians[other]
        passed &= ratio <= limit
        verdict = "PASS" if ratio <= limit else "MISS"
        print(f"  target cachewatchd <= {limit}x {other}: {ratio:.2f}x  {verdict}")
    return passed


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
    print(f"  {reps} rounds, whole processes, load average now {loadavg()}")
    report_tree(commands, engine, entries)
    return commands


def startup(env: dict[str, str], reps: int) -> None:
    empty = WORK / "empty"
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
    parser.add_argument("--quick", action="store_true", help="2000 modules, 5 rounds")
    parser.add_argument("--modules", type=int, help="size of the generated tree (default 20000)")
    parser.add_argument("--reps", type=int, help="timed rounds per tree (default 15)")
    parser.add_argument("--regenerate", action="store_true", help="rebuild the cached tree")
    parser.add_argument("--no-real", action="store_true", help="skip stdlib + site-packages")
    args = parser.parse_args(argv)
    modules = args.modules or (2000 if args.quick else 20000)
    reps = args.reps or (5 if args.quick else 15)
    env = child_env()
    print(f"bench_scan  {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"  {platform.python_implementation()} {platform.python_version()} ({sys.executable})")
    print(
        f"  {os.cpu_count()} cores, {platform.machine()}, {platform.system()} {platform.release()}"
    )
    print(f"  load average at start: {loadavg()}")
    print(f"  {prepare_tools()}")
    root = ensure_tree(modules, args.regenerate)
    commands = bench_tree(f"generated tree, {modules} modules", [str(root)], reps, env)
    print("  targets (issue 2: generated tree, whole process, medians):")
    passed = check_targets(commands)
    if not args.no_real:
        bench_tree("real tree, stdlib + site-packages", real_tree(), max(3, reps // 2), env)
    startup(env, reps)
    print(f"\nload average at end: {loadavg()}")
    print("all targets PASS" if passed else "some targets MISS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
