"""Writes a golden record: ``python drivers/virtio-net/tests/make_virtio_net_golden.py N``."""

from __future__ import annotations

import sys
from pathlib import Path

from luo_virtio_net import VirtioNetRecord, burned_in_mac
from luo_virtio_net._contract import NICS
from luo_virtio_net._host import WANTED, HostLayout, QueueState

from luo_core.abi import encode_record, schema_of

GOLDEN = Path(__file__).resolve().parent.parent / "luo_virtio_net" / "golden"
REGION = 0x102_0000
"""Where the contract host's first function gets its region at a cold boot."""


def golden_state() -> VirtioNetRecord:
    """The state every golden holds: the first function of the contract's host after one
    workload that sent 7 frames and received 37, with 128-byte buffers."""
    layout = HostLayout(REGION)
    rx = QueueState(layout.rx, avail_idx=layout.size + 37, last_used=37)
    tx = QueueState(layout.tx, avail_idx=7, last_used=0)
    return VirtioNetRecord(
        features=WANTED,
        mac=burned_in_mac(NICS[0]),
        region=REGION,
        region_size=layout.length,
        domain=1,
        queues=[rx.record(0), tx.record(1)],
        buffer_size=128,
        rx_frames=37,
        tx_frames=7,
    )


def golden_record(version: int) -> bytes:
    return encode_record(golden_state(), version=version)


def main() -> int:
    version = int(sys.argv[1]) if len(sys.argv) > 1 else schema_of(VirtioNetRecord).version
    path = GOLDEN / f"virtio-net-state-v{version}.luor"
    path.write_bytes(golden_record(version))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
