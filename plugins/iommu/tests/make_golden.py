"""Writes the golden records: ``python plugins/iommu/tests/make_golden.py VERSION``."""

from __future__ import annotations

import sys
from pathlib import Path

from luo_iommu import Iommu, IommuRecord
from luo_iommu._contract import DMAR, machine, workload

from luo_core import Kernel
from luo_core.abi import encode_record, schema_of

GOLDEN = Path(__file__).resolve().parent.parent / "luo_iommu" / "golden"


def golden_state() -> IommuRecord:
    """The state every golden holds: the contract's host after three workloads."""
    import luo_iommu

    kernel = Kernel.boot(machine(), plugins=[luo_iommu], discover=False)
    dev = kernel.devices[DMAR]
    for _ in range(3):
        workload(dev)
    ops = dev.driver_data
    assert isinstance(ops, Iommu)
    return ops.record()


def golden_record(version: int) -> bytes:
    return encode_record(golden_state(), version=version)


def main() -> int:
    version = int(sys.argv[1]) if len(sys.argv) > 1 else schema_of(IommuRecord).version
    path = GOLDEN / f"iommu-state-v{version}.luor"
    path.write_bytes(golden_record(version))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
