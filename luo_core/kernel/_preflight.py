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
from typing import Any

from luo_core.abi import compare_entries, manifest_entry, schema_of
from luo_core.errors import IncompatibleError, ManifestError
from luo_core.kernel._participants import Key, label
from luo_core.kernel._records import DeviceDriver, Subsystem
from luo_core.kernel._registry import PluginRegistry, core_origin

MANIFEST_FORMAT = 1
Manifest = dict[str, Any]


def participant_id(record: Subsystem | DeviceDriver) -> str:
    kind = "subsystem" if isinstance(record, Subsystem) else "driver"
    return f"{kind}:{record.name}"


def build_manifest(registry: PluginRegistry) -> Manifest:
    """This environment's manifest, from the records its packs registered."""
    packs: dict[str, str] = {}
    participants: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for pack in registry.packs:
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
    return {
        "format": MANIFEST_FORMAT,
        "luo-core": core_origin().version,
        "packs": dict(sorted(packs.items())),
        "participants": dict(sorted(participants.items())),
        "schemas": dict(sorted(schemas.items())),
    }


def dump_manifest(manifest: Manifest) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def load_manifest(text: str, where: str = "manifest") -> Manifest:
    """Parse a manifest; anything else is a one-line :class:`ManifestError`."""
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise ManifestError(f"{where} is not JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"{where} is not a luo ABI manifest (format {MANIFEST_FORMAT})")
    for section in ("packs", "participants", "schemas"):
        if not isinstance(manifest.get(section), dict):
            raise ManifestError(f"{where}: {section!r} is missing or not an object")
    for compatible, entry in manifest["schemas"].items():
        if not (
            isinstance(entry, dict)
            and entry.get("compatible") == compatible
            and all(isinstance(entry.get(k), int) for k in ("version", "min_version"))
            and all(isinstance(entry.get(k), list) for k in ("writes", "migrations", "fields"))
        ):
            raise ManifestError(f"{where}: schema {compatible!r} is malformed")
    return manifest


def plan_versions(
    target: Manifest, participants: Iterable[tuple[Key, Subsystem | DeviceDriver]]
) -> dict[Key, int]:
    """The version each record must be written at for ``target`` to read it.

    Raises :class:`IncompatibleError` naming the first problem (and how many
    more there are) when the target cannot take the update.
    """
    versions: dict[Key, int] = {}
    problems: list[str] = []
    for key, record in participants:
        who = f"{label(key)} ({participant_id(record)})"
        if record.schema is None:
            theirs = target["participants"].get(participant_id(record))
            if not isinstance(theirs, dict) or theirs.get("record") is not None:
                problems.append(f"{who}: the target has no opaque {participant_id(record)}")
            continue
        schema = schema_of(record.schema)
        entry = target["schemas"].get(schema.compatible)
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
    """``(level, direction, compatible, message)`` for every finding, both ways."""
    findings: list[tuple[str, str, str, str]] = []
    for compatible in sorted({*old["schemas"], *new["schemas"]}):
        mine, theirs = old["schemas"].get(compatible), new["schemas"].get(compatible)
        if theirs is None:
            findings.append(("error", "update", compatible, "NEW has no schema for it"))
        elif mine is None:
            findings.append(("warning", "rollback", compatible, "OLD has no schema for it"))
        else:
            findings += [
                (f.level, f.direction, compatible, f.message)
                for f in compare_entries(mine, theirs)
            ]
    for pid in sorted({*old["participants"], *new["participants"]}):
        mine, theirs = old["participants"].get(pid), new["participants"].get(pid)
        opaque_before = isinstance(mine, Mapping) and mine.get("record") is None
        opaque_after = isinstance(theirs, Mapping) and theirs.get("record") is None
        if opaque_before and not opaque_after:
            findings.append(("error", "update", pid, "opaque in OLD, not in NEW"))
    return findings
