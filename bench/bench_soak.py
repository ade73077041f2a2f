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
import importlib.util
import json
import marshal
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import CodeType
from typing import Any, NamedTuple, TextIO

import _harness as h
import psutil

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
QUIET = 3.0  # seconds without a log line or a new batch
SETTLE_MAX = 120.0
RSS_SLOPE_MAX = 1.0  # MB per minute over the second half of the operations
REV = re.compile(r"r\d{7}")
SKIP_DIRS = {".git", "__pycache__"}
TAG = sys.implementation.cache_tag


FUNC = "\n\ndef f{i}(x: int) -> int:\n    y = [x * k for k in range({i} + 3)]\n    return sum(y)\n"


def module_text(rev: str, pad: int, funcs: int = 0) -> bytes:
    """A module of the soak tree: *rev* names the write that produced it (fixed width, so a new
    revision with the same *pad* and *funcs* is a same-size edit); *funcs* functions make its
    compile take longer (20: 0.4 ms, 1200: about 30 ms on the machine of BENCHMARKS.md)."""
    body = "".join(FUNC.format(i=i) for i in range(funcs))
    return (
        f'"""A module of the soak tree."""\n\nREV = "{rev}"\nPAD = "{"x" * pad}"\n{body}'.encode()
    )


def text_for(rel: str, rev: str, pad: int, funcs: int = 0) -> bytes:
    if rel.endswith(".py"):
        return module_text(rev, pad, funcs)
    return f"{rev}\n{'x' * pad}\n".encode()


def funcs_of(data: bytes) -> int:
    return data.count(b"\ndef f")


def pad_of(rel: str, data: bytes) -> int:
    """The *pad* that gives a same-size edit of *data*."""
    return len(data) - len(text_for(rel, "r0000000", 0, funcs_of(data)))


def storm_top(rel: str) -> str | None:
    """The top directory of the storm holding *rel*, if any."""
    parts = rel.split("/")
    i = next((i for i, part in enumerate(parts[:-1]) if part.startswith("storm")), None)
    return None if i is None else "/".join(parts[: i + 1])


def read_tree(base: Path) -> dict[str, bytes]:
    """Every file under *base* but ``.git`` and ``__pycache__``: relative path -> content."""
    found: dict[str, bytes] = {}
    for top, dirs, names in os.walk(base):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(names):
            path = Path(top, name)
            found[path.relative_to(base).as_posix()] = path.read_bytes()
    return found


def compare(expected: dict[str, bytes], base: Path) -> dict[str, list[str]]:
    """Files the model expects that are missing or hold other bytes, and files it does not know."""
    found = read_tree(base) if base.exists() else {}
    return {
        "lost": [rel for rel in expected if rel not in found],
        "changed": [rel for rel in expected if rel in found and found[rel] != expected[rel]],
        "unexpected": [rel for rel in found if rel not in expected],
    }


class Soak:
    """The tree, the operations on it and the model of the files they leave."""

    def __init__(self, root: Path, parking: Path, seed: int, log: TextIO) -> None:
        self.root, self.parking, self.rng, self.log = root, parking, random.Random(seed), log
        self.files: dict[str, bytes] = {}
        self.branches: dict[str, dict[str, bytes]] = {}
        self.branch = "main"
        self.parked: dict[str, tuple[str, dict[str, bytes]]] = {}  # name -> (from, files)
        self.gone: dict[str, tuple[int, int]] = {}  # deleted path -> (size, mtime_ns)
        self.recent: list[str] = []
        self.serial = 0
        self.size = 0  # files at the start
        self.ops: list[dict[str, Any]] = []
        self.early: dict[str, dict[str, Any]] = {}  # path -> first discrepancy seen at a git op
        self.started = time.time()

    # --- model helpers

    def rev(self) -> str:
        self.serial += 1
        return f"r{self.serial:07d}"

    def record(self, op: str, paths: list[str], **extra: Any) -> None:
        entry = {"seq": len(self.ops), "t": round(time.time() - self.started, 3), "op": op,
                 "branch": self.branch, "paths": paths, **extra}  # fmt: skip
        self.ops.append(entry)
        self.log.write(json.dumps(entry) + "\n")
        self.recent = [p for p in self.recent if p not in paths][-19:] + paths[-1:]

    def write(self, rel: str, data: bytes, base: Path | None = None) -> None:
        (base or self.root).joinpath(rel).write_bytes(data)  # open(w), write, close: in place

    def packages(self) -> list[str]:
        return [rel[: -len("/__init__.py")] for rel in self.files if rel.endswith("/__init__.py")]

    def pick(self, modules: bool = True, inits: bool = True) -> str | None:
        def ok(rel: str) -> bool:  # never .gitignore: it keeps __pycache__ out of the commits
            return (
                (not modules or rel.endswith(".py"))
                and (inits or "__init__" not in rel)
                and rel != ".gitignore"
            )

        pool = [r for r in self.recent if r in self.files and ok(r)]
        if not pool or self.rng.random() < 0.6:
            pool = [r for r in self.files if ok(r)]
        return self.rng.choice(pool) if pool else None

    def move_prefix(self, old: str, new: str, source: dict[str, bytes]) -> dict[str, bytes]:
        """The entries of *source* under directory *old*, removed from it, keyed under *new*."""
        moved = {rel: data for rel, data in source.items() if rel.startswith(old + "/")}
        for rel in moved:
            del source[rel]
        return {new + rel[len(old) :]: data for rel, data in moved.items()}

    # --- the tree

    def generate(self, modules: int) -> None:
        """Packages of modules with resources, committed on ``main``; ``feature`` and ``release``
        branch from it with same-size edits of a fifth of the modules, deletes and creates."""

        def text(i: int, _: Path) -> str:  # one module in 40 is big: a generated _pb2 of sorts
            return module_text(self.rev(), i % 8, 1200 if i % 40 == 7 else 20).decode()

        h.write_sources(self.root, modules, text)
        for i, package in enumerate(sorted({p.rsplit("/", 1)[0] for p in read_tree(self.root)})):
            if i % 3 == 0:
                self.write(f"{package}/data.txt", text_for("data.txt", self.rev(), i % 5))
            if i % 5 == 0:
                self.write(f"{package}/api.pyi", text_for("api.pyi", self.rev(), 2))
        self.write("README.txt", b"A generated tree for bench_soak.\n")
        self.write(".gitignore", b"__pycache__/\n")
        h.git(self.root, "init", "-q", "-b", "main")
        h.git(self.root, "config", "gc.auto", "0")
        self.commit_all(check=False)
        for branch in ("feature", "release"):
            h.git(self.root, "checkout", "-q", "-b", branch, "main")
            self.files = read_tree(self.root)
            mods = [r for r in self.files if r.endswith(".py")]
            for rel in self.rng.sample(mods, len(mods) // 5):
                old = self.files[rel]
                self.write(rel, module_text(self.rev(), pad_of(rel, old), funcs_of(old)))
            for rel in self.rng.sample([m for m in mods if "__init__" not in m], 3):
                (self.root / rel).unlink()
            for package in self.rng.sample(self.packages(), min(3, len(self.packages()))):
                self.write(f"{package}/new{self.serial}.py", module_text(self.rev(), 3, 20))
            self.branch = branch
            self.commit_all(check=False)
        h.git(self.root, "checkout", "-q", "main")
        self.branch, self.files = "main", dict(self.branches["main"])
        self.size = len(self.files)
        for rel in self.files:
            if rel.endswith(".py"):
                h.compile_pyc(self.root / rel)

    def stage_all(self) -> bool:
        """Stage the tree as it is; whether it differs from HEAD. Every file is hashed again:
        git trusts size, mtime and ctime (whole seconds), so it misses a same-size edit whose
        mtime was put back within the second of its last look, and a checkout then loses it."""
        h.git(self.root, "rm", "-r", "-q", "-f", "--cached", "--ignore-unmatch", ".")
        h.git(self.root, "add", "-A")
        return bool(h.git(self.root, "status", "--porcelain"))

    def commit_all(self, check: bool = True) -> None:
        """Compare the tree with the model (a first sighting of a lost file), then commit it."""
        if check:
            for kind, rels in compare(self.files, self.root).items():
                for rel in rels:
                    self.early.setdefault(rel, {"kind": kind, "seq": len(self.ops)})
        if self.stage_all():
            h.git(self.root, "commit", "-q", "-m", f"soak {self.serial}")
        self.branches[self.branch] = read_tree(self.root) if not check else dict(self.files)

    # --- operations

    def op_edit(self) -> None:
        rel = self.pick(modules=self.rng.random() < 0.8)
        if rel is None:
            return
        rev, old = self.rev(), self.files[rel]
        self.files[rel] = text_for(rel, rev, self.rng.randrange(40), funcs_of(old))
        self.write(rel, self.files[rel])
        self.record("edit", [rel], rev=rev)

    def same_size(self, rel: str, files: dict[str, bytes], base: Path, op: str) -> None:
        """A same-size edit, mtime put back: the old pyc's header still matches."""
        path, rev = base / rel, self.rev()
        st = os.stat(path)
        files[rel] = text_for(rel, rev, pad_of(rel, files[rel]), funcs_of(files[rel]))
        self.write(rel, files[rel], base)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        self.record(op, [rel], rev=rev)

    def op_edit_restored(self) -> None:
        if (rel := self.pick()) is not None:
            self.same_size(rel, self.files, self.root, "edit-restored")

    def op_atomic_save(self) -> None:
        """Write a temp file beside, rename over; half of the time same size with the mtime of the
        file replaced (rsync -t, an editor keeping times)."""
        if (rel := self.pick()) is None:
            return
        path, rev, keep = self.root / rel, self.rev(), self.rng.random() < 0.5
        st = os.stat(path)
        old = self.files[rel]
        pad = pad_of(rel, old) if keep else self.rng.randrange(40)
        tmp = path.with_name(f".{path.name}.{rev}.tmp")
        self.files[rel] = text_for(rel, rev, pad, funcs_of(old))
        tmp.write_bytes(self.files[rel])
        if keep:
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp, path)
        self.record("atomic-save", [rel], rev=rev, kept_size_mtime=keep)

    def op_create(self) -> None:
        """A new module or resource; or a deleted file back with other bytes of the same size and
        its old mtime (``tar x``, ``cp -p`` of another version)."""
        packages, rev = self.packages(), self.rev()
        back = [r for r in self.gone if r not in self.files and r.rsplit("/", 1)[0] in packages]
        if back and self.rng.random() < 0.3:
            rel = self.rng.choice(back)
            size, mtime = self.gone.pop(rel)
            if (pad := size - len(text_for(rel, rev, 0))) >= 0:
                self.files[rel] = text_for(rel, rev, pad)
                self.write(rel, self.files[rel])
                os.utime(self.root / rel, ns=(mtime, mtime))
                self.record("create-restored", [rel], rev=rev)
                return
        if not packages:
            return
        name = f"new{self.serial}.py" if self.rng.random() < 0.85 else f"res{self.serial}.txt"
        rel = f"{self.rng.choice(packages)}/{name}"
        self.files[rel] = text_for(rel, rev, self.rng.randrange(40), 20)
        self.write(rel, self.files[rel])
        self.record("create", [rel], rev=rev)

    def forget(self, rel: str) -> None:
        st = os.stat(self.root / rel)
        self.gone[rel] = (st.st_size, st.st_mtime_ns)
        del self.files[rel]

    def op_delete(self) -> None:
        if (rel := self.pick(modules=self.rng.random() < 0.9, inits=False)) is not None:
            self.forget(rel)
            (self.root / rel).unlink()
            self.record("delete", [rel])

    def op_rename(self) -> None:
        """A module moved (same package or another); or two same-size modules swapped after
        their mtimes were made equal (each one's pyc header then matches the other's source)."""
        if (a := self.pick(inits=False)) is None:
            return
        same = [r for r, d in self.files.items() if r.endswith(".py") and r != a
                and "__init__" not in r and len(d) == len(self.files[a])]  # fmt: skip
        if same and self.rng.random() < 0.35:
            b = self.rng.choice(same)
            pa, pb = self.root / a, self.root / b
            st = os.stat(pa)
            os.utime(pb, ns=(st.st_atime_ns, st.st_mtime_ns))
            tmp = pa.with_name(f".swap{self.serial}.tmp")
            os.rename(pa, tmp)
            os.rename(pb, pa)
            os.rename(tmp, pb)
            self.files[a], self.files[b] = self.files[b], self.files[a]
            self.record("swap", [a, b])
            return
        package = (
            a.rsplit("/", 1)[0] if self.rng.random() < 0.5 else self.rng.choice(self.packages())
        )
        stem = a.rsplit("/", 1)[1].split("_")[0].removesuffix(".py")
        new = f"{package}/{stem}_m{self.serial}{Path(a).suffix}"
        self.serial += 1
        data = self.files[a]
        self.forget(a)
        os.rename(self.root / a, self.root / new)
        self.files[new] = data
        self.record("rename", [a, new])

    def pick_package(self, min_depth: int = 0) -> str | None:
        pool = [p for p in self.packages() if p.count("/") >= min_depth]
        return self.rng.choice(pool) if pool else None

    def op_dir_rename(self) -> None:
        if (old := self.pick_package()) is None:
            return
        parent, _, leaf = old.rpartition("/")
        new = f"{parent}/{leaf.split('_')[0]}_d{self.serial}".lstrip("/")
        self.serial += 1
        os.rename(self.root / old, self.root / new)
        self.files.update(self.move_prefix(old, new, self.files))
        self.record("dir-rename", [old, new])

    def op_park(self) -> None:
        """A package moved out of the root; half of the time back within 0.05-0.4 s."""
        if (rel := self.pick_package()) is None:
            return
        name = f"p{self.serial}"
        self.serial += 1
        os.rename(self.root / rel, self.parking / name)
        self.parked[name] = (rel, self.move_prefix(rel, name, self.files))
        self.record("park", [rel], parked=name)
        if self.rng.random() < 0.5:
            time.sleep(self.rng.uniform(0.05, 0.4))
            self.unpark(name)

    def unpark(self, name: str) -> None:
        """Back where it was, or at the top when that place is gone or taken."""
        rel, files = self.parked.pop(name)
        parent = rel.rpartition("/")[0]
        if not (self.root / parent).is_dir() or (self.root / rel).exists():
            rel = f"{rel.rpartition('/')[2].split('_')[0]}_u{self.serial}"
            self.serial += 1
        os.rename(self.parking / name, self.root / rel)
        self.files.update({rel + key[len(name) :]: data for key, data in files.items()})
        self.record("unpark", [rel], parked=name)

    def op_unpark(self) -> None:
        self.unpark(self.rng.choice(list(self.parked)))

    def op_edit_parked(self) -> None:
        """A same-size, mtime-restored edit of a module while its package is outside the root."""
        name = self.rng.choice(list(self.parked))
        mods = [r for r in self.parked[name][1] if r.endswith(".py")]
        if mods:
            self.same_size(self.rng.choice(mods), self.parked[name][1], self.parking, "edit-parked")

    def op_storm(self) -> None:
        """``mkdir -p`` of 1-2 chains 3-6 packages deep, then their modules, deepest or top first."""
        base = self.pick_package() if self.rng.random() < 0.5 else None
        top = f"{base}/storm{self.serial}" if base else f"storm{self.serial}"
        self.serial += 1
        written: list[str] = []
        for chain in range(self.rng.randint(1, 2)):
            levels, path = [top], f"{top}/c{chain}"
            for i in range(self.rng.randint(3, 6)):
                levels.append(path)
                path += f"/l{i}"
            os.makedirs(self.root / levels[-1], exist_ok=True)
            for level in levels[:: self.rng.choice((1, -1))]:
                for name in ["__init__", *(f"m{j}" for j in range(self.rng.randint(0, 2)))]:
                    rel = f"{level}/{name}.py"
                    if rel not in self.files:
                        self.files[rel] = module_text(self.rev(), self.rng.randrange(8), 5)
                        self.write(rel, self.files[rel])
                        written.append(rel)
        self.record("storm", [top], files=len(written))

    def op_rmtree(self) -> None:
        """``rm -rf`` of a storm; while the tree is bigger than at the start, sometimes of a
        package instead."""
        storms = sorted({top for rel in self.files if (top := storm_top(rel))})
        rel = self.rng.choice(storms) if storms else None
        if len(self.files) > self.size and self.rng.random() < 0.3:  # the tree stays its size
            rel = self.pick_package(min_depth=1)
        if rel is None:
            return
        self.move_prefix(rel, rel, self.files)  # dropped from the model
        for _ in range(20):  # rm -rf: the importer's temp pycs come and go meanwhile
            shutil.rmtree(self.root / rel, ignore_errors=True)
            if not (self.root / rel).exists():
                break
        else:
            raise OSError(f"rmtree {rel}: still there after 20 passes")
        self.record("rmtree", [rel])

    def unpark_all(self) -> None:
        while self.parked:
            self.unpark(next(iter(self.parked)))

    def op_checkout(self) -> None:
        self.unpark_all()
        self.commit_all()
        target = self.rng.choice([b for b in self.branches if b != self.branch])
        h.git(self.root, "checkout", "-q", target)
        self.branch, self.files, self.recent = target, dict(self.branches[target]), []
        self.record("checkout", [], to=target)

    def op_stash(self) -> None:
        """``git stash -u``, 0-1 s at HEAD's files (the importer compiles them), ``stash pop``."""
        self.unpark_all()
        if not self.stage_all():
            self.op_edit()
            self.stage_all()
        saved = dict(self.files)
        h.git(self.root, "stash", "push", "-q", "-u")
        self.files = dict(self.branches[self.branch])
        self.record("stash", [])
        time.sleep(self.rng.uniform(0, 1.0))
        h.git(self.root, "stash", "pop", "-q")
        self.files = saved
        self.record("stash-pop", [])

    def op_commit(self) -> None:
        self.unpark_all()
        self.commit_all()
        self.record("commit", [])

    def step(self, weights: dict[str, int]) -> str:
        name = self.rng.choices(list(weights), list(weights.values()))[0]
        method: Callable[[], None] = getattr(self, "op_" + name.replace("-", "_"))
        method()
        return name


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


def explain(finding: dict[str, Any], soak: Soak, daemon: h.JsonProc) -> list[str]:
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


# --- the run ---------------------------------------------------------------------------------------

DANGER = ("stale", "suspect", "sourceless", "corrupt")


class Run:
    """One soak: cycles of file operations, a checkpoint and a burst of git operations; the
    checks of each checkpoint and of the end, and what they found."""

    def __init__(self, soak: Soak, daemon: h.JsonProc, env: dict[str, str], cwd: Path) -> None:
        self.soak, self.daemon, self.env, self.cwd = soak, daemon, env, cwd
        self.checks: list[dict[str, Any]] = []
        self.findings: list[dict[str, Any]] = []

    def check_tree(self, at: str, settled: float | None) -> None:
        """The exact check of every pyc, ``scan --deep --json`` and the files against the model;
        the daemon has settled (its second looks are done), so anything wrong is a miss."""
        t = time.time() - self.soak.started
        pycs, loadable, wrong = wrong_pycs(self.soak.root)
        argv = h.daemon_argv("scan", "--deep", "--json", str(self.soak.root))
        done = subprocess.run(argv, env=self.env, cwd=self.cwd, capture_output=True, text=True,
                              check=False)  # fmt: skip
        scan = json.loads(done.stdout) if done.stdout.strip() else {"summary": {}, "entries": []}
        bad = [e for e in scan["entries"] if e["state"] in DANGER
               and (e["state"] != "suspect" or e["tag"] == TAG)]  # fmt: skip
        files = compare(self.soak.files, self.soak.root)
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

    def operate(self, minutes: float, git_every: float, sampler: Sampler) -> str | None:
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
                                settle(self.daemon, self.env, self.cwd, SECOND_LOOK + 2.0))  # fmt: skip
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
        targets.check(f"daemon quiet within {SETTLE_MAX:.0f} s at every check ({shown})",
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


def resources(samples: list[Sample], before: Sample, after: Sample, targets: h.Targets) -> None:
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
        trends[field] = slope([(s.t, getattr(s, field)) for s in ops if s.t >= mid])
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


def soak_run(args: argparse.Namespace, soak: Soak, env: dict[str, str], work: Path) -> bool:
    """The daemon, the importer and the operations; the checks; True if every target passed."""
    soak_dir, targets = soak.root.parent, h.Targets()
    daemon = h.start_daemon(env, work, [soak.root])
    importer: h.JsonProc | None = None
    sampler = Sampler(daemon.pid, args.sample_every)
    run = Run(soak, daemon, env, work)
    try:
        ready = daemon.events("ready")[0].data["observers"][str(soak.root)]
        print(f"  daemon pid {daemon.pid}: {ready['observer']} ({ready['reason']})", flush=True)
        settle(daemon, env, work, 0.0)
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
        run.check_tree("end", settle(daemon, env, work, SECOND_LOOK + 2.0))
        after = sampler.take()
        sampler.stop()
        record, alive = status(env, work, daemon.pid), daemon.proc.poll() is None
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
        print("\n".join(explain(finding, soak, daemon)))
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
        soak = Soak(root, parking, args.seed, log)
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
