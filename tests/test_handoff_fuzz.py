"""Real handoffs, mutated: every damaged byte sequence gives a typed error, nothing else.

A saved handoff (the KHO root and node blobs of a real update) is truncated,
bit-flipped, spliced and overwritten; reading it the way the next kernel does
(image → root → node checksums → envelopes → schemas) must either succeed or
raise a :class:`~luo_core.errors.LiveUpdateError`, never crash or hang.
"""

from __future__ import annotations

import contextlib
import functools
import os
import struct
import zlib

import cbor2
import luo_example_nic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from luo_example_nic import transmit

from luo_core import Kernel
from luo_core.abi import load_image, read_root, save_image
from luo_core.cli._inspect import describe
from luo_core.errors import LiveUpdateError
from luo_core.platform import PhysicalMemory, default_host


@functools.cache
def real_handoff() -> bytes:
    kernel = Kernel.boot(default_host(), plugins=[luo_example_nic], discover=False)
    for dev in kernel.devices.devices():
        if not dev.children:
            try:
                kernel.devices.request(dev.name)
            except LiveUpdateError:
                continue
            if dev.driver is not None and dev.driver.name == "example-nic":
                transmit(dev, 40)
    sessions = kernel.open_liveupdate()
    for name, contents in (("vm-1", [b"guest", b""]), ("empty", [])):
        session = sessions.create_session(name)
        for token, data in enumerate(contents):
            fd = os.memfd_create(name)
            os.write(fd, data)
            session.preserve_fd(fd, token)
            os.close(fd)
    kernel.prepare()
    new = kernel.kexec()
    assert new.kho_root is not None
    return save_image(new.memory, new.kho_root)


def read_like_a_kernel(blob: bytes) -> None:
    with contextlib.suppress(LiveUpdateError):
        describe(blob)


def test_the_real_handoff_reads_back() -> None:
    report = describe(real_handoff())
    assert len(report["nodes"]) == 9
    (luo,) = (node for node in report["nodes"] if node["name"] == "LUO")
    assert [(s["name"], [f["token"] for f in s["files"]]) for s in luo["sessions"]] == [
        ("vm-1", [0, 1]),
        ("empty", []),
    ]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_bit_flips_truncations_and_splices(data: st.DataObject) -> None:
    blob = bytearray(real_handoff())
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "truncate", "splice", "set"]))
        if not blob:
            break
        at = data.draw(st.integers(0, len(blob) - 1))
        if action == "flip":
            blob[at] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "truncate":
            del blob[at:]
        elif action == "splice":
            blob[at:at] = data.draw(st.binary(max_size=16))
        else:
            blob[at] = data.draw(st.integers(0, 255))
    read_like_a_kernel(bytes(blob))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes(blob: bytes) -> None:
    read_like_a_kernel(blob)


@pytest.mark.parametrize("offset", range(0, 64, 3))
def test_damage_inside_memory_behind_a_valid_image(offset: int) -> None:
    """Past the file's checksum: corrupt the root and node bytes themselves."""
    memory, root = load_image(real_handoff())
    handed = read_root(memory, root)
    for node in handed.nodes.values():
        if offset < node.length:
            byte = memory.read(node.phys + offset, 1)[0]
            memory.write(node.phys + offset, bytes([byte ^ 0xFF]))
    for name, node in handed.nodes.items():
        if offset < node.length:
            with pytest.raises(LiveUpdateError, match="checksum"):
                handed.read(memory, name)
    if offset < handed.root.size:
        byte = memory.read(root + offset, 1)[0]
        memory.write(root + offset, bytes([byte ^ 0xFF]))
        with pytest.raises(LiveUpdateError):
            read_root(memory, root)


CBOR_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64) + 1, 2**64 - 1)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=20,
)


ROOT_FORMAT = 2  # KHO root: magic LUOK (docs/handoff.rst)
IMAGE_FORMAT = 2  # saved handoff image: magic LUOI


def framed(magic: bytes, fmt: int, body: bytes) -> bytes:
    """``body`` in a frame with a valid header and checksum: magic, u16 format,
    u16 flags (0), u32 length, body, CRC-32."""
    blob = magic + struct.pack("<HHI", fmt, 0, len(body)) + body
    return blob + struct.pack("<I", zlib.crc32(blob))


def test_hostile_frames_below_get_past_the_frame_checks() -> None:
    """The frames built here are accepted as frames, so the hostile bodies below
    reach the readers' content checks instead of failing on the header."""
    with PhysicalMemory(4 << 20) as memory:
        memory.write(0, framed(b"LUOK", ROOT_FORMAT, cbor2.dumps([5, [], [[0, 8192]]])))
        assert read_root(memory, 0).liveupdate_number == 5
    image, root = load_image(framed(b"LUOI", IMAGE_FORMAT, cbor2.dumps([4 << 20, 4096, []])))
    assert (image.size, root) == (4 << 20, 4096)


@settings(max_examples=300, deadline=None)
@given(st.lists(CBOR_VALUES, max_size=4), st.sampled_from([0, 4096, 1 << 20]))
def test_hostile_roots_with_valid_checksums(body: list[object], root: int) -> None:
    """The checksum is right, the content is hostile: only HandoffError may come out."""
    with PhysicalMemory(4 << 20) as memory:
        blob = framed(b"LUOK", ROOT_FORMAT, cbor2.dumps(body))
        memory.write(root, blob)
        with contextlib.suppress(LiveUpdateError):
            read_root(memory, root)


@settings(max_examples=200, deadline=None)
@given(st.lists(CBOR_VALUES, max_size=4))
def test_hostile_images_with_valid_checksums(body: list[object]) -> None:
    read_like_a_kernel(framed(b"LUOI", IMAGE_FORMAT, cbor2.dumps(body)))


INTS = st.one_of(st.integers(0, 1 << 24), st.integers(-5, 2**64 + 5), st.sampled_from([0, 4096]))
NODES = st.lists(
    st.tuples(st.text(max_size=6), st.text(max_size=6), INTS, INTS, INTS).map(list), max_size=3
)
RANGES = st.lists(st.tuples(INTS, INTS).map(list), max_size=3)


@settings(max_examples=400, deadline=None)
@given(INTS, NODES, RANGES)
def test_roots_shaped_right_with_hostile_values(
    number: int, nodes: list[object], ranges: list[object]
) -> None:
    with PhysicalMemory(4 << 20) as memory:
        body = cbor2.dumps([number, nodes, [[0, 8192], *ranges]])
        memory.write(0, framed(b"LUOK", ROOT_FORMAT, body))
        try:
            handed = read_root(memory, 0)
        except LiveUpdateError:
            return
        for name in handed.nodes:  # whatever passed validation must be readable safely
            with contextlib.suppress(LiveUpdateError):
                handed.read(memory, name)
