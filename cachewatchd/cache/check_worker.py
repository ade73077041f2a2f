"""The checking process: unmarshal and compile untrusted files under memory and time limits.

Run by :class:`cachewatchd.cache.checks.CheckPool` as ``python -I -S -B -c <loader> <this file>
<limits>``; it imports nothing but the standard library, so it runs without ``cachewatchd`` on
``sys.path``. It exits with status 3 when it is another Python version than its parent; else it sets
its own limits (address space ``RLIMIT_AS``, no core files, no file writes), says
``{"ready": true}``, then serves requests until its standard input closes.

Frames both ways: a 4-byte little-endian length, then the payload. A request is one JSON object;
an answer is one JSON object (``{"result": ...}``), followed by one raw frame (the pyc's bytes) for
a ``compile`` answer. (When this process dies during an ``exact`` request, the parent asks a fresh
one to unmarshal the body alone, to tell whether the pyc or the source is to blame.)

Results: ``loaded`` (the body unmarshals to a code object), ``same`` (identical to a fresh compile),
``differs``, ``corrupt`` (CPython cannot load or run the body), ``no_compile`` (CPython cannot
compile the source: ``SyntaxError``, ``ValueError``, ``RecursionError``), ``unchecked`` (a limit of
this process, not of CPython: a file over its size cap, ``MemoryError`` while compiling),
``gone``/``unreadable`` (a file vanished or cannot be read), ``compiled`` (pyc bytes follow).
"""

from __future__ import annotations

import cmath
import errno
import json
import marshal
import math
import os
import signal
import stat
import struct
import sys
from types import CodeType
from typing import Any

__all__ = ["compare", "main"]

_LENGTH = struct.Struct("<I")
_DOUBLE = struct.Struct("<d")
_HEADER_SIZE = 16
_MASK = 0xFFFFFFFF
_FLAGS = {"timestamp": 0, "unchecked-hash": 0b01, "checked-hash": 0b11}
_STRICT = ("co_qualname", "co_nlocals", "co_varnames", "co_cellvars", "co_freevars")
"""Fields ``==`` on code objects ignores that change what the code does."""


class _Answer(Exception):
    """Control flow: the answer to a request, raised from where it is known."""

    def __init__(self, result: str, detail: str = "") -> None:
        super().__init__(result, detail)
        self.result = result
        self.detail = detail


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    text = text if len(text) <= 200 else text[:200] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _read(path: str, offset: int, cap: int, what: str) -> tuple[bytes, os.stat_result]:
    """The bytes of *path* from *offset*, and its stat; at most *cap* of them, else unchecked."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _Answer("gone", path) from None
    except OSError as exc:
        raise _Answer("unreadable", exc.strerror or str(exc)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Answer("unreadable", os.strerror(errno.EINVAL) + ": not a regular file")
        if st.st_size - offset > cap:
            raise _Answer("unchecked", f"{what} over {_mib(cap)} (a cap of cachewatchd)")
        chunks = []
        left = cap + 1
        os.lseek(fd, offset, os.SEEK_SET)
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        raise _Answer("unreadable", exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    if len(data) > cap:  # grew while read
        raise _Answer("unchecked", f"{what} over {_mib(cap)} (a cap of cachewatchd)")
    return data, st


def _mib(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n} bytes"


def _load(pyc: str, limits: dict[str, int]) -> CodeType:
    body, _ = _read(pyc, _HEADER_SIZE, limits["max_pyc"], "pyc body")
    try:
        code = marshal.loads(body)
    except Exception as exc:  # noqa: BLE001 - any failure of marshal is CPython's failure too
        raise _Answer("corrupt", f"body does not unmarshal ({_describe(exc)})") from None
    if not isinstance(code, CodeType):
        raise _Answer(
            "corrupt", f"body holds {type(code).__name__}, not a code object: the import fails"
        )
    return code


def _compile(source: str, optimize: int, limits: dict[str, int]) -> tuple[CodeType, bytes, Any]:
    data, st = _read(source, 0, limits["max_source"], "source")
    try:
        code = compile(data, source, "exec", dont_inherit=True, optimize=optimize)
    except MemoryError:
        raise _Answer(
            "unchecked", f"compiling the source needs more than {_mib(limits['memory'])}"
        ) from None
    except (SyntaxError, ValueError, RecursionError) as exc:
        raise _Answer("no_compile", _describe(exc)) from None
    except Exception as exc:  # noqa: BLE001 - CPython's compiler failing is its verdict
        raise _Answer("no_compile", _describe(exc)) from None
    return code, data, st


_NANS: dict[bytes, object] = {}
"""One stand-in per bit pattern of a NaN constant (see :func:`_nan_free`)."""


def _nan_free(value: Any) -> Any:
    """*value* (a constant, or a code object and its constants, recursively) with each NaN (a
    float, or a complex number with a NaN part) replaced by one object per bit pattern, so that
    ``==`` compares NaN constants by their bits as marshal stores them: ``nan != nan``, so a code
    object holding one is never equal to another. *value* itself when it holds no NaN."""
    if isinstance(value, float):
        if not math.isnan(value):
            return value
        return _NANS.setdefault(b"f" + _DOUBLE.pack(value), object())
    if isinstance(value, complex):
        if not cmath.isnan(value):
            return value
        return _NANS.setdefault(
            b"c" + _DOUBLE.pack(value.real) + _DOUBLE.pack(value.imag), object()
        )
    if isinstance(value, (tuple, frozenset)):
        items = [_nan_free(item) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return tuple(items) if isinstance(value, tuple) else frozenset(items)
    if isinstance(value, CodeType):
        consts = _nan_free(value.co_consts)
        return value if consts is value.co_consts else value.replace(co_consts=consts)
    return value


def compare(cached: CodeType, fresh: CodeType) -> tuple[str, str]:
    """``("same", "")``, ``("differs", what)`` or ``("corrupt", why)`` for a pyc's code against a
    fresh compile of its source.

    ``==`` on code objects compares bytecode, constants, names, line and exception tables (a float
    constant by value and sign, so ``-0.0`` is not ``0.0``; a NaN by identity, never equal to
    another: compared here by its bits); it ignores the stack size (a frame CPython cannot
    allocate, or an evaluation stack too small) and the fields below, which are checked here on
    every nested code object.
    """
    if cached != fresh and _nan_free(cached) != _nan_free(fresh):
        return "differs", ""
    pairs = [(cached, fresh)]
    while pairs:
        a, b = pairs.pop()
        if a.co_stacksize < b.co_stacksize or (
            a.co_stacksize > b.co_stacksize and sys.version_info < (3, 12)
        ):  # too small overruns the stack; too big fails to allocate before 3.12 (lazily after)
            name = getattr(a, "co_qualname", a.co_name)
            return "corrupt", (
                f"co_stacksize {a.co_stacksize} in {name} where a compile gives {b.co_stacksize}: "
                "CPython cannot run it (a frame too big to allocate, or a stack too small)"
            )
        for field in _STRICT:
            if getattr(a, field, None) != getattr(b, field, None):
                return "differs", field
        pairs += [
            (x, y)
            for x, y in zip(a.co_consts, b.co_consts, strict=True)
            if isinstance(x, CodeType) and isinstance(y, CodeType)
        ]
    return "same", ""


def _exact(request: dict[str, Any], limits: dict[str, int]) -> tuple[str, str]:
    cached = _load(request["pyc"], limits)
    fresh, _, _ = _compile(request["source"], request["optimize"], limits)
    return compare(cached, fresh)


def _pyc_bytes(request: dict[str, Any], limits: dict[str, int]) -> bytes:
    import _imp
    import importlib.util

    code, data, st = _compile(request["source"], request["optimize"], limits)
    mode = request["mode"]
    magic = importlib.util.MAGIC_NUMBER
    header = magic + _FLAGS[mode].to_bytes(4, "little")
    if mode == "timestamp":
        header += _LENGTH.pack(int(st.st_mtime) & _MASK) + _LENGTH.pack(st.st_size & _MASK)
    else:
        header += bytes(_imp.source_hash(int.from_bytes(magic, "little"), data))
    return header + marshal.dumps(code)


def _serve(request: dict[str, Any], limits: dict[str, int]) -> None:
    op = request["op"]
    payload = b""
    try:
        if op == "load":
            _load(request["pyc"], limits)
            result, detail = "loaded", ""
        elif op == "exact":
            result, detail = _exact(request, limits)
        elif op == "compile":
            payload = _pyc_bytes(request, limits)
            result, detail = "compiled", ""
        else:
            result, detail = "unchecked", f"unknown request {op!r}"
    except _Answer as answer:
        result, detail = answer.result, answer.detail
    except MemoryError:
        result, detail = "unchecked", f"more memory needed than {_mib(limits['memory'])}"
    except Exception as exc:  # noqa: BLE001 - an answer, whatever happened
        result, detail = "unchecked", _describe(exc)
    _send({"result": result, "detail": detail, "size": len(payload)})
    if result == "compiled":
        _write(payload)


def _write(data: bytes) -> None:
    view = memoryview(_LENGTH.pack(len(data)) + data)
    while view:
        view = view[os.write(1, view) :]


def _send(answer: dict[str, Any]) -> None:
    _write(json.dumps(answer).encode())


class _Input:
    """Frames from standard input, read in big chunks (one ``read`` per request, usually)."""

    def __init__(self) -> None:
        self._buffer = b""

    def take(self, n: int) -> bytes | None:
        while len(self._buffer) < n:
            chunk = os.read(0, max(1 << 16, n - len(self._buffer)))
            if not chunk:
                return None
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data


def _limit(resource_id: int, value: int) -> None:
    import resource

    try:
        _, hard = resource.getrlimit(resource_id)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(resource_id, (value, value))
    except (ValueError, OSError):  # not supported here (RLIMIT_AS on macOS): the timeout remains
        pass


def main(argv: list[str]) -> int:
    import importlib.util
    import resource

    config: dict[str, Any] = json.loads(argv[0])
    if importlib.util.MAGIC_NUMBER.hex() != config.get("magic"):
        return 3  # another Python: its verdicts would be wrong
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops it by closing the pipe
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_FSIZE, 0)
    limits = {key: int(config[key]) for key in ("memory", "max_source", "max_pyc")}
    _limit(resource.RLIMIT_AS, limits["memory"])
    _send({"ready": True})
    frames = _Input()
    while True:
        head = frames.take(_LENGTH.size)
        if head is None:
            return 0
        body = frames.take(_LENGTH.unpack(head)[0])
        if body is None:
            return 0
        _serve(json.loads(body), limits)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
