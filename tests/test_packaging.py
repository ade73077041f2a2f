"""What a user installs: the wheel and the sdist carry the licence, the type marker and the unit templates."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-t", "sdist", "-d", str(out)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return out


def test_the_wheel_carries_licence_type_marker_and_templates(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "cachewatchd/py.typed" in names
    assert "cachewatchd/service/data/cachewatchd.service" in names
    assert "cachewatchd/service/data/io.github.cachewatchd.plist" in names


def test_the_sdist_carries_the_licence(dist: Path) -> None:
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert "LICENSE" in names
    assert "README.md" in names


def test_readme_links_work_on_pypi() -> None:
    """PyPI shows the README without the repository: a relative link there goes nowhere."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    relative = [t for t in re.findall(r"\]\(([^)]+)\)", text) if not t.startswith(("http", "#"))]
    assert relative == []
