"""The soak's generated tree and its model: the module texts, the files as they are on disk
against the files the model expects, the git project with three branches and its staging.
Used by ``bench_soak.py``, ``_soak_ops.py`` and ``_soak_checks.py``.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any, TextIO

import _harness as h

SKIP_DIRS = {".git", "__pycache__"}


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


class Tree:
    """The tree and the model of the files the operations leave (``_soak_ops.Soak``)."""

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
