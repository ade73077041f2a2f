"""What the scan benchmarks share (``bench_scan.py``, ``bench_deep.py``): the generated tree, the
real tree (stdlib + site-packages), and whole-process timing of commands."""

from __future__ import annotations

import os
import random
import resource
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

import _harness as h

__all__ = [
    "BIN",
    "Command",
    "generated_tree",
    "module_source",
    "real_tree",
    "run_once",
    "time_commands",
]

BIN = Path(sys.executable).parent  # not resolved: the venv's own bin directory


@dataclass
class Command:
    name: str
    argv: list[str]
    ok_codes: frozenset[int] = frozenset({0})
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)


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


def generated_tree(work: Path, modules: int, regenerate: bool) -> Path:
    """``WORK/tree-N``: N modules with timestamp pycs, plus some data files; built once."""
    rng = random.Random()

    def text(index: int, rel: Path) -> str:
        if index == 0:  # one stream over the sources in order: the same tree every time
            rng.seed(modules)
        return module_source(rng, f"{rel.parent}.{rel.stem}")

    def data_files(tmp: Path) -> None:
        for index, rel in enumerate(h.package_dirs(-(-modules // h.PER_PACKAGE))):
            if index % 4 == 0:
                (tmp / rel / "data.json").write_text('{"answer": 42}\n', encoding="utf-8")
            if len(rel.parts) == 1:
                (tmp / rel / "README.md").write_text(f"# {rel}\n", encoding="utf-8")

    root = work / f"tree-{modules}"
    h.ensure_tree(root, modules, "scan", text, regenerate, data_files)
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
    for rep, cmd in h.interleaved(commands, reps):
        wall, cpu = run_once(cmd, env)
        if rep >= 0:
            cmd.walls.append(wall)
            cmd.cpus.append(cpu)
