"""The pyc format layer: headers, magic numbers, names, source hashes across CPython versions."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachewatchd.cache.pyc import (
    HeaderError,
    parse_cache_name,
    parse_header,
    source_hash,
    version_of_magic,
    version_of_tag,
)
from cachewatchd.cache.siphash import siphash
from tests.support.pycs import compile_with, write
from tests.support.wait import find_interpreters

VERSIONS = ["3.7", "3.8", "3.9", "3.10", "3.11", "3.12", "3.13"]


@given(st.binary(max_size=64))
def test_random_bytes_never_crash_the_header_parser(data: bytes) -> None:
    try:
        header = parse_header(data)
    except HeaderError:
        return
    assert header.version is not None
    assert header.flags & ~0b11 == 0


@given(st.binary(max_size=64), st.booleans())
def test_random_bytes_with_any_magic(data: bytes, any_magic: bool) -> None:
    try:
        parse_header(data, any_magic=any_magic)
    except HeaderError:
        pass


@given(st.text(max_size=40))
def test_random_names_never_crash_the_name_parser(name: str) -> None:
    parsed = parse_cache_name(name)
    if parsed is not None:
        assert name.startswith(parsed.stem + ".")
        assert name.endswith(".pyc")


def test_running_magic_is_known() -> None:
    import sys

    assert version_of_magic(importlib.util.MAGIC_NUMBER) == sys.version_info[:2]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00" * 8, "truncated"),
        (b"\x01\x02\r\n" + b"\x00" * 12, "matches no CPython"),
        (importlib.util.MAGIC_NUMBER + b"\x04\x00\x00\x00" + b"\x00" * 8, "unknown flag bits"),
        ((3131).to_bytes(2, "little") + b"\r\n" + b"\x00" * 12, "no source size"),
    ],
)
def test_bad_headers_say_why(data: bytes, reason: str) -> None:
    with pytest.raises(HeaderError, match=reason):
        parse_header(data)


def test_flag_two_alone_is_a_timestamp_pyc() -> None:
    header = parse_header(importlib.util.MAGIC_NUMBER + b"\x02\x00\x00\x00" + b"\x01" * 8)
    assert header.mode == "timestamp"


def test_names_and_tags() -> None:
    assert parse_cache_name("m.cpython-39.opt-2.pyc") is not None
    assert parse_cache_name("m.cpython-39.pyc.1234") is None
    assert parse_cache_name("m.pyc") is None
    assert version_of_tag("cpython-313") == (3, 13)
    assert version_of_tag("pypy310") is None


def test_siphash_reference_vectors() -> None:
    # SipHash-2-4 test vector from the reference paper: key 00..0f, message 00..0e.
    k0 = int.from_bytes(bytes(range(8)), "little")
    k1 = int.from_bytes(bytes(range(8, 16)), "little")
    assert siphash(k0, k1, bytes(range(15)), c_rounds=2, d_rounds=4) == 0xA129CA6149BE45E5


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("mode", ["checked-hash", "unchecked-hash"])
def test_source_hash_matches_each_cpython(tmp_path: Path, version: str, mode: str) -> None:
    exe = find_interpreters().get(version)
    if exe is None:
        pytest.skip(f"CPython {version} is not installed here")
    source = write(tmp_path / "m.py", "VALUE = 'héllo'\n" * 7)
    pyc = compile_with(exe, source, mode)
    header = parse_header(pyc.read_bytes()[:16])
    assert header.version == tuple(int(x) for x in version.split("."))
    assert header.mode == mode
    assert source_hash(header.magic, source.read_bytes()) == header.hash


def test_a_36_header_is_magic_mtime_size() -> None:
    magic = (3379).to_bytes(2, "little") + b"\r\n"
    header = parse_header(
        magic + (1000).to_bytes(4, "little") + (7).to_bytes(4, "little") + b"\xe3..."
    )
    assert (header.version, header.mode, header.mtime, header.size) == (
        (3, 6),
        "timestamp",
        1000,
        7,
    )
