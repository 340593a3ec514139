"""Write the kvm pack's golden records: ``python tests/golden_records.py`` from plugins/kvm.

Every golden holds the same state: one VM ``golden``, 64 KiB of guest
memory at GPA 0 on pages at 0x1000000, two vCPUs paused at step 3 of the
guest program, its descriptors page at 0x1010000.  Run it at a version
before changing ``KvmRecord``; it rewrites the record of the current
version and (through the rollback writer) of v1.
"""

from __future__ import annotations

from pathlib import Path

from luo_kvm import KvmRecord, MemslotRecord, VcpuRecord, VmRecord

from luo_core import PhysRange, schema_of
from luo_core.abi import encode_record

GOLDEN = Path(__file__).parent.parent / "luo_kvm" / "golden"


def golden_state() -> KvmRecord:
    def vcpu(index: int) -> VcpuRecord:
        gprs = [0] * 16
        gprs[0], gprs[1] = 3, 0x100 + 0x20 * index
        return VcpuRecord(index, 0x8030, 0x7000, 0x202, gprs, 0, 3)

    slot = MemslotRecord(0, 0, 0x10000, 0, 0x10000, [PhysRange(0x1000000, 0x10000)])
    vm = VmRecord("golden", 0x1010000, [slot], [vcpu(0), vcpu(1)], False)
    return KvmRecord([vm])


def main() -> None:
    record = golden_state()
    for version in range(schema_of(KvmRecord).min_version, schema_of(KvmRecord).version + 1):
        path = GOLDEN / f"kvm-state-v{version}.luor"
        path.write_bytes(encode_record(record, version=version))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
