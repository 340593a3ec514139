"""The sysfs view: state, per-device dev_liveupdate flags, the KHO tree, and requests written back.

The view is written on pyfakefs's fake file system.  The kernel boots before
the fake file system is patched in, and a kexec runs with it paused: the
kernel maps physical memory through memfds, which the fake one does not know.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem
from pyfakefs.fake_filesystem_unittest import Pause

from luo_core import Kernel
from luo_core.errors import (
    DeviceError,
    InvalidArgumentError,
    InvalidTransitionError,
    NotFoundError,
)
from luo_core.kernel._sysfs import (
    FLAGS,
    KHO_IN,
    STATE,
    apply_requested,
    flag_path,
    write_sysfs,
)

NIC = "0000:02:00.0"
"""A NIC behind its own bridge: it and its ancestors can be preserved."""
NIC_PATH = "sys/devices/pci0000:00/0000:00:02.0/0000:02:00.0/liveupdate"
LEGACY = "0000:00:1f.0"
"""The ISA bridge: its driver has no live-update callbacks, so it is never preserved."""


@pytest.fixture
def root(kernel: Kernel, request: pytest.FixtureRequest) -> Path:
    """Where the view goes, on the fake file system (patched in after ``kernel`` booted)."""
    request.getfixturevalue("fs")
    return Path("/run/luo/host")


def kexec(kernel: Kernel, fs: FakeFilesystem) -> Kernel:
    with Pause(fs):
        return kernel.kexec()


def state_file(root: Path) -> bytes:
    return (root / STATE).read_bytes()


def flags(kernel: Kernel, root: Path) -> dict[str, tuple[bytes, ...]]:
    """Each device's three files, as read back."""
    return {
        dev.name: tuple(flag_path(root, dev, flag).read_bytes() for flag in FLAGS)
        for dev in kernel.devices.values()
    }


def write_requested(kernel: Kernel, root: Path, name: str, content: bytes) -> None:
    flag_path(root, kernel.devices[name], "requested").write_bytes(content)


def test_the_state_file_follows_prepare_cancel_kexec_and_finish(
    kernel: Kernel, root: Path, fs: FakeFilesystem
) -> None:
    """``state`` prints the state's name and a newline ([rfc2] ``luo_sysfs.c``
    ``state_show()``; ``Documentation/ABI/testing/sysfs-kernel-liveupdate``)."""
    seen = []
    write_sysfs(kernel, root)
    seen.append(state_file(root))
    kernel.devices.request(NIC)
    for event in (kernel.prepare, kernel.cancel, kernel.prepare):
        event()
        write_sysfs(kernel, root)
        seen.append(state_file(root))
    new = kexec(kernel, fs)
    write_sysfs(new, root)
    seen.append(state_file(root))
    new.finish()
    write_sysfs(new, root)
    seen.append(state_file(root))
    assert seen == [
        b"normal\n",
        b"prepared\n",
        b"normal\n",
        b"prepared\n",
        b"updated\n",
        b"normal\n",
    ]


def test_each_device_shows_requested_preserved_and_reclaimed_through_an_update(
    kernel: Kernel, root: Path, fs: FakeFilesystem
) -> None:
    """Before: only the NIC's own ``requested`` is set (its ancestors take part
    without theirs).  After the kexec: the NIC and its ancestors are
    ``preserved`` and ``reclaimed``, nothing is requested.  After ``finish``:
    every flag is clear again."""
    kernel.devices.request(NIC)
    write_sysfs(kernel, root)
    before = flags(kernel, root)
    assert before[NIC] == (b"1\n", b"0\n", b"0\n")
    assert {v for name, v in before.items() if name != NIC} == {(b"0\n", b"0\n", b"0\n")}
    assert (root / NIC_PATH / "requested").read_bytes() == b"1\n"

    kernel.prepare()
    new = kexec(kernel, fs)
    write_sysfs(new, root)
    after = flags(new, root)
    handed = {"pci0000:00", "0000:00:02.0", NIC}
    assert after == {
        name: (b"0\n", b"1\n", b"1\n") if name in handed else (b"0\n", b"0\n", b"0\n")
        for name in new.devices
    }
    assert after == {
        dev.name: tuple(f"{int(getattr(dev, f))}\n".encode() for f in FLAGS)
        for dev in new.devices.values()
    }

    new.finish()
    write_sysfs(new, root)
    assert set(flags(new, root).values()) == {(b"0\n", b"0\n", b"0\n")}


def test_each_file_is_replaced_whole_and_no_temporary_is_left(kernel: Kernel, root: Path) -> None:
    write_sysfs(kernel, root)
    kernel.devices.request(NIC)
    write_sysfs(kernel, root)
    assert sorted(os.listdir(root / NIC_PATH)) == sorted(FLAGS)
    assert sorted(os.listdir(root / STATE.parent)) == ["state"]


def test_writing_1_requests_the_device_and_0_releases_it(kernel: Kernel, root: Path) -> None:
    """As ``echo 1 > .../liveupdate/requested`` ([rfc1] ``requested_store()``);
    the newline ``echo`` adds is optional."""
    write_sysfs(kernel, root)
    write_requested(kernel, root, NIC, b"1\n")
    assert apply_requested(kernel, root) == [NIC]
    assert [d.name for d in kernel.devices.requested()] == [NIC]
    assert apply_requested(kernel, root) == []  # nothing differs: nothing is called again

    write_requested(kernel, root, NIC, b"0")
    assert apply_requested(kernel, root) == [NIC]
    assert kernel.devices.requested() == []
    assert (root / NIC_PATH / "requested").read_bytes() == b"0\n"


@pytest.mark.parametrize(
    "content",
    [b"2\n", b"yes", b"", b"1\n\n", b"11", b" 1", b"1\r\n", b"\x1b[2J", b"1" * 100_000],
    ids=["2", "yes", "empty", "two-newlines", "11", "space", "crlf", "escape", "huge"],
)
def test_garbage_is_one_typed_error_and_changes_nothing(
    kernel: Kernel, root: Path, content: bytes
) -> None:
    """A valid ``1`` for an earlier device is not applied either: every file is
    checked before any device changes."""
    write_sysfs(kernel, root)
    write_requested(kernel, root, "0000:00:02.0", b"1\n")
    write_requested(kernel, root, NIC, content)
    with pytest.raises(InvalidArgumentError) as caught:
        apply_requested(kernel, root)
    message = str(caught.value)
    assert caught.value.errno == errno.EINVAL
    assert message.startswith(f"{NIC_PATH}/requested: holds ")
    assert message.endswith(", not 0 or 1")
    assert "\n" not in message and "\x1b" not in message and len(message) < 200
    assert kernel.devices.requested() == []
    assert set(flags(kernel, root).values()) == {(b"0\n", b"0\n", b"0\n")}


def test_a_requested_file_that_is_missing_or_not_a_file_is_refused(
    kernel: Kernel, root: Path
) -> None:
    write_sysfs(kernel, root)
    requested = root / NIC_PATH / "requested"
    requested.unlink()
    with pytest.raises(NotFoundError, match=f"^{NIC_PATH}/requested: no such file"):
        apply_requested(kernel, root)
    assert requested.read_bytes() == b"0\n"  # the view is whole again

    requested.unlink()
    requested.mkdir()
    with pytest.raises(InvalidArgumentError, match=f"^{NIC_PATH}/requested: "):
        apply_requested(kernel, root)
    requested.rmdir()

    elsewhere = root / "one"
    elsewhere.write_bytes(b"1\n")
    requested.symlink_to(elsewhere)  # a link is not followed, wherever it leads
    with pytest.raises(InvalidArgumentError, match=f"^{NIC_PATH}/requested: cannot be opened"):
        apply_requested(kernel, root)
    assert kernel.devices.requested() == []


def test_a_named_pipe_is_refused_without_waiting_for_a_writer(
    kernel: Kernel, tmp_path: Path
) -> None:
    """On the real file system: opening a pipe nobody writes to would wait forever."""
    write_sysfs(kernel, tmp_path)
    requested = tmp_path / NIC_PATH / "requested"
    requested.unlink()
    os.mkfifo(requested)
    with pytest.raises(InvalidArgumentError, match=f"^{NIC_PATH}/requested: not a regular file$"):
        apply_requested(kernel, tmp_path)
    assert requested.read_bytes() == b"0\n"  # replaced by the file it should be


def test_a_refused_request_stops_there_and_the_files_show_the_kernels_flags(
    kernel: Kernel, root: Path
) -> None:
    """The ISA bridge cannot be preserved: its write fails with ``EINVAL``
    ([rfc1] ``is_liveupdate_possible()``), and its file reads ``0`` again."""
    write_sysfs(kernel, root)
    write_requested(kernel, root, LEGACY, b"1\n")
    with pytest.raises(DeviceError, match=f"cannot request {LEGACY}"):
        apply_requested(kernel, root)
    assert kernel.devices.requested() == []
    assert flag_path(root, kernel.devices[LEGACY], "requested").read_bytes() == b"0\n"


def test_a_request_outside_normal_is_refused(kernel: Kernel, root: Path) -> None:
    kernel.devices.request(NIC)
    kernel.prepare()
    write_sysfs(kernel, root)
    write_requested(kernel, root, NIC, b"0\n")
    with pytest.raises(InvalidTransitionError):
        apply_requested(kernel, root)
    assert [d.name for d in kernel.devices.requested()] == [NIC]
    assert (root / NIC_PATH / "requested").read_bytes() == b"1\n"


def test_the_kho_view_lists_the_handed_over_nodes_until_finish(
    kernel: Kernel, root: Path, fs: FakeFilesystem
) -> None:
    write_sysfs(kernel, root)
    assert not (root / KHO_IN).exists()  # a cold boot was handed nothing
    kernel.devices.request(NIC)
    kernel.prepare()
    new = kexec(kernel, fs)
    write_sysfs(new, root)
    handed = new.kho_in
    assert handed is not None
    nodes = root / KHO_IN / "sub_fdts"
    assert sorted(os.listdir(nodes)) == sorted(handed.nodes)
    assert {f"device:{NIC}", "subsystem:alpha", "subsystem:beta"} <= set(handed.nodes)
    for node in handed.nodes.values():
        assert (nodes / node.name).read_text() == (
            f"compatible={node.compatible}\nlength={node.length}\n"
        )
    assert (nodes / "subsystem:alpha").read_text().startswith("compatible=luo,test-journal\n")
    assert (root / KHO_IN / "liveupdate_number").read_bytes() == b"1\n"

    new.finish()  # the root and its nodes are released: nothing is left to show
    write_sysfs(new, root)
    assert new.kho_in is None
    assert os.listdir(nodes) == []
    assert not (root / KHO_IN / "liveupdate_number").exists()


def test_a_plain_kexec_hands_nothing_over(kernel: Kernel, root: Path, fs: FakeFilesystem) -> None:
    new = kexec(kernel, fs)
    write_sysfs(new, root)
    assert state_file(root) == b"normal\n"
    assert not (root / KHO_IN / "liveupdate_number").exists()
    assert set(flags(new, root).values()) == {(b"0\n", b"0\n", b"0\n")}
