"""cachewatchd.cache.named.NamedTuple makes what typing.NamedTuple makes, without typing."""

from __future__ import annotations

import typing
from typing import Any

import pytest

from cachewatchd.cache import named


def _pair(base: Any) -> Any:
    class Point(base):  # type: ignore[misc]
        """A point."""

        x: int
        y: int = 0
        label: str = "p"

        def norm(self) -> int:
            return abs(self.x) + abs(self.y)

    return Point


def test_the_class_syntax_makes_the_same_tuple_as_typing() -> None:
    ours, theirs = _pair(named.NamedTuple), _pair(typing.NamedTuple)
    for cls in (ours, theirs):
        p = cls(3, -4)
        assert issubclass(cls, tuple)
        assert tuple(p) == (3, -4, "p")
        assert p.norm() == 7
        assert p._replace(label="q") == cls(3, -4, "q")
        assert p._asdict() == {"x": 3, "y": -4, "label": "p"}
        assert repr(p) == "Point(x=3, y=-4, label='p')"
        assert cls.__doc__ == "A point."
        assert cls.__module__ == __name__
        assert cls.__qualname__.endswith("Point")
    assert ours._fields == theirs._fields
    assert ours._field_defaults == theirs._field_defaults
    assert ours.__annotations__ == {"x": "int", "y": "int", "label": "str"}
    assert typing.get_type_hints(ours) == typing.get_type_hints(theirs)


def test_what_typing_refuses_is_refused() -> None:
    with pytest.raises(TypeError, match="Non-default namedtuple field y"):

        class Bad(named.NamedTuple):
            x: int = 0
            y: int  # type: ignore[misc]

    with pytest.raises(AttributeError, match="_replace"):

        class Overwrites(named.NamedTuple):
            x: int

            def _replace(self) -> None:  # type: ignore[misc]
                pass


def test_the_engine_records_are_named_tuples() -> None:
    from cachewatchd.cache.pyc import parse_cache_name

    name = parse_cache_name("m.cpython-311.opt-1.pyc")
    assert name == ("m", "cpython-311", "1")
    assert name is not None
    assert name._replace(opt="") == ("m", "cpython-311", "")
