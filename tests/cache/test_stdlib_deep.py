"""``scan --deep`` of installed standard libraries and site-packages raises no false alarm.

Each interpreter's own caches (pyenv installs its standard library with pycs of every opt level)
are audited in place with ``deep`` and without the verification index (read only): every pyc is
unmarshalled and compared with a compile by its own interpreter. They were all written by that
interpreter from the sources beside them, so every verdict must be ``fresh``. Bounded in time: a
few packages of the standard library and of site-packages per version; the whole of each
(measured: see the report of issue 9) is a manual run of ``cachewatchd scan --deep`` on
``~/.pyenv/versions/*/lib/python*``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from cachewatchd.cache.audit import AuditOptions, State, audit
from tests.cache.real_import import interpreter

RUNNING = f"{sys.version_info[0]}.{sys.version_info[1]}"
PACKAGES = ("json", "email", "collections", "importlib", "encodings", "unittest", "asyncio")
SITE = ("pip/_internal/utils", "setuptools/command", "pkg_resources")


def library(exe: str) -> Path:
    """``lib/pythonX.Y`` of the installation of *exe* (pyenv: ``<prefix>/bin/python``)."""
    prefix = Path(exe).resolve().parent.parent
    found = sorted(prefix.glob("lib/python[23].*"))
    if not found:
        pytest.skip(f"no lib/pythonX.Y under {prefix}")
    return found[0]


@pytest.mark.parametrize("version", ["2.7", "3.12" if RUNNING != "3.12" else "3.13", RUNNING])
def test_deep_scan_of_an_installed_library_is_all_fresh(version: str) -> None:
    lib = library(interpreter(version))
    roots = [lib / p for p in PACKAGES if (lib / p).is_dir()]
    roots += [lib / "site-packages" / p for p in SITE if (lib / "site-packages" / p).is_dir()]
    report = audit(roots, AuditOptions(deep=True, keep_fresh=True, use_index=False))
    assert not report.errors, report.errors
    wrong = [e for e in report.entries if e.state is not State.FRESH]
    assert not wrong, "\n".join(f"{e.state} {e.path}: {e.reason}" for e in wrong[:20])
    compared = [e for e in report.entries if "identical to a fresh compile" in e.reason]
    assert len(compared) >= 100, f"only {len(compared)} pycs compared"


def test_a_27_surrogate_pair_is_what_27_writes(tmp_path: Path) -> None:
    """Python 2.7's marshal joins a surrogate pair of a unicode constant into one code point
    (``u'\\ud801\\udca0'`` -> ``u'\\U000104a0'``): its own pyc of test_codecs differs from a
    compile of the source, and is fresh all the same."""
    lib = library(interpreter("2.7"))
    for name in ("test_codecs.py", "test_codecs.pyc"):
        if not (lib / "test" / name).is_file():
            pytest.skip(f"{lib / 'test' / name} is not installed")
        shutil.copy2(lib / "test" / name, tmp_path / name)
    report = audit([tmp_path], AuditOptions(deep=True, keep_fresh=True, use_index=False))
    assert [(e.path.name, e.state) for e in report.entries] == [("test_codecs.pyc", State.FRESH)]
