"""A demo run told two ways: the ``--json`` summary, and a timeline for people."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from luo_core.cli._args import mac_address
from luo_core.cli._demo_run import Run, Step

SLOWEST = 2
"""How many participants the text names per phase."""
UNMEASURED = {
    "io": "no VM of this host has storage passed through",
    "interrupts": "no VM counts interrupts: the host runs none",
    "packets": "no NIC or VM counts frames",
    "vm_blackout_ms": "the host runs no VMs: null for every update",
}


def _ms(ns: int | None) -> float | None:
    return None if ns is None else ns / 1e6


def _rx(step: Step, nic: str) -> tuple[int, int]:
    """Frames ``nic`` received and dropped across ``step``'s kexec."""
    before, after = step.before[nic], step.after[nic]
    if nic in step.reset:
        return after["rx_frames"], after["rx_dropped"]
    return (
        after["rx_frames"] - before["rx_frames"],
        after["rx_dropped"] - before["rx_dropped"],
    )


def _migrations(step: Step) -> list[dict[str, Any]]:
    if step.stats is None:
        return []
    return [{"update": step.number, **attrs.asdict(m)} for m in step.stats.migrations]


def _timeline(step: Step, mode: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "update": step.number,
        "mode": mode,
        "pids": {"old": step.old_pid, "new": step.new_pid},
        "blackout_ms": _ms(step.blackout_ns),
        "vm_blackout_ms": _ms(step.vm_blackout_ns),
        "vm_pauses_ms": {
            vm: _ms(resumed - paused) for vm, (paused, resumed) in step.vm_pauses.items()
        },
        **step.traffic.to_json(),
    }
    del entry["io"], entry["interrupts"], entry["dma_faults"], entry["interrupt_faults"]
    if step.stats is not None:
        entry["phases"] = {
            name: {
                "ok": phase.ok,
                "duration_ms": phase.duration_us / 1000,
                "participants_ms": {p: us / 1000 for p, us in phase.participants_us.items()},
            }
            for name, phase in step.stats.phases.items()
        }
        entry["threads_left"] = list(step.stats.threads_left)
    else:
        entry["phases"] = {"kexec": {"ok": True, "duration_ms": _ms(step.up_ns - step.kexec_ns)}}
        entry["no_kernel_ms"] = None if step.gone_ns is None else _ms(step.up_ns - step.gone_ns)
        entry["threads_left"] = []
    entry["written_for_previous_release"] = dict(step.written_for)
    entry["migrations"] = _migrations(step)
    entry["state_kept"] = dict(step.state_kept)
    return entry


def summary(run: Run) -> dict[str, Any]:
    """The ``--json`` object."""
    options = run.options
    return {
        "mode": options.mode,
        "kexec": "inproc" if options.inproc else "process",
        "updates": len(run.steps),
        "liveupdate_number": run.liveupdate_number,
        "blackout_ms": [_ms(step.blackout_ns) for step in run.steps],
        "vm_blackout_ms": [_ms(step.vm_blackout_ns) for step in run.steps],
        **run.totals.to_json(),
        "posted_interrupts": dict(run.posted),
        "unmeasured": {
            key: why
            for key, why in UNMEASURED.items()
            if (key == "vm_blackout_ms" and not options.vms)
            or (key != "vm_blackout_ms" and key not in run.totals.sources)
        },
        "vms": [_vm(vm) for vm in run.vms],
        "stranded_frames": dict(run.stranded),
        "migrations": [m for step in run.steps for m in _migrations(step)],
        "pids": {
            "hardware": run.hardware_pid,
            "kernels": [run.first_pid] + [step.new_pid for step in run.steps],
        },
        "packs": run.packs,
        "devices": [
            {
                "name": name,
                "driver": dev.driver,
                "preserved": dev.preserved,
                "reclaimed": dev.reclaimed,
                "refused": run.refused.get(name),
            }
            for name, dev in run.devices.items()
        ],
        "nics": {
            name: {
                "mac": mac_address(regs["mac"]),
                "tx_frames": regs["tx_frames"],
                "rx_frames": regs["rx_frames"],
                "rx_dropped": regs["rx_dropped"],
                "rx_during_kexec": [_rx(step, name)[0] for step in run.steps],
                "rx_dropped_during_kexec": [_rx(step, name)[1] for step in run.steps],
            }
            for name, regs in run.nics.items()
        },
        "timeline": [_timeline(step, options.mode) for step in run.steps],
    }


def _vm(vm: Mapping[str, Any]) -> dict[str, Any]:
    """A VM as its guest counted, at the end of the run."""
    return {
        "name": vm["name"],
        "heartbeat": vm["heartbeat"],
        "max_gap_ms": _ms(vm["max_gap_ns"]),
        "stalls_ms": [_ms(gap) for _, gap in vm.get("stalls", [])],
        **vm["counters"],
    }


def _fate(device: Mapping[str, Any], rx: tuple[int, int] | None, cold: bool) -> str:
    if device["reclaimed"]:
        fate = "preserved, reclaimed"
    elif device["preserved"]:
        fate = "preserved, NOT reclaimed"
    elif device["refused"]:
        fate = "not preserved: " + device["refused"].split(": ", 1)[-1]
    elif cold:
        fate = "reset, probed afresh"
    else:
        fate = "not preserved"
    return fate if rx is None else fate + f"; rx +{rx[0]}, dropped {rx[1]} across kexec"


def tree_lines(report: Mapping[str, Any], parents: Mapping[str, str | None]) -> list[str]:
    """The device tree as ``tree`` draws it: ``├──`` for a child with later siblings,
    ``└──`` for the last, ``│`` continuing a parent's line to its next sibling."""
    info = {d["name"]: d for d in report["devices"]}
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
    cold = report["mode"] == "cold"
    lines = []
    for drawn, name in rows:
        nic = report["nics"].get(name)
        rx = (
            None if nic is None else (nic["rx_during_kexec"][0], nic["rx_dropped_during_kexec"][0])
        )
        fate = _fate(info[name], rx, cold)
        if nic is not None:
            fate = f"mac {nic['mac']}; {fate}"
        lines.append(f"  {drawn:<{width}}  {info[name]['driver'] or '-':<12} {fate}")
    return lines


def _slowest(participants: Mapping[str, float]) -> str:
    top = sorted(participants.items(), key=lambda item: -item[1])[:SLOWEST]
    return ", ".join(f"{name} {ms:.2f} ms" for name, ms in top)


def _step_lines(entry: Mapping[str, Any], total: int) -> list[str]:
    n, pids = entry["update"], entry["pids"]
    packets = entry["packets"]
    if entry["mode"] == "cold":
        gap = entry["no_kernel_ms"]
        return [
            f"reboot {n}/{total} (kernel pid {pids['old']} -> pid {pids['new']}): outage "
            f"{entry['blackout_ms']:.2f} ms from the kexec request to the new kernel up with "
            "its devices probed"
            + ("" if gap is None else f" ({gap:.2f} ms of it after the old kernel was gone)")
            + f"; frames lost {packets['lost']} of {packets['sent']} counted"
        ]
    head = f"update {n}/{total} (kernel pid {pids['old']} -> pid {pids['new']})"
    written = entry["written_for_previous_release"]
    if written:
        head += (
            ": written for the previous release ("
            + ", ".join(f"{c} v{v}" for c, v in written.items())
            + ")"
        )
    lines = [head]
    phases = entry["phases"]
    width = max((len(name) for name in phases), default=0)
    for name, phase in phases.items():
        line = f"  {name:<{width}} {phase['duration_ms']:9.2f} ms"
        if phase["participants_ms"]:
            line += "   slowest: " + _slowest(phase["participants_ms"])
        lines.append(line + ("" if phase["ok"] else "   FAILED"))
    blackout = entry["blackout_ms"]
    shown = "unknown" if blackout is None else f"{blackout:.2f} ms"
    until = "last VM resumed" if entry["vm_pauses_ms"] else "last restore"
    lines.append(
        f"  blackout {shown} (freeze start to {until}); "
        f"host NICs' frames lost {packets['lost']} of {packets['sent']}"
    )
    if entry["vm_blackout_ms"] is not None:
        lines.append(
            f"  VMs saw a pause of {entry['vm_blackout_ms']:.2f} ms (their longest "
            "heartbeat gap across the update)"
        )
    for m in entry["migrations"]:
        lines.append(
            f"  migrated {m['participant']}: {m['compatible']} "
            f"v{m['from_version']} -> v{m['to_version']}"
        )
    lost = [nic for nic, kept in entry["state_kept"].items() if not kept]
    if lost:
        lines.append("  state NOT kept: " + ", ".join(lost))
    return lines


def _totals(report: Mapping[str, Any]) -> list[str]:
    packets, blackouts = report["packets"], [b for b in report["blackout_ms"] if b is not None]
    cold = report["mode"] == "cold"
    lines = ["totals:"]
    if blackouts:
        what = "outage" if cold else "blackout"
        lines.append(
            f"  {what}: min {min(blackouts):.2f} ms, mean {sum(blackouts) / len(blackouts):.2f} "
            f"ms, max {max(blackouts):.2f} ms over {len(blackouts)}"
        )
    vm_blackouts = [b for b in report["vm_blackout_ms"] if b is not None]
    if vm_blackouts:
        lines.append(
            f"  VM-observed {'outage' if cold else 'blackout'}: min {min(vm_blackouts):.2f} ms, "
            f"max {max(vm_blackouts):.2f} ms (the guests' heartbeats)"
        )
    counted = "the NICs' counters" + (", the guests' sequence numbers" if report["vms"] else "")
    lines.append(
        f"  packets: sent {packets['sent']}, received {packets['received']}, "
        f"lost {packets['lost']}, duplicated {packets['duplicated']} ({counted})"
    )
    if "interrupts" not in report["unmeasured"]:
        irq = report["interrupts"]
        lines.append(
            f"  interrupts: raised {irq['raised']}, delivered {irq['delivered']} (posted ones "
            f"coalesce), lost {irq['lost']}, spurious {irq['spurious']}"
        )
    for vm in report["vms"]:
        lines.append(
            f"  {vm['name']}: heartbeat {vm['heartbeat']}, frames received "
            f"{vm['packets']['received']}, lost {vm['packets']['lost']}, duplicated "
            f"{vm['packets']['duplicated']}; io completed {vm['io']['completed']}, lost "
            f"{vm['io']['lost']}; interrupts {vm['interrupts']['delivered']} "
            f"({vm['interrupts']['spurious']} spurious)"
        )
    lines.append(
        f"  DMA faults: {report['dma_faults']}; interrupt-remapping faults: "
        f"{report['interrupt_faults']}"
    )
    if "io" in report["unmeasured"]:
        lines.append(f"  io: not measured ({report['unmeasured']['io']})")
    else:
        io = report["io"]
        lines.append(
            f"  io: submitted {io['submitted']}, completed {io['completed']}, lost {io['lost']} "
            "(the guests' NVMe commands, by sequence; the rest were in flight at the end)"
        )
    migrations = report["migrations"]
    if migrations:
        kinds = sorted({(m["compatible"], m["from_version"], m["to_version"]) for m in migrations})
        lines.append(
            f"  migrations: {len(migrations)} records ("
            + "; ".join(f"{c} v{a} -> v{b}" for c, a, b in kinds)
            + ")"
        )
    else:
        lines.append("  migrations: none")
    pids = report["pids"]
    lines.append(
        f"  pids: hardware {pids['hardware']}; kernels "
        + " -> ".join(str(p) for p in pids["kernels"])
    )
    n = len(report["blackout_ms"])
    if cold:
        lines.append(
            f"cold: every device was shut down and reset at each of {n} reboots and "
            f"{packets['lost']} frames were lost; a live update (luo demo) keeps the NICs "
            "running through its blackout."
        )
    else:
        guests = " and the VMs only paused" if report["vms"] else ""
        lines.append(
            f"live: the preserved devices kept running through {n} updates{guests}: "
            f"{packets['lost']} frames lost; a cold reboot (luo demo --cold) resets every "
            "device and restarts the VMs instead."
        )
    return lines


def text_lines(
    report: Mapping[str, Any], parents: Mapping[str, str | None], host: str
) -> list[str]:
    """The timeline for people: who ran, the device tree once, each update, the totals."""
    pids = report["pids"]
    if report["kexec"] == "process":
        where = " -> ".join(f"pid {p}" for p in pids["kernels"])
        where = f"kernel {where}, hardware pid {pids['hardware']}"
    else:
        where = "in this process"
    n, last = report["updates"], report["liveupdate_number"]
    if report["mode"] == "cold":
        head = f"{n} cold reboot{'s' if n != 1 else ''}"
    elif n == 1:
        head = f"live update #{last}"
    else:
        head = f"live updates #{last - n + 1} to #{last}"
    lines = [f"luo demo: {head} of {host} ({where})"]
    lines.append(
        "packs: " + "; ".join(" ".join(filter(None, p.values())) for p in report["packs"])
    )
    lines.append("devices:" if n else "devices: (no update ran)")
    if n:
        lines += tree_lines(report, parents)
    for entry in report["timeline"]:
        lines += _step_lines(entry, n)
    return lines + _totals(report)
