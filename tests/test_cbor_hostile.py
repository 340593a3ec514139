"""Hostile payloads: whatever the bytes, decoding ends quickly in a value or a typed error."""

from __future__ import annotations

import struct
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from luo_core.abi import decode_state, encode_state, schema_of
from luo_core.abi._cbor import MAX_DEPTH, canonical, decode_canonical, scan
from luo_core.abi._envelope import decode_record, encode_record
from luo_core.abi._types import (
    ClassType,
    EnumType,
    FieldType,
    IntType,
    OptionalType,
    ScalarType,
    SequenceType,
)
from luo_core.errors import DecodeError, EnvelopeError, SchemaError
from tests.test_schema import Everything, NicWithSections, Queue, everything

TYPED = (DecodeError, SchemaError)
FAST = settings(max_examples=150, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
SCHEMAS = {"luo,test-everything": Everything, "luo,test-nic": NicWithSections}


def strategy(ftype: FieldType) -> st.SearchStrategy[Any]:
    """Valid values of a field type: the generator behind the round-trip property."""
    if isinstance(ftype, IntType):
        return st.integers(ftype.lo, ftype.hi)
    if isinstance(ftype, ScalarType):
        return {bool: st.booleans(), bytes: st.binary(max_size=16), str: st.text(max_size=16)}[
            ftype.python_type
        ]
    if isinstance(ftype, EnumType):
        return st.sampled_from(list(ftype.cls))
    if isinstance(ftype, SequenceType):
        items = st.lists(strategy(ftype.item), max_size=4)
        return items if ftype.container is list else items.map(tuple)
    if isinstance(ftype, OptionalType):
        return st.none() | strategy(ftype.inner)
    assert isinstance(ftype, ClassType)
    return st.builds(ftype.cls, **{info.name: strategy(info.type) for info in ftype.fields})


def states(cls: type) -> st.SearchStrategy[Any]:
    return st.builds(cls, **{f.name: strategy(f.type) for f in schema_of(cls).fields})


def decodes_or_refuses(cls: type, payload: bytes, version: int) -> None:
    try:
        decoded: object = decode_state(cls, payload, version)
    except TYPED:
        return
    assert isinstance(decoded, cls)


def head(major: int, argument: int) -> bytes:
    """A CBOR initial byte and argument in shortest form."""
    if argument < 24:
        return bytes([major << 5 | argument])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if argument < 1 << (8 * size):
            return bytes([major << 5 | info]) + argument.to_bytes(size, "big")
    raise ValueError(argument)


def text(value: str) -> bytes:
    raw = value.encode()
    return head(3, len(raw)) + raw


# -- properties --------------------------------------------------------------------


@FAST
@given(states(Everything))
def test_valid_objects_round_trip_and_encode_deterministically(obj: Everything) -> None:
    payload = encode_state(obj)
    scan(payload)
    assert decode_state(Everything, payload, 1) == obj
    assert encode_state(decode_state(Everything, payload, 1)) == payload


@FAST
@given(states(NicWithSections))
def test_objects_with_sections_round_trip_or_refuse_to_lose_state(obj: NicWithSections) -> None:
    if obj.rss_key == b"" and obj.rss_queues != 1:  # rss is not needed, yet not at defaults
        with pytest.raises(SchemaError, match="section 'rss' is not needed"):
            encode_state(obj)
    else:
        assert decode_state(NicWithSections, encode_state(obj), 2) == obj


@FAST
@given(st.binary(max_size=256))
def test_random_bytes_only_ever_give_typed_errors(data: bytes) -> None:
    decodes_or_refuses(Everything, data, 1)
    decodes_or_refuses(Queue, b"\xa2" + data, 1)


@FAST
@given(st.binary(max_size=256))
def test_random_records_only_ever_give_typed_errors(data: bytes) -> None:
    with pytest.raises((EnvelopeError, *TYPED)):
        decode_record(data, SCHEMAS)


plain_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 64), (1 << 64) - 1)
    | st.binary(max_size=8)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=20,
)


@FAST
@given(st.dictionaries(st.sampled_from(["a", "queue", "counts", "mode", "x", "@s"]), plain_values))
def test_well_formed_payloads_of_the_wrong_shape_give_typed_errors(fields: dict[str, Any]) -> None:
    payload = cbor2.dumps(canonical(fields))
    decodes_or_refuses(Everything, payload, 1)
    decodes_or_refuses(Queue, payload, 1)


@FAST
@given(st.data())
def test_mutated_records_only_ever_give_typed_errors(data: st.DataObject) -> None:
    payload = bytearray(encode_state(everything(maybe=3)))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(payload) - 1))
        payload[position] = data.draw(st.integers(0, 255))
    decodes_or_refuses(Everything, bytes(payload), 1)


# -- exhaustive mutations of a real record ------------------------------------------

REAL = encode_state(everything(maybe=3, maybe_queue=Queue(head=1)))


def test_every_truncation_is_a_decode_error() -> None:
    for end in range(len(REAL)):
        with pytest.raises(DecodeError):
            decode_state(Everything, REAL[:end], 1)


def test_every_bit_flip_decodes_to_a_valid_object_or_a_typed_error() -> None:
    refused = 0
    for position in range(len(REAL)):
        for bit in range(8):
            mutated = bytearray(REAL)
            mutated[position] ^= 1 << bit
            try:
                decode_state(Everything, bytes(mutated), 1)
            except TYPED:
                refused += 1
    assert refused > len(REAL) * 4  # most flips break the structure or a range


def test_trailing_bytes_are_refused() -> None:
    with pytest.raises(DecodeError, match="1 trailing bytes"):
        decode_state(Everything, REAL + b"\x00", 1)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"\xa1" + text("head") + b"\x7b" + (1 << 60).to_bytes(8, "big"), "only 0 bytes remain"),
        (b"\xa1" + text("head") + b"\x5b" + (1 << 60).to_bytes(8, "big") + b"ab", "only 2 bytes"),
        (b"\xa1" + text("head") + b"\x9b" + (1 << 60).to_bytes(8, "big"), "a container of"),
        (b"\xbb" + (1 << 62).to_bytes(8, "big"), "a container of"),
        (b"\xa1\x7a\xff\xff\xff\xff", "only 0 bytes remain"),
        (b"\xa1" + text("head") + b"\x1b\x00\x00", "truncated"),
    ],
)
def test_lying_lengths_are_refused_without_allocating(payload: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        decode_state(Queue, payload, 1)


@pytest.mark.parametrize("opener", [b"\x81", b"\xa1\x61a"])
def test_nesting_ten_thousand_deep_is_refused_early(opener: bytes) -> None:
    payload = b"\xa1\x61a" + opener * 10_000 + b"\x00"
    with pytest.raises(DecodeError, match=f"nested deeper than {MAX_DEPTH}"):
        decode_state(Queue, payload, 1)


def test_nesting_up_to_the_limit_is_well_formed() -> None:
    payload = b"\xa1\x61a" * (MAX_DEPTH - 1) + b"\xa0"
    scan(payload)
    with pytest.raises(DecodeError):
        scan(b"\xa1\x61a" * MAX_DEPTH + b"\xa0")


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"\x80", "not a CBOR map"),
        (b"\x01", "not a CBOR map"),
        (b"\xbf\xff", "indefinite-length"),
        (b"\xa1" + text("head") + b"\x5f\x41a\xff", "indefinite-length"),
        (b"\xa1" + text("head") + b"\xc2\x41\x01", "tags are not allowed"),
        (b"\xa1" + text("head") + b"\xf9\x3c\x00", "a float"),
        (b"\xa1" + text("head") + b"\xfb" + struct.pack(">d", 1.0), "a float"),
        (b"\xa1" + text("head") + b"\xf7", "simple value 23"),
        (b"\xa1" + text("head") + b"\xf8\x20", "simple value 24"),
        (b"\xa1" + text("head") + b"\xff", "a break code"),
        (b"\xa1" + text("head") + b"\x1c", "reserved additional information 28"),
        (b"\xa1\x01\x01", "map key is not a text string"),
        (b"\xa1\x41a\x01", "map key is not a text string"),
        (b"\xa1" + text("head") + b"\x18\x05", "not in shortest form"),
        (b"\xa1" + text("head") + b"\x19\x00\xff", "not in shortest form"),
        (b"\xa1" + text("head") + b"\x1b" + (5).to_bytes(8, "big"), "not in shortest form"),
        (b"\xa1\x78\x04head\x01", "not in shortest form"),
        (b"\xa1\x62\xff\xfe\x01", "not UTF-8"),
        (b"\xa2" + text("head") + b"\x01" + text("head") + b"\x02", "'head' is repeated"),
        (b"\xa2" + text("tail") + b"\x01" + text("head") + b"\x02", "'head' is out of order"),
        (b"\xa2" + text("head") + b"\x01", "truncated"),
        (b"", "truncated"),
    ],
)
def test_encodings_we_never_write_are_refused(payload: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        decode_state(Queue, payload, 1)


def test_item_count_is_limited() -> None:
    payload = cbor2.dumps({"a": [0] * 100})
    scan(payload, max_items=103)  # the map, its key, the array and 100 elements
    with pytest.raises(DecodeError, match="more than 102 items"):
        scan(payload, max_items=102)


def test_decoding_refuses_non_bytes() -> None:
    with pytest.raises(DecodeError, match="must be bytes"):
        decode_canonical(bytearray(b"\xa0"))  # type: ignore[arg-type]


def test_a_hostile_record_through_the_envelope_is_still_a_typed_error() -> None:
    record = encode_record(Queue(head=1))
    payload_at = len(record) - 4 - len(encode_state(Queue(head=1)))
    tampered = bytearray(record)
    tampered[payload_at] = 0xBF  # indefinite map; the CRC catches it first
    with pytest.raises(EnvelopeError, match="checksum"):
        decode_record(bytes(tampered), {"luo,test-queue": Queue})
