"""IrRecord's versions: the v1 golden record migrates, hostile v1 payloads give typed errors."""

from __future__ import annotations

import cbor2
import pytest
from irq_golden import GOLDEN, V1_FIELDS, goldens
from luo_irqchip import IrRecord, Route
from luo_irqchip._contract import golden

from luo_core.abi import decode_state, encode_record, schema_of, unseal
from luo_core.errors import LiveUpdateError

DEV = "0000:01:00.0"


def test_golden_files_are_what_the_writer_writes() -> None:
    assert golden() == goldens()
    assert sorted(p.name for p in GOLDEN.iterdir()) == ["ir-state-v1.luor"]


def test_v1_migrates_remapped_routes_to_apic_0_and_keeps_no_descriptor_page() -> None:
    sealed = unseal(golden()[1])
    assert (sealed.compatible, sealed.version) == ("luo,intel-ir-state", 1)
    record = decode_state(IrRecord, sealed.payload, 1)
    assert record == IrRecord(
        table=0x0101_0000,
        entries=256,
        routes=[
            Route(0, DEV, 0, 0x30, pda=0x0102_0000),
            Route(1, DEV, 1, 0x31, pda=0x0102_0040),
            Route(2, DEV, 2, 0x32, dest_id=0),
        ],
        descriptors=None,
    )


def test_the_current_version_round_trips() -> None:
    record = IrRecord(0x20_0000, 256, [Route(3, DEV, 0, 0x41, dest_id=7)], 0x20_1000)
    sealed = unseal(encode_record(record))
    assert sealed.version == schema_of(IrRecord).version == 2
    assert decode_state(IrRecord, sealed.payload, 2) == record


@pytest.mark.parametrize(
    "routes", [7, [7], [{"handle": 70000, "device": DEV, "msi_index": 0}], None]
)
def test_a_hostile_v1_record_gives_a_typed_error(routes: object) -> None:
    payload = cbor2.dumps({**V1_FIELDS, "routes": routes}, canonical=True)
    with pytest.raises(LiveUpdateError):
        decode_state(IrRecord, payload, 1)
