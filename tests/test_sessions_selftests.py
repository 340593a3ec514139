"""The kernel's LUO selftests, ported one by one, against kernels in processes of their own.

Sources: ``tools/testing/selftests/liveupdate/`` in torvalds/linux —
``liveupdate.c`` (the device and session tests), ``luo_kexec_simple.c``,
``luo_multi_session.c``, ``luo_stress_sessions.c`` and ``luo_stress_files.c``
(the kexec tests).  Userspace is this test process: descriptors go to the
kernel process over its socket (``SCM_RIGHTS``) and come back from the next
one, so what crosses the kexec is what the old kernel put in preserved
memory, and the memfds read back are new files built from it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

import pytest

from luo_core import Kernel, KernelConfig, Machine
from luo_core.errors import (
    BusyError,
    ExistsError,
    InvalidArgumentError,
    NotFoundError,
)
from luo_core.kexec import KernelProcess
from luo_core.kexec._sessions import RemoteLiveUpdateDevice, RemoteSession
from luo_core.platform import HardwareProcess, default_host

CONFIG = KernelConfig(discover=False)


@pytest.fixture(scope="module")
def hardware() -> Iterator[HardwareProcess]:
    with HardwareProcess(default_host()) as machine:
        yield machine


@pytest.fixture(scope="module")
def shared(hardware: HardwareProcess) -> Iterator[KernelProcess]:
    """One kernel for the device tests, as the selftests share one running kernel."""
    with KernelProcess.boot(hardware, CONFIG) as kernel:
        yield kernel


@pytest.fixture
def kernel(hardware: HardwareProcess) -> Iterator[KernelProcess]:
    """A kernel of its own, for a test that kexecs it."""
    with KernelProcess.boot(hardware, CONFIG) as booted:
        yield booted


# -- luo_test_utils.c ------------------------------------------------------------------


def create_and_preserve_memfd(session: RemoteSession, token: int, data: bytes) -> None:
    """``create_and_preserve_memfd``: a memfd holding ``data``, preserved; ours closed."""
    fd = os.memfd_create("test-memfd")
    try:
        os.write(fd, data)
        session.preserve_fd(fd, token)
    finally:
        os.close(fd)


def restore_and_verify_memfd(session: RemoteSession, token: int, data: bytes) -> None:
    """``restore_and_verify_memfd``: retrieve by token and read ``data`` back from offset 0."""
    fd = session.retrieve_fd(token)
    try:
        assert os.pread(fd, len(data) + 16, 0) == data
    finally:
        os.close(fd)


# -- liveupdate.c ----------------------------------------------------------------------


def test_basic_open_close(shared: KernelProcess) -> None:
    """``basic_open_close``."""
    shared.open_liveupdate().close()


def test_exclusive_open(shared: KernelProcess) -> None:
    """``exclusive_open``: a second open fails with ``EBUSY``."""
    first = shared.open_liveupdate()
    try:
        with pytest.raises(BusyError) as caught:
            shared.open_liveupdate()
        assert caught.value.errno == errno.EBUSY
    finally:
        first.close()


def test_create_duplicate_session(shared: KernelProcess) -> None:
    """``create_duplicate_session``: the second create of a name is ``EEXIST``."""
    with shared.open_liveupdate() as dev:
        session = dev.create_session("duplicate-session-test")
        with pytest.raises(ExistsError) as caught:
            dev.create_session("duplicate-session-test")
        assert caught.value.errno == errno.EEXIST
        session.close()


def test_create_distinct_sessions(shared: KernelProcess) -> None:
    """``create_distinct_sessions``."""
    with shared.open_liveupdate() as dev:
        one, two = (
            dev.create_session("distinct-session-1"),
            dev.create_session("distinct-session-2"),
        )
        one.close()
        two.close()


def test_preserve_memfd(shared: KernelProcess) -> None:
    """``preserve_memfd``: preserving leaves the memfd's contents as they were."""
    with shared.open_liveupdate() as dev:
        session = dev.create_session("preserve-memfd-test")
        fd = os.memfd_create("test-memfd")
        os.write(fd, b"hello liveupdate")
        session.preserve_fd(fd, 0x1234)
        session.close()
        assert os.pread(fd, 64, 0) == b"hello liveupdate"


def test_preserve_multiple_memfds(shared: KernelProcess) -> None:
    """``preserve_multiple_memfds``: each token its own file, contents distinct."""
    with shared.open_liveupdate() as dev:
        session = dev.create_session("preserve-multi-memfd-test")
        one, two = os.memfd_create("test-memfd-1"), os.memfd_create("test-memfd-2")
        os.write(one, b"data for memfd one")
        os.write(two, b"data for memfd two")
        session.preserve_fd(one, 0xAAAA)
        session.preserve_fd(two, 0xBBBB)
        assert os.pread(one, 64, 0) == b"data for memfd one"
        assert os.pread(two, 64, 0) == b"data for memfd two"
        session.close()


def test_preserve_complex_scenario(shared: KernelProcess) -> None:
    """``preserve_complex_scenario``: two sessions, empty and non-empty memfds."""
    with shared.open_liveupdate() as dev:
        s1, s2 = dev.create_session("complex-session-1"), dev.create_session("complex-session-2")
        files = {}
        for session, name, token, data in (
            (s1, "data1", 0x1111, b"data for session 1"),
            (s1, "empty1", 0x2222, b""),
            (s2, "data2", 0x3333, b"data for session 2"),
            (s2, "empty2", 0x4444, b""),
        ):
            files[name] = fd = os.memfd_create(name)
            os.write(fd, data)
            session.preserve_fd(fd, token)
        assert os.pread(files["data1"], 64, 0) == b"data for session 1"
        assert os.pread(files["data2"], 64, 0) == b"data for session 2"
        assert os.pread(files["empty1"], 64, 0) == os.pread(files["empty2"], 64, 0) == b""
        s1.close()
        s2.close()


def test_preserve_unsupported_fd(shared: KernelProcess) -> None:
    """``preserve_unsupported_fd``: ``/dev/null`` has no handler: ``ENOENT``."""
    with shared.open_liveupdate() as dev:
        session = dev.create_session("unsupported-fd-test")
        null = os.open(os.devnull, os.O_RDWR)
        with pytest.raises(NotFoundError) as caught:
            session.preserve_fd(null, 0xDEAD)
        assert caught.value.errno == errno.ENOENT
        os.close(null)
        session.close()


def test_prevent_double_preservation(shared: KernelProcess) -> None:
    """``prevent_double_preservation``: a file is preserved once, across all sessions:
    again in another session or the same one (another token) is ``EBUSY``."""
    with shared.open_liveupdate() as dev:
        s1 = dev.create_session("double-preserve-session-1")
        s2 = dev.create_session("double-preserve-session-2")
        fd = os.memfd_create("test-memfd")
        s1.preserve_fd(fd, 0x1111)
        for session, token in ((s2, 0x2222), (s1, 0x3333)):
            with pytest.raises(BusyError) as caught:
                session.preserve_fd(fd, token)
            assert caught.value.errno == errno.EBUSY
        os.close(fd)
        s1.close()
        s2.close()


def test_create_session_no_null_termination(shared: KernelProcess) -> None:
    """``create_session_no_null_termination``: 64 bytes fill the name field: ``EINVAL``."""
    with shared.open_liveupdate() as dev, pytest.raises(InvalidArgumentError) as caught:
        dev.create_session("X" * 64)
    assert caught.value.errno == errno.EINVAL


def test_create_session_empty_name(shared: KernelProcess) -> None:
    """``create_session_empty_name``."""
    with shared.open_liveupdate() as dev, pytest.raises(InvalidArgumentError):
        dev.create_session("")


@pytest.mark.parametrize("name", ["get-name-test-session", "A" * 63])
def test_get_session_name(shared: KernelProcess, name: str) -> None:
    """``get_session_name`` and ``get_session_name_max_length``."""
    with shared.open_liveupdate() as dev:
        session = dev.create_session(name)
        assert session.name == name
        session.close()


def test_preserve_many_sessions(shared: KernelProcess) -> None:
    """``preserve_many_sessions``: 2,000 sessions created, then closed."""
    with shared.open_liveupdate() as dev:
        sessions = [dev.create_session(f"many-session-{i}") for i in range(2000)]
        for session in sessions:
            session.close()


def test_preserve_many_files(shared: KernelProcess) -> None:
    """``preserve_many_files``: 500 memfds preserved in one session, then released."""
    with shared.open_liveupdate() as dev:
        session = dev.create_session("many-files-test")
        for i in range(500):
            create_and_preserve_memfd(session, i, b"")
        session.close()


# -- the kexec tests ---------------------------------------------------------------------

STATE_TOKEN = 999


def create_state_file(dev: RemoteLiveUpdateDevice, name: str, stage: int) -> None:
    """``create_state_file``: the test's own stage, kept in a session across the kexec."""
    session = dev.create_session(name)
    create_and_preserve_memfd(session, STATE_TOKEN, str(stage).encode())


def restore_and_read_stage(dev: RemoteLiveUpdateDevice, name: str) -> tuple[RemoteSession, int]:
    session = dev.retrieve_session(name)
    fd = session.retrieve_fd(STATE_TOKEN)
    try:
        return session, int(os.pread(fd, 16, 0))
    finally:
        os.close(fd)


@contextlib.contextmanager
def stage_2(kernel: KernelProcess, state_name: str) -> Iterator[RemoteLiveUpdateDevice]:
    """``luo_test``'s second stage: kexec, the stage read back, the test's body, then the
    state session finished."""
    new = kernel.kexec()
    try:
        assert new.pid != kernel.pid
        dev = new.open_liveupdate()
        state, stage = restore_and_read_stage(dev, state_name)
        assert stage == 2
        yield dev
        finish(state)
    finally:
        new.shutdown()


def finish(*sessions: RemoteSession) -> None:
    for session in sessions:
        session.finish()
        session.close()


def test_luo_kexec_simple(kernel: KernelProcess) -> None:
    """``luo_kexec_simple.c``: one session, one memfd, one kexec, then finish."""
    dev = kernel.open_liveupdate()
    create_state_file(dev, "kexec_simple_state", 2)
    session = dev.create_session("test-session")
    create_and_preserve_memfd(session, 0x1A, b"hello kexec world")
    dev.close()
    with stage_2(kernel, "kexec_simple_state") as dev:
        session = dev.retrieve_session("test-session")
        restore_and_verify_memfd(session, 0x1A, b"hello kexec world")
        finish(session)


def test_luo_multi_session(kernel: KernelProcess) -> None:
    """``luo_multi_session.c``: empty sessions and sessions of one and two memfds."""
    dev = kernel.open_liveupdate()
    create_state_file(dev, "kexec_multi_state", 2)
    dev.create_session("multi-test-empty-1")
    dev.create_session("multi-test-empty-2")
    create_and_preserve_memfd(
        dev.create_session("multi-test-files-1"), 0x1001, b"Data for session files 1"
    )
    files2 = dev.create_session("multi-test-files-2")
    create_and_preserve_memfd(files2, 0x2002, b"First file for session files 2")
    create_and_preserve_memfd(files2, 0x3003, b"Second file for session files 2")
    dev.close()
    with stage_2(kernel, "kexec_multi_state") as dev:
        sessions = {
            name: dev.retrieve_session(name)
            for name in (
                "multi-test-empty-1",
                "multi-test-empty-2",
                "multi-test-files-1",
                "multi-test-files-2",
            )
        }
        restore_and_verify_memfd(
            sessions["multi-test-files-1"], 0x1001, b"Data for session files 1"
        )
        restore_and_verify_memfd(
            sessions["multi-test-files-2"], 0x2002, b"First file for session files 2"
        )
        restore_and_verify_memfd(
            sessions["multi-test-files-2"], 0x3003, b"Second file for session files 2"
        )
        finish(*sessions.values())


def test_luo_stress_sessions(kernel: KernelProcess) -> None:
    """``luo_stress_sessions.c``: 2,000 sessions across a kexec, each retrieved and
    finished."""
    dev = kernel.open_liveupdate()
    create_state_file(dev, "kexec_many_state", 2)
    for i in range(2000):
        dev.create_session(f"many-test-{i}")
    dev.close()
    with stage_2(kernel, "kexec_many_state") as dev:
        finish(*(dev.retrieve_session(f"many-test-{i}") for i in range(2000)))


def test_luo_stress_files(kernel: KernelProcess) -> None:
    """``luo_stress_files.c``: 500 memfds in one session across a kexec, each read back."""
    dev = kernel.open_liveupdate()
    create_state_file(dev, "kexec_many_files_state", 2)
    session = dev.create_session("many_files_session")
    for i in range(500):
        create_and_preserve_memfd(session, i, f"file-data-{i}".encode())
    dev.close()
    with stage_2(kernel, "kexec_many_files_state") as dev:
        session = dev.retrieve_session("many_files_session")
        for i in range(500):
            restore_and_verify_memfd(session, i, f"file-data-{i}".encode())
        finish(session)


def test_a_packs_own_file_type_crosses_processes(hardware: HardwareProcess) -> None:
    """A pack's file handler (eventfds here) in kernels of their own processes: the
    counter reaches the next kernel's process only through its record in preserved
    memory, and the FLB is retrieved there."""
    config = KernelConfig(["tests.filehandlers:event_pack"], discover=False)
    with KernelProcess.boot(hardware, config) as kernel:
        dev = kernel.open_liveupdate()
        session = dev.create_session("events")
        fd = os.eventfd(41)
        session.preserve_fd(fd, 7)
        os.eventfd_write(fd, 1)  # after preserve, before kexec: freeze reads 42
        os.close(fd)
        dev.close()
        new = kernel.kexec()
    with new:
        session = new.open_liveupdate().retrieve_session("events")
        got = session.retrieve_fd(7)
        assert os.eventfd_read(got) == 42
        finish(session)


def test_a_handler_that_keeps_its_data_in_a_module_global_loses_it(
    hardware: HardwareProcess,
) -> None:
    """Only bytes cross a kexec: a handler that hands over an empty record and keeps the
    counter in a module global gets it back in this process (one Python), but the next
    kernel's process, like a real next kernel, never sees it."""
    config = KernelConfig(["tests.filehandlers:stashing_pack"], discover=False)
    inproc = Kernel.boot(Machine(), plugins=config.plugins, discover=False)
    inproc.open_liveupdate().create_session("events").preserve_fd(os.eventfd(42), 7)
    fooled = inproc.kexec().open_liveupdate().retrieve_session("events").retrieve_fd(7)
    assert os.eventfd_read(fooled) == 42  # one Python: the module global came along
    with KernelProcess.boot(hardware, config) as kernel:
        session = kernel.open_liveupdate().create_session("events")
        fd = os.eventfd(42)
        session.preserve_fd(fd, 7)
        os.close(fd)
        new = kernel.kexec()
    with new:
        got = new.open_liveupdate().retrieve_session("events").retrieve_fd(7)
        os.set_blocking(got, False)
        with pytest.raises(BlockingIOError):  # a counter of 0: the 42 did not cross
            os.eventfd_read(got)
