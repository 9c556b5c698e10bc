"""Small frozen records: what a frozen dataclass gives, at a fraction of its cost.

``lelect campaign`` defines some fifty records on every start; as dataclasses they
cost about a millisecond each, and the import of :mod:`dataclasses` (inspect, ast,
dis, tokenize) some 12 ms of CPU more: a fifth of a waiting candidate's start.
Standard library only, nothing imported.

- fields are a class's annotations (a subclass adds to its base's; names starting
  with ``_`` are not fields), in order; a class attribute is a field's default,
  ``field(default_factory=...)`` a default made per instance;
- ``__init__`` by position or keyword, ``__eq__`` (same class, same values),
  ``__hash__``, ``__repr__``, and no attribute can be set after ``__init__``;
- :func:`replace`, :func:`asdict` and :func:`fields` work on records (and on
  dataclasses, through :mod:`dataclasses`);
- ``_unshown`` names the fields ``__repr__`` leaves out (a dataclass's ``repr=False``:
  settings that may hold a password).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's (~2 ms): annotations only
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, ClassVar


class _Factory:
    """A field's default made per instance (``field(default_factory=...)``)."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def field(*, default_factory: Callable[[], Any]) -> Any:
    """A field whose default is ``default_factory()``, made for each instance."""
    return _Factory(default_factory)


class Record:
    """A small frozen record (see the module)."""

    _fields: ClassVar[tuple[str, ...]] = ()
    _defaults: ClassVar[dict[str, object]] = {}
    _unshown: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        names = list(cls._fields)
        names += [n for n in cls.__dict__.get("__annotations__", {})
                  if n not in names and not n.startswith("_")]
        cls._fields = tuple(names)
        defaults = dict(cls._defaults)
        defaults.update({n: cls.__dict__[n] for n in names if n in cls.__dict__})
        cls._defaults = defaults

    def __init__(self, *args: object, **kwargs: object) -> None:
        fields_ = self._fields
        if len(args) > len(fields_):
            raise TypeError(f"{type(self).__name__} takes {len(fields_)} fields")
        values = dict(zip(fields_, args))
        for name, value in kwargs.items():
            if name not in fields_ or name in values:
                raise TypeError(f"{type(self).__name__}: unexpected or repeated {name!r}")
            values[name] = value
        for name in fields_:
            if name not in values:
                if name not in self._defaults:
                    raise TypeError(f"{type(self).__name__} needs {name!r}")
                value = self._defaults[name]
                values[name] = value.make() if isinstance(value, _Factory) else value
            object.__setattr__(self, name, values[name])

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def _values(self) -> tuple:
        return tuple(getattr(self, n) for n in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return other._values() == self._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._fields
                          if n not in self._unshown)
        return f"{type(self).__name__}({shown})"


def fields(record: Record | type[Record]) -> tuple[str, ...]:
    """The names of a record's fields, in order."""
    return record._fields


def replace(record: Any, /, **changes: object) -> Any:
    """A copy of ``record`` with ``changes`` (a dataclass: :func:`dataclasses.replace`)."""
    if not isinstance(record, Record):
        import dataclasses

        return dataclasses.replace(record, **changes)
    values = dict(zip(record._fields, record._values()))
    values.update(changes)
    return type(record)(**values)


def asdict(record: Any) -> dict[str, Any]:
    """``record`` as a dict, records (and lists, tuples, dicts of them) within it too,
    as :func:`dataclasses.asdict` does."""
    if not isinstance(record, Record):
        import dataclasses

        return dataclasses.asdict(record)
    return {n: _plain(getattr(record, n)) for n in record._fields}


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return asdict(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    return value
