"""Sessions, file handlers and FLBs in one process: the rules of the upstream LUO code.

Each test names the kernel function whose behaviour it pins
(``kernel/liveupdate/luo_*.c``, ``mm/memfd_luo.c``, torvalds/linux 6.19).
"""

from __future__ import annotations

import errno
import os

import pytest

from luo_core import FileHandler, FileHandlerOps, Kernel, KernelConfig, LiveFile, Machine
from luo_core.errors import (
    BadFileError,
    BusyError,
    CallbackError,
    ExistsError,
    InvalidArgumentError,
    KernelGoneError,
    LiveUpdateError,
    NotFoundError,
    SessionsUnavailableError,
)
from tests.filehandlers import COMPATIBLE, EventPack, Refused, preserve, read_counter


@pytest.fixture
def events(journal: list[str]) -> EventPack:
    return EventPack(journal)


@pytest.fixture
def luo_kernel(events: EventPack) -> Kernel:
    return Kernel.boot(Machine(), plugins=[events], discover=False)


def descriptors_of(fd: int) -> int:
    """How many descriptors of this process refer to ``fd``'s file."""
    target = os.fstat(fd)
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            st = os.stat(f"/proc/self/fd/{name}")
        except OSError:
            continue
        count += (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino)
    return count


def memfd(data: bytes) -> int:
    fd = os.memfd_create("test")
    os.write(fd, data)
    return fd


# -- /dev/liveupdate and session names ------------------------------------------------


def test_one_opener_at_a_time(luo_kernel: Kernel) -> None:
    """``luo_open`` (luo_core.c): a second open is ``EBUSY`` until the first closes."""
    first = luo_kernel.open_liveupdate()
    with pytest.raises(BusyError) as caught:
        luo_kernel.open_liveupdate()
    assert caught.value.errno == errno.EBUSY
    first.close()
    luo_kernel.open_liveupdate().close()


def test_sessions_outlive_the_device_descriptor(luo_kernel: Kernel) -> None:
    """``luo_release`` (luo_core.c) only frees the device; sessions are files of their own."""
    with luo_kernel.open_liveupdate() as dev:
        session = dev.create_session("kept")
    fd = memfd(b"still here")
    session.preserve_fd(fd, 1)
    new = luo_kernel.kexec()
    got = new.open_liveupdate().retrieve_session("kept").retrieve_fd(1)
    assert os.pread(got, 64, 0) == b"still here"


@pytest.mark.parametrize(
    "name",
    ["", "x" * 64, "é" * 32, "a\0b", "x" * 200],
    ids=["empty", "64", "64-utf8", "nul", "long"],
)
def test_bad_session_names_are_einval(luo_kernel: Kernel, name: str) -> None:
    """``luo_session_create`` takes ``char name[LIVEUPDATE_SESSION_NAME_LENGTH]`` (64),
    NUL-terminated: an empty name or one of 64 bytes or more is ``EINVAL``."""
    dev = luo_kernel.open_liveupdate()
    with pytest.raises(InvalidArgumentError) as caught:
        dev.create_session(name)
    assert caught.value.errno == errno.EINVAL
    assert luo_kernel.luo.outgoing == []


def test_names_up_to_63_bytes_and_duplicates(luo_kernel: Kernel) -> None:
    """``luo_session_insert`` (luo_session.c): a name in use is ``EEXIST``; 63 bytes fit."""
    dev = luo_kernel.open_liveupdate()
    longest = dev.create_session("A" * 63)
    assert longest.name == "A" * 63
    with pytest.raises(ExistsError) as caught:
        dev.create_session("A" * 63)
    assert caught.value.errno == errno.EEXIST
    longest.close()
    dev.create_session("A" * 63)  # the name is free again once the session is closed


# -- preserving files -----------------------------------------------------------------


def test_preserve_fd_checks_in_the_kernels_order(luo_kernel: Kernel) -> None:
    """``luo_preserve_file`` (luo_file.c): token (``EEXIST``) before the descriptor
    (``EBADF``), then a handler (``ENOENT``), then double preservation (``EBUSY``)."""
    dev = luo_kernel.open_liveupdate()
    one, two = dev.create_session("one"), dev.create_session("two")
    fd = memfd(b"x")
    one.preserve_fd(fd, 0x1111)
    closed = os.memfd_create("closed")
    os.close(closed)
    with pytest.raises(ExistsError):
        one.preserve_fd(closed, 0x1111)  # the token is checked first, even for a bad fd
    with pytest.raises(BadFileError) as bad:
        one.preserve_fd(closed, 0x2222)
    assert bad.value.errno == errno.EBADF
    null = os.open(os.devnull, os.O_RDWR)
    with pytest.raises(NotFoundError) as unsupported:
        one.preserve_fd(null, 0xDEAD)
    assert unsupported.value.errno == errno.ENOENT
    for session, token in ((two, 0x2222), (one, 0x3333)):
        with pytest.raises(BusyError) as busy:
            session.preserve_fd(fd, token)
        assert busy.value.errno == errno.EBUSY
    dup = os.dup(fd)  # another descriptor of the same file is the same file
    with pytest.raises(BusyError):
        two.preserve_fd(dup, 0x4444)
    assert [f.token for f in one.files.files] == [0x1111] and len(two.files) == 0


def test_luo_keeps_its_own_reference(luo_kernel: Kernel) -> None:
    """``luo_preserve_file`` takes a reference (``fget``): the caller may close its fd."""
    session = luo_kernel.open_liveupdate().create_session("s")
    fd = memfd(b"kept by LUO")
    session.preserve_fd(fd, 7)
    os.close(fd)
    new = luo_kernel.kexec()
    got = new.open_liveupdate().retrieve_session("s").retrieve_fd(7)
    assert os.pread(got, 64, 0) == b"kept by LUO"


def test_closing_an_outgoing_session_unpreserves_newest_first(
    luo_kernel: Kernel, events: EventPack, journal: list[str]
) -> None:
    """``luo_file_unpreserve_files`` (luo_file.c) takes ``list_last_entry`` first; the FLB
    is unpreserved with the last file (``luo_flb_file_unpreserve_one``)."""
    session = luo_kernel.open_liveupdate().create_session("s")
    for token in (1, 2, 3):
        preserve(session, events, token)
    assert journal == ["flb-preserve", "preserve:0x1", "preserve:0x2", "preserve:0x3"]
    journal.clear()
    session.close()
    assert journal == ["unpreserve:0x3", "unpreserve:0x2", "unpreserve:0x1", "flb-unpreserve"]
    assert luo_kernel.luo.outgoing == []


def test_a_failing_preserve_leaves_nothing(luo_kernel: Kernel, events: EventPack) -> None:
    """``luo_preserve_file`` error path: the FLB it counted is unpreserved again."""
    session = luo_kernel.open_liveupdate().create_session("s")
    events.fail.add("preserve:0x1")
    with pytest.raises(Refused):
        preserve(session, events, 1)
    assert events.journal == ["flb-preserve", "preserve:0x1", "flb-unpreserve"]
    assert len(session.files) == 0
    events.fail.clear()
    preserve(session, events, 1)  # the token is free


# -- freeze, on the kexec path ------------------------------------------------------------


def test_freeze_runs_in_preservation_order_across_sessions(
    luo_kernel: Kernel, events: EventPack, journal: list[str]
) -> None:
    """``luo_session_serialize`` walks sessions in creation order and ``luo_file_freeze``
    files in preservation order."""
    dev = luo_kernel.open_liveupdate()
    a, b = dev.create_session("a"), dev.create_session("b")
    preserve(b, events, 0x1, value=5)
    preserve(a, events, 0x2)
    preserve(b, events, 0x3, value=9)
    journal.clear()
    new = luo_kernel.kexec()
    assert journal == ["freeze:0x2", "freeze:0x1", "freeze:0x3"]
    fd = new.open_liveupdate().retrieve_session("b").retrieve_fd(0x3)
    assert read_counter(fd) == 9


def test_a_failed_freeze_unfreezes_the_earlier_files_and_refuses_the_kexec(
    luo_kernel: Kernel, events: EventPack, journal: list[str]
) -> None:
    """``luo_file_freeze`` calls ``__luo_file_unfreeze`` on the files frozen before the
    failing one; ``luo_session_serialize`` unfreezes the earlier sessions; the reboot
    fails and every session is intact (luo_session.c, luo_file.c)."""
    dev = luo_kernel.open_liveupdate()
    a, b = dev.create_session("a"), dev.create_session("b")
    for session, token in ((a, 1), (a, 2), (b, 3), (b, 4)):
        preserve(session, events, token)
    journal.clear()
    events.fail.add("freeze:0x4")
    with pytest.raises(CallbackError) as caught:
        luo_kernel.kexec()
    assert (caught.value.participant, caught.value.phase) == ("session:b", "freeze")
    assert journal == [
        "freeze:0x1",
        "freeze:0x2",
        "freeze:0x3",
        "freeze:0x4",
        "unfreeze:0x3",  # b's earlier file
        "unfreeze:0x1",  # then session a, all of it
        "unfreeze:0x2",
    ]
    assert [s.name for s in luo_kernel.luo.outgoing] == ["a", "b"]
    assert [len(s.files) for s in (a, b)] == [2, 2]
    events.fail.clear()
    new = luo_kernel.kexec()  # the retry goes through
    assert new.open_liveupdate().retrieve_session("b").retrieve_fd(4) >= 0


def test_a_refused_kexec_keeps_a_prepared_update(luo_kernel: Kernel, events: EventPack) -> None:
    """Sessions freeze first (``liveupdate_reboot``); a failure there refuses the kexec
    before any participant freezes: the prepared update stays prepared."""
    session = luo_kernel.open_liveupdate().create_session("s")
    preserve(session, events, 1)
    luo_kernel.prepare()
    events.fail.add("freeze:0x1")
    with pytest.raises(CallbackError):
        luo_kernel.kexec()
    assert luo_kernel.state.value == "prepared"


# -- the next kernel ----------------------------------------------------------------------


def updated(luo_kernel: Kernel, events: EventPack, tokens: tuple[int, ...] = (1, 2, 3)) -> Kernel:
    session = luo_kernel.open_liveupdate().create_session("s")
    for token in tokens:
        preserve(session, events, token, value=token * 10)
    return luo_kernel.kexec()


def test_retrieve_is_on_demand_in_any_order_and_idempotent(
    luo_kernel: Kernel, events: EventPack, journal: list[str]
) -> None:
    """``luo_retrieve_file`` (luo_file.c): nothing is retrieved until asked; any order;
    asking again returns the same file without calling ``retrieve`` again."""
    new = updated(luo_kernel, events)
    journal.clear()
    session = new.open_liveupdate().retrieve_session("s")
    assert journal == []
    third = session.retrieve_fd(3)
    first = session.retrieve_fd(1)
    again = session.retrieve_fd(3)
    assert journal == ["retrieve:0x3", "retrieve:0x1"]
    assert (read_counter(third), read_counter(first)) == (30, 10)
    assert os.fstat(again).st_ino == os.fstat(third).st_ino and again != third
    with pytest.raises(NotFoundError):
        session.retrieve_fd(99)


def test_a_failed_retrieve_keeps_its_error(
    luo_kernel: Kernel, events: EventPack, journal: list[str]
) -> None:
    """``luo_retrieve_file`` stores a failed ``retrieve``'s error and returns it again."""
    new = updated(luo_kernel, events, (1,))
    events.fail.add("retrieve:0x1")
    session = new.open_liveupdate().retrieve_session("s")
    with pytest.raises(LiveUpdateError, match="retrieve:0x1 told to fail"):
        session.retrieve_fd(1)
    events.fail.clear()
    with pytest.raises(LiveUpdateError, match="retrieve:0x1 told to fail"):
        session.retrieve_fd(1)
    assert journal.count("retrieve:0x1") == 1


def test_finish_asks_every_can_finish_first_then_finishes_newest_first(
    luo_kernel: Kernel, events: EventPack, journal: list[str]
) -> None:
    """``luo_file_finish`` (luo_file.c): every ``can_finish`` first, ``EBUSY`` if one says
    no (nothing finished, a retry may succeed); then ``finish`` from the last file,
    with ``retrieved``; the FLB finishes with the last file (``luo_flb_file_finish``)."""
    new = updated(luo_kernel, events)
    session = new.open_liveupdate().retrieve_session("s")
    session.retrieve_fd(2)
    journal.clear()
    events.refuse.add("can_finish:0x2")
    with pytest.raises(BusyError) as caught:
        session.finish()
    assert caught.value.errno == errno.EBUSY
    assert journal == ["can_finish:0x1", "can_finish:0x2"]
    events.refuse.clear()
    journal.clear()
    session.finish()
    assert journal == [
        "can_finish:0x1",
        "can_finish:0x2",
        "can_finish:0x3",
        "finish(unretrieved):0x3",
        "finish(retrieved):0x2",
        "finish(unretrieved):0x1",
        "flb-retrieve",  # nobody asked for it: retrieved to be finished
        "flb-finish:7",
    ]
    assert len(session.files) == 0


def test_closing_an_incoming_session_finishes_it(
    luo_kernel: Kernel, events: EventPack, journal: list[str]
) -> None:
    """``luo_session_release`` (luo_session.c): closing a retrieved session finishes it;
    if it cannot, the close fails and the session stays."""
    new = updated(luo_kernel, events, (1,))
    dev = new.open_liveupdate()
    session = dev.retrieve_session("s")
    events.refuse.add("can_finish:0x1")
    with pytest.raises(BusyError):
        session.close()
    assert new.luo.incoming == [session]
    events.refuse.clear()
    session.close()
    assert "finish(unretrieved):0x1" in journal and new.luo.incoming == []


def test_retrieve_session_rules(luo_kernel: Kernel, events: EventPack) -> None:
    """``luo_session_retrieve``: ``ENOENT`` if not handed over, ``EINVAL`` the second time."""
    new = updated(luo_kernel, events, (1,))
    dev = new.open_liveupdate()
    with pytest.raises(NotFoundError):
        dev.retrieve_session("nope")
    session = dev.retrieve_session("s")
    with pytest.raises(InvalidArgumentError):
        dev.retrieve_session("s")
    with pytest.raises(InvalidArgumentError, match="handed over"):
        session.preserve_fd(os.eventfd(0), 9)


def test_sessions_never_retrieved_are_dropped_by_the_next_kexec(
    luo_kernel: Kernel, events: EventPack
) -> None:
    """Only the outgoing list is serialized (``luo_session_serialize``): an incoming
    session nobody retrieved does not reach the kernel after next."""
    new = updated(luo_kernel, events, (1,))
    newer = new.kexec()
    with pytest.raises(NotFoundError):
        newer.open_liveupdate().retrieve_session("s")


# -- FLBs ---------------------------------------------------------------------------------


def test_an_flb_is_preserved_with_the_first_file_and_retrieved_once(
    luo_kernel: Kernel, events: EventPack, journal: list[str]
) -> None:
    """``luo_flb_file_preserve_one`` preserves on the first file;
    ``liveupdate_flb_get_incoming`` retrieves on first use and returns the same object;
    ``luo_flb_file_finish_one`` finishes with the last file counted at kexec (luo_flb.c)."""
    session = luo_kernel.open_liveupdate().create_session("s")
    assert events.flb is not None
    assert luo_kernel.flb_get_outgoing(events.flb) is None
    preserve(session, events, 1)
    preserve(session, events, 2)
    assert journal.count("flb-preserve") == 1
    assert luo_kernel.flb_get_outgoing(events.flb) == {"generation": 7}
    events.generation = 8  # the next kernel's own value must not leak into what it gets
    new = luo_kernel.kexec()
    journal.clear()
    first = new.flb_get_incoming(events.flb)
    assert first == {"generation": 7} and new.flb_get_incoming(events.flb) is first
    assert journal == ["flb-retrieve"]
    session = new.open_liveupdate().retrieve_session("s")
    session.finish()
    assert journal[-1] == "flb-finish:7" and journal.count("flb-finish:7") == 1
    with pytest.raises(LiveUpdateError) as gone:
        new.flb_get_incoming(events.flb)
    assert gone.value.errno == errno.ENODATA


def test_registration_rules(luo_kernel: Kernel, events: EventPack) -> None:
    """``liveupdate_register_file_handler`` (luo_file.c): ``EINVAL`` for a missing
    required op, ``EEXIST`` for a compatible taken, ``EBUSY`` while any session exists
    (``luo_session_quiesce``); ``liveupdate_register_flb`` (luo_flb.c): ``EEXIST`` for
    an FLB already on the handler; unregistering a handler with FLBs is ``EBUSY``."""

    class NoRetrieve(FileHandlerOps):
        def can_preserve(self, file: LiveFile) -> bool:
            return False

        def preserve(self, file: LiveFile) -> int:
            return 0

        def unpreserve(self, file: LiveFile, data: object) -> None:
            pass

        def finish(self, file: LiveFile | None, data: object, retrieved: bool) -> None:
            pass

    with pytest.raises(InvalidArgumentError, match="lacks required callbacks: retrieve"):
        luo_kernel.register_file_handler(FileHandler("test,partial", NoRetrieve()))
    assert events.handler is not None and events.flb is not None
    twin = FileHandler(COMPATIBLE, events.handler.ops)
    with pytest.raises(ExistsError):
        luo_kernel.register_file_handler(twin)
    with pytest.raises(ExistsError):
        luo_kernel.register_flb(events.handler, events.flb)
    with pytest.raises(BusyError, match="still has FLBs"):
        luo_kernel.unregister_file_handler(events.handler)
    session = luo_kernel.open_liveupdate().create_session("s")
    other = FileHandler("test,other", events.handler.ops)
    with pytest.raises(BusyError, match="sessions exist"):
        luo_kernel.register_file_handler(other)
    session.close()
    luo_kernel.register_file_handler(other)
    luo_kernel.unregister_file_handler(other)


def test_a_handler_unknown_to_the_next_kernel_makes_open_fail_with_eio_for_good(
    luo_kernel: Kernel, events: EventPack
) -> None:
    """``luo_file_deserialize`` returns ``ENOENT`` for a compatible no handler has;
    ``luo_session_deserialize`` keeps that error and ``luo_open`` turns it into ``EIO``
    on every open (luo_file.c, luo_session.c, luo_core.c)."""
    session = luo_kernel.open_liveupdate().create_session("s")
    preserve(session, events, 1)
    new = luo_kernel.kexec(KernelConfig(discover=False))  # the next kernel lacks the pack
    for _ in range(2):
        with pytest.raises(
            SessionsUnavailableError, match="no file handler 'test,eventfd-v1'"
        ) as e:
            new.open_liveupdate()
        assert e.value.errno == errno.EIO


# -- memfd-v1 -----------------------------------------------------------------------------


def test_memfd_contents_size_and_position_cross(luo_kernel: Kernel) -> None:
    """``memfd_luo_preserve``/``_freeze``/``_retrieve`` (mm/memfd_luo.c): contents (holes
    included), size and position survive; the file is a new memfd; seals do not."""
    session = luo_kernel.open_liveupdate().create_session("mem")
    fd = memfd(b"head")
    os.ftruncate(fd, 3 * 4096 + 100)
    os.pwrite(fd, b"tail", 3 * 4096 + 96)
    os.lseek(fd, 1234, os.SEEK_SET)
    session.preserve_fd(fd, 1)
    os.pwrite(fd, b"late", 4096)  # written after preserve, before kexec: it crosses too
    new = luo_kernel.kexec()
    got = new.open_liveupdate().retrieve_session("mem").retrieve_fd(1)
    assert os.fstat(got).st_size == 3 * 4096 + 100
    assert os.lseek(got, 0, os.SEEK_CUR) == 1234
    assert os.pread(got, 4, 0) == b"head" and os.pread(got, 4, 4096) == b"late"
    assert os.pread(got, 4, 3 * 4096 + 96) == b"tail" and os.pread(got, 4, 8) == bytes(4)
    assert os.fstat(got).st_ino != os.fstat(fd).st_ino


def test_a_memfd_resized_while_preserved_refuses_the_kexec(luo_kernel: Kernel) -> None:
    """``memfd_luo_preserve`` freezes the size (``shmem_freeze``): the kernel refuses the
    resize with ``EPERM``; luo cannot stop an OS memfd, so it refuses the freeze."""
    session = luo_kernel.open_liveupdate().create_session("mem")
    fd = memfd(b"abc")
    session.preserve_fd(fd, 1)
    os.ftruncate(fd, 8192)
    with pytest.raises(CallbackError, match="memfd resized while preserved") as caught:
        luo_kernel.kexec()
    assert caught.value.errno == errno.EPERM
    os.ftruncate(fd, 3)
    luo_kernel.kexec()


def test_finished_memfd_pages_go_back_to_the_allocator(luo_kernel: Kernel) -> None:
    """``memfd_luo_retrieve`` and ``memfd_luo_finish`` free the preserved folios
    (``kho_restore_folio``); LUO frees its arrays after deserializing."""
    session = luo_kernel.open_liveupdate().create_session("mem")
    for token in range(3):
        session.preserve_fd(memfd(os.urandom(5000)), token)
    new = luo_kernel.kexec()
    before = new.mm.free_bytes
    dev = new.open_liveupdate()
    incoming = dev.retrieve_session("mem")
    incoming.retrieve_fd(0)
    incoming.finish()  # 1 and 2 were never retrieved: finish frees them
    page = new.memory.PAGE_SIZE
    # 3 files x (2 pages + folio array + ser) + the session and file arrays
    assert new.mm.free_bytes - before == (3 * 4 + 2) * page


def test_the_old_kernel_lets_go_of_its_files_and_sessions(luo_kernel: Kernel) -> None:
    """A kexec ends the old kernel: its sessions go with it (and its references to files
    close, as at any reboot)."""
    session = luo_kernel.open_liveupdate().create_session("s")
    fd = memfd(b"x")
    session.preserve_fd(fd, 1)
    assert descriptors_of(fd) == 2  # ours and LUO's
    luo_kernel.kexec()
    assert descriptors_of(fd) == 1
    with pytest.raises(KernelGoneError):
        session.preserve_fd(memfd(b"y"), 2)


def test_a_cancelled_update_keeps_the_sessions(luo_kernel: Kernel) -> None:
    """Sessions are not part of the RFC global state: a cancelled update keeps their
    preserved memory, and the next kexec hands them over."""
    session = luo_kernel.open_liveupdate().create_session("s")
    session.preserve_fd(memfd(b"survives a cancel"), 1)
    luo_kernel.prepare()
    luo_kernel.cancel()
    new = luo_kernel.kexec()
    got = new.open_liveupdate().retrieve_session("s").retrieve_fd(1)
    assert os.pread(got, 64, 0) == b"survives a cancel"
