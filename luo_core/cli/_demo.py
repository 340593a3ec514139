"""``luo demo``: a live update of the built-in host (or a host file's), told step by step.

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
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from luo_core.abi._boot import MAX_WORKERS, KernelConfig
from luo_core.abi._machine import Machine
from luo_core.abi._stats import UpdateStats
from luo_core.cli._args import (
    Progress,
    UsageError,
    add_workers,
    check_writable,
    dumps,
    log_level,
    non_empty,
    output_file,
    paragraph,
)
from luo_core.cli._args import mac_address as mac_address  # re-exported: tests import it here
from luo_core.cli._input import read_file, shown
from luo_core.errors import DeviceError, HostConfigError, NotFoundError
from luo_core.kexec import KernelProcess
from luo_core.platform import (
    DEFAULT_HOST_TOML,
    EXAMPLE_NIC,
    MAX_HOST_BYTES,
    Hardware,
    HardwareProcess,
    HostConfig,
    load_host,
)

BUILT_IN = "the built-in host"

Say = Callable[[str], None]


def _quiet(_text: str) -> None:
    pass


@attrs.frozen
class _Seen:
    """A device as the new kernel had it before ``finish``."""

    name: str
    driver: str | None
    preserved: bool
    reclaimed: bool


def add_parser(verbs: Any) -> None:
    parser = verbs.add_parser(
        "demo",
        help="live-update the built-in host and report",
        description=paragraph(
            "Run one complete live update of the built-in host (a PCI root, two bridges, "
            "three example NICs receiving frames, one device with no driver) and report "
            "it: the process ids, the packs, the device tree with each device's fate, the "
            "frames each NIC received across the kexec, each phase's duration and the "
            "blackout.  The hardware and each kernel run in processes of their own unless "
            "--inproc is given.  On a terminal, stderr shows which step is running.  "
            "--config runs the host a host file describes instead (memory, devices, their "
            "rates); its updates and [[vm]] entries are checked but not run yet: the demo "
            "runs one update, without VMs."
        ),
        epilog=(
            "examples:\n"
            "  luo demo\n"
            "  luo demo --config host.toml           # see 'Host descriptions' in the docs\n"
            "  luo demo --json --trace trace.json    # then open trace.json in Perfetto\n"
            "  luo demo --save-handoff h.luo && luo inspect h.luo"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--json", action="store_true", help="print a JSON summary instead of text (default: text)"
    )
    parser.add_argument(
        "--config",
        type=non_empty,
        metavar="FILE",
        help=f"the host file to run, at most {MAX_HOST_BYTES >> 20} MiB; - reads stdin "
        "(default: the built-in host)",
    )
    parser.add_argument(
        "--trace",
        type=output_file,
        metavar="FILE",
        help="also write a Chrome/Perfetto trace to FILE (default: none)",
    )
    parser.add_argument(
        "--save-handoff",
        type=output_file,
        metavar="FILE",
        help="also write the handoff to FILE, for luo inspect (default: none)",
    )
    add_workers(parser, f"threads for independent device subtrees: 1 to {MAX_WORKERS}, default 1")
    parser.add_argument(
        "--inproc",
        action="store_true",
        help="run both kernels in this process (faster, checks less; default: processes)",
    )
    parser.add_argument(
        "--next-python",
        type=non_empty,
        metavar="PATH",
        help=(
            "boot the next kernel with this interpreter, i.e. another environment with "
            "other packs (default: this one; not with --inproc)"
        ),
    )
    parser.set_defaults(run=run)


def _nic_counters(hardware: Hardware | HardwareProcess, names: list[str]) -> dict[str, Any]:
    return {name: hardware.control(name, "counters") for name in names}


def read_host(name: str | None) -> HostConfig:
    """Host file ``name`` (``-``: stdin), or the built-in host for ``None``."""
    if name is None:
        return load_host(DEFAULT_HOST_TOML, BUILT_IN)
    where = shown(name)

    def refuse(reason: str) -> HostConfigError:
        return HostConfigError(f"{where}: {reason}")

    largest = f"a host file (at most {MAX_HOST_BYTES >> 20} MiB)"
    return load_host(read_file(name, MAX_HOST_BYTES, refuse, largest=largest), where)


def run_process(
    machine: Machine,
    workers: int = 1,
    save_handoff: Path | None = None,
    next_python: str | None = None,
    log: str = "warning",
    progress: Say = _quiet,
) -> tuple[UpdateStats, dict[str, Any]]:
    """The demo with the hardware and every kernel in processes of their own."""
    nics = [n for n, d in machine.devices.items() if d.compatible == EXAMPLE_NIC]
    config = KernelConfig(workers=workers)
    progress("powering on the hardware")
    with HardwareProcess(machine, log=log) as hardware:
        progress("booting the first kernel")
        kernel = KernelProcess.boot(hardware, config, log=log)
        try:
            progress("requesting devices, running the NICs' workload")
            refused = _request_leaves(kernel, machine.devices, kernel.devices().values())
            for nic in nics:
                with contextlib.suppress(NotFoundError):  # without the example pack, no traffic
                    kernel.workload("example-nic", nic)
            progress("prepare (starting and warming the next kernel)")
            kernel.prepare(next_python=next_python)
            before = _nic_counters(hardware, nics)
            old_pid = kernel.pid
            progress("freeze, kexec, restore")
            kernel = kernel.kexec()
            after = _nic_counters(hardware, nics)
            if save_handoff is not None:
                save_handoff.write_bytes(kernel.handoff())
            devices = kernel.devices()
            progress("finish")
            kernel.finish()
            stats = kernel.stats
            packs = [_pack(text) for text in kernel.packs()]
            number = kernel.liveupdate_number
            pids = {"hardware": hardware.pid, "old": old_pid, "new": kernel.pid}
        finally:
            kernel.shutdown()
    if stats is None:
        raise DeviceError("the new kernel reported no statistics")
    summary = _summary("process", pids, number, packs, devices, refused, before, after, stats)
    return stats, summary


def run_inproc(
    machine: Machine, workers: int = 1, save_handoff: Path | None = None, progress: Say = _quiet
) -> tuple[UpdateStats, dict[str, Any]]:
    """The demo with both kernels in this process (the hardware's models run on threads)."""
    from luo_core.abi import save_image
    from luo_core.kernel._kernel import Kernel

    nics = [n for n, d in machine.devices.items() if d.compatible == EXAMPLE_NIC]
    progress("powering on the hardware")
    with Hardware(machine) as hardware:
        progress("booting the first kernel")
        kernel = Kernel.boot(hardware, workers=workers)
        progress("requesting devices, running the NICs' workload")
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
        progress("prepare")
        kernel.prepare()
        before = _nic_counters(hardware, nics)
        progress("freeze, kexec, restore")
        new = kernel.kexec()
        after = _nic_counters(hardware, nics)
        if save_handoff is not None and new.kho_root is not None:
            save_handoff.write_bytes(save_image(new.memory, new.kho_root))
        devices = {
            d.name: _Seen(d.name, d.driver.name if d.driver else None, d.preserved, d.reclaimed)
            for d in new.devices.devices()
        }
        progress("finish")
        new.finish()
        packs = [
            {"name": p.origin.distribution, "version": p.origin.version, "status": p.status}
            for p in new.registry.packs
        ]
        stats = new.stats
        pid = os.getpid()
        number = new.liveupdate_number
    if stats is None:
        raise DeviceError("the new kernel reported no statistics")
    pids = {"hardware": pid, "old": pid, "new": pid}
    summary = _summary("inproc", pids, number, packs, devices, refused, before, after, stats)
    return stats, summary


def _pack(text: str) -> dict[str, str | None]:
    """A kernel process's ``distribution version status`` line, as an object."""
    parts = text.split(" ")
    if len(parts) != 3:
        return {"name": text, "version": None, "status": None}
    name, version, status = parts
    return {"name": name, "version": version, "status": status}


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
    packs: list[dict[str, Any]],
    devices: dict[str, Any],
    refused: dict[str, str],
    before: dict[str, Any],
    after: dict[str, Any],
    stats: UpdateStats,
) -> dict[str, Any]:
    nics = {
        name: {
            "mac": mac_address(after[name]["mac"]),
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


def _fate(device: dict[str, Any], nic: dict[str, Any] | None) -> str:
    if device["reclaimed"]:
        fate = "preserved, reclaimed"
    elif device["preserved"]:
        fate = "preserved, NOT reclaimed"
    elif device["refused"]:
        fate = "not preserved: " + device["refused"].split(": ", 1)[-1]
    else:
        fate = "not preserved"
    if nic is not None:
        fate += f"; mac {nic['mac']}; rx +{nic['rx_during_kexec']} frames across kexec"
    return fate


def _tree_lines(summary: dict[str, Any], parents: dict[str, str | None]) -> list[str]:
    """The device tree as ``tree`` draws it: ``├──`` for a child with later siblings,
    ``└──`` for the last, ``│`` continuing a parent's line to its next sibling."""
    info = {d["name"]: d for d in summary["devices"]}
    children: dict[str | None, list[str]] = {}
    for name, parent in parents.items():
        if name in info:
            children.setdefault(parent if parent in info else None, []).append(name)
    rows: list[tuple[str, str]] = []

    def walk(name: str, lead: str, below: str) -> None:
        rows.append((lead + name, name))
        kids = children.get(name, [])
        for i, child in enumerate(kids):
            last = i == len(kids) - 1
            walk(child, below + ("└── " if last else "├── "), below + ("    " if last else "│   "))

    for root in children.get(None, []):
        walk(root, "", "")
    width = max((len(drawn) for drawn, _ in rows), default=0)
    return [
        f"  {drawn:<{width}}  {info[name]['driver'] or '-':<12} "
        f"{_fate(info[name], summary['nics'].get(name))}"
        for drawn, name in rows
    ]


def run(args: argparse.Namespace) -> int:
    if args.inproc and args.next_python:
        raise UsageError("--next-python needs a kernel process: drop --inproc")
    for path in (args.trace, args.save_handoff):
        if path is not None:
            check_writable(path)  # before the update, not after it
    machine = read_host(args.config).machine
    with Progress("demo") as progress:
        if args.inproc:
            stats, summary = run_inproc(machine, args.workers, args.save_handoff, progress)
        else:
            level = log_level(args.log_verbosity)
            stats, summary = run_process(
                machine, args.workers, args.save_handoff, args.next_python, level, progress
            )
    written = []
    if args.trace:
        args.trace.write_text(json.dumps(stats.chrome_trace()))
        written.append(("trace", args.trace))
    if args.save_handoff:
        written.append(("handoff", args.save_handoff))
    notes = [f"{what}: {path} ({path.stat().st_size} bytes)" for what, path in written]
    if args.json:
        print(dumps(summary))
        for note in notes:  # stdout is the JSON alone
            print(f"luo demo: wrote {note}", file=sys.stderr)
        return 0
    pids = summary["pids"]
    where = (
        f"kernel pid {pids['old']} -> pid {pids['new']}, hardware pid {pids['hardware']}"
        if summary["kexec"] == "process"
        else "in this process"
    )
    host = BUILT_IN if args.config is None else f"the host in {shown(args.config)}"
    print(f"luo demo: live update #{summary['liveupdate_number']} of {host} ({where})")
    print("packs: " + "; ".join(" ".join(filter(None, p.values())) for p in summary["packs"]))
    print("devices:")
    parents = {name: spec.parent for name, spec in machine.devices.items()}
    print("\n".join(_tree_lines(summary, parents)))
    phases = summary["phases"]
    print(
        "phases: " + " · ".join(f"{n} {p['duration_us'] / 1000:.2f} ms" for n, p in phases.items())
    )
    print(f"blackout: {summary['blackout_us'] / 1000:.2f} ms (freeze start to last restore)")
    for note in notes:
        print(note)
    return 0
