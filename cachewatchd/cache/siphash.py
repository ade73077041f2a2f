"""Pure-Python SipHash for the source hash of pycs written by another CPython.

CPython keys ``_imp.source_hash`` with ``k0 = int.from_bytes(magic, "little")`` and ``k1 = 0``; it used
SipHash-2-4 up to 3.10 and SipHash-1-3 from 3.11 (bpo-29410). The running interpreter's own variant is
available natively; this module covers the other one. It only runs on hash-based pycs.
"""

from __future__ import annotations

__all__ = ["siphash"]

_MASK = 0xFFFFFFFFFFFFFFFF


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK


def _rounds(v0: int, v1: int, v2: int, v3: int, n: int) -> tuple[int, int, int, int]:
    for _ in range(n):
        v0 = (v0 + v1) & _MASK
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _MASK
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _MASK
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _MASK
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash(k0: int, k1: int, data: bytes, *, c_rounds: int, d_rounds: int) -> int:
    """SipHash-c-d of *data* with the 128-bit key ``(k0, k1)``; returns the 64-bit value."""
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573
    length = len(data)
    end = length - (length % 8)
    for i in range(0, end, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = _rounds(v0, v1, v2, v3, c_rounds)
        v0 ^= m
    last = ((length & 0xFF) << 56) | int.from_bytes(data[end:], "little")
    v3 ^= last
    v0, v1, v2, v3 = _rounds(v0, v1, v2, v3, c_rounds)
    v0 ^= last
    v2 ^= 0xFF
    v0, v1, v2, v3 = _rounds(v0, v1, v2, v3, d_rounds)
    return v0 ^ v1 ^ v2 ^ v3
