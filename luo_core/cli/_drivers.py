"""``luo drivers``: installed packs, their versions, and what they handle."""

from __future__ import annotations

import argparse
from typing import Any

from luo_core.cli._args import dumps, paragraph
from luo_core.kernel._records import Bus, Command, DeviceDriver
from luo_core.kernel._registry import PluginRegistry, Record, load_plugins
from luo_core.kernel.devices import _builtin
from luo_core.kernel.sessions import FileHandler


def add_parser(verbs: Any) -> None:
    parser = verbs.add_parser(
        "drivers",
        help="list installed packs and what they handle",
        description=paragraph(
            "List every plugin a kernel would load: luo's own and each installed pack "
            "(entry-point group luo_core.plugins), with its version, its status (loaded, "
            "disabled by LUO_DISABLE_PLUGINS, or failed and why) and the drivers, buses and "
            "subsystems it provides.  Exits 1 if any pack failed to load."
        ),
        epilog=(
            "example:\n  luo drivers\n  LUO_DISABLE_PLUGINS=luo-example-nic luo drivers --json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--json", action="store_true", help="print JSON instead of text (default: text)"
    )
    parser.set_defaults(run=run)


def describe(record: Record) -> dict[str, Any]:
    if isinstance(record, DeviceDriver):
        return {
            "kind": "driver",
            "name": record.name,
            "compatible": list(record.compatible),
            "liveupdate": record.liveupdate,
        }
    if isinstance(record, Bus):
        return {"kind": "bus", "name": record.name, "liveupdate": record.liveupdate}
    if isinstance(record, FileHandler):
        return {"kind": "file handler", "name": record.compatible}
    if isinstance(record, Command):
        return {"kind": "command", "name": record.name}
    return {"kind": "subsystem", "name": record.name}


def inventory(registry: PluginRegistry) -> list[dict[str, Any]]:
    return [
        {
            "distribution": pack.origin.distribution,
            "version": pack.origin.version,
            "status": pack.status,
            "error": pack.error,
            "provides": [describe(r) for r in pack.records],
        }
        for pack in registry.packs
    ]


def run(args: argparse.Namespace) -> int:
    packs = inventory(load_plugins(builtin=_builtin, log_failures=False))
    if args.json:
        print(dumps(packs))
    else:
        for pack in packs:
            status = pack["status"] if pack["error"] is None else f"failed: {pack['error']}"
            print(f"{pack['distribution']} {pack['version']}  {status}")
            for item in pack["provides"]:
                handles = ", ".join(item.get("compatible", []))
                extra = "" if item.get("liveupdate", True) else "  (no live update)"
                print(f"  {item['kind']:<10} {item['name']:<20} {handles}{extra}".rstrip())
    return 1 if any(p["status"] == "failed" for p in packs) else 0
