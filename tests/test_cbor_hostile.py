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
    DictType,
    EnumType,
    FieldType,
    IntType,
    OptionalType,
    ScalarType,
    SequenceType,
)
from luo_core.errors import DecodeError, EnvelopeError, SchemaError
from tests.test_schema import Everything, NicWithSections, Queue, Tables, everything, tables

TYPED = (DecodeError, SchemaError)
FAST = settings(max_examples=150, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
SCHEMAS = {
    "luo,test-everything": Everything,
    "luo,test-nic": NicWithSections,
    "luo,test-tables": Tables,
}


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
    if isinstance(ftype, DictType):
        return st.dictionaries(strategy(ftype.key), strategy(ftype.value), max_size=4)
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
@given(states(Tables))
def test_objects_with_dicts_round_trip_and_encode_deterministically(obj: Tables) -> None:
    payload = encode_state(obj)
    scan(payload)
    assert decode_state(Tables, payload, 1) == obj
    assert encode_state(decode_state(Tables, payload, 1)) == payload


@FAST
@given(states(Tables), st.randoms(use_true_random=False))
def test_the_insertion_order_of_dicts_never_changes_the_bytes(obj: Tables, rng: Any) -> None:
    def shuffled(value: Any) -> Any:
        if isinstance(value, dict):
            items = [(key, shuffled(item)) for key, item in value.items()]
            rng.shuffle(items)
            return dict(items)
        return value

    other = Tables(**{f.name: shuffled(getattr(obj, f.name)) for f in schema_of(Tables).fields})
    assert other == obj
    assert encode_state(other) == encode_state(obj)


@FAST
@given(st.binary(max_size=256))
def test_random_bytes_only_ever_give_typed_errors(data: bytes) -> None:
    decodes_or_refuses(Everything, data, 1)
    decodes_or_refuses(Queue, b"\xa2" + data, 1)
    decodes_or_refuses(Tables, data, 1)


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
@given(
    st.sampled_from(
        ["names", "ports", "offsets", "windows", "queues", "nested", "maybe", "empty"]
    ),
    plain_values,
)
def test_any_plain_value_in_a_dict_field_decodes_or_gives_a_typed_error(
    field: str, value: Any
) -> None:
    raw = cbor2.loads(encode_state(tables()))
    raw[field] = value
    decodes_or_refuses(Tables, cbor2.dumps(canonical(raw)), 1)


pairs = st.lists(
    st.lists(st.integers(-(1 << 64), (1 << 64) - 1) | plain_values, min_size=0, max_size=3),
    max_size=5,
)


@FAST
@given(st.sampled_from(["ports", "offsets", "windows", "nested", "empty"]), pairs)
def test_any_array_of_would_be_pairs_decodes_or_gives_a_typed_error(
    field: str, value: list[Any]
) -> None:
    raw = cbor2.loads(encode_state(tables()))
    raw[field] = value
    try:
        decoded = decode_state(Tables, cbor2.dumps(canonical(raw)), 1)
    except TYPED:
        return
    keys = [pair[0] for pair in value]
    assert keys == sorted(set(keys))  # accepted only when strictly increasing
    assert list(getattr(decoded, field)) == keys


@FAST
@given(st.dictionaries(st.sampled_from(["a", "queue", "counts", "mode", "x", "@s"]), plain_values))
def test_well_formed_payloads_of_the_wrong_shape_give_typed_errors(fields: dict[str, Any]) -> None:
    payload = cbor2.dumps(canonical(fields))
    decodes_or_refuses(Everything, payload, 1)
    decodes_or_refuses(Queue, payload, 1)


@FAST
@given(st.data())
def test_mutated_records_only_ever_give_typed_errors(data: st.DataObject) -> None:
    cls, obj = data.draw(
        st.sampled_from([(Everything, everything(maybe=3)), (Tables, tables(maybe={"m": 1}))])
    )
    payload = bytearray(encode_state(obj))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(payload) - 1))
        payload[position] = data.draw(st.integers(0, 255))
    decodes_or_refuses(cls, bytes(payload), 1)


# -- exhaustive mutations of a real record ------------------------------------------

REAL = encode_state(everything(maybe=3, maybe_queue=Queue(head=1)))
REAL_TABLES = encode_state(tables(maybe={"m": 1}))


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


def test_every_truncation_or_bit_flip_of_a_record_with_dicts_is_handled() -> None:
    for end in range(len(REAL_TABLES)):
        with pytest.raises(DecodeError):
            decode_state(Tables, REAL_TABLES[:end], 1)
    refused = 0
    for position in range(len(REAL_TABLES)):
        for bit in range(8):
            mutated = bytearray(REAL_TABLES)
            mutated[position] ^= 1 << bit
            try:
                decode_state(Tables, bytes(mutated), 1)
            except TYPED:
                refused += 1
    assert refused > len(REAL_TABLES) * 4


def with_field(name: str, encoded: bytes) -> bytes:
    """The Tables record with field ``name`` replaced by raw CBOR ``encoded``."""
    raw = cbor2.loads(REAL_TABLES)
    raw[name] = "\x00placeholder"
    marker = cbor2.dumps("\x00placeholder")
    payload = cbor2.dumps(canonical(raw))
    assert payload.count(marker) == 1
    return payload.replace(marker, encoded)


@pytest.mark.parametrize(
    ("name", "encoded", "match"),
    [
        # int keys: an array of [key, value] pairs, strictly increasing keys
        ("ports", b"\x82\x82\x01\x61a\x82\x01\x61b", r"entry 1: key 1 is repeated @ \$\.ports"),
        ("ports", b"\x82\x82\x02\x61a\x82\x01\x61b", r"entry 1: key 1 is out of order"),
        ("ports", b"\x81\x82\x61x\x61a", r"entry 0: invalid key: expected u16, got str"),
        ("ports", b"\x81\x82\xf5\x61a", r"entry 0: invalid key: expected u16, got bool"),
        ("ports", b"\x81\x82\xf6\x61a", r"entry 0: invalid key: expected u16, got NoneType"),
        ("ports", b"\x81\x82\x41\x01\x61a", r"entry 0: invalid key: expected u16, got bytes"),
        ("ports", b"\x81\x82\x80\x61a", r"entry 0: invalid key: expected u16, got list"),
        ("ports", b"\x81\x82\x1a\x00\x01\x00\x00\x61a", r"65536 is out of range for u16"),
        ("ports", b"\x81\x82\x20\x61a", r"-1 is out of range for u16"),
        ("ports", b"\x81\x82\x3b" + b"\xff" * 8 + b"\x61a", r"is out of range for u16"),
        ("offsets", b"\x81\x82\x38\x80\x00", r"-129 is out of range for s8"),
        (
            "offsets",
            b"\x81\x82\x00\x1b\x80" + b"\x00" * 7,
            r"out of range for s64 .* \$\.offsets\[0\]",
        ),
        ("ports", b"\x81\x81\x01", r"entry 0 is not a \[key, value\] pair"),
        ("ports", b"\x81\x83\x01\x61a\x00", r"entry 0 is not a \[key, value\] pair"),
        ("ports", b"\x81\x80", r"entry 0 is not a \[key, value\] pair"),
        ("ports", b"\x81\xa1\x61k\x01", r"entry 0 is not a \[key, value\] pair"),
        ("ports", b"\x81\x01", r"entry 0 is not a \[key, value\] pair"),
        ("ports", b"\xa1\x611\x61a", r"expected an array of \[key, value\] pairs, got dict"),
        ("ports", b"\x81\x82\x01\x01", r"expected str, got int @ \$\.ports\[1\]"),
        ("windows", b"\x81\x82\x01\xa0", r"required field missing @ \$\.windows\[1\]\.base"),
        ("nested", b"\x81\x82\x01\xa1\x61a\x81\x61x", r"@ \$\.nested\[1\]\['a'\]\[0\]"),
        # str keys: a canonical map, as every map
        ("names", b"\xa2\x61a\x01\x61a\x02", r"map key 'a' is repeated"),
        ("names", b"\xa2\x61b\x01\x61a\x02", r"map key 'a' is out of order"),
        ("names", b"\xa2\x62aa\x01\x61b\x02", r"map key 'b' is out of order"),
        ("names", b"\xa1\x01\x01", r"map key is not a text string"),
        ("names", b"\xa1\x41a\x01", r"map key is not a text string"),
        ("names", b"\xa1\x62\xff\xfe\x01", r"not UTF-8"),
        ("names", b"\x81\x82\x61a\x01", r"expected a map, got list @ \$\.names"),
        ("names", b"\xa1\x61a\x20", r"-1 is out of range for u32 .* @ \$\.names\['a'\]"),
        ("queues", b"\xa1\x62rx\x01", r"expected a map for Queue @ \$\.queues\['rx'\]"),
        ("maybe", b"\xa1\x61m\xf6", r"expected u8, got NoneType @ \$\.maybe\['m'\]"),
        # lying lengths and depth
        ("ports", b"\x9b" + (1 << 60).to_bytes(8, "big"), r"a container of"),
        ("names", b"\xbb" + (1 << 60).to_bytes(8, "big"), r"a container of"),
        ("nested", b"\x81\x82\x01" + b"\xa1\x61a" * 40 + b"\x80", r"nested deeper than 32"),
    ],
)
def test_hostile_dict_fields_are_refused_with_the_path(
    name: str, encoded: bytes, match: str
) -> None:
    with pytest.raises(DecodeError, match=match):
        decode_state(Tables, with_field(name, encoded), 1)


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
