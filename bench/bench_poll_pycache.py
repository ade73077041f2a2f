"""One polling pass with and without the ``__pycache__`` stats: what seeing new pycs costs.

A polled root's snapshot now holds each ``__pycache__`` (its stat, none of its children), so a pyc
written there moves the directory's mtime and the poller lists that one directory. This measures
one pass (snapshot + diff, CPU time, in-process) over the daemon benchmark's 10k-module tree with
pycs (``bench_daemon.py``'s ``edits-N``), side by side in interleaved rounds:

- ``before``: the ``SourceLister`` and ``change_stat`` of commit ``--ref`` (default 13bee82, the last one that left
  ``__pycache__`` out of the snapshots), loaded from git;
- ``after``: the working tree's.

Medians of ``--reps`` rounds and their ratio. Read-only use of internal names, like
``bench_daemon.py``'s polling phase.
``.venv/bin/python bench/bench_poll_pycache.py --work ../cwbench`` (``--modules N``, ``--reps N``,
``--ref COMMIT``, ``--quick``).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _harness as h

from cachewatchd.cache.walk import WalkOptions
from cachewatchd.watch.polling import SourceLister, change_stat

REPO = Path(__file__).resolve().parents[1]


def _old_polling(ref: str, tmp: Path) -> Any:
    text = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{ref}:cachewatchd/watch/polling.py"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    path = tmp / "old_polling.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("old_polling", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pass(root: Path, polling: tuple[Any, Any], before: Any) -> tuple[float, Any, int]:
    from watchdog.utils.dirsnapshot import DirectorySnapshot, DirectorySnapshotDiff

    t0 = time.process_time()
    stat, lister = polling
    snap = DirectorySnapshot(str(root), stat=stat, listdir=lister)
    if before is not None:
        DirectorySnapshotDiff(before, snap)
    return time.process_time() - t0, snap, len(snap.paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "bench" / ".work")
    parser.add_argument("--modules", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--ref", default="13bee82")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.modules, args.reps = 200, 3
    from bench_daemon import module_text

    root = args.work / f"edits-{args.modules}"
    h.ensure_tree(root, args.modules, "daemon", module_text, False)
    with tempfile.TemporaryDirectory() as tmp:
        old = _old_polling(args.ref, Path(tmp))
        listers = {
            "before": (old.change_stat, old.SourceLister(str(root), WalkOptions(), _ignore)),
            "after": (change_stat, SourceLister(str(root), WalkOptions(), _ignore)),
        }
        times: dict[str, list[float]] = {name: [] for name in listers}
        snaps: dict[str, Any] = dict.fromkeys(listers)
        entries: dict[str, int] = {}
        for _ in range(args.reps + 1):  # the first round warms up and is left out
            for name, lister in listers.items():
                took, snaps[name], entries[name] = _pass(root, lister, snaps[name])
                times[name].append(took)
    medians = {name: statistics.median(values[1:]) * 1e3 for name, values in times.items()}
    print(f"polling pass over {args.modules} modules, medians of {args.reps} interleaved rounds")
    for name, ms in medians.items():
        print(f"  {name:7} {ms:6.1f} ms CPU  ({entries[name]} entries)")
    print(f"  after / before: {medians['after'] / medians['before']:.3f}")
    print(f"  target < 100 ms: {'PASS' if medians['after'] < 100 else 'MISS'}")


def _ignore(path: str, exc: OSError) -> None:
    pass


if __name__ == "__main__":
    main()
