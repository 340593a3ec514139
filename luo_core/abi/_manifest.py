"""ABI manifest entries for state classes: describing one, checking one, comparing two.

:func:`manifest_entry` describes a ``@state`` class as stable, JSON-ready
data.  :func:`check_entry` validates an entry read from a file, which is
hostile: every key, type string and number, with the path of the first
problem.  :func:`compare_entries` plays QEMU's vmstate-static-checker: given
the entry of the running kernel (``old``) and of the target (``new``) it
checks both directions -- *update* (can ``new`` read what ``old`` writes?) and
*rollback* (can ``old`` read what ``new`` can write?) -- and, when a version
number stayed the same, that the layout did not change under it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

import attrs

from luo_core.abi._manifest_check import (
    _INT_RANGES,
    TypeName,
    check_entry,
    parse_type,
)
from luo_core.abi._schema import FieldSpec, schema_of
from luo_core.abi._types import ClassType, FieldInfo, FieldType

Level = Literal["error", "warning", "info"]
Direction = Literal["update", "rollback"]


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


def _describe(fields: Iterable[FieldSpec | FieldInfo]) -> list[dict[str, Any]]:
    return [{"name": f.name, "type": f.type.name, "default": f.has_default} for f in fields]


def _collect_structs(ftype: FieldType, into: dict[str, list[dict[str, Any]]]) -> None:
    if isinstance(ftype, ClassType) and ftype.name not in into:
        into[ftype.name] = _describe(ftype.fields)
    for child in ftype.children():
        _collect_structs(child, into)


# -- comparing -----------------------------------------------------------------------


def compare_entries(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Finding]:
    """What goes wrong handing state from ``old`` to ``new`` (update) and back (rollback).

    Both entries are checked first (:class:`ManifestError` for a malformed one).
    """
    check_entry(old, "old")
    check_entry(new, "new")
    return compare_checked(old, new)


def compare_checked(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Finding]:
    """:func:`compare_entries` for entries already checked (by :func:`check_entry`)."""
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
        gaps = _gaps(written, high, new["migrations"])
        if gaps:
            yield Finding("error", "update", f"new has no migration for {gaps}")
        else:
            yield Finding("info", "update", f"new migrates old's v{written} records to v{high}")
    else:
        yield from _layout("update", reader=new, writer=old)


def _gaps(written: int, high: int, migrations: Iterable[int], shown: int = 5) -> str:
    """The steps from ``written`` to ``high`` without a migration, as runs: a version
    range can span 2**32 steps, so the steps themselves are never listed one by one."""
    runs: list[tuple[int, int]] = []
    step = written
    for start in sorted(m for m in set(migrations) if written <= m < high):
        if start > step:
            runs.append((step, start - 1))
        step = start + 1
    if step < high:
        runs.append((step, high - 1))
    text = []
    for first, last in runs[:shown]:
        if last - first < 3:
            text += [f"v{s}->v{s + 1}" for s in range(first, last + 1)]
        else:
            text.append(f"v{first}->v{first + 1} ... v{last}->v{last + 1} ({last - first + 1})")
    more = f" and {len(runs) - shown} more gaps" if len(runs) > shown else ""
    return ", ".join(text) + more


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
            writers = ", ".join(f"v{v}" for v in sorted(new["writes"])) or "none"
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
    for name in sorted(ours.keys() - theirs.keys()):
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
        relation = _relation(parse_type(written), parse_type(read))
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


Relation = Literal["same", "wider", "narrower", "different"]


def _relation(written: TypeName, read: TypeName) -> Relation:
    """How the type ``read`` relates to ``written``: same, wider, narrower or different."""
    if written.text == read.text:
        return "same"
    if written.kind == read.kind == "int":
        (wlo, whi), (rlo, rhi) = _INT_RANGES[written.text], _INT_RANGES[read.text]
        if (wlo, whi) == (rlo, rhi):
            return "same"
        if rlo <= wlo and whi <= rhi:
            return "wider"
        if wlo <= rlo and rhi <= whi:
            return "narrower"
        return "different"
    if written.kind == read.kind == "enum":
        wset, rset = written.members, read.members
        if wset == rset:
            return "same"
        return "wider" if wset < rset else "narrower" if rset < wset else "different"
    if written.kind == read.kind and written.args:
        # list, tuple, optional and dict: as their parts are (a dict's key and value).
        return _combined(_relation(w, r) for w, r in zip(written.args, read.args, strict=True))
    if read.kind == "optional" and _relation(written, read.args[0]) in ("same", "wider"):
        return "wider"
    if written.kind == "optional" and _relation(written.args[0], read) in ("same", "narrower"):
        return "narrower"
    return "different"


def _combined(relations: Iterable[Relation]) -> Relation:
    found = set(relations) - {"same"}
    if not found:
        return "same"
    if len(found) == 1:
        return found.pop()
    return "different"
