"""``luo demo``'s VMs: started, preserved and resumed through the VMM's commands, counted by
their guests.

The VMM (luo-kvm's commands) runs in each kernel's userspace; the demo asks
it, as an operator would ask QEMU over QMP: ``vmm-start`` after boot,
``vmm-preserve`` before each prepare, ``vmm-resume`` right after each kexec,
``vmm-stats`` to read what the guests counted in their own memory.  A VM's
NICs are passed through VFIO (``{"kind": "vfio", "device": ...}``).

What the guests count is the truth about a VM's traffic: every frame carries
the link's sequence number, so a loss or a duplicate shows inside the guest.
The guests also log every stall of their heartbeat (a gap longer than a few
timer periods); the stall that covers an update is the blackout the VM saw.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import attrs

from luo_core.cli._demo_traffic import Counters
from luo_core.errors import DeviceError
from luo_core.platform import VmSpec

VFIO = "vfio-pci"


class Commanded(Protocol):
    def command(self, name: str, args: Mapping[str, Any] | None = None) -> Any: ...


@attrs.frozen
class GuestSample:
    """What the VMs' guests and their NICs had counted at one moment."""

    stats: tuple[Mapping[str, Any], ...]
    irq_raised: Mapping[str, int]


def driver_override(vms: Iterable[VmSpec]) -> dict[str, str]:
    """Every device passed to a VM, bound to vfio-pci at every boot."""
    return {device: VFIO for vm in vms for device in vm.devices}


class Guests:
    """The host's VMs, as the VMM runs them in whichever kernel is up."""

    def __init__(self, vms: Sequence[VmSpec]) -> None:
        self.vms = tuple(vms)
        self.nics = [device for vm in self.vms for device in vm.devices]

    def __bool__(self) -> bool:
        return bool(self.vms)

    def _specs(self) -> list[dict[str, Any]]:
        return [
            {
                "name": vm.name,
                "memory": vm.memory_size,
                "vcpus": vm.vcpus,
                "devices": [{"kind": "vfio", "device": d} for d in vm.devices],
            }
            for vm in self.vms
        ]

    def start(self, kernel: Commanded) -> None:
        kernel.command("vmm-start", {"vms": self._specs()})

    def preserve(self, kernel: Commanded) -> None:
        kernel.command("vmm-preserve", {})

    def resume(self, kernel: Commanded) -> int | None:
        """Resume every VM in the new kernel; when the last one resumed (monotonic ns)."""
        reply = kernel.command("vmm-resume", {"vms": self._specs()})
        times = [vm.get("resumed_ns") for vm in _list(reply, "vms")]
        known = [t for t in times if type(t) is int]
        return max(known) if known else None

    def stats(self, kernel: Commanded) -> tuple[Mapping[str, Any], ...]:
        reply = kernel.command("vmm-stats", {})
        for vm in _list(reply, "vms"):
            if vm.get("error"):
                raise DeviceError(f"VM {vm.get('name')}: {vm['error']}")
        return tuple(_list(reply, "vms"))


def _list(reply: object, key: str) -> list[Mapping[str, Any]]:
    items = reply.get(key) if isinstance(reply, Mapping) else None
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        raise DeviceError(f"the VMM answered {reply!r:.80}, not a map with a list of {key}")
    return items


def guest_counters(life: GuestSample) -> Counters:
    """What the guests counted over one life of the VMs (from ``vmm-start``: their memory
    and their NICs' counters start from nothing), and the MSIs their NICs raised."""
    total = Counters(sources={"packets", "interrupts", "io"})
    for vm in life.stats:
        counters = vm["counters"]
        total.packets_received += int(counters["packets"]["received"])
        total.packets_lost += int(counters["packets"]["lost"])
        total.packets_duplicated += int(counters["packets"]["duplicated"])
        total.interrupts_delivered += int(counters["interrupts"]["delivered"])
        total.interrupts_spurious += int(counters["interrupts"]["spurious"])
        total.io_submitted += int(counters["io"]["submitted"])
        total.io_completed += int(counters["io"]["completed"])
        total.io_lost += int(counters["io"]["lost"])
    total.packets_sent = total.packets_received + total.packets_lost
    total.interrupts_raised = sum(life.irq_raised.values())
    return total


def stall_over(stats: Iterable[Mapping[str, Any]], start_ns: int, end_ns: int) -> int | None:
    """The longest heartbeat stall any guest logged that overlaps ``[start_ns, end_ns]``."""
    gaps = [
        int(gap)
        for vm in stats
        for stall_end, gap in vm.get("stalls", [])
        if stall_end - gap <= end_ns and stall_end >= start_ns
    ]
    return max(gaps) if gaps else None
