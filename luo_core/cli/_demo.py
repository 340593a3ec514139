"""``luo demo``: a live update of the built-in host, told step by step."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from luo_core.abi import save_image
from luo_core.cli._args import positive_int
from luo_core.errors import DeviceError
from luo_core.kernel._kernel import Kernel
from luo_core.kernel.devices import Device
from luo_core.platform import default_host


def add_parser(verbs: Any) -> None:
    parser = verbs.add_parser("demo", help="live-update the built-in host and report")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    parser.add_argument("--trace", type=Path, metavar="FILE", help="write a Chrome/Perfetto trace")
    parser.add_argument(
        "--save-handoff", type=Path, metavar="FILE", help="write the handoff (for luo inspect)"
    )
    parser.add_argument(
        "--workers", type=positive_int, default=1, help="run independent subtrees concurrently"
    )
    parser.set_defaults(run=run)


def run_demo(workers: int = 1, save_handoff: Path | None = None) -> tuple[Kernel, dict[str, Any]]:
    """Boot the default host, preserve every device that can be, live-update it."""
    machine = default_host()
    kernel = Kernel.boot(machine, workers=workers)
    refused: dict[str, str] = {}
    for dev in kernel.devices.devices():
        if dev.children:
            continue
        try:
            kernel.devices.request(dev.name)
        except DeviceError as exc:
            refused[dev.name] = str(exc)
    before = {name: dict(hw.regs) for name, hw in machine.devices.items()}
    requested = [d.name for d in kernel.devices.requested()]
    kernel.prepare()
    new = kernel.kexec()
    if save_handoff is not None:
        assert new.kho_root is not None
        save_handoff.write_bytes(save_image(new.memory, new.kho_root))
    new.finish()
    assert new.stats is not None
    devices = []
    for name, hw in machine.devices.items():
        dev = new.devices[name]
        devices.append(
            {
                "name": name,
                "driver": dev.driver.name if dev.driver else None,
                "requested": name in requested,
                "refused": refused.get(name),
                "registers_kept": bool(before[name]) and hw.regs == before[name],
            }
        )
    summary = {
        "liveupdate_number": new.liveupdate_number,
        "packs": [f"{p.origin} {p.status}" for p in new.registry.packs],
        "devices": devices,
        **new.stats.summary(),
    }
    return new, summary


def _tree_lines(kernel: Kernel, summary: dict[str, Any]) -> list[str]:
    info = {d["name"]: d for d in summary["devices"]}
    lines: list[str] = []

    def walk(dev: Device, prefix: str) -> None:
        d = info[dev.name]
        if d["requested"]:
            fate = "preserved, registers kept" if d["registers_kept"] else "preserved"
        elif d["refused"]:
            fate = "not preserved: " + d["refused"].split(": ", 1)[-1]
        else:
            fate = "not preserved"
        label = f"{prefix}{dev.name}"
        lines.append(f"  {label:<22} {d['driver'] or '-':<12} {fate}")
        for child in dev.children:
            walk(child, " " * len(prefix) + "└ ")

    for dev in kernel.devices.devices():
        if dev.parent is None:
            walk(dev, "")
    return lines


def run(args: argparse.Namespace) -> int:
    kernel, summary = run_demo(args.workers, args.save_handoff)
    assert kernel.stats is not None
    if args.trace:
        args.trace.write_text(json.dumps(kernel.stats.chrome_trace()))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"luo demo: live update #{summary['liveupdate_number']} of the built-in host")
    print("packs: " + "; ".join(summary["packs"]))
    print("devices:")
    print("\n".join(_tree_lines(kernel, summary)))
    phases = summary["phases"]
    print(
        "phases: " + " · ".join(f"{n} {p['duration_us'] / 1000:.2f} ms" for n, p in phases.items())
    )
    print(f"blackout: {summary['blackout_us'] / 1000:.2f} ms (freeze start to last restore)")
    if args.trace:
        print(f"trace: {args.trace}")
    return 0
