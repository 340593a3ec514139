"""Interrupt remapping: the IRTE's bytes, the remappable MSI, and delivery into posted descriptors.

The entry is Linux's ``struct irte`` (``include/linux/dmar.h``) in both
formats; the MSI address is Linux's ``x86_msi_addr_lo`` ``dmar_*`` fields.
A posted-format entry posts its vector with the PIR/ON/SN rules of
``tests/test_posted.py``; a remapped-format entry goes to the direct
callback; every fault is counted, logged and typed, and writes nothing;
garbage in the table is a fault or a valid delivery; and a device model's
MSIs, raised from its own loop, all reach the drain.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from luo_core import hookimpl
from luo_core.abi._irte import (
    IRTE_SIZE,
    PostedIrte,
    RemappableMsi,
    RemappedIrte,
    decode_irte,
    decode_msi,
    encode_msi,
)
from luo_core.abi._posted import CONTROL, PI_DESC_SIZE, POSTED_INTR_SN, PiDesc, drain
from luo_core.errors import (
    DecodeError,
    FieldValueError,
    InterruptRemapFaultError,
    InvalidArgumentError,
)
from luo_core.kernel._hwlink import HardwareLink
from luo_core.platform import (
    Delivery,
    DeviceModel,
    DeviceMsi,
    Hardware,
    InterruptRemapper,
    IrFault,
    IrFaultReason,
    Machine,
    PhysicalMemory,
    Register,
    RegisterMap,
)
from luo_core.platform._atomic import AtomicWords
from luo_core.platform._posted import Poster

PAGE = PhysicalMemory.PAGE_SIZE
PAGES = 16
TABLE = 4 * PAGE
ENTRIES = 256  # one page of entries
DESC = 8 * PAGE + 0x40
NV, NDST = 0xF2, 0x300


class Sink:
    """Records ``(vector, destination)`` pairs: a notification or a direct interrupt."""

    def __init__(self) -> None:
        self.got: list[tuple[int, int]] = []

    def __call__(self, vector: int, dest: int) -> None:
        self.got.append((vector, dest))


class Bench:
    """Memory with a table and a descriptor, a poster and a remapper over them."""

    def __init__(self, mem: PhysicalMemory) -> None:
        self.mem = mem
        self.notes, self.direct = Sink(), Sink()
        self.poster = Poster(mem, self.notes)
        self.remapper = InterruptRemapper(mem, self.poster, self.direct)
        self.msi = DeviceMsi(self.remapper, TABLE, ENTRIES, "nic0")

    def entry(self, index: int, raw: bytes) -> None:
        self.mem.write(TABLE + index * IRTE_SIZE, raw)

    def desc(self) -> PiDesc:
        return PiDesc.decode(self.mem.read(DESC, PI_DESC_SIZE))


@pytest.fixture
def m() -> Iterator[Bench]:
    with PhysicalMemory(PAGES * PAGE) as mem:
        mem.write(DESC, PiDesc(nv=NV, ndst=NDST).encode())
        yield Bench(mem)


def low_high(raw: bytes) -> tuple[int, int]:
    return int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")


# -- the formats --------------------------------------------------------------------


def test_a_remapped_entry_is_struct_irte_byte_for_byte() -> None:
    """``struct irte`` remapped mode: present 0, fpd 1, dst_mode 2, redir_hint 3,
    trigger_mode 4, dlvry_mode 5-7, avail 8-11, vector 16-23, dest_id 32-63;
    sid 64-79, sq 80-81, svt 82-83."""
    raw = RemappedIrte(
        vector=0x31,
        dest_id=0x0000_0300,
        dest_mode=True,
        redir_hint=True,
        trigger_mode=True,
        delivery_mode=0b101,
        fpd=True,
        avail=0xA,
        sid=0x0100,
        sq=2,
        svt=1,
    ).encode()
    assert raw[:8] == bytes([0x1F | 0b101 << 5, 0x0A, 0x31, 0, 0x00, 0x03, 0, 0])
    assert raw[8:] == bytes([0x00, 0x01, 2 | 1 << 2, 0, 0, 0, 0, 0])  # sid, sq | svt << 2


def test_a_posted_entry_is_struct_irte_byte_for_byte() -> None:
    """``struct irte`` posted mode: p_present 0, p_fpd 1, p_avail 8-11, p_urgent 14,
    p_pst 15, p_vector 16-23, pda_l 38-63, pda_h 96-127; Linux's split is
    ``pda_l = (pda >> (32 - PDA_LOW_BIT)) & ~(-1UL << PDA_LOW_BIT)`` and
    ``pda_h = (pda >> 32) & ~(-1UL << PDA_HIGH_BIT)`` (``intel_ir_set_vcpu_affinity``)."""
    pda = 0x0000_0001_2345_6780
    raw = PostedIrte(
        vector=0x42, pda=pda, urgent=True, fpd=True, avail=5, sid=0x0208, svt=1
    ).encode()
    low, high = low_high(raw)
    assert raw[0] == 0x03  # present, fpd; bits 2-7 reserved
    assert raw[1] == 0x05 | 0x40 | 0x80  # avail, urgent (bit 14), pst (bit 15)
    assert raw[2] == 0x42
    assert low & (0x3FFF << 24) == 0  # p_res2
    assert low >> 38 == (pda >> (32 - 26)) & ((1 << 26) - 1)
    assert raw[8:12] == bytes([0x08, 0x02, 1 << 2, 0])  # sid, sq 0, svt 1, p_res3
    assert raw[12:16] == (pda >> 32).to_bytes(4, "little")
    assert high >> 32 == 1


def test_the_msi_is_linuxs_remappable_format() -> None:
    """``fill_msi_msg``: base 0xfee, SHV (bit 3), format (bit 4), index bits 0-14 at
    5-19, index bit 15 at bit 2; the data is the subhandle."""
    address, data = encode_msi(0x8123, 7)
    assert address == 0xFEE0_0000 | 0x0123 << 5 | 1 << 4 | 1 << 3 | 1 << 2
    assert data == 7
    assert decode_msi(address, data) == RemappableMsi(handle=0x8123, shv=True, subhandle=7)
    assert decode_msi(address, data).index == 0x812A  # type: ignore[union-attr]
    no_shv = decode_msi(address & ~(1 << 3), 0xFFFF_FFFF)  # without SHV the data is unused
    assert no_shv == RemappableMsi(handle=0x8123, shv=False)
    assert no_shv.index == 0x8123
    assert decode_msi(0xFEE0_0000, 0) is None  # compatibility format


@pytest.mark.parametrize(
    ("address", "data"),
    [(1 << 32 | 0xFEE0_0018, 0), (0xFED0_0018, 0), (0xFEE0_0018, 1 << 16), (0xFEE0_0018, -1)],
    ids=["high-half", "head", "shv-data-reserved", "negative"],
)
def test_decode_msi_refuses_reserved_request_bits(address: int, data: int) -> None:
    with pytest.raises(DecodeError):
        decode_msi(address, data)


VECTORS = st.integers(0, 0xFF)
U4, U2 = st.integers(0, 0xF), st.integers(0, 3)
REMAPPED = st.builds(
    RemappedIrte,
    vector=VECTORS,
    dest_id=st.integers(0, 0xFFFF_FFFF),
    dest_mode=st.booleans(),
    redir_hint=st.booleans(),
    trigger_mode=st.booleans(),
    delivery_mode=st.integers(0, 7),
    fpd=st.booleans(),
    avail=U4,
    sid=st.integers(0, 0xFFFF),
    sq=U2,
    svt=U2,
)
POSTED = st.builds(
    PostedIrte,
    vector=VECTORS,
    pda=st.integers(0, (1 << 58) - 1).map(lambda n: n * 64),
    urgent=st.booleans(),
    fpd=st.booleans(),
    avail=U4,
    sid=st.integers(0, 0xFFFF),
    sq=U2,
    svt=U2,
)


@given(entry=REMAPPED | POSTED)
def test_an_entry_round_trips(entry: RemappedIrte | PostedIrte) -> None:
    assert decode_irte(entry.encode()) == entry


@given(handle=st.integers(0, 0xFFFF), subhandle=st.integers(0, 0xFFFF))
def test_an_msi_round_trips(handle: int, subhandle: int) -> None:
    msi = decode_msi(*encode_msi(handle, subhandle))
    assert msi == RemappableMsi(handle=handle, shv=True, subhandle=subhandle)


REMAPPED_RESERVED = [*range(12, 15), *range(24, 32), *range(64 + 20, 128)]
POSTED_RESERVED = [*range(2, 8), 12, 13, *range(24, 38), *range(64 + 20, 96)]


@pytest.mark.parametrize(
    ("entry", "bit"),
    [(RemappedIrte(vector=1), bit) for bit in REMAPPED_RESERVED]
    + [(PostedIrte(vector=1, pda=0x40), bit) for bit in POSTED_RESERVED],
)
def test_decode_refuses_every_reserved_bit_of_a_present_entry(
    entry: RemappedIrte | PostedIrte, bit: int
) -> None:
    value = int.from_bytes(entry.encode(), "little") | 1 << bit
    with pytest.raises(DecodeError, match="reserved bits"):
        decode_irte(value.to_bytes(16, "little"))
    # P clear: hardware ignores the rest of the entry, reserved bits included.
    assert decode_irte((value & ~1).to_bytes(16, "little")) is None


def test_encode_refuses_what_does_not_fit() -> None:
    for bad in (PostedIrte(vector=1, pda=0x1020), PostedIrte(vector=1, pda=1 << 64)):
        with pytest.raises(FieldValueError, match="64-byte aligned"):
            bad.encode()
    for wrong in (RemappedIrte(vector=256), RemappedIrte(vector=1, delivery_mode=8)):
        with pytest.raises(FieldValueError):
            wrong.encode()
    with pytest.raises(FieldValueError):
        RemappedIrte(vector=1, svt=4).encode()
    with pytest.raises(FieldValueError):
        encode_msi(0x10000)
    with pytest.raises(DecodeError, match="16 bytes"):
        decode_irte(bytes(15))


# -- delivery -----------------------------------------------------------------------


def test_a_posted_entry_sets_the_pir_bit_and_notifies_once_until_drained(m: Bench) -> None:
    m.entry(5, PostedIrte(vector=0x31, pda=DESC).encode())
    m.entry(6, PostedIrte(vector=0x80, pda=DESC).encode())
    assert m.msi.raise_(5) == Delivery(5, 0x31, posted=True, notified=True)
    assert m.msi.raise_(6) == Delivery(6, 0x80, posted=True, notified=False)
    assert m.msi.raise_(5).notified is False  # coalesces with the pending bit
    assert m.notes.got == [(NV, NDST)]
    assert m.desc() == PiDesc(pir=frozenset({0x31, 0x80}), on=True, nv=NV, ndst=NDST)
    owner = AtomicWords(m.mem.view(DESC, PI_DESC_SIZE))
    assert drain(owner) == [0x31, 0x80]
    assert m.msi.raise_(4, 2).notified is True  # handle 4 + subhandle 2: entry 6
    assert m.notes.got == [(NV, NDST)] * 2
    assert drain(owner) == [0x80]
    assert m.direct.got == [] and m.remapper.faults == 0
    assert m.poster.posted == 4


def test_the_enabled_table_is_what_an_msi_without_a_table_goes_through(m: Bench) -> None:
    """IRTA with GCMD.IRE: a device names no table; the remapping unit holds it."""
    m.entry(5, PostedIrte(vector=0x31, pda=DESC).encode())
    msi = DeviceMsi(m.remapper, None, 0, "nic0")
    with pytest.raises(InterruptRemapFaultError, match="interrupt remapping is not enabled"):
        msi.raise_(5)
    assert m.remapper.fault_log[-1] == IrFault("nic0", None, IrFaultReason.DISABLED)
    m.remapper.set_table(TABLE, ENTRIES)
    assert m.remapper.table == (TABLE, ENTRIES)
    assert msi.raise_(5) == Delivery(5, 0x31, posted=True, notified=True)
    for phys, entries in ((TABLE + 8, ENTRIES), (TABLE, 3), (PAGES * PAGE, 2), (TABLE, 1 << 17)):
        with pytest.raises(InvalidArgumentError):
            m.remapper.set_table(phys, entries)
    assert m.remapper.table == (TABLE, ENTRIES)
    m.remapper.set_table(None)
    with pytest.raises(InterruptRemapFaultError):
        msi.raise_(5)


def test_sn_suppresses_the_notification_and_keeps_the_bit(m: Bench) -> None:
    m.entry(0, PostedIrte(vector=0x20, pda=DESC).encode())
    owner = AtomicWords(m.mem.view(DESC, PI_DESC_SIZE))
    owner.set_bit(CONTROL, POSTED_INTR_SN)
    assert m.msi.raise_(0) == Delivery(0, 0x20, posted=True, notified=False)
    assert m.notes.got == [] and m.poster.suppressed == 1
    assert m.desc() == PiDesc(pir=frozenset({0x20}), sn=True, nv=NV, ndst=NDST)
    owner.clear_bit(CONTROL, POSTED_INTR_SN)
    assert drain(owner) == [0x20]  # the owner drains after clearing SN: nothing lost


def test_a_remapped_entry_goes_to_the_direct_callback(m: Bench) -> None:
    m.entry(7, RemappedIrte(vector=0x55, dest_id=3).encode())
    before = m.mem.read(0, PAGES * PAGE)
    assert m.msi.raise_(7) == Delivery(7, 0x55, posted=False, notified=False)
    assert m.direct.got == [(0x55, 3)]
    assert m.remapper.direct_delivered == 1
    assert m.mem.read(0, PAGES * PAGE) == before
    assert m.notes.got == [] and m.poster.posted == 0


GOOD_MSI = encode_msi(1)
FAULTS: list[tuple[str, int, int, Any, IrFaultReason, int | None]] = [
    # (id, table, entries, (address, data), reason, index recorded)
    ("index", TABLE, ENTRIES, encode_msi(ENTRIES), IrFaultReason.INDEX, ENTRIES),
    ("index-subhandle", TABLE, ENTRIES, encode_msi(250, 6), IrFaultReason.INDEX, ENTRIES),
    ("not-present", TABLE, ENTRIES, encode_msi(2), IrFaultReason.NOT_PRESENT, 2),
    ("reserved", TABLE, ENTRIES, encode_msi(3), IrFaultReason.RESERVED, 3),
    ("pda-beyond-memory", TABLE, ENTRIES, encode_msi(4), IrFaultReason.DESCRIPTOR, 4),
    ("pda-above-4g", TABLE, ENTRIES, encode_msi(5), IrFaultReason.DESCRIPTOR, 5),
    ("table-misaligned", TABLE + 16, ENTRIES, GOOD_MSI, IrFaultReason.TABLE, 1),
    ("table-size", TABLE, 100, GOOD_MSI, IrFaultReason.TABLE, 1),
    ("table-too-big", TABLE, 1 << 17, GOOD_MSI, IrFaultReason.TABLE, 1),
    ("table-beyond-memory", PAGES * PAGE - PAGE, 512, GOOD_MSI, IrFaultReason.TABLE, 1),
    ("table-negative", -PAGE, 2, GOOD_MSI, IrFaultReason.TABLE, 1),
    ("address-high", TABLE, ENTRIES, (1 << 32 | GOOD_MSI[0], 0), IrFaultReason.REQUEST, None),
    ("address-head", TABLE, ENTRIES, (0xFED0_0018, 0), IrFaultReason.REQUEST, None),
    ("data-reserved", TABLE, ENTRIES, (GOOD_MSI[0], 1 << 31), IrFaultReason.REQUEST, None),
    ("compat", TABLE, ENTRIES, (0xFEE0_0000, 0x31), IrFaultReason.COMPAT, None),
]


@pytest.mark.parametrize(
    ("table", "entries", "msi", "reason", "index"),
    [f[1:] for f in FAULTS],
    ids=[f[0] for f in FAULTS],
)
def test_every_fault_is_counted_logged_typed_and_writes_nothing(
    m: Bench,
    table: int,
    entries: int,
    msi: tuple[int, int],
    reason: IrFaultReason,
    index: int | None,
) -> None:
    m.entry(1, PostedIrte(vector=0x31, pda=DESC).encode())
    m.entry(2, (1 << 40 | 0xFF << 16 | 1 << 15).to_bytes(16, "little"))  # P clear, junk
    m.entry(3, entry_bytes(PostedIrte(vector=1, pda=DESC).encode(), [2]))  # reserved bit 2
    m.entry(4, PostedIrte(vector=0x31, pda=PAGES * PAGE).encode())
    m.entry(5, PostedIrte(vector=0x31, pda=1 << 32 | DESC).encode())
    before = m.mem.read(0, PAGES * PAGE)
    with pytest.raises(InterruptRemapFaultError) as info:
        m.remapper.deliver_msi(table, entries, *msi, device="nic0")
    assert info.value.errno == errno.EFAULT
    assert (info.value.device, info.value.index, info.value.reason) == ("nic0", index, reason)
    assert str(info.value).startswith("nic0: interrupt-remapping fault")
    assert m.remapper.faults == 1
    assert m.remapper.fault_log == [IrFault("nic0", index, reason)]
    assert m.mem.read(0, PAGES * PAGE) == before, "a faulting MSI wrote"
    assert (m.notes.got, m.direct.got, m.poster.posted) == ([], [], 0)


def test_the_fault_log_is_bounded_and_the_count_is_not(m: Bench) -> None:
    for n in range(InterruptRemapper.LOG_SIZE + 9):
        with pytest.raises(InterruptRemapFaultError):
            m.msi.raise_(n % ENTRIES)  # every entry is empty
    assert m.remapper.faults == InterruptRemapper.LOG_SIZE + 9
    log = m.remapper.fault_log
    assert len(log) == InterruptRemapper.LOG_SIZE
    assert log[0].index == 9 and log[-1].index == InterruptRemapper.LOG_SIZE + 8


def test_a_non_integer_msi_is_a_model_bug_not_a_fault(m: Bench) -> None:
    with pytest.raises(InvalidArgumentError, match="must be integers"):
        m.msi.send("0xfee00018", 0)  # type: ignore[arg-type]
    assert m.remapper.faults == 0


def entry_bytes(base: bytes, flips: list[int]) -> bytes:
    value = int.from_bytes(base, "little")
    for bit in flips:
        value ^= 1 << bit
    return value.to_bytes(16, "little")


IN_MEMORY_POSTED = st.builds(
    PostedIrte,
    vector=VECTORS,
    pda=st.integers(0, PAGES * PAGE // 64).map(lambda n: n * 64),
    urgent=st.booleans(),
)
ENTRY_BYTES = st.binary(min_size=16, max_size=16) | st.builds(
    entry_bytes,
    (REMAPPED | POSTED | IN_MEMORY_POSTED).map(lambda e: e.encode()),
    st.lists(st.integers(0, 127), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(
    entries=st.lists(st.tuples(st.integers(0, 15), ENTRY_BYTES), max_size=8),
    handle=st.integers(0, 15),
    subhandle=st.integers(0, 3),
    raw_msi=st.none() | st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1)),
)
def test_garbage_in_the_table_is_a_fault_or_a_valid_delivery(
    entries: list[tuple[int, bytes]],
    handle: int,
    subhandle: int,
    raw_msi: tuple[int, int] | None,
) -> None:
    """Whatever the table holds and whatever the device sends, an MSI either faults
    having written nothing, or delivers: a posted one sets one PIR bit (and ON)
    of a 64-byte aligned descriptor inside memory and nothing else."""
    with PhysicalMemory(PAGES * PAGE) as mem:
        notes, direct = Sink(), Sink()
        remapper = InterruptRemapper(mem, Poster(mem, notes), direct)
        for index, raw in entries:
            mem.write(TABLE + index * IRTE_SIZE, raw)
        address, data = raw_msi or encode_msi(handle, subhandle)
        before = mem.read(0, PAGES * PAGE)
        try:
            done = remapper.deliver_msi(TABLE, 16, address, data, device="d")
        except InterruptRemapFaultError:
            assert mem.read(0, PAGES * PAGE) == before
            assert (notes.got, direct.got, remapper.faults) == ([], [], 1)
            return
        after = mem.read(0, PAGES * PAGE)
        assert remapper.faults == 0
        if not done.posted:
            assert after == before and len(direct.got) == 1
            return
        entry = decode_irte(before[TABLE + done.index * 16 : TABLE + done.index * 16 + 16])
        assert isinstance(entry, PostedIrte) and entry.vector == done.vector
        assert entry.pda % 64 == 0 and entry.pda + 64 <= PAGES * PAGE
        changed = [i for i in range(len(before)) if before[i] != after[i]]
        assert all(entry.pda <= i < entry.pda + 64 for i in changed)
        old = int.from_bytes(before[entry.pda : entry.pda + 64], "little")
        new = int.from_bytes(after[entry.pda : entry.pda + 64], "little")
        assert new == old | 1 << done.vector | (1 << 256 if done.notified else 0)


# -- a device model raising MSIs ----------------------------------------------------

MSI_DEVICE = "luo,test-msi"


class MsiModel(DeviceModel):
    """Raises one MSI per handle the driver queues: ``bell`` is the queue's tail."""

    compatible = (MSI_DEVICE,)
    registers = RegisterMap(
        [
            Register("bell", 0x00, 32, doorbell=True),
            Register("entries", 0x04, 32),
            Register("table", 0x08, 64),
            Register("head", 0x10, 32, owner="device"),
        ]
    )

    def kick(self) -> None:
        # Doorbells coalesce, so the model works up to the tail, as a queue does.
        msi = self.ctx.msi(self.ctx.regs["table"], self.ctx.regs["entries"])
        head, tail = self.ctx.regs["head"], self.ctx.regs["bell"]
        for handle in range(head, tail):
            msi.raise_(handle)
        self.ctx.regs["head"] = max(head, tail)

    def control(self, op: str, args: Mapping[str, Any]) -> object:
        return self.ctx.msi(args["table"], args["entries"]).raise_(args["handle"]).index


class MsiModels:
    @hookimpl
    def luo_device_models(self) -> Iterator[type[DeviceModel]]:
        yield MsiModel


def test_a_device_models_msis_all_reach_the_drain_through_real_hardware() -> None:
    """The driver queues handles and rings the doorbell; the model raises them
    from its own loop while the descriptor's owner drains whenever it likes; after
    ``sync`` a last drain, and every vector was seen exactly once."""
    machine = Machine(memory_size=1 << 22, scratch_size=1 << 20)
    machine.add("msi0", compatible=MSI_DEVICE)
    hw = Hardware(machine, models=[MsiModels()], discover=False)
    vectors = range(0x20, 0x100)  # one entry per vector, all into one descriptor
    try:
        table, desc = 0x10000, 0x20040
        hw.ram.write(desc, PiDesc(nv=NV, ndst=NDST).encode())
        for handle, vector in enumerate(vectors):
            hw.ram.write(table + handle * 16, PostedIrte(vector=vector, pda=desc).encode())
        owner = AtomicWords(hw.ram.view(desc, PI_DESC_SIZE))
        seen: list[int] = []
        link = HardwareLink(hw.address)
        with contextlib.closing(link):
            link.attach()
            regs = link.registers(link.windows["msi0"])
            regs["table"], regs["entries"] = table, 256
            for tail in range(1, len(vectors) + 1):
                regs["bell"] = tail
                if tail % 7 == 0:
                    seen += drain(owner)
            hw.sync()
            seen += drain(owner)
            assert sorted(seen) == list(vectors)
            assert hw.registers("msi0")["head"] == len(vectors)
        assert hw.interrupts.poster.posted == len(vectors)
        assert hw.interrupts.faults == 0
        with pytest.raises(InterruptRemapFaultError, match=r"msi0: .*IRTE 300: index beyond"):
            hw.control("msi0", "raise", {"table": table, "entries": 256, "handle": 300})
        assert hw.interrupts.fault_log == [IrFault("msi0", 300, IrFaultReason.INDEX)]
        del owner
    finally:
        hw.close()
