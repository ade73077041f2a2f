"""One polling pass over a tree on sshfs: what the content hash costs where ctime cannot be trusted.

sshfs reports the mtime as the ctime, so the poller also hashes file contents there
(``cachewatchd.watch.content_stat``): every file whose size, mtime or inode changed at once, and the
unchanged ones in turn, 256 a pass. This measures one pass (snapshot + diff, wall and CPU time) of a
generated tree of N modules, side by side in interleaved rounds:

- ``local``: the same files on the local disk, plain stat (what a local root's poller costs);
- ``sshfs stat``: through a real sshfs mount (a private sshd on 127.0.0.1), plain stat: the pass
  before this change, which misses same-size, mtime-restored edits there;
- ``sshfs hash, steady``: stat + the 256 files hashed in turn (every pass of a quiet tree);
- ``sshfs hash, full``: stat + every file hashed (the first pass, or after a tree-wide change).

Medians of ``--reps`` rounds, ratios against ``sshfs stat``. Needs sshfs and openssh-server
(``.ci/run`` installs them). Read-only use of internal names, like ``bench_daemon.py``'s polling
phase. ``.venv/bin/python bench/bench_mount_poll.py`` (``--modules N``, ``--reps N``, ``--quick``).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _harness as h

from cachewatchd.cache.walk import WalkOptions
from cachewatchd.watch.content_stat import HASH_BUDGET, ContentStat
from cachewatchd.watch.polling import SourceLister, change_stat


def _pass(root: Path, stat: Callable[[str], Any], before: Any) -> tuple[float, float, Any]:
    from watchdog.utils.dirsnapshot import DirectorySnapshot, DirectorySnapshotDiff

    lister = SourceLister(str(root), WalkOptions(), lambda path, exc: None)
    wall, cpu = time.perf_counter(), time.process_time()
    snap = DirectorySnapshot(str(root), stat=stat, listdir=lister)
    DirectorySnapshotDiff(before, snap)
    return time.perf_counter() - wall, time.process_time() - cpu, snap


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="200 modules, 2 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.modules, args.reps = 200, 2
    h.print_header("bench_mount_poll", h.child_env(), Path.cwd())
    from tests.support.mounts import sshfs  # the test suite's private sshd + sshfs

    with tempfile.TemporaryDirectory(prefix="cw-mount-poll-") as tmp:
        base = Path(tmp).resolve()
        other, client = base / "other", base / "client"
        try:
            mount = sshfs(other, client, base / "sshd")
            mounted = mount.__enter__()
        except BaseException as exc:  # pytest's Skipped: the tool is missing here
            print(f"cannot mount sshfs here: {exc}")
            return 2
        try:
            h.write_sources(other / "tree", args.modules, lambda i, rel: f"X = {i}\n")
            run(mounted.client / "tree", other / "tree", args)
        finally:
            with contextlib.suppress(Exception):
                mount.__exit__(None, None, None)
    return 0


def run(remote: Path, local: Path, args: argparse.Namespace) -> None:
    from watchdog.utils.dirsnapshot import EmptyDirectorySnapshot

    steady = ContentStat()
    cases: dict[str, tuple[Path, Callable[[], Callable[[str], Any]]]] = {
        "local": (local, lambda: change_stat),
        "sshfs stat": (remote, lambda: change_stat),
        "sshfs hash, steady": (remote, lambda: _next(steady)),
        "sshfs hash, full": (remote, lambda: _next(ContentStat())),
    }
    walls: dict[str, list[float]] = {name: [] for name in cases}
    cpus: dict[str, list[float]] = {name: [] for name in cases}
    refs: dict[str, Any] = dict.fromkeys(cases, EmptyDirectorySnapshot())
    for rep, name in h.interleaved(list(cases), args.reps):  # round -1 warms every case up
        root, make = cases[name]
        wall, cpu, refs[name] = _pass(root, make(), refs[name])
        if rep >= 0:
            walls[name].append(wall)
            cpus[name].append(cpu)
    base = statistics.median(walls["sshfs stat"])
    widths = (-22, 12, 12, 10)
    print(f"\none polling pass, {args.modules} modules, medians of {args.reps} interleaved rounds")
    print(h.row(("", "wall ms", "CPU ms", "wall x"), widths))
    for name in cases:
        wall = statistics.median(walls[name])
        cpu = statistics.median(cpus[name])
        print(h.row((name, f"{wall * 1e3:.1f}", f"{cpu * 1e3:.1f}", f"{wall / base:.2f}"), widths))
    passes = -(-args.modules // HASH_BUDGET)
    cycle = 1.0 + statistics.median(walls["sshfs hash, steady"])
    print(
        f"\na same-size, mtime-restored edit on sshfs is seen within {passes} passes "
        f"({HASH_BUDGET} files hashed a pass): about {passes * cycle:.0f} s at the default 1 s "
        f"interval ({cycle:.1f} s per pass with its own time); any other edit at the next pass"
    )


def _next(stat: ContentStat) -> ContentStat:
    stat.new_pass()
    return stat


if __name__ == "__main__":
    sys.exit(main())
