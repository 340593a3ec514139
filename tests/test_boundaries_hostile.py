"""What one process reads from another is hostile: every reader ends in a value or a typed error.

The readers are the boundaries between luo's processes: ``_wire.decode`` and
``_wire.receive`` (messages and their descriptors), ``BootParams.from_bytes``
(what a kernel image is loaded with), and the ``from_wire`` readers of the
machine description, the kernel configuration and register maps.  Whatever
the bytes, each must end quickly, without holding on to memory or
descriptors, in a value or in the :mod:`luo_core.errors` type named here.
"""

from __future__ import annotations

import array
import contextlib
import enum
import errno
import os
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from luo_core.abi import _wire
from luo_core.abi._boot import BOOT, BootParams, KernelConfig
from luo_core.abi._frame import HEADER
from luo_core.abi._machine import MAX_DEVICES, MAX_PARAMS, Machine
from luo_core.errors import (
    HandoffError,
    LiveUpdateError,
    MachineError,
    PeerGoneError,
    RegisterError,
)
from luo_core.platform import Register, RegisterMap, default_host

FAST = settings(max_examples=120, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
U64 = 1 << 64
MIB = 1 << 20

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-U64, U64 - 1)
    | st.sampled_from([0, 1, -1, 4096, U64 - 1, -U64, 1 << 31, 1 << 63])
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
"""Scalars a decoded message can hold (CBOR integers are at most 64 bits)."""
containers = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
).filter(lambda value: isinstance(value, list | dict))
wire_values = scalars | containers
"""Anything ``_wire.decode`` can hand a reader."""


def bounded(fn: Callable[[], object], *, peak: int = 4 * MIB) -> None:
    """Run ``fn`` and check it allocated at most ``peak`` bytes on the way."""
    tracemalloc.start()
    try:
        with contextlib.suppress(LiveUpdateError):
            fn()
        _, used = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert used <= peak, f"{used} bytes allocated reading {peak}-byte-bounded hostile input"


def nic_host() -> Machine:
    machine = default_host()
    machine.link("0000:01:00.0", "0000:02:00.0")
    return machine


# -- _wire.decode ------------------------------------------------------------------


MESSAGE = {"op": "attach", "args": {"device": "0000:01:00.0", "n": [1, 2, 3]}, "blob": b"\x00\xff"}
FRAME = _wire.encode(MESSAGE)


@FAST
@given(st.dictionaries(st.text(max_size=8), wire_values, max_size=6))
def test_every_plain_message_round_trips_through_a_frame(message: dict[str, Any]) -> None:
    frame = _wire.encode(message)
    assert _wire.decode(frame) == message
    assert _wire.encode(_wire.decode(frame)) == frame  # canonical: one value, one frame


@FAST
@given(st.binary(max_size=512))
def test_random_bytes_are_a_handoff_error(data: bytes) -> None:
    with pytest.raises(HandoffError):
        _wire.decode(data)


def test_every_truncation_and_every_bit_flip_of_a_frame_is_refused() -> None:
    for end in range(len(FRAME)):
        with pytest.raises(HandoffError):
            _wire.decode(FRAME[:end])
    for position in range(len(FRAME)):
        for bit in range(8):
            mutated = bytearray(FRAME)
            mutated[position] ^= 1 << bit
            with pytest.raises(HandoffError):
                _wire.decode(bytes(mutated))


@FAST
@given(st.binary(max_size=256))
def test_a_well_framed_hostile_body_decodes_to_a_map_or_a_handoff_error(body: bytes) -> None:
    try:
        message = _wire.decode(_wire.MESSAGE.pack(body))
    except HandoffError:
        return
    assert isinstance(message, dict)
    assert all(type(key) is str for key in message)


def text(value: str) -> bytes:
    return cbor2.dumps(value)


LYING = (1 << 63).to_bytes(8, "big")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"\x80", "not a CBOR map"),
        (b"\x01", "not a CBOR map"),
        (b"", "truncated"),
        (b"\xa1" + text("op") + b"\x9b" + LYING, "a container of"),
        (b"\xa1" + text("op") + b"\x5b" + LYING, "bytes remain"),
        (b"\xa1" + text("op") + b"\x7b" + LYING, "bytes remain"),
        (b"\xbb" + LYING, "a container of"),
        (b"\xa1" + text("op") + b"\xc2\x49" + b"\x01" * 9, "tags"),
        (b"\xa1" + text("op") + b"\xd8\x1c\x80", "tags"),
        (b"\xa1" + text("op") + b"\xfb" + b"\x00" * 8, "a float"),
        (b"\xa1" + text("op") + b"\x9f\xff", "indefinite"),
        (b"\xa1\x01\x01", "map key is not a text string"),
        (b"\xa2" + text("op") + b"\x01" + text("op") + b"\x02", "repeated"),
        (b"\xa2" + text("z") + b"\x01" + text("a") + b"\x02", "out of order"),
        (b"\xa1" + text("op") + b"\x18\x01", "shortest form"),
        (b"\xa1\x62\xff\xfe\x01", "not UTF-8"),
        (b"\xa0\x00", "trailing"),
        (b"\xa1" + text("op") + b"\x81" * 40 + b"\x00", "nested deeper"),
        (b"\xa1" + text("op") + b"\x99\xff\xff" + b"\x00" * 0xFFFF, "more than 65536 items"),
    ],
)
def test_hostile_bodies_are_refused_by_name_in_bounded_memory(body: bytes, match: str) -> None:
    frame = _wire.MESSAGE.pack(body)
    with pytest.raises(HandoffError, match=match):
        _wire.decode(frame)
    bounded(lambda: _wire.decode(frame), peak=len(frame) * 3 + MIB)


def test_the_most_items_a_message_may_hold_is_still_quick() -> None:
    body = b"\xa1" + text("op") + b"\x99\xff\xfd" + b"\x00" * 0xFFFD  # 65536 items in all
    started = time.monotonic()
    message = _wire.decode(_wire.MESSAGE.pack(body))
    assert len(message["op"]) == 0xFFFD
    assert time.monotonic() - started < 2


def test_a_frame_claiming_a_body_over_the_limit_is_refused_by_its_header() -> None:
    header = HEADER.pack(b"LUOC", 1, 0, MIB + 1)
    with pytest.raises(HandoffError, match="exceeds the 1048576-byte limit"):
        _wire.MESSAGE.size(header)
    with pytest.raises(HandoffError, match="exceeds"):
        _wire.decode(header + b"\x00" * 4)


@pytest.mark.parametrize("frame", ["text", None, 7, [FRAME]])
def test_decode_refuses_what_is_not_bytes(frame: object) -> None:
    with pytest.raises(HandoffError, match="must be bytes"):
        _wire.decode(frame)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "message",
    [
        {"x": 1.5},
        {"x": {1, 2}},
        {"x": object()},
        {"x": {1: "non-text key"}},
        {"x": U64},
        {"x": -U64 - 1},
        {"x": bytearray(b"ab")},
    ],
)
def test_encode_refuses_what_a_message_cannot_carry(message: dict[str, Any]) -> None:
    with pytest.raises(LiveUpdateError, match="cannot be encoded"):
        _wire.encode(message)


def test_a_message_over_the_limit_is_refused_when_sent() -> None:
    with pytest.raises(HandoffError, match="exceeds"):
        _wire.encode({"blob": b"\x00" * MIB})


# -- _wire.receive over a real socket pair -----------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b.settimeout(5)
    with a, b:
        yield a, b


def send_raw(sock: socket.socket, data: bytes, fds: list[int] | None = None) -> None:
    """Bytes and descriptors exactly as given: what a hostile peer can do."""
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    assert sock.sendmsg([data], ancillary) == len(data)


class Pipe:
    """A pipe whose write end we hand out; tells whether any copy of it is still open.

    A pipe's reader sees end-of-file only once every descriptor for its write
    end is closed, in this process or in flight in a socket: so after we close
    ours, ``leaked()`` is exactly "a copy we sent is still open somewhere".
    """

    def __init__(self) -> None:
        self.read, self.write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def copies(self, count: int) -> list[int]:
        return [os.dup(self.write) for _ in range(count)]

    def leaked(self, *mine: int) -> bool:
        for fd in (self.write, *mine):
            with contextlib.suppress(OSError):
                os.close(fd)
        try:
            os.read(self.read, 1)
        except BlockingIOError:
            return True
        finally:
            os.close(self.read)
        return False


def test_a_message_and_its_descriptors_arrive_together(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    pipe = Pipe()
    sent = pipe.copies(_wire.MAX_FDS)
    _wire.send(a, {"op": "regions", "n": 1}, sent)
    for fd in sent:
        os.close(fd)
    message, fds = _wire.receive(b)
    assert message == {"op": "regions", "n": 1}
    assert len(fds) == _wire.MAX_FDS
    os.write(fds[-1], b"!")  # the descriptors are the pipe we sent
    assert os.read(pipe.read, 1) == b"!"
    assert pipe.leaked(*fds) is False


def test_a_message_dribbled_a_byte_at_a_time_is_reassembled(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    frame = _wire.encode({"op": "version", "pad": "x" * 300})

    def dribble() -> None:
        for byte in frame:
            a.sendall(bytes([byte]))

    writer = threading.Thread(target=dribble)
    writer.start()
    try:
        assert _wire.receive(b) == ({"op": "version", "pad": "x" * 300}, [])
    finally:
        writer.join(timeout=5)


def test_a_peer_that_closes_before_a_message_is_gone(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    a.close()
    with pytest.raises(PeerGoneError, match="closed the connection"):
        _wire.receive(b)


@pytest.mark.parametrize("cut", [1, HEADER.size - 1, HEADER.size, len(FRAME) - 1])
def test_a_peer_that_closes_mid_message_is_a_handoff_error_and_its_fds_are_closed(
    pair: tuple[socket.socket, socket.socket], cut: int
) -> None:
    a, b = pair
    pipe = Pipe()
    sent = pipe.copies(3)
    send_raw(a, FRAME[:cut], sent)
    a.close()
    with pytest.raises(HandoffError, match="mid-message"):
        _wire.receive(b)
    b.close()
    assert pipe.leaked(*sent) is False


def test_a_frame_over_the_limit_is_refused_from_its_header_before_the_body_is_read(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    pipe = Pipe()
    sent = pipe.copies(2)
    body_start = b"\xa1" * 64
    send_raw(a, HEADER.pack(b"LUOC", 1, 0, MIB + 1), sent)
    a.sendall(body_start)  # the peer keeps the socket open: the reader must not wait for more
    started = time.monotonic()
    with pytest.raises(HandoffError, match="exceeds the 1048576-byte limit"):
        _wire.receive(b)
    assert time.monotonic() - started < 2  # not the 5 s timeout
    assert b.recv(4096, socket.MSG_DONTWAIT) == body_start  # the body was never read
    b.close()
    a.close()
    assert pipe.leaked(*sent) is False


@pytest.mark.parametrize(
    ("with_header", "with_body"),
    [(_wire.MAX_FDS + 1, 0), (0, _wire.MAX_FDS + 1), (40, 40), (200, 0)],
)
def test_more_descriptors_than_max_fds_are_refused_and_every_one_is_closed(
    pair: tuple[socket.socket, socket.socket], with_header: int, with_body: int
) -> None:
    a, b = pair
    pipe = Pipe()
    first, second = pipe.copies(with_header), pipe.copies(with_body)
    send_raw(a, FRAME[: HEADER.size], first)
    send_raw(a, FRAME[HEADER.size :], second)
    with pytest.raises(HandoffError, match=f"more than {_wire.MAX_FDS} descriptors"):
        _wire.receive(b)
    assert pipe.leaked(*first, *second) is False


def test_descriptors_beside_a_malformed_body_are_closed(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    pipe = Pipe()
    sent = pipe.copies(5)
    send_raw(a, _wire.MESSAGE.pack(b"\x80"), sent)
    with pytest.raises(HandoffError, match="not a CBOR map"):
        _wire.receive(b)
    assert pipe.leaked(*sent) is False


def test_a_peer_that_sends_nothing_in_time_is_a_timeout_error(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    _, b = pair
    b.settimeout(0.2)
    with pytest.raises(LiveUpdateError, match="no message in time") as caught:
        _wire.receive(b)
    assert caught.value.errno == errno.ETIMEDOUT


def test_a_peer_that_stalls_mid_message_is_a_timeout_error_and_its_fds_are_closed(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    pipe = Pipe()
    sent = pipe.copies(4)
    send_raw(a, FRAME[: HEADER.size + 3], sent)
    b.settimeout(0.2)
    with pytest.raises(LiveUpdateError, match="stalled mid-message") as caught:
        _wire.receive(b)
    assert caught.value.errno == errno.ETIMEDOUT
    assert pipe.leaked(*sent) is False


@settings(max_examples=60, deadline=2000)
@given(st.binary(max_size=300))
def test_whatever_a_peer_sends_before_closing_ends_in_a_typed_error(data: bytes) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b.settimeout(5)
    with a, b:
        a.sendall(data)
        a.close()
        with pytest.raises((HandoffError, PeerGoneError)):
            _wire.receive(b)


def test_sending_more_than_max_fds_is_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    with pytest.raises(LiveUpdateError, match=f"at most {_wire.MAX_FDS} descriptors"):
        _wire.send(a, {"op": "x"}, [0] * (_wire.MAX_FDS + 1))


def test_sending_to_a_peer_that_is_gone_is_peer_gone(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    b.close()
    with pytest.raises(PeerGoneError):
        _wire.send(a, {"op": "x"})


# -- BootParams.from_bytes ---------------------------------------------------------


PARAMS = BootParams(
    "unix:luo-hw-test", nic_host(), KernelConfig(("tests.journal",), False, 4, 2.5), 0x1000
)
BLOB = PARAMS.to_bytes()
BODY = cbor2.loads(BOOT.unpack(BLOB))


def boot_blob(body: object) -> bytes:
    return BOOT.pack(cbor2.dumps(body))


def test_boot_parameters_round_trip() -> None:
    params = BootParams.from_bytes(BLOB)
    assert (params.hardware, params.kho_root, params.config) == (
        "unix:luo-hw-test",
        0x1000,
        PARAMS.config,
    )
    assert params.machine.to_wire() == PARAMS.machine.to_wire()
    assert params.to_bytes() == BLOB
    cold = BootParams("local:3", Machine(), KernelConfig())
    assert BootParams.from_bytes(cold.to_bytes()).kho_root is None


@FAST
@given(st.binary(max_size=512))
def test_random_bytes_are_not_boot_parameters(data: bytes) -> None:
    with pytest.raises(HandoffError):
        BootParams.from_bytes(data)


@FAST
@given(st.binary(max_size=512))
def test_a_well_framed_random_body_is_not_boot_parameters(body: bytes) -> None:
    with pytest.raises(HandoffError):
        BootParams.from_bytes(BOOT.pack(body))


def test_every_truncation_and_bit_flip_of_boot_parameters_is_refused() -> None:
    for end in range(0, len(BLOB), 7):
        with pytest.raises(HandoffError):
            BootParams.from_bytes(BLOB[:end])
    for position in range(len(BLOB)):
        mutated = bytearray(BLOB)
        mutated[position] ^= 1 << (position % 8)
        with pytest.raises(HandoffError):
            BootParams.from_bytes(bytes(mutated))


BOOT_PATHS: list[tuple[Any, ...]] = [
    ("hardware",),
    ("kho-root",),
    ("machine",),
    ("config",),
    ("config", "plugins"),
    ("config", "plugins", 0),
    ("config", "discover"),
    ("config", "workers"),
    ("config", "callback-timeout-us"),
    ("machine", "memory-size"),
    ("machine", "devices", 4),
    ("machine", "devices", 4, 0),
    ("machine", "devices", 4, 5),
]


def replaced(tree: Any, path: tuple[Any, ...], value: object) -> Any:
    """A deep copy of ``tree`` with the item at ``path`` replaced by ``value``."""
    if not path:
        return value
    copy = dict(tree) if isinstance(tree, dict) else list(tree)
    copy[path[0]] = replaced(tree[path[0]], path[1:], value)
    return copy


@FAST
@given(st.sampled_from(BOOT_PATHS), scalars | st.floats() | st.lists(scalars, max_size=3))
def test_boot_parameters_with_a_hostile_field_are_a_handoff_error(
    path: tuple[Any, ...], value: object
) -> None:
    blob = boot_blob(replaced(BODY, path, value))
    try:
        params = BootParams.from_bytes(blob)
    except HandoffError:
        return
    assert params.to_bytes() == blob  # accepted only if it is exactly valid (another root)


@pytest.mark.parametrize(
    "body",
    [
        {**BODY, "extra": 1},
        {k: v for k, v in BODY.items() if k != "config"},
        [BODY],
        {**BODY, "hardware": "tcp:1.2.3.4"},
        {**BODY, "kho-root": -1},
        {**BODY, "kho-root": 2.5},
        {**BODY, "kho-root": True},
        {**BODY, "hardware": b"unix:x"},
        {**BODY, "machine": {**BODY["machine"], "devices": [0] * (MAX_DEVICES + 1)}},
        {**BODY, "config": {**BODY["config"], "plugins": ["m"] * 257}},
        {**BODY, "config": {**BODY["config"], "workers": 0}},
    ],
    ids=[
        "extra-key",
        "missing-key",
        "not-a-map",
        "tcp-address",
        "negative-root",
        "float-root",
        "bool-root",
        "bytes-address",
        "too-many-devices",
        "too-many-plugins",
        "no-workers",
    ],
)
def test_boot_parameters_of_the_wrong_shape_are_a_handoff_error(body: object) -> None:
    with pytest.raises(HandoffError, match="boot parameters"):
        BootParams.from_bytes(boot_blob(body))


MARKER = 0x5EED_5EED_5EED


def with_raw(path: tuple[Any, ...], item: bytes) -> bytes:
    """Boot parameters whose field at ``path`` is the raw CBOR ``item``."""
    body = cbor2.dumps(replaced(BODY, path, MARKER))
    assert body.count(cbor2.dumps(MARKER)) == 1
    return BOOT.pack(body.replace(cbor2.dumps(MARKER), item))


def tagged(tag: int, inner: bytes) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(tag, 0))[:-1] + inner


@pytest.mark.parametrize("path", [("hardware",), ("kho-root",), ("machine", "memory-size")])
@pytest.mark.parametrize(
    "item",
    [
        b"\xf9\x7e\x00",  # NaN
        b"\xfb\x7f\xf0\x00\x00\x00\x00\x00\x00",  # infinity
        tagged(1, b"\x1a\x00\x00\x00\x00"),  # a datetime
        tagged(258, b"\x82\x01\x02"),  # a set
        tagged(35, text("(a+)+$")),  # a regular expression
        b"\xd8\x1c\x81\xd8\x1d\x00",  # a list that contains itself
        b"\x9f\x01\xff",  # indefinite length
        b"\x62\xff\xfe",  # invalid UTF-8
        b"\xff",  # a lone break code
    ],
    ids=["nan", "inf", "datetime", "set", "regex", "cycle", "indefinite", "utf8", "break"],
)
def test_cbor_a_wire_message_never_carries_is_a_handoff_error(
    path: tuple[Any, ...], item: bytes
) -> None:
    with pytest.raises(HandoffError):
        BootParams.from_bytes(with_raw(path, item))


@pytest.mark.parametrize(
    "body",
    [
        b"\x9b" + LYING,  # an array of 2**63 items
        b"\x5b" + LYING,  # a byte string of 2**63 bytes
        b"\xbb" + LYING,  # a map of 2**63 pairs
        b"\x81" * 100_000 + b"\x00",  # nested 100000 deep
    ],
)
def test_boot_parameters_with_lying_lengths_or_deep_nesting_cost_nothing(body: bytes) -> None:
    blob = BOOT.pack(body)
    with pytest.raises(HandoffError, match=r"^boot parameters: "):
        BootParams.from_bytes(blob)
    bounded(lambda: BootParams.from_bytes(blob), peak=len(blob) * 4 + MIB)


def test_a_boot_frame_claiming_more_than_its_limit_is_refused() -> None:
    header = HEADER.pack(b"LUOB", 1, 0, (16 << 20) + 1)
    with pytest.raises(HandoffError, match="exceeds"):
        BootParams.from_bytes(header + b"\x00" * 4)


def bignum(value: int) -> bytes:
    """``value`` as a CBOR bignum (tag 2): what ``cbor2.loads`` turns into an int of any size."""
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return b"\xc2" + cbor2.dumps(raw)


@pytest.mark.parametrize(
    "path",
    [("kho-root",), ("hardware",), ("machine", "memory-size"), ("config", "callback-timeout-us")],
)
def test_a_bignum_in_boot_parameters_is_a_handoff_error(path: tuple[Any, ...]) -> None:
    blob = with_raw(path, bignum(10**5000))
    with pytest.raises(HandoffError):
        BootParams.from_bytes(blob)


def shared_dag(depth: int) -> bytes:
    """A list of two references to a list of two references ... : 2**depth leaves in few bytes."""

    def level(at: int) -> bytes:
        if at == depth - 1:
            return b"\xd8\x1c\x81\x00"  # shareable [0]
        return b"\xd8\x1c\x82" + level(at + 1) + b"\xd8\x1d" + cbor2.dumps(at + 1)

    return level(0)


def test_a_shared_reference_dag_in_boot_parameters_is_refused_in_bounded_memory() -> None:
    blob = with_raw(("hardware",), shared_dag(18))
    assert len(shared_dag(18)) < 150  # a hundred-odd bytes
    with pytest.raises(HandoffError):
        BootParams.from_bytes(blob)
    bounded(lambda: BootParams.from_bytes(blob), peak=MIB)  # 2**18 leaves: over 1 MiB of repr


# -- Machine.from_wire -------------------------------------------------------------


MACHINE = nic_host()
MACHINE.devices["0000:01:00.0"] = attrs.evolve(
    MACHINE.devices["0000:01:00.0"], params={"rx_pps": 5}
)
WIRE = MACHINE.to_wire()
NIC_AT = list(MACHINE.devices).index("0000:01:00.0")

FIELD_PATHS: list[tuple[Any, ...]] = [
    ("memory-size",),
    ("scratch-size",),
    *[("devices", NIC_AT, field) for field in (0, 1, 2, 4, 5)],
    ("devices", NIC_AT, 5, "rx_pps"),
]
"""Fields that hold a value (a size, a name, a group, parameters)."""
NAME_PATHS: list[tuple[Any, ...]] = [("devices", NIC_AT, 3), ("links", 0, 0), ("links", 0, 1)]
"""Where a device is named by reference (a parent, a link's ends)."""
LIST_PATHS: list[tuple[Any, ...]] = [("devices",), ("links",), ("devices", NIC_AT), ("links", 0)]
"""Lists that hold devices and links: a container here can name a device by a container."""


def test_a_machine_description_round_trips() -> None:
    machine = Machine.from_wire(WIRE)
    assert machine.to_wire() == WIRE
    assert machine.devices == MACHINE.devices
    assert machine.links == [tuple(link) for link in WIRE["links"]]
    assert Machine.from_wire(_wire.decode(_wire.encode({"m": WIRE}))["m"]).to_wire() == WIRE


def machine_or_error(wire: object) -> None:
    try:
        machine = Machine.from_wire(wire)
    except MachineError:
        return
    assert machine.to_wire() == wire  # accepted only if it is exactly a valid description


@FAST
@given(st.sampled_from(FIELD_PATHS + NAME_PATHS + LIST_PATHS), scalars)
def test_a_machine_with_a_hostile_scalar_anywhere_is_a_machine_error(
    path: tuple[Any, ...], value: object
) -> None:
    machine_or_error(replaced(WIRE, path, value))


@FAST
@given(st.sampled_from(FIELD_PATHS), containers)
def test_a_machine_with_a_hostile_container_in_a_field_is_a_machine_error(
    path: tuple[Any, ...], value: object
) -> None:
    machine_or_error(replaced(WIRE, path, value))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        *[(path, ["0000:00:01.0"]) for path in NAME_PATHS],
        *[(path, {"a": 1}) for path in NAME_PATHS],
        (("links", 0), [[], "pci0000:00"]),
        (("devices", NIC_AT), ["d", "platform", "x", [], None, {}]),
    ],
)
def test_a_device_named_by_a_list_or_map_is_a_machine_error(
    path: tuple[Any, ...], value: object
) -> None:
    """(Containers anywhere in LIST_PATHS reach this too; the property above covers the rest.)"""
    with pytest.raises(MachineError):
        Machine.from_wire(replaced(WIRE, path, value))


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (None, "is a map of"),
        ([], "is a map of"),
        ({**WIRE, "cpus": 4}, "is a map of"),
        ({**WIRE, "devices": {}}, "are lists"),
        ({**WIRE, "memory-size": 4097}, "memory size"),
        ({**WIRE, "memory-size": 0}, "memory size"),
        ({**WIRE, "memory-size": U64 - 4096}, "memory size"),
        ({**WIRE, "memory-size": True}, "memory size"),
        ({**WIRE, "scratch-size": WIRE["memory-size"]}, "does not fit"),
        ({**WIRE, "devices": [["a", "platform", "x", None, None]]}, "malformed device"),
        ({**WIRE, "devices": [["a", "platform", "x", None, None, []]]}, "malformed device"),
        ({**WIRE, "devices": [["a", "platform", "x", "nobody", None, {}]]}, "unknown parent"),
        ({**WIRE, "devices": [["a", "platform", "x", None, None, {}]] * 2}, "already"),
        ({**WIRE, "devices": [["a b", "platform", "x", None, None, {}]]}, "device name"),
        ({**WIRE, "devices": [["a", "Platform", "x", None, None, {}]]}, "bus"),
        ({**WIRE, "devices": [["a", "platform", "x", None, -1, {}]]}, "IOMMU group"),
        ({**WIRE, "devices": [["a", "platform", "x", None, 1 << 31, {}]]}, "IOMMU group"),
        ({**WIRE, "devices": [["a", "platform", "x", None, None, {"Up": 1}]]}, "parameter name"),
        ({**WIRE, "devices": [["a", "platform", "x", None, None, {"p": U64}]]}, "not a u64"),
        ({**WIRE, "devices": [["a", "platform", "x", None, None, {"p": -1}]]}, "not a u64"),
        ({**WIRE, "devices": [["a", "platform", "x", None, None, {"p": "1"}]]}, "not a u64"),
        (
            {**WIRE, "devices": [["a", "p", "x", None, None, {f"p{i}": 1 for i in range(17)}]]},
            f"at most {MAX_PARAMS} parameters",
        ),
        ({**WIRE, "links": [["pci0000:00"]]}, "malformed link"),
        ({**WIRE, "links": [["pci0000:00", "nobody"]]}, "unknown device"),
        ({**WIRE, "links": [["pci0000:00", "pci0000:00"]]}, "cannot supply itself"),
        ({**WIRE, "devices": [0] * (MAX_DEVICES + 1)}, "more than"),
        ({**WIRE, "links": [0] * (MAX_DEVICES + 1)}, "more than"),
    ],
)
def test_malformed_machine_descriptions_are_refused_by_name(wire: object, match: str) -> None:
    with pytest.raises(MachineError, match=match):
        Machine.from_wire(wire)


def test_the_largest_machine_description_is_read_in_bounded_time() -> None:
    devices: list[list[Any]] = [["root", "platform", "x", None, None, {}]]
    devices += [[f"d{i}", "platform", "x", "root", i, {}] for i in range(MAX_DEVICES - 1)]
    wire = {"memory-size": 1 << 30, "scratch-size": 1 << 20, "devices": devices, "links": []}
    started = time.monotonic()
    assert len(Machine.from_wire(wire).devices) == MAX_DEVICES
    with pytest.raises(MachineError, match=f"more than {MAX_DEVICES}"):
        Machine.from_wire({**wire, "devices": [*devices, ["one-more", "p", "x", None, None, {}]]})
    assert time.monotonic() - started < 10


# -- KernelConfig.from_wire --------------------------------------------------------


CONFIG = KernelConfig(
    ("tests.journal", "luo_example_nic:Pack"), False, 8, 30, {"0000:01:00.0": "vfio-pci"}
)
CONFIG_WIRE = CONFIG.to_wire()


def test_a_kernel_configuration_round_trips() -> None:
    assert KernelConfig.from_wire(CONFIG_WIRE) == CONFIG
    assert KernelConfig.from_wire(KernelConfig().to_wire()) == KernelConfig()


@FAST
@given(st.sampled_from([*CONFIG_WIRE, "plugins.0"]), wire_values)
def test_a_kernel_configuration_with_a_hostile_field_is_a_typed_error(
    field: str, value: object
) -> None:
    wire = (
        {**CONFIG_WIRE, "plugins": [value]}
        if field == "plugins.0"
        else {**CONFIG_WIRE, field: value}
    )
    try:
        config = KernelConfig.from_wire(wire)
    except LiveUpdateError as exc:
        refused = exc
    else:
        assert config.to_wire() == wire
        return
    assert "\n" not in str(refused)
    assert isinstance(refused, HandoffError) and refused.errno == errno.EBADMSG


@pytest.mark.parametrize(
    ("wire", "error", "match"),
    [
        (None, HandoffError, "is a map of"),
        ({**CONFIG_WIRE, "extra": 1}, HandoffError, "is a map of"),
        ({**CONFIG_WIRE, "plugins": "tests.journal"}, HandoffError, "references"),
        ({**CONFIG_WIRE, "plugins": [1]}, HandoffError, "references"),
        ({**CONFIG_WIRE, "discover": 1}, HandoffError, "true or false"),
        ({**CONFIG_WIRE, "plugins": ["not a module"]}, HandoffError, "is not 'module'"),
        ({**CONFIG_WIRE, "plugins": ["x" * 201]}, HandoffError, "is not 'module'"),
        ({**CONFIG_WIRE, "plugins": ["m"] * 257}, HandoffError, "at most 256"),
        ({**CONFIG_WIRE, "workers": 0}, HandoffError, "workers"),
        ({**CONFIG_WIRE, "workers": 257}, HandoffError, "workers"),
        ({**CONFIG_WIRE, "workers": True}, HandoffError, "workers"),
        ({**CONFIG_WIRE, "callback-timeout-us": 0}, HandoffError, "callback_timeout"),
        ({**CONFIG_WIRE, "callback-timeout-us": 3_600_000_001}, HandoffError, "callback_timeout"),
        ({**CONFIG_WIRE, "callback-timeout-us": U64 - 1}, HandoffError, "callback_timeout"),
        ({**CONFIG_WIRE, "callback-timeout-us": "5"}, HandoffError, "whole microseconds"),
        ({**CONFIG_WIRE, "callback-timeout-us": False}, HandoffError, "whole microseconds"),
        ({**CONFIG_WIRE, "driver-override": {"a": "b"}}, HandoffError, "sorted list"),
        ({**CONFIG_WIRE, "driver-override": [["b", "x"], ["a", "x"]]}, HandoffError, "sorted"),
        ({**CONFIG_WIRE, "driver-override": [["a", "x"], ["a", "y"]]}, HandoffError, "one per"),
        ({**CONFIG_WIRE, "driver-override": [["a", "x", "y"]]}, HandoffError, "pairs"),
        ({**CONFIG_WIRE, "driver-override": [["a", 1]]}, HandoffError, "pairs"),
        ({**CONFIG_WIRE, "driver-override": [["a", ["x"]]]}, HandoffError, "pairs"),
        ({**CONFIG_WIRE, "driver-override": [["", "x"]]}, HandoffError, "driver_override"),
        ({**CONFIG_WIRE, "driver-override": [["a", "x" * 256]]}, HandoffError, "1 to 255"),
    ],
)
def test_malformed_kernel_configurations_are_refused_by_name(
    wire: object, error: type[LiveUpdateError], match: str
) -> None:
    with pytest.raises(error, match=match) as caught:
        KernelConfig.from_wire(wire)
    assert "\n" not in str(caught.value)


# -- RegisterMap.from_wire ---------------------------------------------------------


REGMAP = RegisterMap(
    [
        Register("mac", 0x00, 64, owner="device"),
        Register("ctrl", 0x08, 32),
        Register("bell", 0x0C, 32, doorbell=True),
        Register("status", 0x10, 16, owner="device"),
        Register("flags", 0x12, 8),
    ]
)
REGMAP_WIRE = REGMAP.to_wire()


def test_a_register_map_round_trips() -> None:
    assert RegisterMap.from_wire(REGMAP_WIRE) == REGMAP
    assert RegisterMap.from_wire([]) == RegisterMap()
    decoded = _wire.decode(_wire.encode({"m": REGMAP_WIRE}))["m"]
    assert RegisterMap.from_wire(decoded)["bell"].doorbell is True


def regmap_or_error(wire: object) -> None:
    try:
        regmap = RegisterMap.from_wire(wire)
    except RegisterError:
        return
    assert regmap.to_wire() == wire


@FAST
@given(st.integers(0, len(REGMAP_WIRE) - 1), st.integers(0, 4), scalars)
def test_a_register_map_with_a_hostile_scalar_field_is_a_register_error(
    at: int, field: int, value: object
) -> None:
    regmap_or_error(replaced(REGMAP_WIRE, (at, field), value))


@FAST
@given(st.integers(0, len(REGMAP_WIRE) - 1), wire_values)
def test_a_register_map_with_a_hostile_item_is_a_register_error(at: int, value: object) -> None:
    regmap_or_error(replaced(REGMAP_WIRE, (at,), value))


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (None, "a list of at most 256"),
        ({"mac": 0}, "a list of at most 256"),
        ([["r", 0, 32, "driver", False]] * 257, "a list of at most 256"),
        ([["r", 0, 32, "driver"]], "malformed register"),
        ([["r", 0, 32, "driver", 0]], "malformed register"),
        ([("r", 0, 32, "driver", False)], "malformed register"),
        ([["R", 0, 32, "driver", False]], "register name"),
        ([[b"r", 0, 32, "driver", False]], "register name"),
        ([["r", 0, 24, "driver", False]], "width"),
        ([["r", 0, True, "driver", False]], "width"),
        ([["r", 0, "32", "driver", False]], "width"),
        ([["r", 2, 32, "driver", False]], "not aligned"),
        ([["r", -4, 32, "driver", False]], "not aligned"),
        ([["r", "0", 32, "driver", False]], "not aligned"),
        ([["r", 0, 32, "kernel", False]], "owner"),
        ([["r", 0, 32, "device", True]], "only a driver-owned register"),
        ([["r", 0x1000, 32, "driver", False]], "ends past"),
        ([["r", U64 - 4, 32, "driver", False]], "ends past"),
        ([["r", 0, 32, "driver", False], ["s", 0, 8, "driver", False]], "overlap"),
        ([["r", 0, 32, "driver", False], ["r", 8, 8, "driver", False]], "two registers"),
    ],
)
def test_malformed_register_maps_are_refused_by_name(wire: object, match: str) -> None:
    with pytest.raises(RegisterError, match=match):
        RegisterMap.from_wire(wire)


@pytest.mark.parametrize("width", [[32], {"w": 32}, 32.0])
def test_a_register_width_of_the_wrong_type_is_a_register_error(width: object) -> None:
    with pytest.raises(RegisterError):
        RegisterMap.from_wire([["r", 0, width, "driver", False]])


# -- plain() -----------------------------------------------------------------------


class Colour(enum.Enum):
    RED = "red"
    BLUE = 2


@attrs.frozen
class Queue:
    head: int
    tags: frozenset[str]
    colour: Colour


@attrs.define
class Snapshot:
    name: str
    queues: list[Queue]
    weights: dict[int, float]
    extra: tuple[object, ...] = ()


def test_plain_turns_a_snapshot_into_data_a_message_carries() -> None:
    snap = Snapshot(
        "nic",
        [Queue(1, frozenset({"b", "a"}), Colour.RED), Queue(2, frozenset(), Colour.BLUE)],
        {3: 0.5, 1: 1.0},
        (None, True, b"\x00", (1, 2)),
    )
    data = _wire.plain(snap)
    assert data == {
        "name": "nic",
        "queues": [
            {"head": 1, "tags": ["a", "b"], "colour": "red"},
            {"head": 2, "tags": [], "colour": 2},
        ],
        "weights": {"3": "0.5", "1": "1.0"},
        "extra": [None, True, b"\x00", [1, 2]],
    }
    assert _wire.decode(_wire.encode({"snapshot": data})) == {"snapshot": data}


def test_plain_sorts_sets_so_equal_sets_compare_equal() -> None:
    words = {f"w{i}" for i in range(40)}
    assert _wire.plain(words) == sorted(words)
    assert _wire.plain({3, "x", (1, 2)}) == _wire.plain({(1, 2), "x", 3})
    assert _wire.plain(frozenset({2, 1})) == [1, 2]


def test_plain_is_the_same_whatever_the_hash_seed() -> None:
    code = (
        "from luo_core.abi._wire import plain\n"
        "print(repr(plain({'words': {f'w{i}' for i in range(40)}, "
        "'pairs': frozenset((f'k{i}', i) for i in range(20)), (1, 'x'): {b'a', b'b', b'c'}})))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        for seed in ("0", "4242")
    }
    assert len(outputs) == 1
    output = outputs.pop()
    assert "['w0', 'w1', 'w10'" in output


def test_plain_keeps_values_and_their_kinds() -> None:
    assert _wire.plain(None) is None
    assert _wire.plain(True) is True
    assert _wire.plain(-(1 << 70)) == -(1 << 70)
    assert _wire.plain(float("nan")) == "nan"
    assert _wire.plain(-0.0) == "-0.0"
    assert _wire.plain({None: 1, 2.5: 2, b"k": 3, (1,): 4}) == {
        "None": 1,
        "2.5": 2,
        "b'k'": 3,
        "(1,)": 4,
    }


class Number(int):
    pass


def forever() -> list[object]:
    loop: list[object] = []
    loop.append(loop)
    return loop


def nested(depth: int) -> object:
    value: object = 0
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value",
    [object(), bytearray(b"x"), 1j, print, Number(3), {"k": {"deep": object()}}, [Colour]],
    ids=["object", "bytearray", "complex", "function", "int-subclass", "nested", "class"],
)
def test_plain_refuses_what_is_not_plain_data(value: object) -> None:
    with pytest.raises(TypeError, match="is not plain data"):
        _wire.plain(value)


def test_plain_refuses_a_value_nested_too_deep_or_containing_itself() -> None:
    assert _wire.plain(nested(32)) == nested(32)
    with pytest.raises(TypeError, match="deeper than 32"):
        _wire.plain(nested(33))
    with pytest.raises(TypeError, match="deeper than 32"):
        _wire.plain(forever())


@pytest.mark.parametrize("value", [{1: "a", "1": "b"}, {None: "a", "None": "b"}])
def test_plain_never_merges_two_keys_into_one(value: dict[object, str]) -> None:
    try:
        data = _wire.plain(value)
    except TypeError:
        return  # refusing is fine; losing an entry is not
    assert len(data) == len(value)
