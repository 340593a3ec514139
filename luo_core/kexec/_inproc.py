"""In-process kexec: tear the kernel down and boot the next one over the same hardware.

Fast, for tests: the next kernel is built from boot parameters alone (the
hardware's address, the machine description, its configuration and the KHO
root), maps memory afresh and builds its packs afresh; then the leak check
proves nothing the old kernel made is reachable from it.  Python modules are
shared with the old kernel here, so state kept in them escapes this mode:
only the cross-process kexec catches that, and the contract suite never
relies on this mode alone.
"""

from __future__ import annotations

from collections.abc import Callable

from luo_core.abi._boot import BootParams, KernelConfig
from luo_core.abi._machine import Machine
from luo_core.errors import LiveUpdateError
from luo_core.kernel._hwlink import HardwareLink
from luo_core.kernel._kernel import Kernel, load_kernel_image
from luo_core.kexec._leaks import prove_nothing_crossed
from luo_core.platform import Hardware


def boot(machine: Machine | object, config: KernelConfig | None = None) -> Kernel:
    """Cold-boot a kernel in this process on ``machine`` (powered on here if need be)."""
    if isinstance(machine, Machine):
        hardware = Hardware(machine)
    elif isinstance(machine, Hardware):
        hardware = machine
    else:
        raise LiveUpdateError(
            f"a kernel boots on a Machine or on running Hardware, not {type(machine).__name__}"
        )
    params = BootParams(hardware.address, hardware.machine, config or KernelConfig())
    return Kernel(params, HardwareLink(params.hardware), power=hardware)


def kexec(
    old: Kernel,
    config: KernelConfig | None = None,
    *,
    check_leaks: bool = True,
    during_blackout: Callable[[], None] | None = None,
) -> Kernel:
    """The next kernel, booted in this process from what ``old`` handed over.

    ``during_blackout`` runs once the old kernel is gone and before the next
    one boots: no kernel exists while it runs.
    """
    old._alive()
    # Like kexec -l, load the next kernel before the jump: its machine description
    # rebuilt from bytes (no object of the old kernel's is shared) and its memory mapped.
    machine = Machine.from_wire(old.machine.to_wire())
    config = config or old.config
    image = load_kernel_image(config)
    link = HardwareLink(old.params.hardware)
    try:
        root = old._jump()
    except BaseException:
        link.close()
        raise
    params = BootParams(old.params.hardware, machine, config, root)
    power = old._power
    tracked = old._die(track=check_leaks)
    if during_blackout is not None:
        during_blackout()
    new = Kernel(params, link, power=power, image=image)
    if check_leaks:
        prove_nothing_crossed(tracked, new)
    return new


def reboot(kernel: Kernel) -> Kernel:
    """Another kernel booted from the boot parameters ``kernel`` booted from.

    Like booting a crash kernel from the same handoff: restore must not have
    consumed or changed what it restored from.  ``kernel`` is fenced from then
    on (another kernel is attached to the hardware).
    """
    kernel._alive()
    return Kernel(kernel.params, HardwareLink(kernel.params.hardware), power=kernel._power)
