"""Start-up benchmark: ``cachewatchd scan`` of a tiny tree, whole process, beside ``python -c pass``
and ``pyclean --dry-run`` on the same tree.

``scan`` runs in pre-commit hooks and CI on every commit, so on a small tree its time is the
interpreter's start plus what the CLI imports. Each command runs as the user runs it (the console
script of the venv), rounds interleaved, one untimed warm-up round (it writes the pycs),
``PYTHONDONTWRITEBYTECODE`` unset; medians and minimums. ``--base REV`` adds the package of an
earlier commit (``git archive REV cachewatchd``, first on ``PYTHONPATH``) run by the same console
script. Target: scan <= 25 ms.

Run from the repository root: ``.venv/bin/python bench/bench_startup.py [--rounds 30] [--base REV]``
(``--quick``: 3 rounds).
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import _harness as h

__all__ = ["main"]

TARGET_MS = 25.0
BIN = Path(sys.executable).parent  # not resolved: the venv's own bin directory
REPO = Path(__file__).resolve().parent.parent


def _base_tree(rev: str, into: Path) -> Path:
    """The ``cachewatchd`` package of *rev*, unpacked under *into*."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "cachewatchd"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--base", metavar="REV", help="also time the package of this commit")
    parser.add_argument("--quick", action="store_true", help="3 rounds: a smoke test")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    env = h.child_env(python_vars=False, bytecode=True)
    with tempfile.TemporaryDirectory(prefix="cw-startup-") as tmp:
        work = Path(tmp)
        (work / "tiny" / "pkg").mkdir(parents=True)
        (work / "tiny" / "pkg" / "m.py").write_text("x = 1\n")
        tiny = str(work / "tiny")
        commands: dict[str, tuple[list[str], dict[str, str]]] = {
            "python -c pass": ([str(BIN / "python"), "-c", "pass"], env),
            "cachewatchd scan": ([str(BIN / "cachewatchd"), "scan", tiny], env),
        }
        if args.base:
            base = _base_tree(args.base, work / "base")
            commands[f"cachewatchd scan ({args.base})"] = (
                [str(BIN / "cachewatchd"), "scan", tiny],
                {**env, "PYTHONPATH": str(base)},
            )
        if (BIN / "pyclean").exists():
            commands["pyclean --dry-run"] = ([str(BIN / "pyclean"), "--dry-run", tiny], env)
        h.print_header("bench_startup", env, work)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for rep, name in h.interleaved(list(commands), rounds):
            cmd, cmd_env = commands[name]
            start = time.perf_counter()
            done = subprocess.run(cmd, check=False, env=cmd_env, cwd=work, capture_output=True)
            elapsed = (time.perf_counter() - start) * 1000
            if done.returncode not in (0, 1):
                sys.stderr.write(f"{name} failed ({done.returncode}): {done.stderr.decode()}\n")
                return 3
            if rep >= 0:
                times[name].append(elapsed)
    print(f"\nwhole process, {rounds} rounds interleaved (ms):")
    widths = (-28, 10, 8)
    print(h.row(("command", "median", "min"), widths))
    for name, values in times.items():
        print(h.row((name, f"{statistics.median(values):.1f}", f"{min(values):.1f}"), widths))
    targets = h.Targets()
    scan = statistics.median(times["cachewatchd scan"])
    targets.check(f"scan of a tiny tree {scan:.1f} ms <= {TARGET_MS:.0f} ms", scan <= TARGET_MS)
    return 0 if targets.report() else 1


if __name__ == "__main__":
    sys.exit(main())
