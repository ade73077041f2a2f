"""The differential test: cachewatchd's verdict against what the real interpreter runs.

Hypothesis generates scenarios (the CPython that writes the pyc: 2.7, 3.6-3.13 as installed;
layout: ``__pycache__``, legacy beside the source, a ``PYTHONPYCACHEPREFIX`` tree; invalidation
mode; optimization level; a constant holding an int, a signed zero or a NaN; an edit: none, in
place, same size with the mtime put back, atomic save, ``rsync -t`` replacement, deleted source,
a late writer, a truncated body, a pyc dated ahead). Each example builds many scenarios in one
tree, compiles them with one process per interpreter, asks each interpreter what it runs with one
``-B -v`` process per interpreter and flags (nothing written), and audits the tree with ``deep``.
The verdict must agree with the run: ``stale`` if and only if the old code runs; ``fresh`` and
``outdated``: the new code runs; ``sourceless``: the pyc is imported; ``orphan``: it is never
read; ``corrupt``: the import fails or recompiles. No ``suspect``: every interpreter is here.
A plain scan (no ``deep``, no verification index) must agree too, but for the late writer, which
no time reveals (the daemon verifies each pyc as it appears), and a truncated body (read with
``deep`` only).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cachewatchd.cache.audit import AuditOptions, Entry, State, audit
from tests.cache.real_import import python27
from tests.conftest import child_env
from tests.support.wait import find_interpreters

CONSTANTS = {  # old line, new line (same size), repr of X with each
    "int": ("X = 1111", "X = 2222", "1111", "2222"),
    "signed-zero": ("X = -0.0", "X = +0.0", "-0.0", "0.0"),
    "nan": ("X = 1e999 * 0", "X = 1e999 * 1", "nan", "inf"),
    "nan-kept": ("X = (1e999 * 0, 1)", "X = (1e999 * 0, 2)", "(nan, 1)", "(nan, 2)"),
    "inf": ("X = -1e999", "X = +1e999", "-inf", "inf"),
}
BODY = '\ndef f():\n    "doc"\n    assert X is not None\n    return X\n'
EDITS = (
    "none",
    "in-place",
    "restored-mtime",
    "atomic-save",
    "rsync-t",
    "delete-source",
    "late-writer",
    "truncated",
    "clock-ahead",
)
COMPILE = """\
import json, sys, py_compile
for job in json.load(open(sys.argv[1])):
    kw = {}
    if sys.version_info >= (3, 7):
        kw["invalidation_mode"] = getattr(
            py_compile.PycInvalidationMode, job["mode"].upper().replace("-", "_"))
    if sys.version_info[0] >= 3:
        kw["optimize"] = job["optimize"]
    py_compile.compile(str(job["source"]), cfile=str(job["cfile"]), doraise=True, **kw)
"""
IMPORT = """\
import json, sys
out = []
for d, name in json.load(open(sys.argv[1])):
    sys.stderr.write("#@@ %s\\n" % name)
    sys.stderr.flush()
    sys.path.insert(0, str(d))
    try:
        out.append([name, repr(__import__(str(name)).X), None])
    except BaseException as exc:
        out.append([name, None, "%s: %s" % (type(exc).__name__, exc)])
    del sys.path[0]
sys.stderr.write("#@@ end\\n")
sys.stdout.write(json.dumps(out))
"""
_LOADED = re.compile(r"^(?:# code object from |import \S+ # (?:precompiled )?from )'?([^']+)'?$")


def installed() -> dict[str, str]:
    found = dict(find_interpreters())
    exe27 = python27()
    if exe27 is not None:
        found["2.7"] = exe27
    return found


INTERPRETERS = installed()
VERSIONS = sorted(INTERPRETERS, key=lambda v: tuple(int(x) for x in v.split(".")))


class Scenario(NamedTuple):
    version: str
    layout: str  # pycache, legacy, prefix
    mode: str
    optimize: int
    constant: str
    edit: str


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    version = draw(st.sampled_from(VERSIONS))
    number = tuple(int(x) for x in version.split("."))
    layouts = ["legacy"] if number < (3, 0) else ["pycache", "legacy"]
    if number >= (3, 8):
        layouts.append("prefix")
    layout = draw(st.sampled_from(layouts))
    modes = ["timestamp", "checked-hash", "unchecked-hash"] if number >= (3, 7) else ["timestamp"]
    return Scenario(
        version,
        layout,
        draw(st.sampled_from(modes)),
        draw(st.integers(0, 2)),
        draw(st.sampled_from(sorted(CONSTANTS))),
        draw(st.sampled_from(EDITS)),
    )


def cache_file(s: Scenario, source: Path, prefix: Path) -> Path:
    stem = source.stem
    if s.version == "2.7":
        return source.with_suffix(".pyo" if s.optimize else ".pyc")
    if s.layout == "legacy":
        return source.with_suffix(".pyc")
    name = f"{stem}.cpython-{s.version.replace('.', '')}{f'.opt-{s.optimize}' if s.optimize else ''}.pyc"
    if s.layout == "prefix":
        return prefix / source.parent.relative_to("/") / name
    return source.parent / "__pycache__" / name


def run_flags(s: Scenario, prefix: Path) -> tuple[str, ...]:
    """The interpreter's flags that read the scenario's cache file."""
    flags: list[str] = []
    if s.optimize and (s.version == "2.7" or s.layout != "legacy"):
        flags.append("-O" if s.optimize == 1 or s.version == "2.7" else "-OO")
    if s.layout == "prefix":
        flags += ["-X", f"pycache_prefix={prefix}"]
    return tuple(flags)


def run_python(exe: str, flags: tuple[str, ...], script: str, jobs: object, tmp: Path) -> str:
    """Run *script* with *jobs* (JSON) in *exe*; its stdout and stderr."""
    fd, name = tempfile.mkstemp(suffix=".json", dir=tmp)
    with os.fdopen(fd, "w") as f:
        json.dump(jobs, f)
    env = {k: v for k, v in child_env().items() if k not in ("SOURCE_DATE_EPOCH",)}
    proc = subprocess.run(
        [exe, "-E", "-S", *flags, "-c", script, name],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout + "\0" + proc.stderr


def build(items: list[Scenario], root: Path, prefix: Path) -> list[tuple[Path, Path]]:
    """Write each scenario's source and compile it with its interpreter (one process per
    interpreter and flags); the (source, cache file) of each."""
    placed = []
    groups: dict[tuple[str, tuple[str, ...]], list[dict[str, object]]] = {}
    for i, s in enumerate(items):
        source = root / f"d{i}" / f"s{i}.py"
        source.parent.mkdir(parents=True)
        source.write_text(CONSTANTS[s.constant][0] + BODY)
        cfile = cache_file(s, source, prefix)
        placed.append((source, cfile))
        flags: tuple[str, ...] = ()
        if s.version == "2.7" and s.optimize:
            flags = ("-O",) * s.optimize
        job = {"source": str(source), "cfile": str(cfile), "mode": s.mode, "optimize": s.optimize}
        groups.setdefault((s.version, flags), []).append(job)
    for (version, flags), jobs in groups.items():
        run_python(INTERPRETERS[version], ("-B", *flags), COMPILE, jobs, root.parent)
    return placed


def rewrite(path: Path, text: str, mtime_ns: int | None = None) -> None:
    """Replace *path* by a new file (a new inode) holding *text*, dated *mtime_ns* if given."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    if mtime_ns is not None:
        os.utime(tmp, ns=(mtime_ns, mtime_ns))
    tmp.replace(path)


def edit(s: Scenario, source: Path, pyc: Path) -> None:
    new = CONSTANTS[s.constant][1] + BODY
    st_ = source.stat()
    if s.edit == "in-place":
        source.write_text(new)
    elif s.edit in ("restored-mtime", "late-writer", "clock-ahead"):
        source.write_text(new)
        os.utime(source, ns=(st_.st_atime_ns, st_.st_mtime_ns))
    elif s.edit == "atomic-save":
        rewrite(source, new)
    elif s.edit == "rsync-t":
        rewrite(source, new, st_.st_mtime_ns)
    elif s.edit == "delete-source":
        source.unlink()
    elif s.edit == "truncated":
        data = pyc.read_bytes()
        pyc.write_bytes(data[: 16 + (len(data) - 16) // 2])
    if s.edit == "late-writer":  # a process that read the old source writes its pyc now
        tmp = pyc.with_name(pyc.name + ".tmp")
        tmp.write_bytes(pyc.read_bytes())
        tmp.replace(pyc)
    elif s.edit == "clock-ahead":
        ahead = time.time_ns() + 3600 * 10**9
        os.utime(pyc, ns=(ahead, ahead))


class Ran(NamedTuple):
    loaded: Path | None
    value: str | None
    error: str | None


def ask(items: list[Scenario], placed: list[tuple[Path, Path]], prefix: Path) -> list[Ran]:
    """What each interpreter runs for each scenario: one ``-B -v`` process per interpreter and
    flags."""
    groups: dict[tuple[str, tuple[str, ...]], list[int]] = {}
    for i, s in enumerate(items):
        groups.setdefault((s.version, run_flags(s, prefix)), []).append(i)
    ran: list[Ran | None] = [None] * len(items)
    for (version, flags), indices in groups.items():
        jobs = [[str(placed[i][0].parent), placed[i][0].stem] for i in indices]
        tmp = placed[0][0].parent.parent.parent
        out, _, err = run_python(
            INTERPRETERS[version], ("-B", "-v", *flags), IMPORT, jobs, tmp
        ).partition("\0")
        results = {name: (value, error) for name, value, error in json.loads(out)}
        segments = re.split(r"^#@@ (\S+)$", err, flags=re.MULTILINE)
        logs = dict(zip(segments[1::2], segments[2::2], strict=True))
        for i in indices:
            name = placed[i][0].stem
            loaded = None
            for line in logs.get(name, "").splitlines():
                match = _LOADED.match(line.strip())
                if match is not None and os.path.basename(match[1]).startswith(f"{name}."):
                    loaded = Path(match[1])
            value, error = results[name]
            ran[i] = Ran(loaded, value, error)
    return [r for r in ran if r is not None]


def disagreement(s: Scenario, source: Path, pyc: Path, entry: Entry | None, run: Ran) -> str | None:
    """Why the verdict contradicts what the interpreter ran, or ``None``."""
    if entry is None:
        return "not judged"
    _, _, old, new = CONSTANTS[s.constant]
    if s.edit in ("none", "truncated"):  # the source still holds the old code
        new = old
    ran_pyc = run.loaded == pyc and run.error is None
    old_runs = source.exists() and ran_pyc and run.value == old and old != new
    state = entry.state
    if (state is State.STALE) != old_runs:
        return f"stale is {state is State.STALE}, the old code runs: {old_runs}"
    if state in (State.FRESH, State.OUTDATED) and run.value != new:
        return "fresh/outdated, but the new code does not run"
    if state is State.SOURCELESS and not ran_pyc:
        return "sourceless, but the pyc is not imported"
    if state is State.ORPHAN and run.loaded == pyc:
        return "orphan, but the pyc is read"
    if state is State.CORRUPT and ran_pyc:
        return "corrupt, but the pyc is imported"
    if state is State.SUSPECT:
        return "suspect although its interpreter is installed"
    return None


@pytest.mark.skipif(len(VERSIONS) < 2, reason="needs other CPython versions (pyenv) installed")
@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(items=st.lists(scenarios(), min_size=15, max_size=40))
def test_verdicts_agree_with_the_interpreters(items: list[Scenario]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp).resolve()
        root, prefix = base / "root", base / "prefix"
        root.mkdir()
        placed = build(items, root, prefix)
        for s, (source, pyc) in zip(items, placed, strict=True):
            edit(s, source, pyc)
        ran = ask(items, placed, prefix)
        problems = []
        for deep in (False, True):
            options = AuditOptions(
                deep=deep, keep_fresh=True, pycache_prefix=prefix, use_index=False
            )
            report = audit([root], options)
            assert not report.errors, report.errors
            found = {e.path: e for e in report.entries}
            for s, (source, pyc), run in zip(items, placed, ran, strict=True):
                if not deep and s.edit in ("late-writer", "truncated"):
                    continue  # no time tells (the daemon verifies pycs as they appear), or the
                    # body is read only with deep
                entry = found.get(pyc)
                if deep:
                    event(f"{s.edit}: {'-' if entry is None else entry.state}")
                why = disagreement(s, source, pyc, entry, run)
                if why is not None:
                    verdict = "-" if entry is None else f"{entry.state}: {entry.reason}"
                    scan = "scan --deep" if deep else "scan"
                    problems.append(f"{scan}: {s}\n    {why}\n    verdict {verdict}\n    ran {run}")
        assert not problems, "\n".join(problems)
