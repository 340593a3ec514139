"""``luo inspect``: decode and validate a saved handoff, as the next kernel would."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import attrs

from luo_core.abi import decode_state, load_image, read_root, schema_of, unseal
from luo_core.errors import HandoffError
from luo_core.kernel._records import DeviceDriver, Subsystem
from luo_core.kernel._registry import load_plugins
from luo_core.kernel.devices import _builtin


def add_parser(verbs: Any) -> None:
    parser = verbs.add_parser("inspect", help="decode and validate a saved handoff")
    parser.add_argument(
        "handoff", type=Path, metavar="HANDOFF", help="from luo demo --save-handoff"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run)


def known_schemas() -> dict[str, type[Any]]:
    """Every schema this environment's packs declare, by compatible."""
    registry = load_plugins(builtin=_builtin)
    records = [*registry.subsystems.values(), *registry.drivers.values()]
    return {
        schema_of(r.schema).compatible: r.schema
        for r in records
        if isinstance(r, Subsystem | DeviceDriver) and r.schema is not None
    }


def _plain(value: Any) -> Any:
    if attrs.has(type(value)):
        return {k: _plain(v) for k, v in attrs.asdict(value, recurse=False).items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "value") and hasattr(value, "name"):  # an enum
        return value.value
    return value


def describe(blob: bytes) -> dict[str, Any]:
    memory, root = load_image(blob)
    handed = read_root(memory, root)
    schemas = known_schemas()
    nodes = []
    for name, node in sorted(handed.nodes.items()):
        sealed = unseal(handed.read(memory, name)) if name != "luo:meta" else None
        entry: dict[str, Any] = {
            "name": name,
            "compatible": node.compatible,
            "phys": node.phys,
            "length": node.length,
        }
        if sealed is not None:
            entry["version"] = sealed.version
            schema = schemas.get(sealed.compatible)
            if schema is not None:
                entry["fields"] = _plain(decode_state(schema, sealed.payload, sealed.version))
            elif sealed.compatible != node.compatible:
                raise HandoffError(f"node {name}: envelope says {sealed.compatible}")
            else:
                entry["payload"] = sealed.payload.hex()
                entry["note"] = "no pack installed here declares this compatible"
        nodes.append(entry)
    return {
        "root": root,
        "liveupdate_number": handed.liveupdate_number,
        "preserved": [[r.start, r.size] for r in handed.preserved],
        "nodes": nodes,
    }


def run(args: argparse.Namespace) -> int:
    report = describe(args.handoff.read_bytes())
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{args.handoff}: valid luo handoff, liveupdate-number {report['liveupdate_number']}, "
        f"root at {report['root']:#x}, {len(report['preserved'])} preserved range(s)"
    )
    for node in report["nodes"]:
        version = f" v{node['version']}" if "version" in node else ""
        print(f"  {node['name']}  {node['compatible']}{version}  {node['length']} bytes")
        for key, value in (node.get("fields") or {}).items():
            print(f"      {key} = {value}")
        if "note" in node:
            print(f"      ({node['note']})")
    return 0
