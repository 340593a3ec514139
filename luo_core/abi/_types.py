"""Field types of preserved state, how each value is checked, and the layer's errors.

A preserved-state field is one of: a fixed-width integer (``u8`` .. ``s64``,
``PhysAddr``), ``bool``, ``bytes``, ``str``, an ``enum.Enum`` with int or str
values, ``list[T]`` or ``tuple[T, ...]``, ``dict[K, V]`` (``K`` is ``str`` or
a fixed-width integer), ``T | None``, or a nested class (another ``@state``
class, or a plain attrs class made of supported types).
:func:`field_type` turns an annotation into a :class:`FieldType` that checks
values and names itself in the ABI manifest; anything else is refused.
"""

from __future__ import annotations

import contextlib
import enum
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Final, TypeAlias

import attrs

from luo_core.errors import FieldValueError

# -- the annotations pack authors write -------------------------------------------


@attrs.frozen
class IntSpec:
    """The width and signedness carried by a fixed-width integer annotation."""

    name: str
    bits: int
    signed: bool

    @property
    def lo(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def hi(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1


u8: TypeAlias = Annotated[int, IntSpec("u8", 8, False)]
u16: TypeAlias = Annotated[int, IntSpec("u16", 16, False)]
u32: TypeAlias = Annotated[int, IntSpec("u32", 32, False)]
u64: TypeAlias = Annotated[int, IntSpec("u64", 64, False)]
s8: TypeAlias = Annotated[int, IntSpec("s8", 8, True)]
s16: TypeAlias = Annotated[int, IntSpec("s16", 16, True)]
s32: TypeAlias = Annotated[int, IntSpec("s32", 32, True)]
s64: TypeAlias = Annotated[int, IntSpec("s64", 64, True)]
PhysAddr: TypeAlias = Annotated[int, IntSpec("phys_addr", 64, False)]
"""A physical address: a ``u64`` that the manifest names ``phys_addr``."""

SCHEMA_ATTR: Final = "__luo_schema__"
"""The class attribute where ``@state`` keeps a class's schema."""


class Invalid(Exception):
    """Internal: why a value does not fit; ``where`` is the path inside the field."""

    def __init__(self, reason: str, where: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.where = where

    def inside(self, step: str) -> Invalid:
        return Invalid(self.reason, step + self.where)


# -- field types -----------------------------------------------------------------


class FieldType:
    """A supported field type: checks values and names itself for the manifest."""

    name: str = "?"

    def check(self, value: object) -> None:
        """Raise :class:`Invalid` when ``value`` is not a valid value of this type."""
        raise NotImplementedError

    def children(self) -> tuple[FieldType, ...]:
        return ()


class IntType(FieldType):
    def __init__(self, spec: IntSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.lo = spec.lo
        self.hi = spec.hi

    def check(self, value: object) -> None:
        if type(value) is not int:
            raise Invalid(f"expected {self.name}, got {type(value).__name__}")
        if not self.lo <= value <= self.hi:
            raise Invalid(f"{value} is out of range for {self.name} ({self.lo}..{self.hi})")


class ScalarType(FieldType):
    def __init__(self, python_type: type) -> None:
        self.python_type = python_type
        self.name = python_type.__name__

    def check(self, value: object) -> None:
        if type(value) is not self.python_type:
            raise Invalid(f"expected {self.name}, got {type(value).__name__}")


class EnumType(FieldType):
    def __init__(self, cls: type[enum.Enum]) -> None:
        self.cls = cls
        members = list(cls.__members__.items())
        values = [member.value for _, member in members]
        if not values:
            raise Invalid(f"enum {cls.__name__} has no members")
        if all(type(v) is int for v in values):
            if not all(-(1 << 63) <= v < (1 << 64) for v in values):
                raise Invalid(f"enum {cls.__name__} has values wider than 64 bits")
            self.value_type: type = int
        elif all(type(v) is str for v in values):
            self.value_type = str
        else:
            raise Invalid(f"enum {cls.__name__} must have all-int or all-str values")
        body = ",".join(f"{name}={_literal(member.value)}" for name, member in members)
        self.name = f"enum:{cls.__name__}{{{body}}}"

    def check(self, value: object) -> None:
        if not isinstance(value, self.cls):
            raise Invalid(f"expected {self.cls.__name__}, got {type(value).__name__}")


class SequenceType(FieldType):
    def __init__(self, item: FieldType, container: type) -> None:
        self.item = item
        self.container = container
        self.name = f"list[{item.name}]" if container is list else f"tuple[{item.name}, ...]"

    def check(self, value: object) -> None:
        if type(value) is not self.container:
            raise Invalid(f"expected {self.container.__name__}, got {type(value).__name__}")
        assert isinstance(value, list | tuple)
        for index, item in enumerate(value):
            try:
                self.item.check(item)
            except Invalid as exc:
                raise exc.inside(f"[{index}]") from None

    def children(self) -> tuple[FieldType, ...]:
        return (self.item,)


class DictType(FieldType):
    """``dict[K, V]``: ``K`` is ``str`` or a fixed-width integer, ``V`` any field type.

    Its manifest name is ``dict[str, V]`` or ``dict[u32, V]`` (the names of
    ``K`` and ``V``).  The encoding does not depend on insertion order: a dict
    with ``str`` keys is a CBOR map (keys in canonical order, like every map);
    one with integer keys is an array of ``[key, value]`` pairs sorted by key.
    """

    def __init__(self, key: FieldType, value: FieldType) -> None:
        if not isinstance(key, IntType) and not (
            isinstance(key, ScalarType) and key.python_type is str
        ):
            raise Invalid(
                f"dict keys must be str or a fixed-width integer (u8..u64, s8..s64, "
                f"PhysAddr), not {key.name}"
            )
        self.key = key
        self.value = value
        self.int_keys = isinstance(key, IntType)
        self.name = f"dict[{key.name}, {value.name}]"

    def check(self, value: object) -> None:
        if type(value) is not dict:
            raise Invalid(f"expected dict, got {type(value).__name__}")
        assert isinstance(value, dict)
        for key, item in value.items():
            try:
                self.key.check(key)
            except Invalid as exc:
                raise Invalid(f"invalid key: {exc.reason}", f"[{show_key(key)}]") from None
            try:
                self.value.check(item)
            except Invalid as exc:
                raise exc.inside(f"[{show_key(key)}]") from None

    def children(self) -> tuple[FieldType, ...]:
        return (self.key, self.value)


def show_key(key: object, limit: int = 40) -> str:
    """A dict key as an error message shows it: its ``repr``, cut after ``limit`` chars."""
    shown = repr(key)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


class OptionalType(FieldType):
    def __init__(self, inner: FieldType) -> None:
        self.inner = inner
        self.name = f"optional[{inner.name}]"

    def check(self, value: object) -> None:
        if value is not None:
            self.inner.check(value)

    def children(self) -> tuple[FieldType, ...]:
        return (self.inner,)


@attrs.frozen
class FieldInfo:
    """One field of a nested class: its name, type and whether it has a default."""

    name: str
    type: FieldType
    has_default: bool


class ClassType(FieldType):
    """A nested class: a ``@state`` class (``state:<compatible>``) or plain attrs class."""

    def __init__(self, cls: type, name: str, fields: tuple[FieldInfo, ...], checked: bool) -> None:
        self.cls = cls
        self.name = name
        self.fields = fields
        self.checked = checked  # @state classes validate themselves on construction

    def check(self, value: object) -> None:
        if not isinstance(value, self.cls):
            raise Invalid(f"expected {self.cls.__name__}, got {type(value).__name__}")
        if not self.checked:
            for info in self.fields:
                try:
                    info.type.check(getattr(value, info.name))
                except Invalid as exc:
                    raise exc.inside(f".{info.name}") from None

    def children(self) -> tuple[FieldType, ...]:
        return tuple(info.type for info in self.fields)


def _literal(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


# -- analysis ----------------------------------------------------------------------

_SCALARS: Final[dict[object, type]] = {bool: bool, bytes: bytes, str: str}
_CACHE: dict[object, FieldType] = {}
_IN_PROGRESS: set[type] = set()


def is_u64(value: object) -> bool:
    """Whether ``value`` is an ``int`` (not a ``bool``) from 0 to 2**64 - 1.

    ``type() is``: ``bool`` is an ``int`` subclass, and this runs once per field
    on the kexec path.
    """
    return type(value) is int and 0 <= value < _U64


_U64: Final = 1 << 64


def int_spec(tp: object) -> IntSpec | None:
    """The :class:`IntSpec` of a fixed-width integer annotation, else ``None``."""
    if typing.get_origin(tp) is Annotated and typing.get_args(tp)[0] is int:
        specs = [m for m in getattr(tp, "__metadata__", ()) if isinstance(m, IntSpec)]
        if len(specs) == 1:
            return specs[0]
    return None


def field_type(tp: object) -> FieldType:
    """The :class:`FieldType` of an annotation; :class:`Invalid` when unsupported."""
    try:
        return _CACHE[tp]
    except (KeyError, TypeError):  # TypeError: an unhashable annotation
        pass
    result = _analyse(tp)
    with contextlib.suppress(TypeError):
        _CACHE[tp] = result
    return result


def _analyse(tp: object) -> FieldType:
    spec = int_spec(tp)
    if spec is not None:
        return IntType(spec)
    if tp in _SCALARS:
        return ScalarType(_SCALARS[tp])
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is list and len(args) == 1:
        return SequenceType(field_type(args[0]), list)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return SequenceType(field_type(args[0]), tuple)
    if origin is dict and len(args) == 2:
        return DictType(field_type(args[0]), field_type(args[1]))
    if origin in (typing.Union, types.UnionType):
        others = [arg for arg in args if arg is not type(None)]
        if len(args) == 2 and len(others) == 1:
            return OptionalType(field_type(others[0]))
        raise Invalid("the only union supported is `T | None`")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return EnumType(tp)
    if isinstance(tp, type) and attrs.has(tp):
        return _class_type(tp)
    if tp is int:
        raise Invalid("plain int has no width: use u8..u64, s8..s64 or PhysAddr")
    raise Invalid(
        "supported: u8..u64, s8..s64, PhysAddr, bool, bytes, str, Enum, "
        "list[T], tuple[T, ...], dict[K, V], T | None, @state or attrs classes"
    )


def _class_type(cls: type) -> ClassType:
    schema = cls.__dict__.get(SCHEMA_ATTR)
    if schema is not None:
        if schema.sections:
            raise Invalid(f"{cls.__name__} has sections; only a record's top class may")
        infos = tuple(FieldInfo(f.name, f.type, f.has_default) for f in schema.fields)
        return ClassType(cls, f"state:{schema.compatible}", infos, checked=True)
    if cls in _IN_PROGRESS:
        raise Invalid(f"{cls.__name__} refers to itself; recursive types are not supported")
    _IN_PROGRESS.add(cls)
    try:
        try:
            attrs.resolve_types(cls)
        except Exception as exc:
            raise Invalid(f"cannot resolve the annotations of {cls.__name__}: {exc}") from None
        infos_list = []
        for attribute in attrs.fields(cls):
            try:
                ftype = field_type(attribute.type)
            except Invalid as exc:
                raise Invalid(f"{cls.__name__}.{attribute.name}: {exc.reason}") from None
            has_default = attribute.default is not attrs.NOTHING
            infos_list.append(FieldInfo(attribute.name, ftype, has_default))
        return ClassType(cls, f"struct:{cls.__name__}", tuple(infos_list), checked=False)
    finally:
        _IN_PROGRESS.discard(cls)


def field_validator(
    owner: str, name: str, ftype: FieldType
) -> Callable[[object, attrs.Attribute[Any], object], None]:
    """An attrs validator that raises :class:`FieldValueError` naming ``owner.name``."""

    def validate(_instance: object, _attribute: attrs.Attribute[Any], value: object) -> None:
        try:
            ftype.check(value)
        except Invalid as exc:
            raise FieldValueError(f"{owner}.{name}{exc.where}: {exc.reason}") from None

    return validate


@attrs.frozen
class PhysRange:
    """A range of physical memory: ``size`` bytes from ``start`` (no alignment required)."""

    start: PhysAddr = attrs.field(
        validator=field_validator("PhysRange", "start", field_type(PhysAddr))
    )
    size: u64 = attrs.field(validator=field_validator("PhysRange", "size", field_type(u64)))

    @property
    def end(self) -> int:
        """The first address after the range."""
        return self.start + self.size
