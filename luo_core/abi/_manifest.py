"""ABI manifest entries for state classes, and the checker that compares two of them.

:func:`manifest_entry` describes a ``@state`` class as stable, JSON-ready
data.  :func:`compare_entries` plays QEMU's vmstate-static-checker: given the
entry of the running kernel (``old``) and of the target (``new``) it checks
both directions -- *update* (can ``new`` read what ``old`` writes?) and
*rollback* (can ``old`` read what ``new`` can write?) -- and, when a version
number stayed the same, that the layout did not change under it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final, Literal

import attrs

from luo_core.abi._schema import FieldSpec, schema_of
from luo_core.abi._types import ClassType, FieldType

Level = Literal["error", "warning", "info"]
Direction = Literal["update", "rollback"]

_INT_RANGES: Final = {
    **{f"u{bits}": (0, (1 << bits) - 1) for bits in (8, 16, 32, 64)},
    **{f"s{bits}": (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) for bits in (8, 16, 32, 64)},
    "phys_addr": (0, (1 << 64) - 1),
}
_WRAPPED: Final = re.compile(r"^(list|optional)\[(.*)\]$|^tuple\[(.*), \.\.\.\]$")
_ENUM: Final = re.compile(r"^enum:[^{]*\{(.*)\}$")


@attrs.frozen
class Finding:
    """One result of :func:`compare_entries`: how bad, which direction, and what."""

    level: Level
    direction: Direction
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.direction}: {self.message}"


# -- describing ----------------------------------------------------------------------


def manifest_entry(cls: type[Any]) -> dict[str, Any]:
    """The ABI description of a ``@state`` class: stable, JSON-ready, sorted where unordered."""
    schema = schema_of(cls)
    schema.ensure_complete()
    structs: dict[str, list[dict[str, Any]]] = {}
    for spec in schema.fields:
        _collect_structs(spec.type, structs)
    return {
        "compatible": schema.compatible,
        "version": schema.version,
        "min_version": schema.min_version,
        "writes": sorted(schema.writers),
        "migrations": sorted(schema.migrations),
        "fields": _describe(f for f in schema.fields if f.section is None),
        "sections": [
            {
                "name": name,
                "optional": spec.optional,
                "fields": _describe(f for f in schema.fields if f.section == name),
            }
            for name, spec in sorted(schema.sections.items())
        ],
        "structs": dict(sorted(structs.items())),
    }


def _describe(fields: Iterable[FieldSpec]) -> list[dict[str, Any]]:
    return [{"name": f.name, "type": f.type.name, "default": f.has_default} for f in fields]


def _collect_structs(ftype: FieldType, into: dict[str, list[dict[str, Any]]]) -> None:
    if isinstance(ftype, ClassType) and ftype.name not in into:
        into[ftype.name] = [
            {"name": f.name, "type": f.type.name, "default": f.has_default} for f in ftype.fields
        ]
    for child in ftype.children():
        _collect_structs(child, into)


# -- comparing -----------------------------------------------------------------------


def compare_entries(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Finding]:
    """What goes wrong handing state from ``old`` to ``new`` (update) and back (rollback)."""
    if old["compatible"] != new["compatible"]:
        message = f"compatible changed from {old['compatible']!r} to {new['compatible']!r}"
        return [Finding("error", "update", message), Finding("error", "rollback", message)]
    return [*_update(old, new), *_rollback(old, new)]


def _update(old: Mapping[str, Any], new: Mapping[str, Any]) -> Iterator[Finding]:
    written, low, high = old["version"], new["min_version"], new["version"]
    if written > high:
        yield Finding("error", "update", f"old writes v{written}; new reads only up to v{high}")
    elif written < low:
        yield Finding("error", "update", f"old writes v{written}; new reads only from v{low}")
    elif written < high:
        missing = [step for step in range(written, high) if step not in new["migrations"]]
        if missing:
            gaps = ", ".join(f"v{step}->v{step + 1}" for step in missing)
            yield Finding("error", "update", f"new has no migration for {gaps}")
        else:
            yield Finding("info", "update", f"new migrates old's v{written} records to v{high}")
    else:
        yield from _layout("update", reader=new, writer=old)


def _rollback(old: Mapping[str, Any], new: Mapping[str, Any]) -> Iterator[Finding]:
    low, high, current = old["min_version"], old["version"], new["version"]
    if current == high:
        yield from _layout("rollback", reader=old, writer=new)
    elif low <= current < high:
        yield Finding("info", "rollback", f"old migrates new's v{current} records to v{high}")
    else:
        usable = [version for version in new["writes"] if low <= version <= high]
        if usable:
            yield Finding(
                "info",
                "rollback",
                f"new hands state back as v{max(usable)} with its rollback writer",
            )
        else:
            writers = ", ".join(f"v{v}" for v in new["writes"]) or "none"
            yield Finding(
                "error",
                "rollback",
                f"old reads v{low}..v{high}; new writes v{current} "
                f"and has rollback writers for: {writers}",
            )


def _layout(
    direction: Direction, *, reader: Mapping[str, Any], writer: Mapping[str, Any]
) -> Iterator[Finding]:
    """Layout findings at one version number: can ``reader`` read ``writer``'s records?"""
    names = ("new", "old") if direction == "update" else ("old", "new")
    check = _Checker(direction, *names)
    version = writer["version"]
    # A reader accepts a section's fields at the top level too, so main fields
    # are looked up among all of the reader's fields.
    everything = {f["name"]: f for f in reader["fields"]}
    for spec in reader["sections"]:
        everything.update({f["name"]: f for f in spec["fields"]})
    yield from check.fields(f"v{version}", writer["fields"], reader["fields"], everything)
    theirs = {spec["name"]: spec for spec in writer["sections"]}
    ours = {spec["name"]: spec for spec in reader["sections"]}
    for name, spec in theirs.items():
        if name in ours:
            mine = {f["name"]: f for f in ours[name]["fields"]}
            yield from check.fields(
                f"v{version} section {name!r}", spec["fields"], ours[name]["fields"], mine
            )
        elif spec["optional"]:
            yield check.finding("info", f"section {name!r} is optional; {check.reader} ignores it")
        else:
            yield check.finding(
                "error",
                f"section {name!r} is unknown to {check.reader}, which refuses records "
                f"carrying it; changing sections needs a version bump (or optional=True)",
            )
    for name in ours.keys() - theirs.keys():
        yield check.finding(
            "info", f"section {name!r} is never written by {check.writer}; defaults are used"
        )
    for name in sorted(writer["structs"].keys() & reader["structs"].keys()):
        mine = {f["name"]: f for f in reader["structs"][name]}
        yield from check.fields(name, writer["structs"][name], reader["structs"][name], mine)


@attrs.frozen
class _Checker:
    direction: Direction
    reader: str
    writer: str

    def finding(self, level: Level, message: str) -> Finding:
        return Finding(level, self.direction, message)

    def fields(
        self,
        where: str,
        written: list[dict[str, Any]],
        expected: list[dict[str, Any]],
        known: Mapping[str, dict[str, Any]],
    ) -> Iterator[Finding]:
        seen = {f["name"] for f in written}
        for field in written:
            name, mine = field["name"], known.get(field["name"])
            if mine is None:
                yield self.finding(
                    "error",
                    f"{where}: {self.writer} writes field {name!r}, which {self.reader} does "
                    "not know and refuses; adding or removing a field needs a version bump",
                )
            else:
                yield from self.types(f"{where}: field {name!r}", field["type"], mine["type"])
        for field in expected:
            if field["name"] in seen:
                continue
            if field["default"]:
                yield self.finding(
                    "info",
                    f"{where}: field {field['name']!r} is not in {self.writer}'s records; "
                    f"{self.reader} uses its default",
                )
            else:
                yield self.finding(
                    "error",
                    f"{where}: field {field['name']!r} has no default and no migration fills "
                    f"it; {self.reader} cannot read {self.writer}'s records",
                )

    def types(self, where: str, written: str, read: str) -> Iterator[Finding]:
        relation = _relation(written, read)
        if relation == "same":
            return
        change = f"{written} -> {read}" if self.direction == "update" else f"{read} -> {written}"
        if relation == "wider":
            yield self.finding(
                "info", f"{where}: {change}; {self.reader} reads every value {self.writer} writes"
            )
        elif relation == "narrower":
            level: Level = "error" if self.direction == "update" else "warning"
            yield self.finding(
                level,
                f"{where}: {change}; {self.reader} refuses values of {self.writer} "
                "that do not fit: bump the version",
            )
        else:
            yield self.finding("error", f"{where}: retyped {change} without a version bump")


def _relation(written: str, read: str) -> str:
    """How the type ``read`` relates to ``written``: same, wider, narrower or different."""
    if written == read:
        return "same"
    if written in _INT_RANGES and read in _INT_RANGES:
        (wlo, whi), (rlo, rhi) = _INT_RANGES[written], _INT_RANGES[read]
        if (wlo, whi) == (rlo, rhi):
            return "same"
        if rlo <= wlo and whi <= rhi:
            return "wider"
        if wlo <= rlo and rhi <= whi:
            return "narrower"
        return "different"
    enums = _ENUM.match(written), _ENUM.match(read)
    if enums[0] and enums[1]:
        wset, rset = (set(m.group(1).split(",")) for m in (enums[0], enums[1]))
        if wset == rset:
            return "same"
        return "wider" if wset < rset else "narrower" if rset < wset else "different"
    wrapped = _WRAPPED.match(written), _WRAPPED.match(read)
    if wrapped[0] and wrapped[1]:
        (wkind, winner), (rkind, rinner) = (_unwrap(m) for m in (wrapped[0], wrapped[1]))
        if wkind == rkind:
            return _relation(winner, rinner)
    if read == f"optional[{written}]":
        return "wider"
    if written == f"optional[{read}]":
        return "narrower"
    return "different"


def _unwrap(match: re.Match[str]) -> tuple[str, str]:
    if match.group(3) is not None:
        return "tuple", match.group(3)
    return match.group(1), match.group(2)
