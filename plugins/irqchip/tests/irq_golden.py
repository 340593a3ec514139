"""The golden records of older IrRecord versions: what writes them, byte for byte.

``python tests/irq_golden.py`` (from ``plugins/irqchip``) rewrites
``luo_irqchip/golden/``; ``test_golden_files_are_what_the_writer_writes``
pins that the shipped files are exactly these bytes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import cbor2
from luo_irqchip._record import RECORD_COMPATIBLE

from luo_core.abi import seal

GOLDEN = Path(__file__).resolve().parent.parent / "luo_irqchip" / "golden"

# The state every golden holds: a 256-entry table at 16 MiB + 64 KiB, the
# MSIs 0..2 of 0000:01:00.0 (two posted, one remapped to APIC 0), as the
# pack's 0.1.0 wrote it (record v1: no dest_id, no descriptor page).
V1_FIELDS: dict[str, Any] = {
    "table": 0x0101_0000,
    "entries": 256,
    "routes": [
        {
            "handle": 0,
            "device": "0000:01:00.0",
            "msi_index": 0,
            "vector": 0x30,
            "pda": 0x0102_0000,
        },
        {
            "handle": 1,
            "device": "0000:01:00.0",
            "msi_index": 1,
            "vector": 0x31,
            "pda": 0x0102_0040,
        },
        {"handle": 2, "device": "0000:01:00.0", "msi_index": 2, "vector": 0x32, "pda": None},
    ],
}


def goldens() -> dict[int, bytes]:
    """Every golden record, by version."""
    return {1: seal(RECORD_COMPATIBLE, 1, cbor2.dumps(V1_FIELDS, canonical=True))}


def main() -> int:
    for version, blob in goldens().items():
        path = GOLDEN / f"ir-state-v{version}.luor"
        path.write_bytes(blob)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
