"""``luo demo``: a live update of the built-in host, told step by step.

By default every actor is a process of its own: the hardware powers on first
(its NICs receive frames from their links all along), the first kernel boots
in a new process, the next kernel is started and warmed during ``prepare``,
and at ``kexec`` the old process exits and the new one boots from the handoff.
``--inproc`` does the same with the kernels in this process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path
from typing import Any

import attrs

from luo_core.abi._boot import KernelConfig
from luo_core.abi._stats import UpdateStats
from luo_core.cli._args import positive_int
from luo_core.errors import DeviceError, NotFoundError
from luo_core.kexec import KernelProcess
from luo_core.platform import EXAMPLE_NIC, Hardware, HardwareProcess, default_host

RX_PPS = 100_000
"""Frames per second each NIC of the demo host receives from its link."""


@attrs.frozen
class _Seen:
    """A device as the new kernel had it before ``finish``."""

    name: str
    driver: str | None
    preserved: bool
    reclaimed: bool


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
    parser.add_argument(
        "--inproc", action="store_true", help="kexec inside this process (fast, for tests)"
    )
    parser.add_argument(
        "--next-python",
        metavar="PATH",
        help="boot the next kernel with this interpreter (another environment, other packs)",
    )
    parser.set_defaults(run=run)


def _nic_counters(hardware: Hardware | HardwareProcess, names: list[str]) -> dict[str, Any]:
    return {name: hardware.control(name, "counters") for name in names}


def run_process(
    workers: int = 1,
    save_handoff: Path | None = None,
    next_python: str | None = None,
    log: str = "warning",
) -> tuple[UpdateStats, dict[str, Any]]:
    """The demo with the hardware and every kernel in processes of their own."""
    machine = default_host(rx_pps=RX_PPS)
    nics = [n for n, d in machine.devices.items() if d.compatible == EXAMPLE_NIC]
    config = KernelConfig(workers=workers)
    with HardwareProcess(machine, log=log) as hardware:
        kernel = KernelProcess.boot(hardware, config, log=log)
        try:
            refused = _request_leaves(kernel, machine.devices, kernel.devices().values())
            for nic in nics:
                with contextlib.suppress(NotFoundError):  # without the example pack, no traffic
                    kernel.workload("example-nic", nic)
            kernel.prepare(next_python=next_python)
            before = _nic_counters(hardware, nics)
            old_pid = kernel.pid
            kernel = kernel.kexec()
            after = _nic_counters(hardware, nics)
            if save_handoff is not None:
                save_handoff.write_bytes(kernel.handoff())
            devices = kernel.devices()
            kernel.finish()
            stats = kernel.stats
            packs = kernel.packs()
            number = kernel.liveupdate_number
            pids = {"hardware": hardware.pid, "old": old_pid, "new": kernel.pid}
        finally:
            kernel.shutdown()
    if stats is None:
        raise DeviceError("the new kernel reported no statistics")
    summary = _summary("process", pids, number, packs, devices, refused, before, after, stats)
    return stats, summary


def run_inproc(
    workers: int = 1, save_handoff: Path | None = None
) -> tuple[UpdateStats, dict[str, Any]]:
    """The demo with both kernels in this process (the hardware's models run on threads)."""
    from luo_core.abi import save_image
    from luo_core.kernel._kernel import Kernel

    machine = default_host(rx_pps=RX_PPS)
    nics = [n for n, d in machine.devices.items() if d.compatible == EXAMPLE_NIC]
    with Hardware(machine) as hardware:
        kernel = Kernel.boot(hardware, workers=workers)
        refused = _request_leaves(kernel, machine.devices, kernel.devices.devices())
        traffic = [
            c.workload
            for result in kernel.registry.pm.hook.luo_contracts()
            for c in result or ()
            if c.name == "example-nic"
        ]
        for nic in nics:
            for workload in traffic:
                workload(kernel.devices[nic])
        kernel.prepare()
        before = _nic_counters(hardware, nics)
        new = kernel.kexec()
        after = _nic_counters(hardware, nics)
        if save_handoff is not None and new.kho_root is not None:
            save_handoff.write_bytes(save_image(new.memory, new.kho_root))
        devices = {
            d.name: _Seen(d.name, d.driver.name if d.driver else None, d.preserved, d.reclaimed)
            for d in new.devices.devices()
        }
        new.finish()
        packs = [f"{p.origin} {p.status}" for p in new.registry.packs]
        stats = new.stats
        pid = os.getpid()
        number = new.liveupdate_number
    if stats is None:
        raise DeviceError("the new kernel reported no statistics")
    pids = {"hardware": pid, "old": pid, "new": pid}
    summary = _summary("inproc", pids, number, packs, devices, refused, before, after, stats)
    return stats, summary


def _request_leaves(kernel: Any, specs: dict[str, Any], devices: Any) -> dict[str, str]:
    """Request every device without children; the refusals, by device."""
    parents = {spec.parent for spec in specs.values()}
    refused: dict[str, str] = {}
    request = kernel.request if isinstance(kernel, KernelProcess) else kernel.devices.request
    for dev in devices:
        if dev.name in parents:
            continue
        try:
            request(dev.name)
        except DeviceError as exc:
            refused[dev.name] = str(exc)
    return refused


def _summary(
    mode: str,
    pids: dict[str, int],
    number: int,
    packs: list[str],
    devices: dict[str, Any],
    refused: dict[str, str],
    before: dict[str, Any],
    after: dict[str, Any],
    stats: UpdateStats,
) -> dict[str, Any]:
    nics = {
        name: {
            "tx_frames": after[name]["tx_frames"],
            "rx_frames": after[name]["rx_frames"],
            "rx_during_kexec": after[name]["rx_frames"] - before[name]["rx_frames"],
            "rx_dropped_during_kexec": after[name]["rx_dropped"] - before[name]["rx_dropped"],
        }
        for name in before
    }
    return {
        "kexec": mode,
        "pids": pids,
        "liveupdate_number": number,
        "packs": packs,
        "devices": [
            {
                "name": name,
                "driver": dev.driver,
                "preserved": dev.preserved,
                "reclaimed": dev.reclaimed,
                "refused": refused.get(name),
            }
            for name, dev in devices.items()
        ],
        "nics": nics,
        **stats.summary(),
    }


def _tree_lines(summary: dict[str, Any], parents: dict[str, str | None]) -> list[str]:
    info = {d["name"]: d for d in summary["devices"]}
    children: dict[str | None, list[str]] = {}
    for name, parent in parents.items():
        children.setdefault(parent, []).append(name)
    lines: list[str] = []

    def walk(name: str, prefix: str) -> None:
        d = info[name]
        if d["reclaimed"]:
            fate = "preserved, reclaimed"
        elif d["preserved"]:
            fate = "preserved, NOT reclaimed"
        elif d["refused"]:
            fate = "not preserved: " + d["refused"].split(": ", 1)[-1]
        else:
            fate = "not preserved"
        nic = summary["nics"].get(name)
        if nic is not None:
            fate += f"; rx +{nic['rx_during_kexec']} frames across kexec"
        lines.append(f"  {prefix + name:<22} {d['driver'] or '-':<12} {fate}")
        for child in children.get(name, []):
            walk(child, " " * len(prefix) + "└ ")

    for root in children.get(None, []):
        walk(root, "")
    return lines


def run(args: argparse.Namespace) -> int:
    if args.inproc:
        if args.next_python:
            raise DeviceError("--next-python needs a kernel process: drop --inproc")
        stats, summary = run_inproc(args.workers, args.save_handoff)
    else:
        level = {0: "warning", 1: "info"}.get(args.verbose, "debug")
        stats, summary = run_process(args.workers, args.save_handoff, args.next_python, level)
    if args.trace:
        args.trace.write_text(json.dumps(stats.chrome_trace()))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    pids = summary["pids"]
    where = (
        f"kernel pid {pids['old']} -> pid {pids['new']}, hardware pid {pids['hardware']}"
        if summary["kexec"] == "process"
        else "in this process"
    )
    print(f"luo demo: live update #{summary['liveupdate_number']} of the built-in host ({where})")
    print("packs: " + "; ".join(summary["packs"]))
    print("devices:")
    parents = {name: spec.parent for name, spec in default_host().devices.items()}
    print("\n".join(_tree_lines(summary, parents)))
    phases = summary["phases"]
    print(
        "phases: " + " · ".join(f"{n} {p['duration_us'] / 1000:.2f} ms" for n, p in phases.items())
    )
    print(f"blackout: {summary['blackout_us'] / 1000:.2f} ms (freeze start to last restore)")
    if args.trace:
        print(f"trace: {args.trace}")
    return 0
