"""State schemas: declaration, validation, every field kind, sections, migrations, rollback."""

from __future__ import annotations

import enum
import errno
import re
import typing
from pathlib import Path
from typing import Any

import attrs
import cbor2
import pytest

import luo_core.abi
from luo_core.abi import (
    PhysAddr,
    PhysRange,
    decode_state,
    encode_state,
    s8,
    s16,
    s32,
    s64,
    schema_of,
    section,
    state,
    u8,
    u16,
    u32,
    u64,
)
from luo_core.abi._cbor import decode_canonical, encode_canonical, scan
from luo_core.abi._manifest import manifest_entry
from luo_core.errors import (
    DecodeError,
    FieldValueError,
    HandoffError,
    LiveUpdateError,
    SchemaError,
    VersionTooNewError,
    VersionTooOldError,
)

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_pack_authors_find_everything_in_luo_core_serialization() -> None:
    for name in ("state", "section", "schema_of", "u8", "s64", "PhysAddr", "PhysRange"):
        assert name in luo_core.abi.__all__
    for name in ("encode_state", "decode_state", "encode_record", "decode_record"):
        assert callable(getattr(luo_core.abi, name))


class Mode(enum.Enum):
    polling = 1
    interrupt = 2


class Link(enum.Enum):
    down = "down"
    up = "up"


@state(compatible="luo,test-queue", version=1)
class Queue:
    head: u16
    tail: u16 = 0


@attrs.frozen
class Window:
    base: PhysAddr
    pages: u32


@state(compatible="luo,test-everything", version=1)
class Everything:
    a: u8
    b: u16
    c: u32
    d: u64
    e: s8
    f: s16
    g: s32
    h: s64
    addr: PhysAddr
    span: PhysRange
    flag: bool
    blob: bytes
    label: str
    mode: Mode
    link: Link
    counts: list[u32]
    ids: tuple[u16, ...]
    queue: Queue
    queues: tuple[Queue, ...]
    window: Window
    maybe: u32 | None = None
    maybe_queue: Queue | None = None


def everything(**changes: Any) -> Everything:
    values: dict[str, Any] = {
        "a": 255,
        "b": 65535,
        "c": 1 << 31,
        "d": (1 << 64) - 1,
        "e": -128,
        "f": -32768,
        "g": -(1 << 31),
        "h": -(1 << 63),
        "addr": 0xFFFF_F000,
        "span": PhysRange(0x1000, 0x20_0000),
        "flag": True,
        "blob": b"\x00\xff",
        "label": "nic\u00e9",
        "mode": Mode.interrupt,
        "link": Link.up,
        "counts": [0, 1, 4_000_000_000],
        "ids": (7, 8),
        "queue": Queue(head=3, tail=4),
        "queues": (Queue(head=1), Queue(head=2, tail=9)),
        "window": Window(base=0x10_0000, pages=4),
    }
    values.update(changes)
    return Everything(**values)


def declare(name: str, annotations: dict[str, Any], **namespace: Any) -> type:
    """A plain class with these annotations, the way a ``class`` statement makes one."""
    body = {"__annotations__": annotations, "__module__": __name__, **namespace}
    return type(name, (), body)


def fields_of(payload: bytes) -> dict[str, Any]:
    value = cbor2.loads(payload)
    assert isinstance(value, dict)
    return value


# -- declaring ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotation", "reason"),
    [
        (int, "plain int has no width"),
        (float, "supported:"),
        (dict[bytes, u8], "dict keys must be str or a fixed-width integer"),
        (dict[bool, u8], "dict keys must be str or a fixed-width integer"),
        (dict[Mode, u8], "PhysAddr), not enum:Mode"),
        (dict[str, float], "supported:"),
        (dict, "supported:"),
        (set[u8], "supported:"),
        (Any, "supported:"),
        (u8 | str, "union"),
        (tuple[u8, u8], "supported:"),
        (list, "supported:"),
        (typing.Annotated[str, "doc"], "supported:"),
        (Path, "supported:"),
        (list[float], "supported:"),
    ],
)
def test_unsupported_field_types_are_refused_naming_class_and_field(
    annotation: object, reason: str
) -> None:
    with pytest.raises(SchemaError, match=rf"^Bad\.field: unsupported type .*{re.escape(reason)}"):
        state(compatible="luo,bad", version=1)(declare("Bad", {"field": annotation}))


def test_enums_need_all_int_or_all_str_values() -> None:
    class Mixed(enum.Enum):
        a = 1
        b = "b"

    class Floaty(enum.Enum):
        a = 1.5

    for bad in (Mixed, Floaty):
        with pytest.raises(SchemaError, match=r"Bad\.mode: .*all-int or all-str"):
            state(compatible="luo,bad", version=1)(declare("Bad", {"mode": bad}))


def test_nested_classes_must_be_made_of_supported_types() -> None:
    @attrs.frozen
    class Inner:
        x: float

    with pytest.raises(SchemaError, match=r"Bad\.inner: .*Inner\.x"):
        state(compatible="luo,bad", version=1)(declare("Bad", {"inner": Inner}))


@attrs.frozen
class Node:
    children: list[Node]


def test_recursive_plain_classes_are_refused() -> None:
    with pytest.raises(SchemaError, match="recursive"):
        state(compatible="luo,bad", version=1)(declare("Bad", {"root": Node}))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"compatible": "Luo,Caps", "version": 1}, "compatible"),
        ({"compatible": "", "version": 1}, "compatible"),
        ({"compatible": "x" * 64, "version": 1}, "compatible"),
        ({"compatible": "luo,ok", "version": 0}, "min_version <= version"),
        ({"compatible": "luo,ok", "version": 2, "min_version": 3}, "min_version <= version"),
        ({"compatible": "luo,ok", "version": True}, "min_version <= version"),
    ],
)
def test_bad_compatible_or_versions_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(SchemaError, match=match):
        state(**kwargs)


class Plain:
    pass


def test_declaration_mistakes_are_schema_errors() -> None:
    @attrs.frozen
    class Already:
        x: u8

    with pytest.raises(SchemaError, match="plain class"):
        state(compatible="luo,bad", version=1)(Already)
    with pytest.raises(SchemaError, match="cannot inherit"):
        state(compatible="luo,bad", version=1)(type("Child", (Plain,), {}))
    with pytest.raises(SchemaError, match=r"Bad\._hidden: field names"):
        state(compatible="luo,bad", version=1)(declare("Bad", {"_hidden": u8}))
    with pytest.raises(SchemaError, match=r"Bad\.writes: field names"):
        state(compatible="luo,bad", version=1)(declare("Bad", {"writes": u8}))
    with pytest.raises(SchemaError, match="cannot resolve"):
        state(compatible="luo,bad", version=1)(declare("Bad", {"x": "NoSuchType"}))
    with pytest.raises(SchemaError, match="not a @state class"):
        schema_of(Window)


def test_section_fields_need_a_default_and_one_shared_marker() -> None:
    rss = section("rss", needed=bool)
    with pytest.raises(SchemaError, match=r"Bad\.key: a field in section 'rss' needs a default"):
        state(compatible="luo,bad", version=1)(
            declare("Bad", {"key": bytes}, key=attrs.field(metadata=rss))
        )
    other = section("rss", needed=bool, optional=True)
    with pytest.raises(SchemaError, match="share one section"):
        state(compatible="luo,bad", version=1)(
            declare(
                "Bad",
                {"key": bytes, "count": u8},
                key=attrs.field(default=b"", metadata=rss),
                count=attrs.field(default=0, metadata=other),
            )
        )
    with pytest.raises(SchemaError, match="section name"):
        section("RSS!", needed=bool)


def test_state_classes_are_frozen_slotted_attrs_with_a_schema() -> None:
    queue = Queue(head=1)
    assert attrs.has(Queue)
    assert "__dict__" not in dir(queue)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        queue.head = 2  # type: ignore[misc]
    schema = schema_of(Queue)
    assert schema is Queue.__luo_schema__  # type: ignore[attr-defined]
    assert (schema.compatible, schema.version, schema.min_version) == ("luo,test-queue", 1, 1)
    assert [f.name for f in schema.fields] == ["head", "tail"]


# -- validation on construction ----------------------------------------------------


def test_an_out_of_range_field_raises_a_typed_error_naming_it() -> None:
    @state(compatible="luo,example-nic", version=1)
    class NicState:
        mac: u64
        tx_tail: u16 = 0

    with pytest.raises(FieldValueError) as caught:
        NicState(mac=1, tx_tail=70000)
    assert str(caught.value) == "NicState.tx_tail: 70000 is out of range for u16 (0..65535)"
    assert isinstance(caught.value, LiveUpdateError)
    assert isinstance(caught.value, ValueError)
    assert caught.value.errno == errno.ERANGE


@pytest.mark.parametrize(
    ("name", "lo", "hi"),
    [
        ("a", 0, 255),
        ("b", 0, 65535),
        ("c", 0, (1 << 32) - 1),
        ("d", 0, (1 << 64) - 1),
        ("e", -128, 127),
        ("f", -32768, 32767),
        ("g", -(1 << 31), (1 << 31) - 1),
        ("h", -(1 << 63), (1 << 63) - 1),
        ("addr", 0, (1 << 64) - 1),
    ],
)
def test_integer_fields_accept_their_range_and_nothing_beyond(name: str, lo: int, hi: int) -> None:
    for fits in (lo, hi):
        obj = everything(**{name: fits})
        assert decode_state(Everything, encode_state(obj), 1) == obj
    for outside in (lo - 1, hi + 1):
        with pytest.raises(FieldValueError, match=rf"^Everything\.{name}: {outside} is out"):
            everything(**{name: outside})


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"a": True}, r"Everything\.a: expected u8, got bool"),
        ({"b": 1.0}, r"Everything\.b: expected u16, got float"),
        ({"flag": 1}, r"Everything\.flag: expected bool, got int"),
        ({"blob": "text"}, r"Everything\.blob: expected bytes, got str"),
        ({"blob": bytearray(b"x")}, r"Everything\.blob: expected bytes, got bytearray"),
        ({"label": b"x"}, r"Everything\.label: expected str, got bytes"),
        ({"mode": 1}, r"Everything\.mode: expected Mode, got int"),
        ({"counts": (1, 2)}, r"Everything\.counts: expected list, got tuple"),
        ({"ids": [1]}, r"Everything\.ids: expected tuple, got list"),
        ({"counts": [1, -1]}, r"Everything\.counts\[1\]: -1 is out of range for u32"),
        ({"queue": Window(1, 2)}, r"Everything\.queue: expected Queue, got Window"),
        ({"window": Window(1, -2)}, r"Everything\.window\.pages: -2 is out of range"),
        ({"maybe": "1"}, r"Everything\.maybe: expected u32, got str"),
        ({"span": (1, 2)}, r"Everything\.span: expected PhysRange"),
    ],
)
def test_wrong_types_are_refused_with_the_path(changes: dict[str, Any], where: str) -> None:
    with pytest.raises(FieldValueError, match=f"^{where}"):
        everything(**changes)


def test_phys_range_checks_its_fields() -> None:
    assert PhysRange(0x1000, 0x2000).end == 0x3000
    with pytest.raises(FieldValueError, match=r"PhysRange\.size: -1 is out of range"):
        PhysRange(0, -1)


# -- round trips -------------------------------------------------------------------


def test_every_field_kind_round_trips() -> None:
    obj = everything(maybe=5, maybe_queue=Queue(head=6))
    decoded = decode_state(Everything, encode_state(obj), 1)
    assert decoded == obj
    assert type(decoded.ids) is tuple and type(decoded.counts) is list
    assert decoded.mode is Mode.interrupt and decoded.link is Link.up
    assert type(decoded.queue) is Queue and type(decoded.window) is Window


def test_optional_fields_round_trip_as_none() -> None:
    obj = everything()
    raw = fields_of(encode_state(obj))
    assert raw["maybe"] is None and raw["maybe_queue"] is None
    assert decode_state(Everything, encode_state(obj), 1) == obj


def test_the_payload_is_a_map_of_plain_values_by_field_name() -> None:
    raw = fields_of(encode_state(everything()))
    assert raw["mode"] == 2 and raw["link"] == "up"
    assert raw["queue"] == {"head": 3, "tail": 4}
    assert raw["span"] == {"start": 0x1000, "size": 0x20_0000}
    assert raw["ids"] == [7, 8]


def test_decode_errors_name_the_compatible_and_the_path() -> None:
    raw = fields_of(encode_state(everything()))
    raw["queues"][1]["tail"] = "x"
    with pytest.raises(DecodeError) as caught:
        decode_state(Everything, encode_canonical(raw), 1)
    message = str(caught.value)
    assert message.startswith("luo,test-everything v1: ")
    assert "$.queues[1].tail" in message
    assert "\n" not in message
    assert isinstance(caught.value, HandoffError)
    assert caught.value.errno == errno.EBADMSG


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("mode", 3, "3 is not a member of Mode"),
        ("mode", "polling", "expected a int value of Mode"),
        ("link", "sideways", "'sideways' is not a member of Link"),
        ("link", 1, "expected a str value of Link"),
        ("a", 256, r"256 is out of range for u8 .* @ \$\.a"),
        ("flag", 1, r"expected bool, got int @ \$\.flag"),
        ("counts", "abc", r"expected an array, got str @ \$\.counts"),
        ("queue", [1, 2], r"expected a map for Queue @ \$\.queue"),
        ("window", {"base": 1}, r"required field missing @ \$\.window\.pages"),
        ("window", {"base": 1, "pages": 2, "extra": 3}, r"extra fields found \(extra\)"),
    ],
)
def test_wrong_values_in_a_payload_are_decode_errors(
    field: str, value: object, match: str
) -> None:
    raw = fields_of(encode_state(everything()))
    raw[field] = value
    with pytest.raises(DecodeError, match=match):
        decode_state(Everything, encode_canonical(raw), 1)


def test_unknown_and_missing_fields_are_decode_errors() -> None:
    raw = fields_of(encode_state(Queue(head=1)))
    with pytest.raises(DecodeError, match="unknown field 'extra'"):
        decode_state(Queue, encode_canonical({**raw, "extra": 1}), 1)
    with pytest.raises(DecodeError, match=r"required field missing @ \$\.head"):
        decode_state(Queue, encode_canonical({"tail": 1}), 1)
    assert decode_state(Queue, encode_canonical({"head": 1}), 1) == Queue(head=1)


# -- determinism -------------------------------------------------------------------


def test_the_same_state_always_gives_the_same_bytes() -> None:
    one = everything()
    names = [f.name for f in schema_of(Everything).fields]
    other = Everything(**{name: getattr(one, name) for name in reversed(names)})
    assert encode_state(one) == encode_state(other)
    again = decode_state(Everything, encode_state(one), 1)
    assert encode_state(again) == encode_state(one)
    scan(encode_state(one))  # what we write passes our own strict reader


def test_map_keys_are_in_bytewise_order_of_their_encoding() -> None:
    @state(compatible="luo,order", version=1)
    class Order:
        aa: u8
        b: u8
        ab: u8

    payload = encode_state(Order(aa=1, b=2, ab=3))
    # "b" encodes as 61 62, "aa" as 62 61 61: bytewise, shorter text keys come first.
    assert payload == bytes.fromhex("a36162026261610162616203")
    assert sorted(["aa", "b", "ab"]) == ["aa", "ab", "b"]  # ...which is not Python's order
    assert payload == cbor2.dumps({"aa": 1, "b": 2, "ab": 3}, canonical=True)
    # Keys of different encoded lengths: a 24-byte key has a 2-byte header.
    long, short = "k" * 24, "z" * 23
    assert list(fields_of(encode_canonical({long: 1, short: 2}))) == [short, long]


def test_integers_use_their_shortest_form() -> None:
    payload = encode_state(Queue(head=23, tail=24))
    assert payload == bytes.fromhex("a2646865616417647461696c1818")


def test_decoding_refuses_maps_that_are_not_in_deterministic_order() -> None:
    swapped = bytes.fromhex("a2647461696c01646865616402")
    with pytest.raises(DecodeError, match="out of order"):
        decode_state(Queue, swapped, 1)
    assert decode_canonical(bytes.fromhex("a2646865616402647461696c01")) == {
        "head": 2,
        "tail": 1,
    }


# -- dict fields -------------------------------------------------------------------


@state(compatible="luo,test-tables", version=1)
class Tables:
    names: dict[str, u32]
    ports: dict[u16, str]
    offsets: dict[s8, s64]
    windows: dict[PhysAddr, Window]
    queues: dict[str, Queue | None]
    nested: dict[u8, dict[str, list[u16]]]
    maybe: dict[str, u8] | None = None
    empty: dict[u32, bytes] = attrs.field(factory=dict)


def tables(**changes: Any) -> Tables:
    values: dict[str, Any] = {
        "names": {"eth10": 1, "eth2": 2, "lo": 0},
        "ports": {443: "https", 22: "ssh", 65535: "top"},
        "offsets": {5: -1, -128: 1 << 40, 0: 0},
        "windows": {0x2000: Window(base=0x2000, pages=1), 0x1000: Window(base=0x1000, pages=2)},
        "queues": {"rx": Queue(head=1), "tx": None},
        "nested": {2: {"b": [1], "aa": []}, 1: {}},
    }
    values.update(changes)
    return Tables(**values)


def test_dict_fields_round_trip_with_their_key_and_value_types() -> None:
    obj = tables(maybe={"x": 1})
    decoded = decode_state(Tables, encode_state(obj), 1)
    assert decoded == obj
    assert type(decoded.windows[0x1000]) is Window and decoded.queues["tx"] is None
    assert decoded.nested == {1: {}, 2: {"aa": [], "b": [1]}}
    assert decoded.empty == {} and decoded.maybe == {"x": 1}
    assert decode_state(Tables, encode_state(tables()), 1).maybe is None


def test_str_keyed_dicts_are_canonical_maps_and_int_keyed_ones_sorted_pairs() -> None:
    raw = fields_of(encode_state(tables()))
    assert list(raw["names"]) == ["lo", "eth2", "eth10"]  # bytewise order of the encoded keys
    assert raw["ports"] == [[22, "ssh"], [443, "https"], [65535, "top"]]
    assert raw["offsets"] == [[-128, 1 << 40], [0, 0], [5, -1]]  # by value, signed
    assert raw["windows"][0] == [0x1000, {"base": 0x1000, "pages": 2}]
    assert raw["nested"] == [[1, {}], [2, {"b": [1], "aa": []}]]
    assert raw["empty"] == [] and raw["maybe"] is None

    @state(compatible="luo,test-small-dicts", version=1)
    class Small:
        s: dict[str, u8]
        i: dict[u16, u8]

    payload = encode_state(Small(s={"bb": 2, "a": 1}, i={300: 2, 1: 1}))
    # {"i": [[1, 1], [300, 2]], "s": {"a": 1, "bb": 2}}
    assert payload == bytes.fromhex("a26169828201018219012c026173a261610162626202")


def test_the_insertion_order_never_changes_the_bytes() -> None:
    one = tables()
    other = tables(
        names=dict(reversed(one.names.items())),
        ports=dict(reversed(one.ports.items())),
        offsets=dict(reversed(one.offsets.items())),
        windows=dict(reversed(one.windows.items())),
        nested={1: {}, 2: {"aa": [], "b": [1]}},
    )
    assert other == one
    assert encode_state(other) == encode_state(one)
    assert encode_state(decode_state(Tables, encode_state(one), 1)) == encode_state(one)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ports": {65536: "x"}}, r"Tables\.ports\[65536\]: invalid key: 65536 is out of range"),
        ({"ports": {-1: "x"}}, r"Tables\.ports\[-1\]: invalid key: -1 is out of range for u16"),
        ({"ports": {True: "x"}}, r"Tables\.ports\[True\]: invalid key: expected u16, got bool"),
        ({"ports": {"22": "x"}}, r"Tables\.ports\['22'\]: invalid key: expected u16, got str"),
        ({"offsets": {-129: 0}}, r"Tables\.offsets\[-129\]: invalid key: .*s8 \(-128\.\.127\)"),
        ({"offsets": {0: 1 << 63}}, r"Tables\.offsets\[0\]: \d+ is out of range for s64"),
        ({"names": {1: 1}}, r"Tables\.names\[1\]: invalid key: expected str, got int"),
        ({"names": {"a": 1 << 32}}, r"Tables\.names\['a'\]: \d+ is out of range for u32"),
        ({"nested": {1: {"a": [70000]}}}, r"Tables\.nested\[1\]\['a'\]\[0\]: 70000 is out"),
        ({"queues": {"rx": 1}}, r"Tables\.queues\['rx'\]: expected Queue, got int"),
        ({"names": [("a", 1)]}, r"Tables\.names: expected dict, got list"),
        ({"maybe": {"x": 256}}, r"Tables\.maybe\['x'\]: 256 is out of range for u8"),
    ],
)
def test_dict_keys_and_values_are_checked_on_construction(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(FieldValueError, match=f"^{message}"):
        tables(**changes)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("ports", [[65536, "x"]], r"entry 0: invalid key: 65536 is out of range .* @ \$\.ports$"),
        ("ports", [[1, "a"], [1, "b"]], r"entry 1: key 1 is repeated @ \$\.ports$"),
        ("ports", [[2, "a"], [1, "b"]], r"entry 1: key 1 is out of order \(after 2\) @ \$\.ports"),
        ("ports", [["1", "a"]], r"entry 0: invalid key: expected u16, got str @ \$\.ports"),
        ("ports", [[None, "a"]], r"entry 0: invalid key: expected u16, got NoneType"),
        ("ports", [[1, "a", 2]], r"entry 0 is not a \[key, value\] pair @ \$\.ports"),
        ("ports", [[1]], r"entry 0 is not a \[key, value\] pair"),
        ("ports", [{"k": 1}], r"entry 0 is not a \[key, value\] pair"),
        ("ports", {"1": "a"}, r"expected an array of \[key, value\] pairs, got dict @ \$\.ports"),
        ("ports", [[1, 2]], r"expected str, got int @ \$\.ports\[1\]$"),
        ("offsets", [[-129, 0]], r"entry 0: invalid key: -129 is out of range for s8"),
        ("names", [["a", 1]], r"expected a map, got list @ \$\.names$"),
        ("names", {"a": -1}, r"-1 is out of range for u32 .* @ \$\.names\['a'\]$"),
        ("windows", [[1, {"base": 1}]], r"required field missing @ \$\.windows\[1\]\.pages"),
        ("queues", {"rx": {"head": 1 << 16}}, r"65536 is out .* @ \$\.queues\['rx'\]\.head$"),
        ("nested", [[1, {"a": ["x"]}]], r"expected u16, got str @ \$\.nested\[1\]\['a'\]\[0\]"),
        ("nested", [[1, {"a": 1}]], r"expected an array, got int @ \$\.nested\[1\]\['a'\]"),
        ("maybe", {"x": "y"}, r"expected u8, got str @ \$\.maybe\['x'\]"),
    ],
)
def test_dict_payloads_that_do_not_fit_are_decode_errors_naming_the_path(
    field: str, value: object, message: str
) -> None:
    raw = fields_of(encode_state(tables()))
    raw[field] = value
    with pytest.raises(DecodeError, match=f"^luo,test-tables v1: {message}"):
        decode_state(Tables, encode_canonical(raw), 1)


def test_every_bad_dict_entry_is_reported_and_long_keys_are_cut() -> None:
    raw = fields_of(encode_state(tables()))
    raw["names"] = {"k" * 100: -1, "a": "x"}
    with pytest.raises(DecodeError) as caught:
        decode_state(Tables, encode_canonical(raw), 1)
    message = str(caught.value)
    assert "expected u32, got str @ $.names['a']" in message
    assert f"@ $.names['{'k' * 29}...']" in message
    assert "k" * 40 not in message and "\n" not in message


def test_a_dict_changed_after_construction_cannot_be_encoded_with_a_bad_key() -> None:
    obj = tables()
    obj.ports["x"] = "y"  # type: ignore[index]
    with pytest.raises(SchemaError, match=r"^luo,test-tables v1: cannot encode dict key 'x'"):
        encode_state(obj)
    obj = tables()
    obj.names[1] = 1  # type: ignore[index]
    with pytest.raises(SchemaError, match=r"cannot encode map key 1 at .*: keys are text"):
        encode_state(obj)


@attrs.frozen
class Routes:
    table: dict[u16, str]


def test_dicts_inside_nested_classes_and_lists_round_trip_and_are_checked() -> None:
    @state(compatible="luo,test-nested-dicts", version=1)
    class Nested:
        routes: Routes
        history: list[dict[u16, Routes]]

    obj = Nested(Routes({3: "c", 1: "a"}), [{2: Routes({})}, {}])
    assert fields_of(encode_state(obj)) == {
        "routes": {"table": [[1, "a"], [3, "c"]]},
        "history": [[[2, {"table": []}]], []],
    }
    assert decode_state(Nested, encode_state(obj), 1) == obj
    with pytest.raises(FieldValueError, match=r"^Nested\.routes\.table\[70000\]: invalid key"):
        Nested(Routes({70000: "x"}), [])
    with pytest.raises(FieldValueError, match=r"^Nested\.history\[0\]\[1\]\.table\[2\]: expected"):
        Nested(Routes({}), [{1: Routes({2: 3})}])  # type: ignore[dict-item]
    raw = {"routes": {"table": [[1, "a"]]}, "history": [[[2, {"table": [[5, 1]]}]]]}
    with pytest.raises(DecodeError, match=r"@ \$\.history\[0\]\[2\]\.table\[5\]$"):
        decode_state(Nested, encode_canonical(raw), 1)


def test_dict_type_names_in_the_manifest() -> None:
    entry = manifest_entry(Tables)
    types = {f["name"]: f["type"] for f in entry["fields"]}
    assert types == {
        "names": "dict[str, u32]",
        "ports": "dict[u16, str]",
        "offsets": "dict[s8, s64]",
        "windows": "dict[phys_addr, struct:Window]",
        "queues": "dict[str, optional[state:luo,test-queue]]",
        "nested": "dict[u8, dict[str, list[u16]]]",
        "maybe": "optional[dict[str, u8]]",
        "empty": "dict[u32, bytes]",
    }
    assert set(entry["structs"]) == {"struct:Window", "state:luo,test-queue"}


def test_a_migration_or_writer_sees_int_keyed_dicts_as_sorted_pairs() -> None:
    @state(compatible="luo,test-ports", version=1)
    class PortsV1:
        ports: list[u16]

    @state(compatible="luo,test-ports", version=2, min_version=1)
    class PortsV2:
        ports: dict[u16, str]

    @schema_of(PortsV2).migration(from_version=1)
    def name_ports(fields: dict[str, Any]) -> dict[str, Any]:
        fields["ports"] = [[port, ""] for port in sorted(set(fields["ports"]))]
        return fields

    @schema_of(PortsV2).writes(version=1)
    def drop_names(obj: PortsV2) -> dict[str, Any]:
        return {"ports": sorted(obj.ports)}

    old = encode_state(PortsV1(ports=[443, 22]))
    assert decode_state(PortsV2, old, 1) == PortsV2(ports={22: "", 443: ""})
    new = PortsV2(ports={443: "https", 22: "ssh"})
    assert decode_state(PortsV1, encode_state(new, version=1), 1) == PortsV1(ports=[22, 443])


def test_a_writer_must_write_int_keyed_dicts_as_pairs() -> None:
    @state(compatible="luo,test-writer-dict", version=2)
    class Holder:
        ports: dict[u16, str]

    @schema_of(Holder).writes(version=1)
    def as_is(obj: Holder) -> dict[str, Any]:
        return {"ports": obj.ports}

    with pytest.raises(SchemaError, match=r"map key 1 at \$\.ports: .*\[key, value\] pairs"):
        encode_state(Holder(ports={1: "a"}), version=1)

    @state(compatible="luo,test-writer-dict", version=1)
    class Older:
        ports: dict[u16, str]

    schema_of(Holder).writers[1] = lambda obj: {"ports": sorted(obj.ports.items())}
    payload = encode_state(Holder(ports={2: "b", 1: "a"}), version=1)
    assert decode_state(Older, payload, 1) == Older(ports={1: "a", 2: "b"})


# -- sections ----------------------------------------------------------------------

RSS = section("rss", needed=lambda nic: nic.rss_key != b"")
STATS = section("stats", needed=lambda nic: nic.drops > 0, optional=True)


@state(compatible="luo,test-nic", version=2)
class NicWithSections:
    mac: u64
    rss_key: bytes = attrs.field(default=b"", metadata=RSS)
    rss_queues: u16 = attrs.field(default=1, metadata=RSS)
    drops: u32 = attrs.field(default=0, metadata=STATS)


@state(compatible="luo,test-nic", version=2)
class NicWithoutSections:
    mac: u64


def test_a_section_is_written_only_when_needed() -> None:
    plain = NicWithSections(mac=1)
    assert fields_of(encode_state(plain)) == {"mac": 1}
    keyed = NicWithSections(mac=1, rss_key=b"k", rss_queues=4)
    assert fields_of(encode_state(keyed)) == {"mac": 1, "@rss": {"rss_key": b"k", "rss_queues": 4}}
    dropping = NicWithSections(mac=1, drops=9)
    assert fields_of(encode_state(dropping)) == {"mac": 1, "?stats": {"drops": 9}}
    for obj in (plain, keyed, dropping):
        assert decode_state(NicWithSections, encode_state(obj), 2) == obj


def test_a_section_that_is_not_needed_must_hold_only_defaults() -> None:
    with pytest.raises(
        SchemaError,
        match=r"luo,test-nic: section 'rss' is not needed, but rss_queues=4 differs "
        r"from its default 1 and would be lost",
    ):
        encode_state(NicWithSections(mac=1, rss_queues=4))
    busy = section("flows", needed=lambda obj: len(obj.flows) > 1)

    @state(compatible="luo,test-flows", version=1)
    class Flows:
        flows: list[u8] = attrs.field(factory=list, metadata=busy)

    assert fields_of(encode_state(Flows(flows=[]))) == {}
    with pytest.raises(SchemaError, match=r"flows=\[7\] differs from its default \[\]"):
        encode_state(Flows(flows=[7]))


def test_a_known_section_that_is_missing_takes_the_defaults() -> None:
    payload = encode_state(NicWithoutSections(mac=7))
    assert decode_state(NicWithSections, payload, 2) == NicWithSections(
        mac=7, rss_key=b"", rss_queues=1, drops=0
    )


def test_an_unknown_mandatory_section_refuses_the_record() -> None:
    payload = encode_state(NicWithSections(mac=1, rss_key=b"k"))
    with pytest.raises(SchemaError, match=r"luo,test-nic v2: unknown section 'rss'"):
        decode_state(NicWithoutSections, payload, 2)


def test_an_unknown_optional_section_is_ignored() -> None:
    payload = encode_state(NicWithSections(mac=1, drops=5))
    assert decode_state(NicWithoutSections, payload, 2) == NicWithoutSections(mac=1)


def test_a_section_that_is_not_a_map_or_repeats_a_field_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="section '@rss' is not a map"):
        decode_state(NicWithSections, encode_canonical({"mac": 1, "@rss": 5}), 2)
    with pytest.raises(DecodeError, match="'mac' appears twice"):
        decode_state(NicWithSections, encode_canonical({"mac": 1, "@rss": {"mac": 2}}), 2)


# -- migrations --------------------------------------------------------------------


@state(compatible="luo,test-ring", version=1)
class RingV1:
    packets: u32
    mode: Mode = Mode.polling


@state(compatible="luo,test-ring", version=2)
class RingV2:
    packets: u32
    mode: Mode = Mode.polling
    drops: u32 = 0


@state(compatible="luo,test-ring", version=3, min_version=1)
class RingV3:
    frames: u64
    mode: Mode = Mode.polling
    drops: u32 = 0


STEPS: list[int] = []


@schema_of(RingV3).migration(from_version=1)
def add_drops(fields: dict[str, Any]) -> dict[str, Any]:
    STEPS.append(1)
    return {**fields, "drops": 0}


@schema_of(RingV3).migration(from_version=2)
def rename_packets(fields: dict[str, Any]) -> dict[str, Any]:
    STEPS.append(2)
    fields["frames"] = fields.pop("packets")
    return fields


@schema_of(RingV3).writes(version=2)
def ring_to_v2(obj: RingV3) -> dict[str, Any]:
    if obj.frames >= 1 << 32:
        raise ValueError("too many frames for a v2 kernel")
    return {"packets": obj.frames, "mode": obj.mode, "drops": obj.drops}


def test_each_migration_step_does_one_thing() -> None:
    assert add_drops({"packets": 5, "mode": 1}) == {"packets": 5, "mode": 1, "drops": 0}
    assert rename_packets({"packets": 5, "mode": 1, "drops": 2}) == {
        "mode": 1,
        "drops": 2,
        "frames": 5,
    }


def test_decoding_an_old_record_runs_every_step_in_order() -> None:
    STEPS.clear()
    old = encode_state(RingV1(packets=10, mode=Mode.interrupt))
    assert decode_state(RingV3, old, 1) == RingV3(frames=10, mode=Mode.interrupt, drops=0)
    assert STEPS == [1, 2]
    STEPS.clear()
    middle = encode_state(RingV2(packets=11, drops=3))
    assert decode_state(RingV3, middle, 2) == RingV3(frames=11, drops=3)
    assert STEPS == [2]
    STEPS.clear()
    assert decode_state(RingV3, encode_state(RingV3(frames=12)), 3) == RingV3(frames=12)
    assert STEPS == []


def test_the_class_attribute_spelling_registers_the_same_migration() -> None:
    @state(compatible="luo,test-spelling", version=2, min_version=1)
    class Spelled:
        x: u8

    @Spelled.migration(from_version=1)  # type: ignore[attr-defined,untyped-decorator]
    def up(fields: dict[str, Any]) -> dict[str, Any]:
        return {"x": fields["y"]}

    assert schema_of(Spelled).migrations == {1: up}
    assert decode_state(Spelled, encode_canonical({"y": 4}), 1) == Spelled(x=4)


def test_a_gap_in_the_migration_chain_is_refused_at_first_use() -> None:
    @state(compatible="luo,test-gap", version=3, min_version=1)
    class Gappy:
        x: u8

    @schema_of(Gappy).migration(from_version=2)
    def up(fields: dict[str, Any]) -> dict[str, Any]:
        return fields

    with pytest.raises(SchemaError, match=r"no migration from v1 to v2"):
        decode_state(Gappy, encode_canonical({"x": 1}), 3)
    with pytest.raises(SchemaError, match=r"no migration from v1 to v2"):
        encode_state(Gappy(x=1))
    with pytest.raises(SchemaError, match=r"no migration from v1 to v2"):
        manifest_entry(Gappy)


def test_migrations_must_be_in_range_and_unique() -> None:
    schema = schema_of(RingV3)
    for bad in (0, 3, 4):
        with pytest.raises(SchemaError, match=f"migration from v{bad} is outside v1..v2"):
            schema.migration(from_version=bad)
    with pytest.raises(SchemaError, match="two migrations from v1"):
        schema.migration(from_version=1)
    with pytest.raises(SchemaError, match="two rollback writers for v2"):
        schema.writes(version=2)
    with pytest.raises(SchemaError, match=r"must write v1\.\.v2, not v3"):
        schema.writes(version=3)


def test_a_failing_or_malformed_migration_is_a_typed_error() -> None:
    with pytest.raises(DecodeError, match=r"migration v2->v3 failed: KeyError: 'packets'"):
        decode_state(RingV3, encode_canonical({"mode": 1}), 2)

    @state(compatible="luo,test-broken", version=2, min_version=1)
    class Broken:
        x: u8

    @schema_of(Broken).migration(from_version=1)
    def up(fields: dict[str, Any]) -> dict[str, Any]:
        return None  # type: ignore[return-value]

    with pytest.raises(SchemaError, match="did not return a dict"):
        decode_state(Broken, encode_canonical({"x": 1}), 1)


def test_an_old_records_unknown_sections_go_through_the_migrations() -> None:
    @state(compatible="luo,test-old-sections", version=2, min_version=1)
    class Reader:
        x: u8

    @schema_of(Reader).migration(from_version=1)
    def drop_legacy(fields: dict[str, Any]) -> dict[str, Any]:
        fields.pop("legacy", None)
        return fields

    v1_payload = encode_canonical({"x": 1, "@old": {"legacy": 2}, "?hint": {"noise": 3}})
    assert decode_state(Reader, v1_payload, 1) == Reader(x=1)
    kept = encode_canonical({"x": 1, "@old": {"other": 2}})
    with pytest.raises(SchemaError, match="unknown section 'old'"):
        decode_state(Reader, kept, 1)


# -- rollback writers and version limits ------------------------------------------


def test_a_rollback_writer_produces_what_the_older_version_reads() -> None:
    obj = RingV3(frames=99, mode=Mode.interrupt, drops=4)
    payload = encode_state(obj, version=2)
    assert fields_of(payload) == {"mode": 2, "drops": 4, "packets": 99}
    assert decode_state(RingV2, payload, 2) == RingV2(packets=99, mode=Mode.interrupt, drops=4)
    assert encode_state(obj, version=3) == encode_state(obj)


def test_a_rollback_writer_may_put_section_fields_at_the_top_level() -> None:
    @state(compatible="luo,test-nic", version=3)
    class NicV3:
        mac: u64
        rss_key: bytes = b""

    @schema_of(NicV3).writes(version=2)
    def down(obj: NicV3) -> dict[str, Any]:
        return {"mac": obj.mac, "rss_key": obj.rss_key}

    payload = encode_state(NicV3(mac=1, rss_key=b"k"), version=2)
    assert fields_of(payload) == {"mac": 1, "rss_key": b"k"}
    assert decode_state(NicWithSections, payload, 2) == NicWithSections(mac=1, rss_key=b"k")


def test_a_version_without_a_writer_cannot_be_written() -> None:
    with pytest.raises(SchemaError, match=r"no rollback writer for v1 \(writers: \[2\]\)"):
        encode_state(RingV3(frames=1), version=1)
    with pytest.raises(VersionTooNewError, match="cannot write v4"):
        encode_state(RingV3(frames=1), version=4)


def test_a_writer_that_produces_unencodable_values_is_refused() -> None:
    @state(compatible="luo,test-floaty", version=2)
    class Floaty:
        x: u8

    @schema_of(Floaty).writes(version=1)
    def down(obj: Floaty) -> dict[str, Any]:
        return {"x": obj.x / 2}

    with pytest.raises(SchemaError, match=r"cannot encode float at \$\.x"):
        encode_state(Floaty(x=3), version=1)


def test_records_too_new_or_too_old_are_refused() -> None:
    payload = encode_state(RingV3(frames=1))
    with pytest.raises(VersionTooNewError, match=r"luo,test-ring v4 is newer .*v1\.\.v3"):
        decode_state(RingV3, payload, 4)
    with pytest.raises(VersionTooNewError):
        decode_state(RingV2, payload, 3)

    @state(compatible="luo,test-ring", version=3, min_version=2)
    class RingOnlyV2:
        frames: u64
        mode: Mode = Mode.polling
        drops: u32 = 0

    schema_of(RingOnlyV2).migration(from_version=2)(rename_packets)
    with pytest.raises(VersionTooOldError, match=r"luo,test-ring v1 is older .*v2\.\.v3"):
        decode_state(RingOnlyV2, encode_state(RingV1(packets=1)), 1)
    assert issubclass(VersionTooNewError, SchemaError)
    assert issubclass(VersionTooOldError, SchemaError)
    assert issubclass(SchemaError, LiveUpdateError)
    assert VersionTooNewError("x").errno == errno.EPROTONOSUPPORT


def test_only_state_objects_are_encoded() -> None:
    with pytest.raises(SchemaError, match="not a @state class"):
        encode_state(Window(1, 2))
    with pytest.raises(SchemaError, match="not an int"):
        decode_state(Queue, encode_state(Queue(head=1)), "1")  # type: ignore[arg-type]


# -- the guide ---------------------------------------------------------------------


def python_blocks(page: Path) -> list[str]:
    """The ``.. code-block:: python`` bodies of an reST page, dedented."""
    blocks: list[str] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if line.strip() != ".. code-block:: python":
            continue
        body: list[str] = []
        for following in lines[index + 1 :]:
            if following.strip() and not following.startswith("   "):
                break
            body.append(following[3:])
        blocks.append("\n".join(body))
    return blocks


def test_the_schema_guide_examples_run() -> None:
    blocks = python_blocks(DOCS / "schemas.rst")
    assert len(blocks) >= 8
    namespace: dict[str, Any] = {"__name__": "schemas_guide"}
    exec(compile("\n".join(blocks), str(DOCS / "schemas.rst"), "exec"), namespace)
    assert schema_of(namespace["NicStateV5"]).writers.keys() == {4}
