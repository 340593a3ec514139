"""Versioned state schemas: ``@state``, sections, migrations, rollback writers, the codec.

``@state(compatible=..., version=..., min_version=...)`` turns a plain
annotated class into a frozen, validated attrs class and attaches a
:class:`Schema`.  Evolution is explicit, in the manner of QEMU's VMState:

* a *migration* turns the field dict of version N into that of N+1; reading a
  vN record runs every step up to the current version;
* a *section* (VMState's subsection) groups fields that are written only when
  ``needed(obj)``; a reader that knows it and misses it uses the defaults, a
  reader that does not know it refuses the record unless it was written
  optional.  Dropping a section whose fields are not at their defaults is
  refused, so ``needed`` cannot lose state silently;
* a *rollback writer* produces the field dict of an older version, so a
  kernel can hand its state to an older kernel.

Payload layout: a CBOR map of field name to value; a section is one entry
``"@name"`` (or ``"?name"`` when optional) whose value maps its field names.
"""

from __future__ import annotations

import inspect
import re
import sys
import typing
from collections.abc import Callable, Mapping
from typing import Any, Final, Generic, TypeVar

import attrs

from luo_core.abi._types import SCHEMA_ATTR, FieldType, Invalid, field_type, field_validator
from luo_core.errors import SchemaError

T = TypeVar("T")
Fields = dict[str, Any]
Migration = Callable[[Fields], Fields]
MigrationT = TypeVar("MigrationT", bound=Migration)

COMPATIBLE: Final = re.compile(r"[a-z0-9][a-z0-9,._+-]{0,62}")  # with fullmatch
"""What a compatible may look like: 1-63 chars of ``[a-z0-9,._+-]``."""
MANDATORY: Final = "@"
OPTIONAL: Final = "?"
_SECTION_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_SECTION_KEY: Final = "luo.section"
_RESERVED: Final = frozenset({"migration", "writes"})
_FACTORY: Final[type] = type(attrs.Factory(list))  # attrs types Factory as a function


@attrs.frozen
class Section:
    """Marks a field as part of a section; see :func:`section`."""

    name: str
    needed: Callable[[Any], bool] = attrs.field(eq=False)
    optional: bool = False


def section(name: str, *, needed: Callable[[Any], bool], optional: bool = False) -> dict[str, Any]:
    """Field metadata putting a field in section ``name``, written only when ``needed(obj)``.

    Use as ``attrs.field(default=..., metadata=section("rss", needed=...))``;
    fields of one section share one ``section(...)`` value.  ``optional=True``
    lets readers that do not know the section ignore it.
    """
    if not isinstance(name, str) or not _SECTION_NAME.fullmatch(name):
        raise SchemaError(f"section name {name!r} must be 1-63 chars of [a-z0-9_-]")
    if not callable(needed):
        raise SchemaError(f"section {name!r}: needed must be callable")
    return {_SECTION_KEY: Section(name, needed, bool(optional))}


@attrs.frozen
class FieldSpec:
    """One field of a state class, as its schema sees it."""

    name: str
    type: FieldType
    has_default: bool
    section: str | None


@attrs.frozen
class SectionSpec:
    """One section of a state class: its fields and when they are written."""

    name: str
    needed: Callable[[Any], bool] = attrs.field(eq=False)
    optional: bool
    fields: tuple[str, ...]
    defaults: tuple[object, ...] = attrs.field(eq=False)

    def check_dropped(self, obj: object, compatible: str) -> None:
        """Refuse to drop a section whose fields are not all at their defaults."""
        for name, declared in zip(self.fields, self.defaults, strict=True):
            default = _default_value(declared, obj)
            value = getattr(obj, name)
            if value != default:
                raise SchemaError(
                    f"{compatible}: section {self.name!r} is not needed, but {name}={value!r} "
                    f"differs from its default {default!r} and would be lost"
                )


class Schema(Generic[T]):
    """The versioned schema of a ``@state`` class (``cls.__luo_schema__``)."""

    def __init__(
        self,
        cls: type[T],
        compatible: str,
        version: int,
        min_version: int,
        fields: tuple[FieldSpec, ...],
        sections: Mapping[str, SectionSpec],
    ) -> None:
        self.cls = cls
        self.compatible = compatible
        self.version = version
        self.min_version = min_version
        self.fields = fields
        self.sections = dict(sections)
        self.field_names = frozenset(f.name for f in fields)
        self.migrations: dict[int, Migration] = {}
        self.writers: dict[int, Callable[[T], Fields]] = {}
        self._complete = False

    def __repr__(self) -> str:
        return f"<Schema {self.compatible} v{self.min_version}..v{self.version}>"

    def migration(self, *, from_version: int) -> Callable[[MigrationT], MigrationT]:
        """Register ``up(fields) -> fields``, turning version ``from_version`` into the next."""
        if not _is_int(from_version) or not self.min_version <= from_version < self.version:
            raise SchemaError(
                f"{self.compatible}: migration from v{from_version} is outside "
                f"v{self.min_version}..v{self.version - 1}"
            )
        if from_version in self.migrations:
            raise SchemaError(f"{self.compatible}: two migrations from v{from_version}")

        def register(up: MigrationT) -> MigrationT:
            self.migrations[from_version] = up
            return up

        return register

    def writes(self, *, version: int) -> Callable[[Callable[[T], Fields]], Callable[[T], Fields]]:
        """Register ``down(obj) -> fields``, writing ``obj`` as the older ``version``."""
        if not _is_int(version) or not 1 <= version < self.version:
            raise SchemaError(
                f"{self.compatible}: a rollback writer must write v1..v{self.version - 1}, "
                f"not v{version}"
            )
        if version in self.writers:
            raise SchemaError(f"{self.compatible}: two rollback writers for v{version}")

        def register(down: Callable[[T], Fields]) -> Callable[[T], Fields]:
            self.writers[version] = down
            return down

        return register

    def ensure_complete(self) -> None:
        """Refuse a gap in the migration chain (checked at first use)."""
        if self._complete:
            return
        for step in range(self.min_version, self.version):
            if step not in self.migrations:
                raise SchemaError(
                    f"{self.compatible}: no migration from v{step} to v{step + 1} "
                    f"(it reads v{self.min_version}..v{self.version}); declare "
                    f"@{self.cls.__name__}.migration(from_version={step})"
                )
        self._complete = True


@typing.dataclass_transform(frozen_default=True, field_specifiers=(attrs.field,))
def state(
    *, compatible: str, version: int, min_version: int | None = None
) -> Callable[[type[T]], type[T]]:
    """Declare a class as preserved state: frozen attrs, validated, versioned.

    ``version`` is what this code writes; ``min_version`` (default
    ``version``) the oldest record it can still read through migrations.
    """
    lowest = version if min_version is None else min_version
    if not isinstance(compatible, str) or not COMPATIBLE.fullmatch(compatible):
        raise SchemaError(f"compatible {compatible!r} must be 1-63 chars of [a-z0-9,._+-]")
    if not _is_int(version) or not _is_int(lowest) or not 1 <= lowest <= version:
        raise SchemaError(
            f"{compatible}: need 1 <= min_version <= version, got {min_version} and {version}"
        )

    def wrap(cls: type[T]) -> type[T]:
        # The frame applying the decorator resolves annotations of local classes.
        scope = sys._getframe(1).f_locals
        return _build(cls, compatible, version, lowest, dict(scope))

    return wrap


def _build(
    cls: type[T], compatible: str, version: int, min_version: int, scope: dict[str, Any]
) -> type[T]:
    owner = cls.__name__
    if attrs.has(cls):
        raise SchemaError(f"{owner}: declare a plain class; @state makes it an attrs class")
    if cls.__bases__ != (object,):
        raise SchemaError(f"{owner}: a state class cannot inherit from another class")
    module = sys.modules.get(cls.__module__)
    try:
        hints = typing.get_type_hints(
            cls, globalns=vars(module) if module else {}, localns=scope, include_extras=True
        )
    except Exception as exc:
        raise SchemaError(f"{owner}: cannot resolve its annotations: {exc}") from None
    own = inspect.get_annotations(cls)
    types: dict[str, FieldType] = {}
    for name in own:
        if typing.get_origin(hints[name]) is typing.ClassVar:
            continue
        if name.startswith("_") or name in _RESERVED:
            raise SchemaError(
                f"{owner}.{name}: field names may not start with _ or be 'migration' or 'writes'"
            )
        try:
            types[name] = field_type(hints[name])
        except Invalid as exc:
            raise SchemaError(
                f"{owner}.{name}: unsupported type {_show(hints[name])}: {exc.reason}"
            ) from None

    def transform(
        _cls: type, attributes: list[attrs.Attribute[Any]]
    ) -> list[attrs.Attribute[Any]]:
        result = []
        for attribute in attributes:
            ours = field_validator(owner, attribute.name, types[attribute.name])
            validator = (
                ours
                if attribute.validator is None
                else attrs.validators.and_(ours, attribute.validator)
            )
            result.append(attribute.evolve(type=hints[attribute.name], validator=validator))
        return result

    try:
        new_cls = attrs.define(cls, frozen=True, slots=True, field_transformer=transform)
    except SchemaError:
        raise
    except Exception as exc:
        raise SchemaError(f"{owner}: {exc}") from None
    fields, sections = _layout(owner, new_cls, types)
    schema = Schema(new_cls, compatible, version, min_version, fields, sections)
    setattr(new_cls, SCHEMA_ATTR, schema)
    setattr(new_cls, "migration", staticmethod(schema.migration))  # noqa: B010
    setattr(new_cls, "writes", staticmethod(schema.writes))  # noqa: B010
    return new_cls


def _layout(
    owner: str, cls: type, types: Mapping[str, FieldType]
) -> tuple[tuple[FieldSpec, ...], dict[str, SectionSpec]]:
    fields = []
    marks: dict[str, Section] = {}
    members: dict[str, list[str]] = {}
    defaults: dict[str, list[object]] = {}
    for attribute in attrs.fields(cls):
        has_default = attribute.default is not attrs.NOTHING
        mark = attribute.metadata.get(_SECTION_KEY)
        if mark is not None:
            if not has_default:
                raise SchemaError(
                    f"{owner}.{attribute.name}: a field in section {mark.name!r} needs a default"
                )
            first = marks.setdefault(mark.name, mark)
            if first.needed is not mark.needed or first.optional != mark.optional:
                raise SchemaError(
                    f"{owner}.{attribute.name}: fields of section {mark.name!r} must share "
                    "one section(...) value"
                )
            members.setdefault(mark.name, []).append(attribute.name)
            defaults.setdefault(mark.name, []).append(attribute.default)
        name = attribute.name
        fields.append(FieldSpec(name, types[name], has_default, mark.name if mark else None))
    sections = {
        name: SectionSpec(
            name, mark.needed, mark.optional, tuple(members[name]), tuple(defaults[name])
        )
        for name, mark in marks.items()
    }
    return tuple(fields), sections


def schema_of(cls: type[T]) -> Schema[T]:
    """The :class:`Schema` of a ``@state`` class; :class:`SchemaError` for other classes."""
    schema = cls.__dict__.get(SCHEMA_ATTR) if isinstance(cls, type) else None
    if not isinstance(schema, Schema):
        raise SchemaError(f"{cls!r} is not a @state class")
    return schema


def _default_value(declared: object, obj: object) -> object:
    if type(declared) is not _FACTORY:
        return declared
    factory: Any = declared
    return factory.factory(obj) if factory.takes_self else factory.factory()


def _is_int(value: object) -> bool:
    return type(value) is int


def _show(tp: object) -> str:
    return tp.__name__ if isinstance(tp, type) else repr(tp).replace("typing.", "")
