"""The public Python API: ``cachewatchd.audit`` and ``cachewatchd.clean`` on real pycs, the lazy
top-level names, and the examples of docs/api.md."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import cachewatchd
from cachewatchd import DANGEROUS, AuditOptions, AuditReport, CleanResult, State
from tests.conftest import child_env
from tests.support.pycs import restore_mtime_edit, write
from tests.support.wait import compile_pyc

REPO = Path(__file__).resolve().parents[1]
API = {
    "audit",
    "AuditOptions",
    "AuditReport",
    "Entry",
    "State",
    "DANGEROUS",
    "clean",
    "CleanResult",
    "__version__",
}
HEAVY = "{'watchdog', 'psutil', 'structlog'}"


def stale_project(root: Path) -> tuple[Path, Path]:
    """A project whose pyc holds old code under a header that matches the edited source."""
    source = write(root / "pkg" / "settings.py", "RETRIES = 3\n")
    pyc = compile_pyc(source)
    old = pyc.stat()
    # Written a second earlier: a same-jiffy edit must not look older than the pyc.
    os.utime(pyc, ns=(old.st_atime_ns, old.st_mtime_ns - 1_000_000_000))
    restore_mtime_edit(source, "RETRIES = 5\n")
    return source, pyc


def run_python(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=child_env(PYTHONPATH=str(REPO)),
    )


def test_audit_finds_a_stale_pyc_and_clean_removes_it(tmp_path: Path) -> None:
    source, pyc = stale_project(tmp_path)
    fresh = compile_pyc(write(tmp_path / "pkg" / "other.py", "X = 1\n"))

    report = cachewatchd.audit([tmp_path])
    assert isinstance(report, AuditReport)
    [entry] = report.non_fresh()
    assert (entry.path, entry.source, entry.state) == (pyc, source, State.STALE)
    assert entry.state in DANGEROUS
    assert report.dangerous()
    assert report.summary()["stale"] == report.summary()["fresh"] == 1

    result = cachewatchd.clean([tmp_path])
    assert isinstance(result, CleanResult)
    assert result.removed == (pyc,)
    assert result.kept == ()
    assert result.errors == ()
    assert result.ok
    assert result.report.summary() == report.summary()
    assert not pyc.exists()
    assert fresh.exists()
    assert not cachewatchd.audit([tmp_path]).dangerous()


def test_options_and_clean_keywords(tmp_path: Path) -> None:
    _, pyc = stale_project(tmp_path)
    assert cachewatchd.audit([tmp_path], AuditOptions(excludes=("pkg",))).summary()["stale"] == 0
    dry = cachewatchd.clean([tmp_path], fresh=True, dry_run=True)
    assert dry.dry_run
    assert dry.removed == (pyc,)
    assert pyc.exists()
    with pytest.raises(AttributeError):
        dry.removed = ()  # type: ignore[misc]


def test_the_top_level_names_are_the_engine_itself() -> None:
    from cachewatchd.cache import audit as audit_module
    from cachewatchd.cache import clean as clean_module

    run_audit: Callable[..., AuditReport] = cachewatchd.audit  # the function, not the module
    assert run_audit is audit_module.audit
    assert cachewatchd.clean is clean_module.clean
    assert cachewatchd.Entry is audit_module.Entry
    init = (REPO / "cachewatchd" / "__init__.py").read_text()
    hatch = re.search(r'^__version__ = "(.+)"$', init, re.M)  # what [tool.hatch.version] reads
    assert hatch is not None
    assert cachewatchd.__version__ == hatch.group(1)


def test_all_and_dir_list_the_api() -> None:
    assert set(cachewatchd.__all__) == API
    assert set(dir(cachewatchd)) >= API
    for name in API:
        assert getattr(cachewatchd, name) is not None


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'scan'"):
        _ = cachewatchd.scan  # type: ignore[attr-defined]
    assert not hasattr(cachewatchd, "AuditError")
    with pytest.raises(ImportError):
        exec("from cachewatchd import nope")


def test_import_loads_no_daemon_dependency() -> None:
    proc = run_python(
        "import cachewatchd, sys\n"
        f"assert not {HEAVY} & set(sys.modules), 'import'\n"
        "assert 'cachewatchd.cache' not in sys.modules, 'the engine loaded eagerly'\n"
        "cachewatchd.audit\n"
        f"assert not {HEAVY} & set(sys.modules), 'audit'\n"
        "from cachewatchd import *\n"
        f"assert not {HEAVY} & set(sys.modules), 'every name'\n"
    )
    assert proc.returncode == 0, proc.stderr


def test_the_function_wins_over_the_module_whatever_is_imported_first() -> None:
    proc = run_python(
        "import cachewatchd.cache.audit, cachewatchd.cache.clean, cachewatchd, types\n"
        "assert not isinstance(cachewatchd.audit, types.ModuleType)\n"
        "assert not isinstance(cachewatchd.clean, types.ModuleType)\n"
        "assert cachewatchd.audit is cachewatchd.cache.audit.audit\n"
    )
    assert proc.returncode == 0, proc.stderr


def python_blocks(markdown: str) -> list[str]:
    return [textwrap.dedent(b) for b in re.findall(r"^```python\n(.*?)^```", markdown, re.S | re.M)]


def test_the_examples_in_docs_api_md_run(tmp_path: Path) -> None:
    blocks = python_blocks((REPO / "docs" / "api.md").read_text(encoding="utf-8"))
    assert len(blocks) == 2
    _, pyc = stale_project(tmp_path)  # the first example audits and cleans its working directory
    for block in blocks:
        proc = run_python(block, cwd=tmp_path)
        assert proc.returncode == 0, f"{block}\n{proc.stderr}"
    assert not pyc.exists()
    assert re.search(r"^stale settings\.cpython-\d+\.pyc - ", proc.stdout, re.M)
    assert proc.stdout.splitlines()[-1].startswith("removed ['settings.cpython-")
