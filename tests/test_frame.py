"""One frame for every byte format: layout, limits, and a typed error for every malformed frame."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from luo_core.abi._envelope import RECORD
from luo_core.abi._frame import HEADER, OVERHEAD, FrameKind
from luo_core.abi._image import IMAGE
from luo_core.abi._kho import ROOT
from luo_core.abi._meta import META
from luo_core.errors import EnvelopeError, HandoffError

KINDS = [RECORD, ROOT, META, IMAGE]
TEST = FrameKind("test frame", b"LUOT", 3, max_body=64)


def test_the_layout_is_exactly_as_documented() -> None:
    frame = TEST.pack(b"abc")
    head = b"LUOT" + b"\x03\x00" + b"\x00\x00" + b"\x03\x00\x00\x00"
    assert frame == head + b"abc" + struct.pack("<I", zlib.crc32(head + b"abc"))
    assert OVERHEAD == HEADER.size + 4 == 16
    assert TEST.size(frame[: HEADER.size]) == len(frame)


@given(st.binary(max_size=64))
def test_any_body_round_trips(body: bytes) -> None:
    assert TEST.unpack(TEST.pack(body)) == body
    assert TEST.unpack(bytearray(TEST.pack(body))) == body


@given(st.binary(max_size=24), st.data())
def test_every_truncation_extension_and_bit_flip_is_refused(
    body: bytes, data: st.DataObject
) -> None:
    frame = TEST.pack(body)
    end = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(HandoffError):
        TEST.unpack(frame[:end])
    with pytest.raises(HandoffError, match="does not match"):
        TEST.unpack(frame + b"\x00")
    at, bit = data.draw(st.integers(0, len(frame) - 1)), data.draw(st.integers(0, 7))
    flipped = bytearray(frame)
    flipped[at] ^= 1 << bit
    with pytest.raises(HandoffError):
        TEST.unpack(bytes(flipped))


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        (b"LUO", "truncated: 3 bytes"),
        (b"LUOX\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", r"not a luo test frame: magic"),
        (b"LUOT\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", "format 2 is not supported"),
        (b"LUOT\x03\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00", "flags 0x1 are not supported"),
        (b"LUOT\x03\x00\x00\x00\x41\x00\x00\x00" + b"\x00" * 69, "65 bytes exceeds the 64-byte"),
        (TEST.pack(b"x")[:-1] + b"\x00", "test frame checksum mismatch"),
    ],
)
def test_malformed_frames_name_what_is_wrong(blob: bytes, match: str) -> None:
    with pytest.raises(HandoffError, match=match) as caught:
        TEST.unpack(blob)
    assert "\n" not in str(caught.value)


def test_the_limit_is_checked_before_anything_is_read() -> None:
    huge = b"LUOT\x03\x00\x00\x00\xff\xff\xff\xff"
    with pytest.raises(HandoffError, match="4294967295 bytes exceeds"):
        TEST.size(huge)
    with pytest.raises(HandoffError, match="exceeds the 64-byte limit"):
        TEST.pack(b"\x00" * 65)


def test_each_kind_refuses_the_others_frames() -> None:
    assert len({kind.magic for kind in KINDS}) == len(KINDS)
    for kind in KINDS:
        frame = kind.pack(b"body")
        assert kind.unpack(frame) == b"body"
        for other in KINDS:
            if other is not kind:
                with pytest.raises(HandoffError, match=f"not a luo {other.what}"):
                    other.unpack(frame)


def test_a_kind_raises_its_own_error_type() -> None:
    with pytest.raises(EnvelopeError):
        RECORD.unpack(b"")
