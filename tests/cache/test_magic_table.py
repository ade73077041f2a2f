"""version_of_magic answers from the ranges as the full table did (it is filled as magics are met)."""

from __future__ import annotations

from cachewatchd.cache import pyc


def _magic(number: int) -> bytes:
    return number.to_bytes(2, "little") + b"\r\n"


def test_every_magic_of_every_range_and_nothing_else() -> None:
    expected = {
        _magic(number): version
        for start, end, version in pyc._MAGIC_RANGES
        for number in range(start, end)
    }
    expected[_magic(62211)] = (2, 7)
    for number in range(0, 65536, 7):  # a sample of the rest, the ranges' ends included below
        assert pyc.version_of_magic(_magic(number)) == expected.get(_magic(number))
    for magic, version in expected.items():
        assert pyc.version_of_magic(magic) == version
        assert pyc.version_of_magic(magic) == version  # twice: from the memo
    assert pyc.version_of_magic(_magic(2999)) is None
    assert pyc.version_of_magic(_magic(3700)) is None
    assert pyc.version_of_magic(_magic(3413)[:2] + b"\n\r") is None
    assert pyc.version_of_magic(b"") is None
    assert pyc.version_of_magic(_magic(3495) + b"x") is None


def test_the_memo_stays_bounded() -> None:
    for number in range(65536):
        pyc.version_of_magic(number.to_bytes(2, "little") + b"zz")
    assert len(pyc._MAGIC_VERSIONS) <= 4096
