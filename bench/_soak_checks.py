"""The soak's checks: the daemon's resources sampled, the wait until it has settled, the exact
check of every loadable pyc, and what produced a finding. Used by ``bench_soak.py``.
"""

from __future__ import annotations

import importlib.util
import json
import marshal
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import CodeType
from typing import Any, NamedTuple

import _harness as h
import _soak_ops as so
import psutil

QUIET = 3.0  # seconds without a log line or a new batch
SETTLE_MAX = 120.0
REV = re.compile(r"r\d{7}")
TAG = sys.implementation.cache_tag


# --- watching the daemon --------------------------------------------------------------------------


class Sample(NamedTuple):
    t: float
    phase: str
    rss: float
    fds: int
    threads: int
    children: int
    load: float


class Sampler(threading.Thread):
    """The daemon's RSS (MB), open fds, threads and child processes every *every* seconds."""

    def __init__(self, pid: int, every: float) -> None:
        super().__init__(daemon=True)
        self.proc, self.every, self.phase = psutil.Process(pid), every, "rest"
        self.samples: list[Sample] = []
        self._done = threading.Event()

    def take(self) -> Sample:
        p = self.proc
        with p.oneshot():
            s = Sample(time.time(), self.phase, p.memory_info().rss / 2**20, p.num_fds(),
                       p.num_threads(), len(p.children()), os.getloadavg()[0])  # fmt: skip
        self.samples.append(s)
        return s

    def run(self) -> None:
        while not self._done.wait(self.every):
            try:
                self.take()
            except psutil.Error:
                return

    def stop(self) -> None:
        self._done.set()
        self.join(10)


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of value over time, per minute."""
    if len(points) < 2:
        return 0.0
    mt = sum(t for t, _ in points) / len(points)
    mv = sum(v for _, v in points) / len(points)
    var = sum((t - mt) ** 2 for t, _ in points)
    return 60 * sum((t - mt) * (v - mv) for t, v in points) / var if var else 0.0


def status(env: dict[str, str], cwd: Path, pid: int) -> dict[str, Any]:
    out = subprocess.run(h.daemon_argv("status", "--json"), env=env, cwd=cwd, capture_output=True,
                         check=True)  # fmt: skip
    return dict(next(r for r in json.loads(out.stdout)["daemons"] if r["pid"] == pid))


REMOVING = ("invalidated", "git-moved", "rescan", "rewatched")


def settle(daemon: h.JsonProc, env: dict[str, str], cwd: Path, look: float) -> float | None:
    """Seconds until the daemon is quiet: no log line for QUIET s, *look* s since its last
    removing line (its second looks are done), and its batch and event counters unchanged over
    the quiet period. None if not within SETTLE_MAX."""
    start = time.time()
    counters = status(env, cwd, daemon.pid)["counters"]
    while (now := time.time()) - start < SETTLE_MAX:
        lines = list(daemon.lines)
        last = max([start - QUIET, *(line.recv for line in lines[-1:])])
        removing = max([start - look, *(ln.recv for ln in lines if ln.event in REMOVING)])
        wait = max(last + QUIET, removing + look) - now
        if wait > 0:
            daemon.find(lambda _: True, len(lines), wait)
            continue
        again = status(env, cwd, daemon.pid)["counters"]
        if (again["batches"], again["events"]) == (counters["batches"], counters["events"]):
            return now - start
        counters = again
        daemon.find(lambda _: True, len(lines), QUIET)
    return None


# --- the exact check -------------------------------------------------------------------------------


def wrong_pycs(root: Path) -> tuple[int, int, list[dict[str, Any]]]:
    """Every pyc of this Python under *root* that CPython would load for its source (magic, flags,
    and the header's mtime and size, or the hash) compared with a fresh compile of the source:
    (pycs, loadable, the ones holding other code or failing to unmarshal)."""
    pycs = loadable = 0
    wrong: list[dict[str, Any]] = []
    for top, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".git"]
        if os.path.basename(top) != "__pycache__":
            continue
        for name in names:
            parts = name.split(".")
            if len(parts) < 3 or parts[1] != TAG or parts[-1] != "pyc":
                continue
            pycs += 1
            pyc, source = Path(top, name), Path(top).parent / f"{parts[0]}.py"
            try:
                data, src, st = pyc.read_bytes(), source.read_bytes(), source.stat()
            except OSError:
                continue  # no source: CPython ignores it
            flags = int.from_bytes(data[4:8], "little")
            if data[:4] != importlib.util.MAGIC_NUMBER:
                continue
            if flags == 0:
                loads = data[8:16] == ((int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
                                       + (st.st_size & 0xFFFFFFFF).to_bytes(4, "little"))  # fmt: skip
            else:
                loads = not flags & 2 or data[8:16] == importlib.util.source_hash(src)
            if not loads:
                continue
            loadable += 1
            opt = int(parts[2].removeprefix("opt-")) if len(parts) == 4 else 0
            fresh = compile(src, str(source), "exec", dont_inherit=True, optimize=opt)
            try:
                cached: CodeType | None = marshal.loads(data[16:])
            except (ValueError, EOFError, TypeError):
                cached = None
            if cached != fresh:
                held = [c for c in (cached.co_consts if cached else ()) if isinstance(c, str)]
                wrong.append({"pyc": str(pyc), "source": str(source), "flags": flags,
                              "pyc_rev": next((c for c in held if REV.fullmatch(c)), None),
                              "source_rev": next(iter(REV.findall(src.decode())), None),
                              "pyc_mtime": pyc.stat().st_mtime, "source_mtime": st.st_mtime,
                              "source_ctime": st.st_ctime, "size": st.st_size})  # fmt: skip
    return pycs, loadable, wrong


def explain(finding: dict[str, Any], soak: so.Soak, daemon: h.JsonProc) -> list[str]:
    """What produced a wrong pyc or a lost file: the ops on its path, the writes of the revisions
    involved, and the daemon's lines that name it."""
    rel = str(finding.get("rel") or Path(finding["source"]).relative_to(soak.root).as_posix())
    revs = {finding.get("pyc_rev"), finding.get("source_rev")} - {None}
    parts = rel.split("/")
    pieces = {"/".join(parts[:i]) for i in range(1, len(parts) + 1)}  # the file and its dirs
    ops = [o for o in soak.ops if o.get("rev") in revs or set(o["paths"]) & pieces]
    writes = {o["rev"]: f"op #{o['seq']}" for o in soak.ops if "rev" in o}
    out = [f"    {k} {finding[k]}: written by {writes.get(finding[k], 'the generator')}"
           for k in ("pyc_rev", "source_rev") if finding.get(k)]  # fmt: skip
    out += [f"    op #{o['seq']} +{o['t']:.3f}s {o['op']} {o['paths']} {o.get('rev', '')}"
            for o in ops[-15:]]  # fmt: skip
    names = (str(soak.root / rel), f'"{soak.root / rel.rpartition("/")[0]}"')
    for line in daemon.lines:
        text = json.dumps(line.data)
        if any(name in text for name in names):
            out.append(f"    daemon +{line.ts - soak.started:.3f}s {text[:300]}")
    return out[-40:]
