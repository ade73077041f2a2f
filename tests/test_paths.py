"""Where cachewatchd keeps its files, and the one "path under a root" test every module uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachewatchd.paths import is_under


@pytest.mark.parametrize(
    ("path", "root", "expected"),
    [
        ("/a/b", "/a/b", True),
        ("/a/b/c.py", "/a/b", True),
        ("/a/b/c/d.py", "/a", True),
        ("/a/bc/d.py", "/a/b", False),  # a sibling sharing a prefix is not under it
        ("/a", "/a/b", False),
        ("/x/y.py", "/", True),
        ("/", "/", True),
        ("/a/b/", "/a/b", True),
        ("/a/b/c", "/a/b/", True),
        ("pkg/m.py", "pkg", True),
        ("pkgs/m.py", "pkg", False),
    ],
)
def test_is_under(path: str, root: str, expected: bool) -> None:
    assert is_under(path, root) is expected
    assert is_under(Path(path), Path(root)) is expected
