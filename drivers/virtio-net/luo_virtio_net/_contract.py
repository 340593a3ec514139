"""The pack's contract: what ``luo contract luo-virtio-net`` exercises.

The host holds ``dmar0`` (luo-iommu, which every kernel of the suite loads:
``requires``) and two virtio-net functions; the workload transmits and
reaps the receive queue; the snapshot is what the driver owns: the
negotiated features, where its queues are, its ring indices and counts.
The contract's links deliver no frames (``rx_pps`` 0): the suite compares
records of kernels given the same work, and frames on their own clock would
make them differ; the pack's tests receive through live updates.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from luo_core import Device, Machine
from luo_core.platform import HOST_BRIDGE, PCI_BRIDGE
from luo_core.testing import Contract
from luo_virtio_net._abi import COMPATIBLE
from luo_virtio_net._host import DRIVER_NAME, VirtioNetState, receive, transmit

NICS = ("0000:01:00.0", "0000:02:00.0")
REQUIRES: tuple[str, ...] = ("luo_iommu",)
"""The packs every kernel of the suite loads with this one: its driver needs an IOMMU."""


def virtio_net_host(rx_pps: int = 0, memory: int = 64 << 20) -> Machine:
    """``dmar0`` and two virtio-net functions, each behind its own bridge, linked to
    ``dmar0`` as their supplier."""
    machine = Machine(memory_size=memory)
    machine.add("dmar0", compatible="intel,vtd")
    machine.add("pci0000:00", compatible=HOST_BRIDGE)
    for n, nic in enumerate(NICS, start=1):
        bridge = f"0000:00:0{n}.0"
        machine.add_pci(bridge, compatible=PCI_BRIDGE, parent="pci0000:00")
        machine.add_pci(nic, compatible=COMPATIBLE, parent=bridge, params={"rx_pps": rx_pps})
        machine.link("dmar0", nic)  # the DMAR unit's device scope: it supplies the function
    return machine


def traffic(dev: Device) -> None:
    transmit(dev, 7)
    receive(dev)


def snapshot(dev: Device) -> Any:
    """What must survive: features, where the queues are, the driver's indices."""
    net: VirtioNetState = dev.driver_data
    return {
        "features": net.features,
        "mac": net.mac,
        "region": net.layout.region,
        "domain": net.domain,
        "queues": [
            [q.ring.size, q.ring.desc, q.ring.driver, q.ring.device, q.avail_idx, q.last_used]
            for q in (net.rx, net.tx)
        ],
        "rx_frames": net.rx_frames,
        "tx_frames": net.tx_frames,
    }


def golden() -> dict[int, bytes]:
    """Records of every version this pack reads (regenerate: see README)."""
    folder = resources.files(__package__).joinpath("golden")
    return {v: folder.joinpath(f"virtio-net-state-v{v}.luor").read_bytes() for v in (1, 2)}


def contracts() -> list[Contract]:
    return [
        Contract(
            name=DRIVER_NAME,
            machine=virtio_net_host,
            devices=list(NICS),
            workload=traffic,
            snapshot=snapshot,
            capabilities={"golden-records", "traffic-during-prepare"},
            golden=golden(),
            requires=REQUIRES,
        )
    ]
