"""Every kind of source edit, made from either side of a mount, and the pycs each one makes stale.

One case per (edit kind, side): a directory ``<kind>-<side>`` holding a package whose pycs are
written through the client side (where Python imports), then the edit is made through *side*: the
client's mount, or the other side (the exported directory on the server, the directory a FUSE
mount shows). After the edit, every pyc listed for the case is stale (or an orphan) and must go.
The ``create`` case's pyc (an earlier ``n.py``'s) is written with the edit: before it, it would be
an orphan, which a daemon removes when it starts.

Stdlib only, and a command line (``python -m tests.support.mount_edits prepare|apply|left``), so the
same code runs in-process and inside a user-mode-linux guest.
"""

from __future__ import annotations

import importlib.util
import json
import os
import py_compile
import shutil
import struct
import subprocess
import sys
from pathlib import Path

__all__ = ["KINDS", "SIDES", "apply_all", "cpython_states", "evidence", "left", "prepare_all"]

KINDS = (
    "in_place",
    "restored_mtime",
    "atomic_save",
    "rsync_t",
    "create",
    "delete",
    "rename",
    "dir_rename",
)
SIDES = ("client", "other")


def _pyc(source: Path) -> Path:
    return Path(importlib.util.cache_from_source(str(source)))


def _compile(source: Path, cfile: Path | None = None) -> Path:
    out = py_compile.compile(str(source), cfile=None if cfile is None else str(cfile), doraise=True)
    assert out is not None
    return Path(out)


def _prepare(case: Path, kind: str) -> list[Path]:
    pkg = case / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    source = pkg / "m.py"
    source.write_text("X = 1\n")
    if kind == "create":  # the pyc of an earlier n.py appears with the edit (an orphan till then)
        return [_pyc(pkg / "n.py")]
    pycs = [_compile(source)]
    if kind == "dir_rename":
        pycs.append(_compile(pkg / "__init__.py"))
    return pycs


def _same_size_restored(source: Path, text: str) -> None:
    st = source.stat()
    assert len(text.encode()) == st.st_size
    source.write_text(text)
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))


def _apply(case: Path, kind: str, scratch: Path) -> None:
    pkg = case / "pkg"
    source = pkg / "m.py"
    if kind == "in_place":
        source.write_text("X = 22\n")
    elif kind == "restored_mtime":
        _same_size_restored(source, "X = 2\n")
    elif kind == "atomic_save":
        tmp = pkg / ".m.py.swp"
        tmp.write_text("X = 3\n")
        os.replace(tmp, source)
    elif kind == "rsync_t":  # same size, the old mtime, a new file renamed over the old one
        new = scratch / f"{case.name}.py"
        new.write_text("X = 4\n")
        st = source.stat()
        os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
        rsync = shutil.which("rsync") or "rsync"
        subprocess.run([rsync, "-tI", str(new), str(source)], check=True, timeout=60)
    elif kind == "create":  # a pyc left by an earlier n.py, then n.py is created anew
        old = case / "n_old.py"
        old.write_text("N = 1\n")
        _compile(old, _pyc(pkg / "n.py"))
        (pkg / "n.py").write_text("N = 22\n")
    elif kind == "delete":
        source.unlink()
    elif kind == "rename":
        source.rename(pkg / "r.py")
    elif kind == "dir_rename":
        pkg.rename(case / "pkg2")
    else:
        raise ValueError(kind)


def prepare_all(client: Path) -> dict[str, list[str]]:
    """Every case's package below *client* (the client side); its pycs, per case name."""
    return {
        f"{kind}-{side}": [str(p) for p in _prepare(client / f"{kind}-{side}", kind)]
        for kind in KINDS
        for side in SIDES
    }


def apply_all(client: Path, other: Path, scratch: Path) -> None:
    """Make every case's edit, through the side its name says (*other*: the same tree seen from
    the other side of the mount). *scratch*: a local directory for rsync's source files."""
    for kind in KINDS:
        for side in SIDES:
            base = client if side == "client" else other
            _apply(base / f"{kind}-{side}", kind, scratch)


def left(pycs: dict[str, list[str]]) -> dict[str, list[str]]:
    """The pycs still there, per case (a dir_rename's pycs are looked for in the new place)."""
    out = {}
    for case, paths in pycs.items():
        here = [_moved(Path(p)) if case.startswith("dir_rename") else Path(p) for p in paths]
        still = [str(p) for p in here if p.exists()]
        if still:
            out[case] = still
    return out


def _moved(pyc: Path) -> Path:
    pkg = pyc.parent.parent
    return pkg.with_name("pkg2") / "__pycache__" / pyc.name


def cpython_states(pycs: dict[str, list[str]]) -> dict[str, str]:
    """What CPython makes of each case's pyc after the edits (no daemon), by pyc path: ``fresh``
    (moved with its unchanged source), ``orphan`` (no source), ``stale`` (its header still matches
    the changed source: the old code runs) or ``outdated`` (the header does not: recompiled)."""
    states = {}
    for case, paths in pycs.items():
        kind = case.rsplit(":", 1)[-1].rsplit("-", 1)[0]
        for text in paths:
            pyc = Path(text)
            if kind == "dir_rename":
                states[str(_moved(pyc))] = "fresh"
                continue
            source = pyc.parent.parent / (pyc.name.split(".")[0] + ".py")
            try:
                st = source.stat()
            except FileNotFoundError:
                states[text] = "orphan"
                continue
            _, flags, mtime, size = struct.unpack("<4sIII", pyc.read_bytes()[:16])
            same = (mtime, size) == (int(st.st_mtime) & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF)
            states[text] = "stale" if flags == 0 and same else "outdated"
    return states


def evidence(pycs: dict[str, list[str]]) -> dict[str, object]:
    """For a failure's message: per pyc, its directory's listing as this host sees it, and the
    stat of the pyc and of its source (size, mtime_ns, ctime_ns, inode)."""

    def stat_of(path: Path) -> object:
        try:
            st = path.lstat()
        except OSError as exc:
            return repr(exc)
        return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

    def listing_of(directory: Path) -> object:
        try:
            return sorted(os.listdir(directory))
        except OSError as exc:
            return repr(exc)

    out: dict[str, object] = {}
    for paths in pycs.values():
        for text in paths:
            pyc = Path(text)
            source = pyc.parent.parent / (pyc.name.split(".")[0] + ".py")
            out[text] = {
                "pycs": listing_of(pyc.parent),
                "sources": listing_of(source.parent),
                "pyc": stat_of(pyc),
                "source": stat_of(source),
                "__pycache__": stat_of(pyc.parent),
                "package": stat_of(source.parent),
            }
    return out


def main(argv: list[str]) -> int:
    command, *args = argv
    if command == "prepare":
        print(json.dumps(prepare_all(Path(args[0]))))
    elif command == "apply":
        apply_all(Path(args[0]), Path(args[1]), Path(args[2]))
    elif command == "left":
        print(json.dumps(left(json.loads(Path(args[0]).read_text()))))
    elif command == "states":
        print(json.dumps(cpython_states(json.loads(Path(args[0]).read_text()))))
    elif command == "evidence":
        print(json.dumps(evidence(json.loads(Path(args[0]).read_text()))))
    else:
        raise SystemExit(f"unknown command {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
