"""Ready-made machines: the demo host (also as a host file) and a flat host of many devices."""

from __future__ import annotations

from luo_core.abi._machine import Machine
from luo_core.errors import MachineError

EXAMPLE_NIC = "luo,example-nic"
HOST_BRIDGE = "pci-host-bridge"
PCI_BRIDGE = "pci-bridge"
ISA_BRIDGE = "pci8086,7000"

DEFAULT_HOST_TOML = """\
# The host luo demo runs: two VMs, each with a virtio-net NIC and an NVMe controller
# passed through VFIO behind the IOMMU, the host's own NICs and NVMe, and three live
# updates in a row.
memory = "1G"
scratch = "16M"
updates = 3

[[device]]          # the DMA-remapping unit (luo-iommu)
name = "dmar0"
compatible = "intel,vtd"

[[device]]          # the interrupt-remapping unit (luo-irqchip)
name = "ir0"
compatible = "intel,vtd-ir"

[[device]]          # /dev/kvm (luo-kvm)
name = "kvm"
compatible = "luo,kvm"

[[device]]
name = "pci0000:00"
compatible = "pci-host-bridge"

[[device]]
name = "0000:00:01.0"
bus = "pci"
compatible = "pci-bridge"
parent = "pci0000:00"

[[device]]
name = "0000:00:02.0"
bus = "pci"
compatible = "pci-bridge"
parent = "pci0000:00"

[[device]]
name = "0000:00:03.0"
bus = "pci"
compatible = "pci-bridge"
parent = "pci0000:00"

[[device]]
name = "0000:00:04.0"
bus = "pci"
compatible = "pci-bridge"
parent = "pci0000:00"

[[device]]
name = "0000:00:05.0"
bus = "pci"
compatible = "pci-bridge"
parent = "pci0000:00"

[[device]]          # an ISA bridge: its driver has no live-update callbacks
name = "0000:00:1f.0"
bus = "pci"
compatible = "pci8086,7000"
parent = "pci0000:00"

[[device]]          # the host's own NICs, counting frames
name = "0000:01:00.0"
bus = "pci"
compatible = "luo,example-nic"
parent = "0000:00:01.0"
params = { rx_pps = 100_000 }

[[device]]
name = "0000:01:00.1"
bus = "pci"
compatible = "luo,example-nic"
parent = "0000:00:01.0"
params = { rx_pps = 100_000 }

[[device]]
name = "0000:02:00.0"
bus = "pci"
compatible = "luo,example-nic"
parent = "0000:00:02.0"
params = { rx_pps = 100_000 }

[[device]]          # vm0's virtio-net NIC (luo-virtio-net): receives by DMA into guest memory
name = "0000:03:00.0"
bus = "pci"
compatible = "pci1af4,1041"
parent = "0000:00:03.0"
params = { rx_pps = 2_000 }

[[device]]          # vm0's NVMe controller (luo-nvme): its namespace is a file
name = "0000:03:00.1"
bus = "pci"
compatible = "pci1b36,0010"
parent = "0000:00:03.0"

[[device]]          # vm1's virtio-net NIC
name = "0000:04:00.0"
bus = "pci"
compatible = "pci1af4,1041"
parent = "0000:00:04.0"
params = { rx_pps = 2_000 }

[[device]]          # vm1's NVMe controller
name = "0000:04:00.1"
bus = "pci"
compatible = "pci1b36,0010"
parent = "0000:00:04.0"

[[device]]          # the host's own storage
name = "0000:05:00.0"
bus = "pci"
compatible = "pci1b36,0010"
parent = "0000:00:05.0"

[[link]]            # the host's NVMe does DMA through dmar0: restored after it
supplier = "dmar0"
consumer = "0000:05:00.0"

[[vm]]
name = "vm0"
memory = "16M"
vcpus = 2
devices = ["0000:03:00.0", "0000:03:00.1"]

[[vm]]
name = "vm1"
memory = "16M"
vcpus = 2
devices = ["0000:04:00.0", "0000:04:00.1"]
"""
"""The host ``luo demo`` runs by default, as a host file: the platform units, the host's
NICs (:func:`default_host` with 100 000 frames per second each), and two VMs whose NICs
are passed through VFIO."""


def default_host(rx_pps: int = 0) -> Machine:
    """A small host: a PCI root with two bridges, three NICs, one legacy device.

    The ISA bridge's driver has no live-update callbacks, so it can never be
    preserved; two NICs sit behind one bridge, one behind the other.  Frames
    arrive at each NIC from its link at ``rx_pps`` frames per second.
    """
    nic = {"rx_pps": rx_pps} if rx_pps else None
    machine = Machine()
    machine.add("pci0000:00", compatible=HOST_BRIDGE)
    machine.add_pci("0000:00:01.0", compatible=PCI_BRIDGE, parent="pci0000:00")
    machine.add_pci("0000:00:02.0", compatible=PCI_BRIDGE, parent="pci0000:00")
    machine.add_pci("0000:00:1f.0", compatible=ISA_BRIDGE, parent="pci0000:00")
    machine.add_pci("0000:01:00.0", compatible=EXAMPLE_NIC, parent="0000:00:01.0", params=nic)
    machine.add_pci("0000:01:00.1", compatible=EXAMPLE_NIC, parent="0000:00:01.0", params=nic)
    machine.add_pci("0000:02:00.0", compatible=EXAMPLE_NIC, parent="0000:00:02.0", params=nic)
    return machine


def flat_host(count: int, compatible: str = EXAMPLE_NIC) -> Machine:
    """``count`` endpoints behind bridges of 256 functions each (benchmarks)."""
    machine = Machine()
    machine.add("pci0000:00", compatible=HOST_BRIDGE)
    bridges = (count + 255) // 256
    if not 0 < count <= 31 * 256:
        raise MachineError(f"flat_host holds 1 to {31 * 256} devices, not {count}")
    for b in range(bridges):
        machine.add_pci(f"0000:00:{b + 1:02x}.0", compatible=PCI_BRIDGE, parent="pci0000:00")
    for i in range(count):
        bridge, function = divmod(i, 256)
        machine.add_pci(
            f"0000:{bridge + 1:02x}:{function >> 3:02x}.{function & 7}",
            compatible=compatible,
            parent=f"0000:00:{bridge + 1:02x}.0",
        )
    return machine
