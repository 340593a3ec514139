"""The IRQ chip through real live updates: routes, faults, MSIs latched through the blackout."""

from __future__ import annotations

import luo_irqchip
import pytest
from irq_msi_source import MsiSourcePack, consume, guest_pack, route
from luo_irqchip import GSTS_IRES, IrChip, IrRecord, Route, irqchip_of
from luo_irqchip._contract import machine
from structlog.testing import capture_logs

from luo_core import Kernel, KernelConfig, Machine
from luo_core._logging import reset as reset_logging
from luo_core.abi._irte import IRTE_SIZE, PostedIrte, decode_irte
from luo_core.abi._posted import PiDesc
from luo_core.errors import BusyError, ExistsError, HandoffError, NotFoundError
from luo_core.platform import Hardware

IR0 = "ir0"
DEV = "0000:01:00.0"
VECTOR = 0x41


@pytest.fixture(autouse=True)
def _reset_structlog() -> None:
    reset_logging()


@pytest.fixture
def hw() -> Hardware:
    return Hardware(machine(), models=[luo_irqchip, MsiSourcePack()], discover=False)


def boot(hw: Hardware) -> Kernel:
    return Kernel.boot(hw, plugins=[luo_irqchip, guest_pack], discover=False)


def raise_msis(hw: Hardware, count: int) -> dict[str, int]:
    got = hw.control(DEV, "raise", {"count": count})
    assert isinstance(got, dict)
    return got


def ir_status(hw: Hardware) -> dict[str, object]:
    got = hw.control(IR0, "status")
    assert isinstance(got, dict)
    return got


def test_probe_enables_remapping_at_its_table(hw: Hardware) -> None:
    """``intel_enable_irq_remapping`` / ``iommu_set_irq_remapping``
    (drivers/iommu/intel/irq_remapping.c): IRTA names the table and its size
    (``INTR_REMAP_TABLE_REG_SIZE``), then GCMD.IRE; GSTS.IRES follows."""
    kernel = boot(hw)
    chip = irqchip_of(kernel)
    table, entries = chip.table
    hw.sync()
    regs = hw.registers(IR0).values()
    assert regs["irta"] == table | 7 and entries == 256  # S = 7: 2**(7+1) entries
    assert regs["gsts"] & GSTS_IRES
    assert ir_status(hw)["table"] == table
    hw.reset(IR0)  # a function-level reset turns remapping off
    assert ir_status(hw)["table"] is None


def test_a_routed_msi_lands_in_the_descriptor(hw: Hardware) -> None:
    """A posted-format IRTE (``intel_ir_set_vcpu_affinity``) posts the vector into PIR
    and sets ON; the owner drains it (``pi_test_and_clear_on`` then the PIR words)."""
    kernel = boot(hw)
    got = route(kernel, DEV, VECTOR)
    entry = decode_irte(kernel.memory.read(irqchip_of(kernel).table[0], IRTE_SIZE))
    assert entry == PostedIrte(vector=VECTOR, pda=got["pda"], sid=0x0100)
    hw.sync()
    assert raise_msis(hw, 3) == {"sent": 3, "faults": 0}
    desc = PiDesc.decode(kernel.memory.read(got["pda"], 64))
    assert desc.pir == {VECTOR} and desc.on
    seen = consume(kernel, DEV)
    assert (seen["vectors"], seen["delivered"], seen["spurious"]) == ([VECTOR], 1, 0)
    assert consume(kernel, DEV)["vectors"] == []  # drained: nothing twice


def test_unrouted_and_freed_handles_fault_and_post_nothing(hw: Hardware) -> None:
    """VT-d faults an MSI naming an entry that is not present (QEMU
    ``vtd_irte_get``; Linux ``free_irte`` clears the entry with ``clear_entries``):
    counted by the hardware, nothing posted."""
    kernel = boot(hw)
    chip = irqchip_of(kernel)
    got = route(kernel, DEV, VECTOR)
    chip.free_irte(got["handle"])
    hw.sync()
    assert raise_msis(hw, 2) == {"sent": 0, "faults": 2}
    unrouted = chip.alloc_irte(DEV, 1)  # allocated, never programmed: not present
    kernel.devices[DEV].regs["msi_addr"] = chip.msi_message(unrouted)[0]
    hw.sync()
    assert raise_msis(hw, 1) == {"sent": 0, "faults": 1}
    status = ir_status(hw)
    assert status["faults"] == 3 and status["posted"] == 0
    assert hw.registers(IR0)["faults"] == 3
    assert PiDesc.decode(kernel.memory.read(got["pda"], 64)) == PiDesc(nv=0xF2, ndst=1)
    assert unrouted == got["handle"]  # the lowest free entry, reused
    chip.free_irte(unrouted)
    with pytest.raises(NotFoundError, match="no interrupt-remapping entry 0"):
        chip.free_irte(unrouted)


def test_the_api_refuses_what_the_table_cannot_hold(hw: Hardware) -> None:
    chip = irqchip_of(boot(hw))
    handle = chip.alloc_irte(DEV, 0)
    with pytest.raises(ExistsError, match="already has entry 0"):
        chip.alloc_irte(DEV, 0)
    with pytest.raises(ValueError, match="64-byte aligned"):
        chip.set_vcpu_affinity(handle, 0x1001, VECTOR)
    with pytest.raises(ValueError, match="vector 256"):
        chip.set_remapped(handle, 256, 0)
    for index in range(1, 256):
        chip.alloc_irte(DEV, index)
    with pytest.raises(BusyError, match="all allocated"):
        chip.alloc_irte(DEV, 256)


def test_irqchip_of_names_what_is_missing() -> None:
    kernel = Kernel.boot(Machine(), plugins=[luo_irqchip], discover=False)
    with pytest.raises(NotFoundError, match="intel-ir drives no intel,vtd-ir unit"):
        irqchip_of(kernel)
    with pytest.raises(NotFoundError, match="no driver for intel,vtd-ir"):
        irqchip_of(Kernel.boot(Machine(), discover=False))


def test_msis_raised_while_no_kernel_runs_are_all_found_after_restore(hw: Hardware) -> None:
    """The unit keeps remapping with no kernel (the table preserved in place, IRE left
    on); the blackout's MSIs wait in PIR, and after restore each posted route's
    vector is re-injected once: the consumer counts it spurious (a vCPU that
    finds nothing new), as ``kvm_irqfd_assign`` (virt/kvm/eventfd.c) injects
    "as if we didn't miss it"."""
    kernel = boot(hw)
    route(kernel, DEV, VECTOR)
    chip = irqchip_of(kernel)
    remapped = chip.alloc_irte(DEV, 1)
    chip.set_remapped(remapped, 0x50, dest_id=3)
    before = (chip.routes(), chip.table, chip.table_bytes())
    kernel.devices.request(IR0)
    kernel.devices.request(DEV)
    kernel.prepare()
    hw.sync()
    sent: list[int] = []

    def blackout() -> None:
        sent.append(raise_msis(hw, 5)["sent"])

    new = kernel.kexec(during_blackout=blackout)
    assert sent == [5]
    assert new.devices[IR0].reclaimed and new.devices[DEV].reclaimed
    chip = irqchip_of(new)
    assert (chip.routes(), chip.table, chip.table_bytes()) == before
    assert chip.reinjected == 1  # one posted route, one re-injection
    seen = consume(new, DEV)
    # The blackout's MSIs and the re-injection coalesce into one PIR bit: delivered.
    assert (seen["vectors"], seen["sent"], seen["seen"]) == ([VECTOR], 5, 5)
    assert (seen["delivered"], seen["spurious"]) == (1, 0)
    new.finish()
    hw.sync()
    assert raise_msis(hw, 1)["sent"] == 1  # still routed in the kernel after
    assert consume(new, DEV)["delivered"] == 2


def test_a_reinjection_with_nothing_new_is_counted_spurious(hw: Hardware) -> None:
    kernel = boot(hw)
    route(kernel, DEV, VECTOR)
    kernel.devices.request(IR0)
    kernel.devices.request(DEV)
    kernel.prepare()
    new = kernel.kexec()
    assert irqchip_of(new).reinjected == 1
    seen = consume(new, DEV)
    assert (seen["vectors"], seen["delivered"], seen["spurious"]) == ([VECTOR], 0, 1)


def test_cancel_unpreserves_and_a_second_update_preserves_again(hw: Hardware) -> None:
    kernel = boot(hw)
    route(kernel, DEV, VECTOR)
    kernel.devices.request(IR0)
    kernel.devices.request(DEV)
    kernel.prepare()
    kernel.cancel()
    kernel.prepare()
    second = kernel.kexec()
    second.finish()
    table = irqchip_of(second).table
    second.devices.request(IR0)
    second.devices.request(DEV)
    second.prepare()  # memory handed over is preserved again, in place
    third = second.kexec()
    assert third.devices[IR0].reclaimed and irqchip_of(third).table == table
    assert irqchip_of(third).reinjected == 1


def test_a_plain_kexec_turns_remapping_off_and_probes_a_new_table(hw: Hardware) -> None:
    kernel = boot(hw)
    route(kernel, DEV, VECTOR)
    new = kernel.kexec(KernelConfig([luo_irqchip], discover=False))
    assert irqchip_of(new).routes() == []
    hw.sync()
    assert raise_msis(hw, 1) == {"sent": 0, "faults": 0}  # the device was reset: disabled


def _hostile(hw: Hardware, change: dict[str, object]) -> tuple[Kernel, IrRecord]:
    kernel = boot(hw)
    route(kernel, DEV, VECTOR)
    kernel.devices.request(IR0)
    kernel.prepare()
    record = irqchip_of(kernel).record()
    new = kernel.kexec(KernelConfig([luo_irqchip], discover=False))
    fields = {
        "table": record.table,
        "entries": record.entries,
        "routes": record.routes,
        "descriptors": record.descriptors,
        **change,
    }
    return new, IrRecord(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"table": 1 << 40}, "not a page-aligned table in physical memory"),
        ({"entries": 48}, "48 entries is not a power of two"),
        ({"routes": [Route(handle=999, device=DEV, msi_index=0)]}, "outside the 256-entry"),
        ({"routes": []}, "table entry 0 is PostedIrte"),
        ({"descriptors": 0x10_0000}, "descriptor page at 0x100000 was not preserved"),
    ],
)
def test_restore_refuses_a_hostile_record_and_restores_nothing(
    hw: Hardware, change: dict[str, object], message: str
) -> None:
    new, bad = _hostile(hw, change)
    chip = IrChip(new)
    with pytest.raises(HandoffError, match=message):
        chip.restore(new.devices[IR0], bad)
    assert not chip.bound and chip.routes() == [] and chip.reinjected == 0


def test_restore_refuses_a_route_posting_into_memory_not_preserved(hw: Hardware) -> None:
    kernel = boot(hw)
    chip = irqchip_of(kernel)
    handle = chip.alloc_irte(DEV, 0)
    page = kernel.mm.alloc(4096)  # never preserved
    chip.set_vcpu_affinity(handle, page, VECTOR)
    kernel.devices.request(IR0)
    kernel.prepare()
    with capture_logs() as logs:
        new = kernel.kexec(KernelConfig([luo_irqchip], discover=False))
    assert not new.devices[IR0].reclaimed
    failed = [e for e in logs if e["event"] == "restore_failed"]
    assert failed and "was not preserved" in str(failed[0])
    with pytest.raises(NotFoundError):
        irqchip_of(new)


def test_restore_refuses_a_unit_reset_behind_its_back(hw: Hardware) -> None:
    kernel = boot(hw)
    kernel.devices.request(IR0)
    kernel.prepare()
    kernel.freeze()
    hw.reset(IR0)
    with capture_logs() as logs:
        new = kernel.kexec()
    assert not new.devices[IR0].reclaimed
    assert any("reset across kexec" in str(e) for e in logs if e["event"] == "restore_failed")


def test_routing_is_frozen_on_the_blackout_path(hw: Hardware) -> None:
    kernel = boot(hw)
    kernel.devices.request(IR0)
    kernel.prepare()
    kernel.freeze()
    with pytest.raises(BusyError, match="frozen"):
        irqchip_of(kernel).alloc_irte(DEV, 0)
    kernel.cancel()
    irqchip_of(kernel).alloc_irte(DEV, 0)
