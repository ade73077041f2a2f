"""The checking process: unmarshal and compile untrusted files under memory and time limits.

Run by :class:`cachewatchd.cache.checks.CheckPool` as ``python -I -S -B -c <loader> <this file>
<limits>`` (``-E -s -S -B`` on 2.7), by the running Python or by the CPython whose pycs it checks
(:mod:`cachewatchd.cache.interpreters`). It imports nothing but the standard library, so it runs
without ``cachewatchd`` on ``sys.path``, and its syntax is that of Python 2.7 and 3.6+ (no
f-strings, type comments instead of annotations: ``tests/cache/test_foreign.py`` compiles it with
each). It exits with status 3 when its magic number is not the one its parent expects; else it
sets its own limits (address space ``RLIMIT_AS``, no core files, no file writes), says ``{"ready":
true}``, then serves requests until its standard input closes.

Frames both ways: a 4-byte little-endian length, then the payload. A request is one JSON object;
an answer is one JSON object (``{"result": ...}``), followed by one raw frame (the pyc's bytes) for
a ``compile`` answer. (When this process dies during an ``exact`` request, the parent asks a fresh
one to unmarshal the body alone, to tell whether the pyc or the source is to blame.)

Results: ``loaded`` (the body unmarshals to a code object), ``same`` (identical to a fresh compile),
``differs``, ``corrupt`` (CPython cannot load or run the body), ``no_compile`` (CPython cannot
compile the source: ``SyntaxError``, ``ValueError``, ``RecursionError``), ``unchecked`` (a limit of
this process, not of CPython: a file over its size cap, ``MemoryError`` while compiling),
``gone``/``unreadable`` (a file vanished or cannot be read), ``compiled`` (pyc bytes follow).

Python 2.7 has no ``optimize`` argument to ``compile()``: its optimization level is the process's
(``-O``, ``-OO``), so a 2.7 worker serves one level and answers ``unchecked`` for another.
"""

import binascii
import errno
import json
import marshal
import os
import signal
import stat
import struct
import sys
from types import CodeType

MYPY = False
if MYPY:  # type comments only: Python 2.7 has no typing module
    from typing import Any, Dict, List, Optional, Tuple, Union  # noqa: F401

__all__ = ["compare", "main"]

_LENGTH = struct.Struct("<I")
_DOUBLE = struct.Struct("<d")
_PY2 = sys.version_info[0] == 2
_HEADER_SIZE = 8 if _PY2 else (12 if sys.version_info < (3, 7) else 16)
"""This version's header: magic + mtime (2.7); + size (3.3-3.6); flags + mtime + size or hash."""
_MASK = 0xFFFFFFFF
_FLAGS = {"timestamp": 0, "unchecked-hash": 0b01, "checked-hash": 0b11}
_FIELDS = (
    "co_argcount",
    "co_posonlyargcount",
    "co_kwonlyargcount",
    "co_nlocals",
    "co_flags",
    "co_firstlineno",
    "co_code",
    "co_names",
    "co_varnames",
    "co_freevars",
    "co_cellvars",
    "co_name",
    "co_qualname",
    "co_exceptiontable",
)
"""What makes two code objects the same code, besides their constants and line table (a field
this version does not have compares as ``None``). Not the file name, not the stack size (checked
apart: see :func:`compare`)."""
_LINES = "co_linetable" if hasattr(compile("", "", "exec"), "co_linetable") else "co_lnotab"


class _Answer(Exception):
    """Control flow: the answer to a request, raised from where it is known."""

    def __init__(self, result, detail=""):
        # type: (str, str) -> None
        Exception.__init__(self, result, detail)
        self.result = result
        self.detail = detail


def _describe(exc):
    # type: (BaseException) -> str
    try:
        text = str(exc).splitlines()[0] if str(exc) else ""
    except Exception:  # noqa: BLE001 - a message 2.7 cannot encode
        text = ""
    text = text if len(text) <= 200 else text[:200] + "..."
    return "%s: %s" % (type(exc).__name__, text) if text else type(exc).__name__


def _fs_path(path):
    # type: (str) -> Union[str, bytes]
    """*path* as this Python opens it: on 2.7, the bytes the parent's ``os.fsencode`` gives
    (UTF-8, undecodable bytes carried as ``surrogateescape`` code points)."""
    if not _PY2:
        return path
    out = bytearray()
    for char in path:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(code - 0xDC00)
        else:
            out.extend(char.encode("utf-8"))
    return bytes(out)


def _read(path, offset, cap, what):
    # type: (str, int, int, str) -> Tuple[bytes, Any]
    """The bytes of *path* from *offset*, and its stat; at most *cap* of them, else unchecked."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(_fs_path(path), flags)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise _Answer("gone", path)
        raise _Answer("unreadable", exc.strerror or str(exc))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Answer("unreadable", os.strerror(errno.EINVAL) + ": not a regular file")
        if st.st_size - offset > cap:
            raise _Answer("unchecked", "%s over %s (a cap of cachewatchd)" % (what, _mib(cap)))
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
        raise _Answer("unreadable", exc.strerror or str(exc))
    finally:
        os.close(fd)
    if len(data) > cap:  # grew while read
        raise _Answer("unchecked", "%s over %s (a cap of cachewatchd)" % (what, _mib(cap)))
    return data, st


def _mib(n):
    # type: (int) -> str
    return "%d MiB" % (n >> 20) if n % (1 << 20) == 0 else "%d bytes" % n


def _load(pyc, limits):
    # type: (str, Dict[str, int]) -> CodeType
    body, _ = _read(pyc, _HEADER_SIZE, limits["max_pyc"], "pyc body")
    try:
        code = marshal.loads(body)
    except Exception as exc:  # noqa: BLE001 - any failure of marshal is CPython's failure too
        raise _Answer("corrupt", "body does not unmarshal (%s)" % _describe(exc))
    if not isinstance(code, CodeType):
        raise _Answer(
            "corrupt",
            "body holds %s, not a code object: the import fails" % type(code).__name__,
        )
    return code


def _compile(source, optimize, limits):
    # type: (str, int, Dict[str, int]) -> Tuple[CodeType, bytes, Any]
    data, st = _read(source, 0, limits["max_source"], "source")
    if _PY2 and optimize != sys.flags.optimize:  # the level is the process's own (-O, -OO)
        raise _Answer("unchecked", "this Python 2.7 compiles at level %d" % sys.flags.optimize)
    try:
        if _PY2:
            code = compile(data, source, "exec", 0, True)
        else:
            code = compile(data, source, "exec", dont_inherit=True, optimize=optimize)
    except MemoryError:
        raise _Answer(
            "unchecked", "compiling the source needs more than %s" % _mib(limits["memory"])
        )
    except Exception as exc:  # noqa: BLE001 - CPython's compiler failing is its verdict
        raise _Answer("no_compile", _describe(exc))
    return code, data, st


def _key(value):
    # type: (Any) -> Any
    """A constant as CPython's compiler tells constants apart (``_PyCode_ConstantKey``): by type
    and value, a float or complex number by its bits (so ``-0.0`` is not ``0.0``, and a NaN equals
    a NaN of the same bits, as marshal stores it), tuples and frozensets item by item."""
    kind = type(value)
    if kind is float:
        return kind, _DOUBLE.pack(value)
    if kind is complex:
        return kind, _DOUBLE.pack(value.real), _DOUBLE.pack(value.imag)
    if kind is tuple:
        return kind, tuple(_key(item) for item in value)
    if kind is frozenset:
        return kind, frozenset(_key(item) for item in value)
    if kind is slice:
        return kind, _key(value.start), _key(value.stop), _key(value.step)
    return kind, value


def compare(cached, fresh):
    # type: (CodeType, CodeType) -> Tuple[str, str]
    """``("same", "")``, ``("differs", field)`` or ``("corrupt", why)`` for a pyc's code against
    a fresh compile of its source.

    Every nested code object is compared field by field (:data:`_FIELDS`, the line table) and
    constant by constant (:func:`_key`). Then the stack size: one smaller than the compiler's
    overruns the evaluation stack, one bigger fails to allocate its frame before 3.12 (3.12+
    allocate lazily): CPython cannot run either, so they are corrupt.
    """
    pairs = [(cached, fresh)]
    sizes = []
    while pairs:
        a, b = pairs.pop()
        for field in _FIELDS + (_LINES,):
            if getattr(a, field, None) != getattr(b, field, None):
                return "differs", field
        if len(a.co_consts) != len(b.co_consts):
            return "differs", "co_consts"
        for x, y in zip(a.co_consts, b.co_consts):
            if isinstance(x, CodeType) and isinstance(y, CodeType):
                pairs.append((x, y))
            elif isinstance(x, CodeType) or isinstance(y, CodeType) or _key(x) != _key(y):
                return "differs", "co_consts"
        sizes.append((a, b))
    for a, b in sizes:
        if a.co_stacksize < b.co_stacksize or (
            a.co_stacksize > b.co_stacksize and sys.version_info < (3, 12)
        ):
            name = getattr(a, "co_qualname", a.co_name)
            return "corrupt", (
                "co_stacksize %d in %s where a compile gives %d: CPython cannot run it (a frame "
                "too big to allocate, or a stack too small)"
                % (a.co_stacksize, name, b.co_stacksize)
            )
    return "same", ""


def _exact(request, limits):
    # type: (Dict[str, Any], Dict[str, int]) -> Tuple[str, str]
    cached = _load(request["pyc"], limits)
    fresh, _, _ = _compile(request["source"], request["optimize"], limits)
    if _PY2:  # what 2.7 writes: its marshal joins a surrogate pair into one code point
        fresh = marshal.loads(marshal.dumps(fresh))
    return compare(cached, fresh)


def _pyc_bytes(request, limits):
    # type: (Dict[str, Any], Dict[str, int]) -> bytes
    """The pyc this Python (3.7+) writes for the source (only asked of the running one)."""
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


def _serve(request, limits):
    # type: (Dict[str, Any], Dict[str, int]) -> None
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
            result, detail = "unchecked", "unknown request %r" % (op,)
    except _Answer as answer:
        result, detail = answer.result, answer.detail
    except MemoryError:
        result, detail = "unchecked", "more memory needed than %s" % _mib(limits["memory"])
    except Exception as exc:  # noqa: BLE001 - an answer, whatever happened
        result, detail = "unchecked", _describe(exc)
    _send({"result": result, "detail": detail, "size": len(payload)})
    if result == "compiled":
        _write(payload)


def _write(data):
    # type: (bytes) -> None
    view = memoryview(_LENGTH.pack(len(data)) + data)
    while view:
        view = view[os.write(1, view) :]


def _send(answer):
    # type: (Dict[str, Any]) -> None
    _write(json.dumps(answer).encode("ascii"))


class _Input(object):  # a new-style class on 2.7
    """Frames from standard input, read in big chunks (one ``read`` per request, usually)."""

    def __init__(self):
        # type: () -> None
        self._buffer = b""

    def take(self, n):
        # type: (int) -> Optional[bytes]
        while len(self._buffer) < n:
            chunk = os.read(0, max(1 << 16, n - len(self._buffer)))
            if not chunk:
                return None
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data


def _limit(resource_id, value):
    # type: (int, int) -> None
    import resource

    try:
        _, hard = resource.getrlimit(resource_id)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(resource_id, (value, value))
    except (ValueError, OSError):  # not supported here (RLIMIT_AS on macOS): the timeout remains
        pass


def magic_number():
    # type: () -> bytes
    """This Python's magic number (``imp.get_magic()`` before 3.4)."""
    try:
        import importlib.util

        magic = importlib.util.MAGIC_NUMBER
    except (ImportError, AttributeError):
        import imp  # type: ignore[import-not-found,unused-ignore]

        magic = bytes(imp.get_magic())
    return magic


def main(argv):
    # type: (List[str]) -> int
    import resource

    config = json.loads(argv[0])  # type: Dict[str, Any]
    if binascii.hexlify(magic_number()).decode("ascii") != config.get("magic"):
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
        _serve(json.loads(body.decode("utf-8")), limits)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
