"""A device that raises MSIs, both sides of it: its hardware model and a guest that consumes them.

Hardware (``MsiSourcePack``): compatible ``luo,msi-source``.  The driver
programs its MSI capability (``msi_addr``, ``msi_data``) and enables it
(``ctrl`` bit 0); each interrupt it raises on the operator's ``raise``
control is one ``ctx.msi()`` write through the machine's remapping, counted in
``sent``, or in ``faults`` when the remapping refused it.

Kernel (``guest_pack``): the ``msi-guest`` driver binds the device and owns
one posted-interrupt descriptor (a vCPU's, in a page of its own, preserved in
place), routes the device's MSI 0 into it through the IRQ chip, and drains
it like a vCPU: a drained vector with new work (``sent`` moved) is delivered,
one without is spurious.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import attrs
from luo_irqchip import irqchip_of

from luo_core import (
    Command,
    Device,
    DeviceDriver,
    DeviceDriverOps,
    Kernel,
    PhysAddr,
    hookimpl,
    state,
    u8,
    u16,
    u64,
)
from luo_core.abi._posted import PI_DESC_SIZE, PiDesc, drain
from luo_core.errors import InterruptRemapFaultError, NotFoundError
from luo_core.platform import DeviceModel, Register, RegisterMap
from luo_core.platform._atomic import AtomicWords

COMPATIBLE = "luo,msi-source"
CTRL_ENABLE = 1
PAGE = 4096

MSI_REGISTERS = RegisterMap(
    [
        Register("msi_addr", 0x00, 64),
        Register("msi_data", 0x08, 32),
        Register("ctrl", 0x0C, 32),
        Register("sent", 0x10, 64, owner="device"),
        Register("faults", 0x18, 64, owner="device"),
    ]
)


class MsiSourceModel(DeviceModel):
    compatible = (COMPATIBLE,)
    registers = MSI_REGISTERS

    def control(self, op: str, args: Mapping[str, Any]) -> object:
        if op == "raise":
            return self._raise(int(args.get("count", 1)))
        if op == "counters":
            return self.ctx.regs.values()
        return super().control(op, args)

    def _raise(self, count: int) -> dict[str, int]:
        regs = self.ctx.regs
        sent = faults = 0
        for _ in range(count):
            if not regs["ctrl"] & CTRL_ENABLE:
                break
            try:
                self.ctx.msi().send(regs["msi_addr"], regs["msi_data"])
            except InterruptRemapFaultError:
                faults += 1
            else:
                sent += 1
        regs["sent"] = regs["sent"] + sent
        regs["faults"] = regs["faults"] + faults
        return {"sent": sent, "faults": faults}


class MsiSourcePack:
    """The hardware side: ``HardwareProcess(models=["irq_msi_source:MsiSourcePack"])``."""

    @hookimpl
    def luo_device_models(self) -> Iterator[type[DeviceModel]]:
        yield MsiSourceModel


@state(compatible="luo,test-msi-guest", version=1)
class GuestRecord:
    pda: PhysAddr
    handle: u16 | None = None
    vector: u8 = 0
    seen: u64 = 0
    delivered: u64 = 0
    spurious: u64 = 0


@attrs.define
class Guest:
    pda: int
    handle: int | None = None
    vector: int = 0
    seen: int = 0
    delivered: int = 0
    spurious: int = 0

    def record(self) -> GuestRecord:
        return GuestRecord(**attrs.asdict(self))


class GuestOps(DeviceDriverOps):
    def __init__(self, kernel: Kernel | None) -> None:
        self.kernel = kernel

    def _k(self) -> Kernel:
        assert self.kernel is not None
        return self.kernel

    def probe(self, dev: Device) -> None:
        kernel = self._k()
        page = kernel.mm.alloc(PAGE)
        kernel.memory.fill(page, PAGE)
        kernel.memory.write(page, PiDesc(nv=0xF2, ndst=1).encode())
        dev.driver_data = Guest(pda=page)

    def prepare(self, dev: Device) -> GuestRecord:
        guest: Guest = dev.driver_data
        self._k().kho.preserve(guest.pda, PAGE)
        return guest.record()

    def freeze(self, dev: Device, data: GuestRecord) -> GuestRecord:
        guest: Guest = dev.driver_data
        return guest.record()

    def cancel(self, dev: Device, data: GuestRecord) -> None:
        guest: Guest = dev.driver_data
        self._k().kho.unpreserve(guest.pda, PAGE)

    def restore(self, dev: Device, data: GuestRecord) -> None:
        dev.driver_data = Guest(
            data.pda, data.handle, data.vector, data.seen, data.delivered, data.spurious
        )


def route(kernel: Kernel, device: str, vector: int) -> dict[str, int]:
    """Route ``device``'s MSI 0 into its guest's descriptor and program the device."""
    dev = kernel.devices[device]
    guest: Guest = dev.driver_data
    chip = irqchip_of(kernel)
    handle = chip.alloc_irte(device, 0)
    chip.set_vcpu_affinity(handle, guest.pda, vector)
    address, data = chip.msi_message(handle)
    dev.regs["msi_addr"], dev.regs["msi_data"] = address, data
    dev.regs["ctrl"] = CTRL_ENABLE
    guest.handle, guest.vector = handle, vector
    return {"handle": handle, "pda": guest.pda}


def consume(kernel: Kernel, device: str) -> dict[str, Any]:
    """Drain the guest's descriptor as its vCPU would; count delivered and spurious."""
    dev = kernel.devices[device]
    guest: Guest = dev.driver_data
    desc = AtomicWords(kernel.memory.view(guest.pda, PI_DESC_SIZE))
    vectors = drain(desc)
    del desc
    sent = dev.regs["sent"]
    for vector in vectors:
        if vector != guest.vector:
            continue
        if sent > guest.seen:
            guest.delivered += 1
            guest.seen = sent  # one interrupt covers every MSI coalesced into it
        else:
            guest.spurious += 1
    return {
        "vectors": vectors,
        "sent": sent,
        "seen": guest.seen,
        "delivered": guest.delivered,
        "spurious": guest.spurious,
    }


class GuestPack:
    def __init__(self, kernel: Kernel | None = None) -> None:
        self.kernel = kernel

    @hookimpl
    def luo_device_drivers(self, kernel: Kernel | None) -> Iterator[DeviceDriver]:
        self.kernel = kernel
        yield DeviceDriver(
            name="msi-guest", compatible=[COMPATIBLE], ops=GuestOps(kernel), schema=GuestRecord
        )

    @hookimpl
    def luo_commands(self, kernel: Kernel | None) -> Iterator[Command]:
        yield Command("msi-route", self._route)
        yield Command("msi-consume", self._consume)
        yield Command("ir-state", self._state)

    def _kernel(self) -> Kernel:
        if self.kernel is None:
            raise NotFoundError("no kernel")
        return self.kernel

    def _route(self, args: Mapping[str, Any]) -> object:
        return route(self._kernel(), args["device"], args["vector"])

    def _consume(self, args: Mapping[str, Any]) -> object:
        return consume(self._kernel(), args["device"])

    def _state(self, args: Mapping[str, Any]) -> object:
        chip = irqchip_of(self._kernel())
        return {
            "routes": [
                [r.handle, r.device, r.msi_index, r.vector, r.pda, r.dest_id]
                for r in chip.routes()
            ],
            "table": chip.table[0],
            "table_bytes": chip.table_bytes(),
            "reinjected": chip.reinjected,
        }


def guest_pack() -> GuestPack:
    """``'irq_msi_source:guest_pack'``: a new guest pack per kernel boot."""
    return GuestPack()
