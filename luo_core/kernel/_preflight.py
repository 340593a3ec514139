"""The ABI manifest of an environment, and the pre-flight check against a target's.

A manifest lists every pack, every participant and the schema of every record
it writes (compatible, version range, rollback writers, field layout), as
stable JSON.  Before ``prepare`` changes anything, the update can be checked
against the target kernel's manifest: each record is written at a version the
target reads — the current one, or an older one through a rollback writer —
or the update is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Final

from luo_core.abi import manifest_entry, schema_of
from luo_core.abi._manifest import compare_checked
from luo_core.abi._manifest_check import (
    Bad,
    check_entry,
    describe,
    expect_object,
    expect_str,
    member,
    parse_int,
)
from luo_core.errors import IncompatibleError, ManifestError
from luo_core.kernel._participants import Key, label
from luo_core.kernel._records import DeviceDriver, Subsystem
from luo_core.kernel._registry import PluginRegistry, core_origin

MANIFEST_FORMAT: Final = 1
MAX_MANIFEST_BYTES: Final = 16 << 20
"""The largest manifest read: 16 MiB, thousands of times a real one (about 1 KiB a schema).
Parsing the worst JSON of that size takes a few seconds and a few hundred MB."""
Manifest = dict[str, Any]

_KEYS: Final = ("format", "luo-core", "packs", "participants", "schemas")
_OPTIONAL_KEYS: Final = ("failed",)
_PARTICIPANT_KEYS: Final = ("distribution", "record")
_PARTICIPANT_KINDS: Final = ("subsystem:", "driver:")


def participant_id(record: Subsystem | DeviceDriver) -> str:
    kind = "subsystem" if isinstance(record, Subsystem) else "driver"
    return f"{kind}:{record.name}"


def build_manifest(registry: PluginRegistry) -> Manifest:
    """This environment's manifest, from the records its packs registered.

    A pack that failed to load is listed under ``failed`` (distribution ->
    why), a key present only then: without it, the manifest would look
    complete while lacking that pack's participants and schemas.
    """
    packs: dict[str, str] = {}
    failed: dict[str, str] = {}
    participants: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for pack in registry.packs:
        if pack.status == "failed":
            failed[pack.origin.distribution] = pack.error or "failed to load"
        if pack.status != "loaded":
            continue
        packs[pack.origin.distribution] = pack.origin.version
        for record in pack.records:
            if not isinstance(record, Subsystem | DeviceDriver):
                continue
            schema = record.schema
            participants[participant_id(record)] = {
                "distribution": pack.origin.distribution,
                "record": schema_of(schema).compatible if schema else None,
            }
            if schema is not None:
                schemas[schema_of(schema).compatible] = manifest_entry(schema)
    manifest: Manifest = {
        "format": MANIFEST_FORMAT,
        "luo-core": core_origin().version,
        "packs": dict(sorted(packs.items())),
        "participants": dict(sorted(participants.items())),
        "schemas": dict(sorted(schemas.items())),
    }
    if failed:
        manifest["failed"] = dict(sorted(failed.items()))
    return manifest


def dump_manifest(manifest: Manifest) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def load_manifest(text: str | bytes, where: str = "manifest") -> Manifest:
    """Parse and check a manifest (UTF-8 JSON); anything else is a one-line :class:`ManifestError`.

    ``where`` names the file in the message, which also gives the path of
    the first problem inside it: ``m.json: schemas."luo,x".version: ...``.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ManifestError(
                f"{where} is not a manifest: not UTF-8 text (byte 0x{text[exc.start]:02x} "
                f"at offset {exc.start})"
            ) from None
    try:
        manifest = json.loads(text, parse_int=parse_int, parse_constant=_no_constant)
    except ValueError as exc:
        raise ManifestError(f"{where} is not JSON: {exc}") from None
    except RecursionError:
        raise ManifestError(f"{where} is not a manifest: JSON nested too deeply") from None
    return check_manifest(manifest, where)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def check_manifest(manifest: object, where: str = "manifest") -> Manifest:
    """``manifest`` itself if it is a valid luo ABI manifest, else a one-line
    :class:`ManifestError` naming ``where``, the path inside it and the problem.

    Every key is checked (an unknown one is refused: a later luo that says
    more writes a new ``format``), every number bounded (versions are u32),
    every type string parsed.
    """
    if type(manifest) is not dict or "format" not in manifest:
        raise ManifestError(
            f'{where} is not a luo ABI manifest (an object with "format": {MANIFEST_FORMAT})'
        )
    try:
        _check(manifest, where)
    except Bad as exc:
        raise ManifestError(exc.message(where)) from None
    return manifest


def _check(manifest: dict[str, Any], where: str) -> None:
    if type(manifest["format"]) is not int or manifest["format"] != MANIFEST_FORMAT:
        found = describe(manifest["format"])
        raise Bad("format", f"this luo reads format {MANIFEST_FORMAT}, not {found}")
    expect_object(manifest, "", _KEYS, _OPTIONAL_KEYS)
    expect_str(manifest["luo-core"], "luo-core")
    for section in ("packs", *_OPTIONAL_KEYS):
        if section in manifest:
            for name, text in expect_object(manifest[section], section).items():
                expect_str(text, member(section, _printable(name, section)))
    participants = expect_object(manifest["participants"], "participants")
    for pid, theirs in participants.items():
        at = member("participants", _printable(pid, "participants"))
        if not pid.startswith(_PARTICIPANT_KINDS) or not pid.partition(":")[2]:
            raise Bad(at, "not a participant (subsystem:NAME or driver:NAME)")
        entry = expect_object(theirs, at, _PARTICIPANT_KEYS)
        expect_str(entry["distribution"], member(at, "distribution"))
        if entry["record"] is not None:
            expect_str(entry["record"], member(at, "record"))
    schemas = expect_object(manifest["schemas"], "schemas")
    for compatible, entry in schemas.items():
        check_entry(entry, where, member("schemas", compatible), compatible)


def _printable(key: str, path: str) -> str:
    if not key.isprintable():
        raise Bad(member(path, key), "the key has characters that are not printable")
    return key


def plan_versions(
    target: object, participants: Iterable[tuple[Key, Subsystem | DeviceDriver]]
) -> dict[Key, int]:
    """The version each record must be written at for ``target`` to read it.

    ``target`` is checked as a file would be (:class:`ManifestError` naming
    the problem).  Raises :class:`IncompatibleError` naming the first problem
    (and how many more there are) when the target cannot take the update.
    """
    manifest = check_manifest(target, "target")
    versions: dict[Key, int] = {}
    problems: list[str] = []
    for key, record in participants:
        who = f"{label(key)} ({participant_id(record)})"
        if record.schema is None:
            theirs = manifest["participants"].get(participant_id(record))
            if not isinstance(theirs, dict) or theirs.get("record") is not None:
                problems.append(f"{who}: the target has no opaque {participant_id(record)}")
            continue
        schema = schema_of(record.schema)
        entry = manifest["schemas"].get(schema.compatible)
        if entry is None:
            problems.append(f"{who}: the target cannot read {schema.compatible} at all")
            continue
        low, high = entry["min_version"], entry["version"]
        if low <= schema.version <= high:
            versions[key] = schema.version
            continue
        usable = [v for v in schema.writers if low <= v <= high]
        if usable:
            versions[key] = max(usable)
        else:
            problems.append(
                f"{who}: writes {schema.compatible} v{schema.version}, the target reads "
                f"v{low}..v{high} and there is no rollback writer for those"
            )
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise IncompatibleError(f"the target kernel cannot take this update: {problems[0]}{more}")
    return versions


def compare_manifests(old: Manifest, new: Manifest) -> list[tuple[str, str, str, str]]:
    """``(level, direction, subject, message)`` for every finding, both ways.

    Both manifests are checked ones (from :func:`load_manifest` or
    :func:`build_manifest`).  A pack that failed to load on either side is an
    error in both directions (``both``): that side's manifest is incomplete.
    """
    findings: list[tuple[str, str, str, str]] = []
    for side, manifest in (("OLD", old), ("NEW", new)):
        for distribution, why in manifest.get("failed", {}).items():
            message = f"{side} is incomplete: the pack failed to load there ({why})"
            findings.append(("error", "both", distribution, message))
    for compatible in sorted({*old["schemas"], *new["schemas"]}):
        mine, theirs = old["schemas"].get(compatible), new["schemas"].get(compatible)
        if theirs is None:
            findings.append(("error", "update", compatible, "NEW has no schema for it"))
        elif mine is None:
            findings.append(("warning", "rollback", compatible, "OLD has no schema for it"))
        else:
            findings += [
                (f.level, f.direction, compatible, f.message)
                for f in compare_checked(mine, theirs)
            ]
    for pid in sorted({*old["participants"], *new["participants"]}):
        mine, theirs = old["participants"].get(pid), new["participants"].get(pid)
        opaque_before = isinstance(mine, Mapping) and mine.get("record") is None
        opaque_after = isinstance(theirs, Mapping) and theirs.get("record") is None
        if opaque_before and not opaque_after:
            findings.append(("error", "update", pid, "opaque in OLD, not in NEW"))
    return findings
