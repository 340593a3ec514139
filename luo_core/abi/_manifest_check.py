"""Checking an ABI manifest entry read from a file: every key, type string and number.

A manifest is hostile input.  :func:`check_entry` walks a schema entry and
:func:`parse_type` a field's type string; the first problem is one
:class:`~luo_core.errors.ManifestError` line with the path inside the file.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any, Final, Literal, NoReturn

import attrs

from luo_core.abi._schema import _SECTION_NAME, COMPATIBLE
from luo_core.abi._types import PhysAddr, int_spec, s8, s16, s32, s64, u8, u16, u32, u64
from luo_core.errors import ManifestError

_INT_RANGES: Final = {
    spec.name: (spec.lo, spec.hi)
    for spec in (int_spec(tp) for tp in (u8, u16, u32, u64, s8, s16, s32, s64, PhysAddr))
    if spec is not None
}
_SCALARS: Final = frozenset({"bool", "bytes", "str"})
MAX_TYPE_DEPTH: Final = 32
"""How deeply a type string may nest (``list[optional[...]]``); a schema needs a few."""

# -- checking what a file says -------------------------------------------------------

U32_MAX: Final = (1 << 32) - 1
_BARE_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,39}")


class Bad(Exception):
    """Internal: what is wrong (``reason``) at ``path`` inside a file."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason

    def message(self, where: str) -> str:
        return f"{where}: {self.path}: {self.reason}" if self.path else f"{where}: {self.reason}"


class HugeInt:
    """An integer literal too long to be worth converting (``json.loads(parse_int=...)``)."""

    def __init__(self, digits: str) -> None:
        self.digits = len(digits.lstrip("-"))


def parse_int(digits: str) -> int | HugeInt:
    """For ``json.loads``: no number in a manifest needs more than 20 digits."""
    return int(digits) if len(digits) <= 24 else HugeInt(digits)


def quote(text: str, limit: int = 40) -> str:
    """``text`` as a message shows it: JSON-quoted (so one ASCII line), cut at ``limit``."""
    if len(text) <= limit:
        return json.dumps(text)
    return json.dumps(text[:limit])[:-1] + '..."'


def member(path: str, key: str) -> str:
    """The path of ``key`` inside the object at ``path``: ``schemas."luo,x".fields``."""
    shown = key if _BARE_KEY.fullmatch(key) else quote(key)
    return f"{path}.{shown}" if path else shown


def item(path: str, index: int) -> str:
    return f"{path}[{index}]"


def describe(value: object) -> str:
    """A JSON value as an error message names it: short, one line."""
    if value is None or isinstance(value, bool | float):
        return json.dumps(value)
    if isinstance(value, int):
        text = str(value)
        return text if len(text) <= 24 else f"an integer of {len(text)} digits"
    if isinstance(value, HugeInt):
        return f"an integer of {value.digits} digits"
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def expect_object(
    value: object, path: str, keys: Iterable[str] | None = None, optional: Iterable[str] = ()
) -> dict[str, Any]:
    """An object; with ``keys``, exactly those (plus any of ``optional``), else :class:`Bad`."""
    if type(value) is not dict:
        raise Bad(path, f"expected an object, got {describe(value)}")
    if keys is not None:
        required = tuple(keys)
        allowed = {*required, *optional}
        for key in value:
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                raise Bad(path, f"unknown key {quote(key)} (format 1 has: {known})")
        for key in required:
            if key not in value:
                raise Bad(path, f"missing key {quote(key)}")
    return value


def expect_list(value: object, path: str) -> list[Any]:
    if type(value) is not list:
        raise Bad(path, f"expected an array, got {describe(value)}")
    return value


def expect_str(value: object, path: str, *, printable: bool = True) -> str:
    """A string; of printable characters unless told (so that what prints it stays one line)."""
    if type(value) is not str:
        raise Bad(path, f"expected a string, got {describe(value)}")
    if value.isprintable():
        return value
    if printable:
        raise Bad(path, f"{quote(value)} has characters that are not printable")
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate (JSON's "\ud800"): nothing can print it
        raise Bad(path, f"{quote(value)} is not valid Unicode") from None
    return value


def expect_bool(value: object, path: str) -> bool:
    if type(value) is not bool:
        raise Bad(path, f"expected true or false, got {describe(value)}")
    return value


def expect_int(value: object, path: str, low: int, high: int) -> int:
    """An integer from ``low`` to ``high``: every number read from a file is bounded."""
    if type(value) is not int or not low <= value <= high:
        raise Bad(path, f"expected an integer from {low} to {high}, got {describe(value)}")
    return value


# -- type strings --------------------------------------------------------------------


@attrs.frozen
class TypeName:
    """A parsed manifest type string: its kind, its text, and what it is made of."""

    kind: Literal["int", "scalar", "enum", "list", "tuple", "optional", "dict", "class"]
    text: str
    args: tuple[TypeName, ...] = ()
    members: frozenset[str] = frozenset()  # an enum's ``name=value`` members

    def classes(self) -> Iterator[str]:
        """The nested classes (``state:...``, ``struct:...``) this type refers to."""
        if self.kind == "class":
            yield self.text
        for arg in self.args:
            yield from arg.classes()


class BadType(ValueError):
    """A type string that is not one :func:`manifest_entry` writes."""


_WORD: Final = re.compile(r"[a-z0-9_]+")
_IDENTIFIER: Final = re.compile(r"[^\W\d]\w*")
_MEMBER: Final = re.compile(r'([^\W\d]\w*)=(-?[0-9]{1,20}|"[^"]*")')
_ENUM_INTS: Final = (-(1 << 63), (1 << 64) - 1)  # what an enum's int values may be


def parse_type(text: str) -> TypeName:
    """Parse a field type string (``u16``, ``list[state:luo,q]``, ``dict[str, u8]``...).

    Raises :class:`BadType` saying what is wrong and where.
    """
    # A comparison parses each type twice per direction: remember the short ones
    # (every real one), never a hostile megabyte.
    return _parse_short(text) if len(text) <= 200 else _parse(text)


def _parse(text: str) -> TypeName:
    parser = _TypeParser(text)
    parsed = parser.type(0)
    if parser.pos != len(text):
        parser.fail(f"unexpected {quote(text[parser.pos :])} after the type")
    return parsed


_parse_short = functools.lru_cache(maxsize=4096)(_parse)


@attrs.define
class _TypeParser:
    text: str
    pos: int = 0

    def fail(self, reason: str) -> NoReturn:
        raise BadType(f"{reason} at character {self.pos + 1}")

    def take(self, literal: str) -> bool:
        if self.text.startswith(literal, self.pos):
            self.pos += len(literal)
            return True
        return False

    def expect(self, literal: str) -> None:
        if not self.take(literal):
            self.fail(f"expected {quote(literal)}")

    def match(self, pattern: re.Pattern[str], what: str) -> re.Match[str]:
        found = pattern.match(self.text, self.pos)
        if found is None:
            self.fail(f"expected {what}")
        self.pos = found.end()
        return found

    def type(self, depth: int) -> TypeName:
        if depth > MAX_TYPE_DEPTH:
            self.fail(f"nested deeper than {MAX_TYPE_DEPTH} levels")
        start = self.pos
        for kind in ("list", "optional", "tuple", "dict"):
            if self.take(f"{kind}["):
                args = self.arguments(kind, depth + 1)
                return TypeName(kind, self.text[start : self.pos], args)
        if self.take("enum:"):
            return TypeName("enum", *self.enum(start))
        if self.take("state:"):
            compatible = self.match(COMPATIBLE, "a compatible").group()
            if compatible.endswith(",") and self.text.startswith(" ", self.pos):
                self.pos -= 1  # the comma of ", ...]", not of the compatible
            return TypeName("class", self.text[start : self.pos])
        if self.take("struct:"):
            self.match(_IDENTIFIER, "a class name")
            return TypeName("class", self.text[start : self.pos])
        word = self.match(_WORD, "a type").group()
        if word in _INT_RANGES:
            return TypeName("int", word)
        if word in _SCALARS:
            return TypeName("scalar", word)
        self.pos = start
        self.fail(f"unknown type {quote(word)}")

    def arguments(self, kind: str, depth: int) -> tuple[TypeName, ...]:
        if kind == "dict":
            at = self.pos
            key = self.type(depth)
            if key.kind != "int" and key.text != "str":
                self.pos = at
                self.fail(f"a dict key is str or a fixed-width integer, not {quote(key.text)}")
            self.expect(", ")
            args: tuple[TypeName, ...] = (key, self.type(depth))
        else:
            args = (self.type(depth),)
        self.expect(", ...]" if kind == "tuple" else "]")
        return args

    def enum(self, start: int) -> tuple[str, tuple[()], frozenset[str]]:
        self.match(_IDENTIFIER, "an enum class name")
        self.expect("{")
        names: set[str] = set()
        members: set[str] = set()
        while True:
            at = self.pos
            found = self.match(_MEMBER, 'a member (name=int or name="str")')
            name, value = found.groups()
            if not value.startswith('"') and not _ENUM_INTS[0] <= int(value) <= _ENUM_INTS[1]:
                self.pos = at
                self.fail(f"enum member {name} is wider than 64 bits")
            if name in names:
                self.pos = at
                self.fail(f"enum member {name} appears twice")
            names.add(name)
            members.add(found.group())
            if not self.take(","):
                break
        self.expect("}")
        return self.text[start : self.pos], (), frozenset(members)


# -- checking ------------------------------------------------------------------------

_ENTRY_KEYS: Final = (
    "compatible",
    "version",
    "min_version",
    "writes",
    "migrations",
    "fields",
    "sections",
    "structs",
)
_FIELD_KEYS: Final = ("name", "type", "default")
_SECTION_KEYS: Final = ("name", "optional", "fields")
_FIELD_NAME: Final = re.compile(r"[^\W\d]\w*")


def check_entry(entry: object, where: str, path: str = "", compatible: str | None = None) -> None:
    """Validate a manifest entry read from a file, or raise a one-line :class:`ManifestError`.

    ``where`` names the file, ``path`` the entry inside it, ``compatible``
    the key it is filed under (which must be its own compatible).
    """
    try:
        _check_entry(entry, path, compatible)
    except Bad as exc:
        raise ManifestError(exc.message(where)) from None


def _check_entry(entry: object, path: str, compatible: str | None) -> None:
    fields = expect_object(entry, path, _ENTRY_KEYS)
    at = member(path, "compatible")
    name = _name(
        fields["compatible"], at, COMPATIBLE, "a compatible (1-63 chars of [a-z0-9,._+-])"
    )
    if compatible is not None and name != compatible:
        raise Bad(at, f"expected {quote(compatible)}, the key it is filed under")
    version = expect_int(fields["version"], member(path, "version"), 1, U32_MAX)
    low = expect_int(fields["min_version"], member(path, "min_version"), 1, version)
    # The schema's own rules: rollback writers write v1..v(version-1), migrations
    # start from v(min_version)..v(version-1), at most one of each per version.
    _versions(fields["writes"], member(path, "writes"), 1, version - 1, "below version")
    _versions(
        fields["migrations"], member(path, "migrations"), low, version - 1, "from min_version"
    )
    refs: dict[str, str] = {}  # nested class -> where it is first used
    names: set[str] = set()
    _check_fields(fields["fields"], member(path, "fields"), refs, names)
    sections = member(path, "sections")
    seen: set[str] = set()
    for index, spec in enumerate(expect_list(fields["sections"], sections)):
        at = item(sections, index)
        section = expect_object(spec, at, _SECTION_KEYS)
        name = _name(section["name"], member(at, "name"), _SECTION_NAME, "a section name")
        if name in seen:
            raise Bad(member(at, "name"), f"section {quote(name)} appears twice")
        seen.add(name)
        expect_bool(section["optional"], member(at, "optional"))
        _check_fields(section["fields"], member(at, "fields"), refs, names)
    structs = member(path, "structs")
    described = expect_object(fields["structs"], structs)
    for name, layout in described.items():
        at = member(structs, name)
        try:
            kind = parse_type(name).kind
        except BadType:
            kind = "scalar"
        if kind != "class":
            raise Bad(at, "not a nested class name (state:COMPATIBLE or struct:ClassName)")
        _check_fields(layout, at, refs, set())
    for name, used in refs.items():
        if name not in described:
            raise Bad(used, f"refers to {quote(name)}, which {structs} does not describe")


def _versions(value: object, path: str, low: int, high: int, what: str) -> None:
    seen: set[int] = set()
    for index, version in enumerate(expect_list(value, path)):
        at = item(path, index)
        if type(version) is not int or not low <= version <= high:
            allowed = f"from {low} to {high}" if low <= high else "none"
            raise Bad(at, f"expected a version {what} ({allowed}), got {describe(version)}")
        if version in seen:
            raise Bad(at, f"v{version} appears twice")
        seen.add(version)


def _name(value: object, path: str, pattern: re.Pattern[str], what: str) -> str:
    name = expect_str(value, path)
    if not pattern.fullmatch(name):
        raise Bad(path, f"{quote(name)} is not {what}")
    return name


def _check_fields(value: object, path: str, refs: dict[str, str], names: set[str]) -> None:
    """A list of fields; ``names`` are the record's field names so far (unique across sections)."""
    for index, spec in enumerate(expect_list(value, path)):
        at = item(path, index)
        field = expect_object(spec, at, _FIELD_KEYS)
        name = _name(field["name"], member(at, "name"), _FIELD_NAME, "a field name")
        if name in names:
            raise Bad(member(at, "name"), f"field {quote(name)} appears twice")
        names.add(name)
        typed = member(at, "type")
        # An enum's str values may hold anything: whatever prints a type escapes it.
        text = expect_str(field["type"], typed, printable=False)
        try:
            parsed = parse_type(text)
        except BadType as exc:
            raise Bad(typed, f"{quote(text)} is not a field type: {exc}") from None
        for name in parsed.classes():
            refs.setdefault(name, typed)
        expect_bool(field["default"], member(at, "default"))
