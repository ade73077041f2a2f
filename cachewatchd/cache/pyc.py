"""The bytecode cache format: header parsing, magic numbers, cache names, source hashes.

Pure functions, no policy. Facts (PEP 552, PEP 3147, PEP 488): a 3.7+ pyc starts with a 16-byte header:
magic (uint16 + ``b"\\r\\n"``), flags (bit 0 hash-based, bit 1 check_source), then either the source mtime
and size (each ``& 0xFFFFFFFF``) or an 8-byte SipHash of the source keyed by the magic. A 3.3-3.6 pyc
starts with magic, mtime, size (12 bytes); a 2.7 pyc with magic, mtime (8 bytes).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import struct
import sys

from cachewatchd.cache.named import TYPE_CHECKING, NamedTuple

__all__ = [
    "HEADER",
    "HEADER_SIZE",
    "LEGACY_SUFFIXES",
    "RUNNING_MAGIC",
    "SOURCE_SUFFIXES",
    "CacheName",
    "Header",
    "HeaderError",
    "Mode",
    "mirror_dir",
    "mirror_path",
    "parse_cache_name",
    "parse_header",
    "released_magics",
    "source_hash",
    "version_of_magic",
    "version_of_tag",
]

SOURCE_SUFFIXES: tuple[str, ...] = tuple(importlib.machinery.SOURCE_SUFFIXES)
"""Suffixes of the sources CPython imports and caches on this platform: ``.py``, and ``.pyw`` on
Windows only (on Linux and macOS an ``m.pyw`` is never imported, so its caches are never read). A
cache entry's source is ``<stem><suffix>``."""
LEGACY_SUFFIXES = (".pyc", ".pyo")
"""Suffixes of a legacy cache file beside its source (``m.pyc``, ``m.pyo``: before PEP 3147)."""

HEADER = struct.Struct("<4sIII")
"""The 3.7+ pyc header: magic, flags, then the source mtime and size (timestamp pyc) or the
8-byte source hash (the last two fields' bytes)."""
HEADER_SIZE = HEADER.size
RUNNING_MAGIC: bytes = importlib.util.MAGIC_NUMBER
_RUNNING_VERSION = sys.version_info[:2]

if TYPE_CHECKING:
    from os import PathLike
    from pathlib import Path
    from typing import Literal, TypeAlias

    StrPath: TypeAlias = str | PathLike[str]
    """A path as the engine takes it (the CLI's are strings: pathlib costs 2 ms of a start)."""

    Mode: TypeAlias = Literal["timestamp", "checked-hash", "unchecked-hash"]
else:
    Mode = str  # what type checkers see as the Literal: the importers' name, without typing

# Each CPython 3.x version reserves a range of magic numbers for its alphas, betas, release
# candidates and releases (Include/internal/pycore_magic_number.h, formerly
# Lib/importlib/_bootstrap_external.py). The range's end is exclusive.
_MAGIC_RANGES: tuple[tuple[int, int, tuple[int, int]], ...] = (
    (3000, 3140, (3, 0)),
    (3140, 3160, (3, 1)),
    (3160, 3190, (3, 2)),
    (3190, 3250, (3, 3)),
    (3250, 3320, (3, 4)),
    (3320, 3360, (3, 5)),
    (3360, 3390, (3, 6)),
    (3390, 3400, (3, 7)),
    (3400, 3420, (3, 8)),
    (3420, 3430, (3, 9)),
    (3430, 3450, (3, 10)),
    (3450, 3500, (3, 11)),
    (3500, 3550, (3, 12)),
    (3550, 3600, (3, 13)),
    (3600, 3650, (3, 14)),
    (3650, 3700, (3, 15)),
)
_PY27_MAGIC = 62211
_MAGIC_VERSIONS: dict[bytes, tuple[int, int] | None] = {}
"""Magic -> version, filled as magics are met (the whole table is 700 entries: 0.3 ms of start-up)."""
# The magic numbers the releases of each version write and read (CPython's table of magic numbers,
# Include/internal/pycore_magic_number.h): the others of its range belong to its alphas, betas and
# release candidates, and a release rejects them ("bad magic number"). 3.5.3 changed the magic of
# 3.5 (3350 -> 3351): both are releases. A version not listed has no release yet: any magic of its
# range may be the one in use.
_RELEASED: dict[tuple[int, int], tuple[int, ...]] = {
    (2, 7): (_PY27_MAGIC,),
    (3, 0): (3131,),
    (3, 1): (3151,),
    (3, 2): (3180,),
    (3, 3): (3230,),
    (3, 4): (3310,),
    (3, 5): (3350, 3351),
    (3, 6): (3379,),
    (3, 7): (3394,),
    (3, 8): (3413,),
    (3, 9): (3425,),
    (3, 10): (3439,),
    (3, 11): (3495,),
    (3, 12): (3531,),
    (3, 13): (3571,),
    (3, 14): (3627,),
}
_OLD_HEADER = struct.Struct("<II")
"""After the magic of a 3.3-3.6 pyc: the source mtime and size."""
_PY2_HEADER = struct.Struct("<I")
"""After the magic of a 2.7 pyc: the source mtime."""


def version_of_magic(magic: bytes) -> tuple[int, int] | None:
    """CPython ``(major, minor)`` whose magic-number range holds *magic* (its releases' and its
    pre-releases'), or ``None`` when no CPython 2.7 or 3 does."""
    magic = bytes(magic)
    try:
        return _MAGIC_VERSIONS[magic]
    except KeyError:
        pass
    version = None
    if len(magic) == 4 and magic[2:] == b"\r\n":
        number = int.from_bytes(magic[:2], "little")
        if number == _PY27_MAGIC:
            version = (2, 7)
        for start, end, in_range in _MAGIC_RANGES:
            if start <= number < end:
                version = in_range
    if len(_MAGIC_VERSIONS) < 4096:  # garbage magics do not grow it without bound
        _MAGIC_VERSIONS[magic] = version
    return version


def released_magics(version: tuple[int, int]) -> tuple[bytes, ...] | None:
    """The magic numbers the releases of CPython *version* write and read; ``None`` for a version
    with no release yet (any magic of its range may be the one in use)."""
    numbers = _RELEASED.get(version)
    if numbers is None:
        return None
    return tuple(number.to_bytes(2, "little") + b"\r\n" for number in numbers)


def version_of_tag(tag: str) -> tuple[int, int] | None:
    """``(3, 11)`` for ``cpython-311``; ``None`` for other implementations or odd tags."""
    if not tag.startswith("cpython-"):
        return None
    digits = tag[len("cpython-") :]
    if len(digits) < 2 or not digits.isdigit():
        return None
    return int(digits[0]), int(digits[1:])


class HeaderError(ValueError):
    """The first bytes of a pyc are not a valid header of CPython 2.7 or 3.3+."""


class Header(NamedTuple):
    """A parsed pyc header."""

    magic: bytes
    version: tuple[int, int] | None
    flags: int
    mode: Mode
    mtime: int = 0
    size: int = 0
    hash: bytes = b""


def parse_header(data: bytes, *, any_magic: bool = False) -> Header:
    """Parse the 16-byte header of a 3.7+ pyc (or the 12-byte one of 3.3-3.6, the 8-byte one of
    2.7: no size); raise :class:`HeaderError` with the reason.

    With *any_magic* (a pyc of another implementation, e.g. PyPy) an unknown magic is accepted.
    """
    if len(data) < HEADER_SIZE:
        raise HeaderError(f"header truncated ({len(data)} of {HEADER_SIZE} bytes)")
    magic, flags, mtime, size = HEADER.unpack_from(data)
    version = version_of_magic(magic)
    if version is None and not any_magic:
        raise HeaderError(f"magic {magic.hex()} matches no CPython 3")
    if version is not None and version < (3, 7):
        if version == (2, 7):
            (py2_mtime,) = _PY2_HEADER.unpack_from(data, 4)
            return Header(magic, version, 0, "timestamp", py2_mtime)
        if version < (3, 3):
            raise HeaderError(f"pyc of CPython {version[0]}.{version[1]} (no source size)")
        # 3.3-3.6 (PEP 3147 era): magic, source mtime, source size; no flags, no hash pycs.
        old_mtime, old_size = _OLD_HEADER.unpack_from(data, 4)
        return Header(magic, version, 0, "timestamp", old_mtime, old_size)
    if flags & ~0b11:
        raise HeaderError(f"unknown flag bits 0x{flags:x}")
    if flags & 0b01:
        mode: Mode = "checked-hash" if flags & 0b10 else "unchecked-hash"
        return Header(magic, version, flags, mode, hash=bytes(data[8:16]))
    return Header(magic, version, flags, "timestamp", mtime, size)


def source_hash(magic: bytes, source: bytes) -> bytes:
    """The 8-byte source hash a CPython writing *magic* would store for *source*."""
    key = int.from_bytes(magic, "little")
    if magic == RUNNING_MAGIC:
        import _imp

        return bytes(_imp.source_hash(key, source))
    version = version_of_magic(magic)
    if version is None:
        raise HeaderError(f"magic {magic.hex()} matches no CPython 3")
    from cachewatchd.cache.siphash import siphash

    c, d = (1, 3) if version >= (3, 11) else (2, 4)
    return siphash(key, 0, source, c_rounds=c, d_rounds=d).to_bytes(8, "little")


class CacheName(NamedTuple):
    """The parts of a ``__pycache__`` file name: ``<stem>.<tag>[.opt-N].pyc``."""

    stem: str
    tag: str
    opt: str
    """``""``, ``"1"`` or ``"2"`` (any digits CPython would accept)."""


def parse_cache_name(name: str) -> CacheName | None:
    """Split a ``__pycache__`` file name as ``importlib.util.source_from_cache`` does.

    Returns ``None`` for a name CPython would never produce or read.
    """
    if not name.endswith(".pyc"):
        return None
    parts = name[:-4].split(".")
    if len(parts) == 2:
        stem, tag = parts
        opt = ""
    elif len(parts) == 3 and parts[2].startswith("opt-"):
        stem, tag, level = parts
        opt = level[4:]
        if not opt.isalnum():
            return None
    else:
        return None
    if not stem or not tag:
        return None
    return CacheName(stem, tag, opt)


def mirror_path(prefix: StrPath, directory: StrPath) -> str:
    """Where CPython keeps caches of the absolute *directory*'s sources under
    ``PYTHONPYCACHEPREFIX``: *prefix* joined with *directory* less its anchor."""
    rel = os.path.splitdrive(os.fspath(directory))[1].lstrip(os.sep)
    return os.path.join(prefix, rel) if rel else os.fspath(prefix)


def mirror_dir(prefix: Path, directory: Path) -> Path:
    """:func:`mirror_path` as a :class:`~pathlib.Path`."""
    return type(prefix)(mirror_path(prefix, directory))
