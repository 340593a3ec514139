"""The record envelope: exact layout, and a typed error for every malformed record."""

from __future__ import annotations

import errno
import struct
import zlib

import pytest

from luo_core.abi import encode_state
from luo_core.abi._envelope import (
    MAGIC,
    MAX_PAYLOAD,
    OVERHEAD,
    Sealed,
    decode_record,
    encode_record,
    seal,
    unseal,
)
from luo_core.errors import EnvelopeError, HandoffError, SchemaError
from tests.test_schema import Mode, Queue, RingV2, RingV3, everything

RECORD = seal("luo,q", 7, b"\xa0")


def resealed(body: bytes) -> bytes:
    """``body`` with a correct CRC, to reach the checks that come after the checksum."""
    return body + struct.pack("<I", zlib.crc32(body))


def test_the_layout_is_exactly_as_documented() -> None:
    expected = (
        b"LUOR"  # magic
        + b"\x02\x00"  # format 2, u16 LE
        + b"\x00\x00"  # flags, u16 LE
        + b"\x0b\x00\x00\x00"  # body length, u32 LE
        + b"\x05"  # compatible length
        + b"luo,q"  # compatible
        + b"\x07\x00\x00\x00"  # version, u32 LE
        + b"\xa0"  # payload
    )
    assert expected + struct.pack("<I", zlib.crc32(expected)) == RECORD
    assert len(RECORD) == OVERHEAD + len("luo,q") + 1 == 27
    assert MAGIC == b"LUOR"


def test_seal_and_unseal_round_trip() -> None:
    sealed = unseal(RECORD)
    assert sealed == Sealed("luo,q", 7, b"\xa0")
    assert repr(sealed) == "Sealed(compatible='luo,q', version=7, payload=<1 bytes>)"
    assert unseal(bytearray(RECORD)) == sealed
    assert unseal(seal("x" * 63, 0, b"")).compatible == "x" * 63


def test_every_truncation_and_extension_is_refused() -> None:
    for end in range(len(RECORD)):
        with pytest.raises(EnvelopeError):
            unseal(RECORD[:end])
    with pytest.raises(EnvelopeError, match="does not match the record size"):
        unseal(RECORD + b"\x00")


def with_body(body: bytes) -> bytes:
    """A record frame around ``body``, with a correct length and CRC."""
    return resealed(b"LUOR\x02\x00\x00\x00" + struct.pack("<I", len(body)) + body)


def test_every_single_bit_flip_is_refused() -> None:
    record = encode_record(everything())
    for position in range(len(record)):
        for bit in range(8):
            mutated = bytearray(record)
            mutated[position] ^= 1 << bit
            with pytest.raises(EnvelopeError):
                unseal(bytes(mutated))


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        (b"LUOR", "truncated: 4 bytes"),
        (b"LUOX" + RECORD[4:], r"not a luo record: magic b'LUOX'"),
        (resealed(RECORD[:4] + b"\x01\x00" + RECORD[6:-4]), "format 1 is not supported"),
        (resealed(RECORD[:6] + b"\x01\x00" + RECORD[8:-4]), "flags 0x1 are not supported"),
        (resealed(RECORD[:8] + b"\x0c\x00\x00\x00" + RECORD[12:-4]), "does not match"),
        (
            resealed(RECORD[:8] + b"\xff\xff\xff\xff" + RECORD[12:-4]),
            "body of 4294967295 bytes exceeds the",
        ),
        (RECORD[:-1] + bytes([RECORD[-1] ^ 1]), "checksum mismatch"),
        (with_body(b""), "compatible length 0 is outside 1..63"),
        (with_body(b"\x00luo,q\x07\x00\x00\x00\xa0"), "compatible length 0 is outside 1..63"),
        (with_body(b"\x40" + b"x" * 70), "length 64 is outside"),
        (with_body(b"\x05luo,q\x07\x00"), "the header alone needs more"),
        (with_body(b"\x05LUO,Q\x07\x00\x00\x00\xa0"), "'LUO,Q' is not a valid compatible"),
        (with_body(b"\x05" + "luo,é".encode()[:5] + b"\x07\x00\x00\x00"), "not a valid"),
    ],
)
def test_malformed_envelopes_name_what_is_wrong(blob: bytes, match: str) -> None:
    with pytest.raises(EnvelopeError, match=match) as caught:
        unseal(blob)
    assert isinstance(caught.value, HandoffError)
    assert caught.value.errno == errno.EBADMSG
    assert "\n" not in str(caught.value)


def test_unseal_refuses_what_is_not_bytes() -> None:
    with pytest.raises(EnvelopeError, match="must be bytes, not str"):
        unseal("LUOR")  # type: ignore[arg-type]


def test_the_payload_limit_is_configurable() -> None:
    big = seal("luo,q", 1, b"\x00" * 100)
    assert unseal(big, max_payload=100).payload == b"\x00" * 100
    with pytest.raises(EnvelopeError, match="payload of 100 bytes exceeds the 99-byte limit"):
        unseal(big, max_payload=99)
    with pytest.raises(EnvelopeError, match="exceeds the 99-byte limit"):
        seal("luo,q", 1, b"\x00" * 100, max_payload=99)
    assert MAX_PAYLOAD == 64 << 20


@pytest.mark.parametrize(
    ("compatible", "version", "payload", "match"),
    [
        ("", 1, b"", "compatible '' must be"),
        ("x" * 64, 1, b"", "must be 1-63 chars"),
        ("Luo", 1, b"", "must be 1-63 chars"),
        ("luo,q", -1, b"", "does not fit a u32"),
        ("luo,q", 1 << 32, b"", "does not fit a u32"),
        ("luo,q", 1, "text", "payload must be bytes"),
    ],
)
def test_seal_refuses_what_it_cannot_write(
    compatible: str, version: int, payload: bytes, match: str
) -> None:
    with pytest.raises(EnvelopeError, match=match):
        seal(compatible, version, payload)


def test_records_round_trip_through_the_schemas() -> None:
    obj = everything()
    record = encode_record(obj)
    assert unseal(record).compatible == "luo,test-everything"
    assert unseal(record).payload == encode_state(obj)
    assert decode_record(record, {"luo,test-everything": type(obj)}) == obj
    assert encode_record(obj) == record


def test_a_rolled_back_record_carries_the_older_version() -> None:
    obj = RingV3(frames=5, mode=Mode.interrupt)
    record = encode_record(obj, version=2)
    assert unseal(record).version == 2
    assert decode_record(record, {"luo,test-ring": RingV2}) == RingV2(
        packets=5, mode=Mode.interrupt
    )
    assert decode_record(record, {"luo,test-ring": RingV3}) == obj


def test_an_unknown_compatible_is_a_typed_error() -> None:
    record = encode_record(Queue(head=1))
    with pytest.raises(
        SchemaError, match=r"no schema for compatible 'luo,test-queue' \(known: luo,x\)"
    ):
        decode_record(record, {"luo,x": Queue})
    with pytest.raises(SchemaError) as caught:
        decode_record(record, {})
    assert caught.value.errno == errno.ENOENT
    with pytest.raises(SchemaError, match="maps 'luo,test-queue' to RingV2"):
        decode_record(record, {"luo,test-queue": RingV2})
