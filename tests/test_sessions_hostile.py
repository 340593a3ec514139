"""The sessions handoff read as hostile input: every bad byte is one typed error, never a crash.

The old kernel writes the ``LUO`` entry and its arrays; here they are damaged
in preserved memory before the next kernel reads them (the sessions when
``/dev/liveupdate`` is first opened, the tree at boot, a memfd's structure
at retrieve).  What must happen is what ``luo_open`` does: ``EIO`` on every
open; a retrieve that fails keeps failing; nothing else breaks.
"""

from __future__ import annotations

import errno
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from luo_core import Kernel, Machine
from luo_core.abi._luo import FILE_SER, KHO_ENTRY, SESSION_HEADER_SER, SESSION_SER, read_luo
from luo_core.errors import HandoffError, LiveUpdateError, SessionsUnavailableError
from luo_core.kexec._inproc import reboot


def handed_over() -> Kernel:
    """A kernel that booted from a handoff holding two sessions (not yet opened)."""
    kernel = Kernel.boot(Machine(), discover=False)
    dev = kernel.open_liveupdate()
    for name, contents in (("vm-1", [b"guest ram", b"x" * 5000]), ("vm-2", [b"disk"])):
        session = dev.create_session(name)
        for token, data in enumerate(contents):
            fd = os.memfd_create(name)
            os.write(fd, data)
            session.preserve_fd(fd, token)
            os.close(fd)
    return kernel.kexec()


def layout(kernel: Kernel) -> tuple[int, int, int]:
    """Where the session array, the first session's files, and its first memfd are."""
    assert kernel._handed is None  # a plain kexec: the root was read and released
    tree = kernel.luo._incoming()  # the tree as the kernel reads it on first use
    assert tree is not None
    luo = read_luo(kernel.memory, kernel.luo.incoming_memory.preserved, tree)  # type: ignore[union-attr]
    return tree.session_header, luo.sessions[0].files, luo.files["vm-1"][0].data


def test_the_handoff_reads_back_when_undamaged() -> None:
    new = handed_over()
    session = new.open_liveupdate().retrieve_session("vm-1")
    assert os.pread(session.retrieve_fd(1), 10000, 0) == b"x" * 5000


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        ("count", "claims 4294967296 sessions"),
        ("name", "not NUL-terminated"),
        ("files", "was not preserved"),
        ("handler", "not NUL-terminated"),
        ("twice", "appears twice"),
    ],
)
def test_a_damaged_session_array_makes_every_open_eio(damage: str, why: str) -> None:
    """``luo_session_deserialize`` fails, and ``luo_open`` returns ``EIO`` from then on."""
    new = handed_over()
    header, files, _ = layout(new)
    first = header + SESSION_HEADER_SER.size
    if damage == "count":
        new.memory.write(header, struct.pack("<Q", 1 << 32))
    elif damage == "name":
        new.memory.write(first, b"n" * 64)
    elif damage == "files":
        new.memory.write(first + 64, struct.pack("<Q", new.memory.size - 4096))
    elif damage == "handler":
        new.memory.write(files, b"h" * 48)
    else:
        new.memory.write(first + SESSION_SER.size, new.memory.read(first, 64))
    for _ in range(2):
        with pytest.raises(SessionsUnavailableError, match=why) as caught:
            new.open_liveupdate()
        assert caught.value.errno == errno.EIO


def test_a_damaged_memfd_structure_fails_its_retrieve_for_good() -> None:
    """``memfd_luo_retrieve`` refuses folios that do not add up; ``luo_retrieve_file``
    keeps the error; the other files are unharmed."""
    new = handed_over()
    _, _, memfd = layout(new)
    pos, size, nr, folios = struct.unpack("<QQQQ", new.memory.read(memfd, 32))
    new.memory.write(memfd, struct.pack("<QQQQ", pos, size + 4096, nr, folios))
    session = new.open_liveupdate().retrieve_session("vm-1")
    for _ in range(2):
        with pytest.raises(HandoffError, match="folios cannot hold"):
            session.retrieve_fd(0)
    assert os.pread(session.retrieve_fd(1), 8, 0) == b"x" * 8


def test_a_corrupted_luo_tree_disables_the_sessions() -> None:
    """``luo_early_startup`` fails on a tree it cannot read: live update is disabled, the
    kernel boots, and opening the device fails with ``EIO``."""
    kernel = Kernel.boot(Machine(), discover=False)
    kernel.open_liveupdate().create_session("s")
    kernel.prepare()  # a live update: the root stays until finish, so a crash kernel can reboot
    new = kernel.kexec()
    assert new._handed is not None
    node = new._handed.nodes[KHO_ENTRY]
    new.memory.write(node.phys + 20, b"\xff")
    again = reboot(new)
    with pytest.raises(SessionsUnavailableError, match="LUO handoff is unusable") as caught:
        again.open_liveupdate()
    assert caught.value.errno == errno.EIO


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    where=st.sampled_from(["header", "files"]),
    offset=st.integers(0, 2 * SESSION_SER.size),
    junk=st.binary(min_size=1, max_size=24),
)
def test_any_bytes_in_the_arrays_give_a_usable_device_or_eio(
    where: str, offset: int, junk: bytes
) -> None:
    new = handed_over()
    header, files, _ = layout(new)
    if where == "header":
        base, limit = header, SESSION_HEADER_SER.size + 2 * SESSION_SER.size
    else:
        base, limit = files, 2 * FILE_SER.size
    new.memory.write(base + min(offset, limit - 1), junk[: max(limit - offset, 1)])
    try:
        dev = new.open_liveupdate()
    except SessionsUnavailableError as exc:
        refused = exc.errno
    else:
        refused = 0
        for session in new.luo.incoming:
            handle = dev.retrieve_session(session.name)
            for f in list(handle.files.files):
                try:
                    os.close(handle.retrieve_fd(f.token))
                except LiveUpdateError:
                    continue
    assert refused in (0, errno.EIO)
