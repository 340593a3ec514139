"""LUO's sessions core in one kernel: file handlers, FLBs, sessions, and their handoff.

This is what ``luo_core.c``, ``luo_session.c`` and the registration halves
of ``luo_file.c`` and ``luo_flb.c`` keep as globals, kept per kernel:
registering handlers and FLBs (refused with ``EBUSY`` while any session
exists, as ``luo_session_quiesce`` does), the single opener of
``/dev/liveupdate``, the outgoing and incoming session lists, and the
reboot path — freeze every outgoing session's files in order
(``luo_session_serialize``), then write the ``LUO`` KHO entry.  Incoming
sessions are deserialized when the device is first opened; if that fails
(a file handler unknown to this kernel, a malformed array), every open
fails with ``EIO`` from then on (``luo_open``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any

from luo_core._logging import get_logger
from luo_core.abi import HandedOver
from luo_core.abi._luo import (
    COMPATIBLE,
    FILE_SER,
    KHO_ENTRY,
    FileSer,
    LuoTree,
    SessionSer,
    flbs_size,
    pack_files,
    pack_flbs,
    pack_sessions,
    pack_tree,
    read_flbs,
    read_sessions,
    sessions_size,
    unpack_tree,
)
from luo_core.errors import (
    BusyError,
    CallbackError,
    ExistsError,
    HandoffError,
    InvalidArgumentError,
    KernelGoneError,
    LiveUpdateError,
    NotFoundError,
    SessionsUnavailableError,
)
from luo_core.kernel._alloc import PageAllocator
from luo_core.kernel._kho import KexecHandover
from luo_core.kernel.sessions._fileid import PreservedFiles
from luo_core.kernel.sessions._files import FileSet
from luo_core.kernel.sessions._flb import Flbs
from luo_core.kernel.sessions._memory import Incoming, Outgoing
from luo_core.kernel.sessions._records import (
    REQUIRED_FILE_OPS,
    FileHandler,
    FileHandlerOps,
    Flb,
    missing,
)
from luo_core.kernel.sessions._session import LiveUpdateDevice, Session
from luo_core.platform import PhysicalMemory

log = get_logger("luo")


class Luo:
    """The sessions side of one kernel."""

    def __init__(
        self,
        memory: PhysicalMemory,
        mm: PageAllocator,
        kho: KexecHandover,
        handed: HandedOver | None,
    ) -> None:
        self.lock = threading.RLock()
        self.memory = memory
        self.outgoing_memory = Outgoing(memory, mm, kho)
        """Where handlers allocate the preserved memory they hand over."""
        self.incoming_memory = Incoming(memory, mm, handed.preserved) if handed else None
        """Where handlers read and free what the previous kernel preserved for them."""
        self.flbs = Flbs(self.outgoing_memory, self.incoming_memory)
        self._kho = kho
        self._handlers: list[FileHandler] = []
        self._preserved = PreservedFiles()
        self.outgoing: list[Session] = []
        self.incoming: list[Session] = []
        self._in_use = False
        self._gone = False
        self._tree: LuoTree | None = None
        self._error: LiveUpdateError | None = None
        self._deserialized = handed is None
        self._frozen: list[tuple[Session, list[FileSer]]] | None = None
        self._block: tuple[int, int] | None = (
            None  # the headers' page, prepared off the kexec path
        )
        # The entry's bytes are taken now (the root and node pages may be freed soon);
        # they are read on first use, not on the restore path: what luo_early_startup
        # refuses then makes every open fail just the same.
        self._entry: bytes | None = None
        if handed is not None and KHO_ENTRY in handed.nodes:
            try:
                self._entry = handed.read(memory, KHO_ENTRY)
            except HandoffError as exc:
                self._disable(exc)

    def _disable(self, exc: HandoffError) -> None:
        """``luo_early_startup`` failed: live update is disabled in this kernel."""
        log.error("luo_tree_malformed", error=str(exc))
        self._error = SessionsUnavailableError(f"the LUO handoff is unusable: {exc}")

    def _incoming(self) -> LuoTree | None:
        """The previous kernel's tree, read (and its FLBs found) on first use."""
        entry, self._entry = self._entry, None
        if entry is not None and self.incoming_memory is not None:
            try:
                self._tree = unpack_tree(entry)
                self.flbs.set_incoming(
                    read_flbs(self.memory, self.incoming_memory.preserved, self._tree)
                )
            except HandoffError as exc:
                self._disable(exc)
        return self._tree

    # -- plumbing ------------------------------------------------------------------

    def alive(self) -> None:
        if self._gone:
            raise KernelGoneError("this kernel was replaced by kexec; its sessions went with it")

    def handlers(self) -> list[FileHandler]:
        return list(self._handlers)

    def dup(self, fd: int) -> int:
        return os.dup(fd)

    def quietly(self, owner: str, fn: Callable[[], object]) -> None:
        """For callbacks that return void in the kernel: a failure is logged, not raised."""
        try:
            fn()
        except Exception as exc:
            log.error(
                "callback_must_not_fail", participant=owner, error=f"{type(exc).__name__}: {exc}"
            )

    def _quiescent(self, what: str) -> None:
        if self.outgoing or self.incoming:
            raise BusyError(
                f"{what}: sessions exist ({len(self.outgoing)} outgoing, "
                f"{len(self.incoming)} incoming); close them first"
            )

    # -- registration ------------------------------------------------------------------

    def register_file_handler(self, fh: FileHandler) -> None:
        """``liveupdate_register_file_handler``: EINVAL, EBUSY, EEXIST, in that order."""
        if not isinstance(fh, FileHandler):
            raise InvalidArgumentError(f"a FileHandler is needed, not {type(fh).__name__}")
        absent = missing(fh.ops, FileHandlerOps, REQUIRED_FILE_OPS)
        if absent:
            raise InvalidArgumentError(
                f"file handler {fh.compatible!r} lacks required callbacks: {', '.join(absent)}"
            )
        with self.lock:
            self.alive()
            self._quiescent(f"register file handler {fh.compatible!r}")
            for other in self._handlers:
                if other.compatible == fh.compatible:
                    raise ExistsError(
                        f"file handler {fh.compatible!r} is already registered"
                        + (f" (by {other.origin})" if other.origin else "")
                    )
            self._handlers.append(fh)
            try:
                for flb in fh.flbs:
                    self.flbs.register(fh, flb)
            except BaseException:
                for flb in self.flbs.of(fh):
                    self.flbs.unregister(fh, flb)
                self._handlers.remove(fh)
                raise

    def _registered(self, fh: FileHandler) -> FileHandler | None:
        """The registered record ``fh`` stands for (a pack's yielded record is stamped
        with its origin on registration: the same compatible and ops)."""
        for h in self._handlers:
            if h is fh or (h.compatible == getattr(fh, "compatible", None) and h.ops is fh.ops):
                return h
        return None

    def unregister_file_handler(self, fh: FileHandler) -> None:
        """``liveupdate_unregister_file_handler``: EBUSY while sessions exist or FLBs are
        registered with it."""
        with self.lock:
            self.alive()
            what = f"file handler {getattr(fh, 'compatible', fh)!r}"
            self._quiescent(f"unregister {what}")
            registered = self._registered(fh)
            if registered is None:
                raise NotFoundError(f"{what} is not registered")
            if self.flbs.of(registered):
                raise BusyError(f"{what} still has FLBs registered")
            self._handlers.remove(registered)
            self.flbs.forget(registered)

    def register_flb(self, fh: FileHandler, flb: Flb) -> None:
        with self.lock:
            self.alive()
            registered = self._registered(fh)
            if registered is None:
                raise InvalidArgumentError("register the file handler before its FLBs")
            self._quiescent(f"register FLB {getattr(flb, 'compatible', flb)!r}")
            self.flbs.register(registered, flb)

    def unregister_flb(self, fh: FileHandler, flb: Flb) -> None:
        with self.lock:
            self.alive()
            self._quiescent(f"unregister FLB {getattr(flb, 'compatible', flb)!r}")
            registered = self._registered(fh)
            if registered is None:
                raise NotFoundError(
                    f"file handler {getattr(fh, 'compatible', fh)!r} is not registered"
                )
            self.flbs.unregister(registered, flb)

    # -- /dev/liveupdate -----------------------------------------------------------------

    def open(self) -> LiveUpdateDevice:
        """``luo_open``: EBUSY for a second opener; EIO if deserialization failed (ever)."""
        with self.lock:
            self.alive()
            if self._in_use:
                raise BusyError("/dev/liveupdate is already open (one opener at a time)")
            self._deserialize()
            if self._error is not None:
                raise SessionsUnavailableError(str(self._error))
            self._in_use = True
            return LiveUpdateDevice(self)

    def release_device(self) -> None:
        with self.lock:
            self._in_use = False

    def create_session(self, name: str) -> Session:
        with self.lock:
            self.alive()
            if any(s.name == name for s in self.outgoing):
                raise ExistsError(f"session {name!r} already exists")
            files = FileSet(self.flbs, self._preserved, self.outgoing_memory)
            session = Session(self, name, files, incoming=False)
            self.outgoing.append(session)
            return session

    def retrieve_session(self, name: str) -> Session:
        with self.lock:
            self.alive()
            session = next((s for s in self.incoming if s.name == name), None)
            if session is None:
                raise NotFoundError(f"no session {name!r} was handed over")
            if session.retrieved:
                raise InvalidArgumentError(f"session {name!r} was already retrieved")
            session.retrieved = True
            return session

    def remove(self, session: Session) -> None:
        with self.lock:
            for sessions in (self.outgoing, self.incoming):
                if session in sessions:
                    sessions.remove(session)

    def flb_get_incoming(self, flb: Flb) -> Any:
        with self.lock:
            self.alive()
            self._incoming()
            return self.flbs.get_incoming(flb)

    def flb_get_outgoing(self, flb: Flb) -> Any:
        with self.lock:
            self.alive()
            return self.flbs.get_outgoing(flb)

    # -- the next kernel's side ---------------------------------------------------------

    def _deserialize(self) -> None:
        """``luo_session_deserialize``: once; its error is kept for every later open."""
        if self._deserialized:
            return
        self._deserialized = True
        tree = self._incoming()
        if tree is None or self.incoming_memory is None:
            return
        try:
            self._read_sessions(tree, self.incoming_memory)
        except LiveUpdateError as exc:
            log.error("sessions_deserialize_failed", error=str(exc))
            self._error = SessionsUnavailableError(
                f"the incoming sessions could not be deserialized: {exc}"
            )

    def _read_sessions(self, tree: LuoTree, memory: Incoming) -> None:
        sessions, files = read_sessions(self.memory, memory.preserved, tree)
        handlers = {h.compatible: h for h in self._handlers}
        for ser in sessions:
            file_set = FileSet(self.flbs, PreservedFiles(), self.outgoing_memory, memory)
            self.incoming.append(Session(self, ser.name, file_set, incoming=True))
            file_set.deserialize(handlers, files[ser.name], ser.name)
            if ser.count:
                memory.free(ser.files, ser.count * FILE_SER.size, f"files of {ser.name!r}")
        memory.free(tree.session_header, sessions_size(len(sessions)), "session array")

    # -- the reboot path ----------------------------------------------------------------

    def freeze(self) -> None:
        """``luo_session_serialize``: freeze every outgoing session's files, in order.
        On a failure the sessions frozen so far are unfrozen and the kexec is refused;
        every session stays as it was."""
        with self.lock:
            self.alive()
            frozen: list[tuple[Session, list[FileSer]]] = []
            for session in self.outgoing:
                try:
                    frozen.append((session, session.files.freeze()))
                except Exception as exc:
                    for earlier, _ in reversed(frozen):
                        earlier.files.unfreeze()
                    raise CallbackError(f"session:{session.name}", "freeze", exc) from exc
            self._frozen = frozen

    def unfreeze(self) -> None:
        """The kexec was refused after :meth:`freeze`: every session runs on."""
        with self.lock:
            for session, _ in reversed(self._frozen or []):
                session.files.unfreeze()
            self._frozen = None

    def publish(self, liveupdate_number: int) -> None:
        """Write the sessions, their files and the FLBs, and the ``LUO`` entry, into KHO."""
        frozen = self._frozen or []
        sessions = []
        for session, files in frozen:
            if files:
                self.memory.write(session.files.array, pack_files(files))
            sessions.append(SessionSer(session.name, session.files.array, len(files)))
        flbs = self.flbs.serialize()
        pages = -(-flbs_size(len(flbs)) // self.memory.PAGE_SIZE)
        header, flb_header = self._headers(pack_sessions(sessions), pack_flbs(flbs, pages))
        self._entry_node(LuoTree(liveupdate_number, header, flb_header))

    def prepare_entry(self, liveupdate_number: int) -> None:
        """Before the kexec path (at ``prepare``): the headers' page and the ``LUO`` node
        are made now, as the kernel makes them at boot, so that kexec only writes counts."""
        with self.lock:
            header, flb_header = self._headers(pack_sessions([]), pack_flbs([], 1))
            self._entry_node(LuoTree(liveupdate_number, header, flb_header))

    def _entry_node(self, tree: LuoTree) -> None:
        blob = pack_tree(tree)
        nodes = self._kho.nodes
        if KHO_ENTRY in nodes:
            node = nodes[KHO_ENTRY]
            if self.memory.read(node.phys, node.length) == blob:
                return  # already in the tree, as prepared
            self._kho.remove_node(KHO_ENTRY)
        self._kho.add_node(KHO_ENTRY, COMPATIBLE, blob)

    def _headers(self, sessions: bytes, flbs: bytes) -> tuple[int, int]:
        """The two header blocks, written into preserved memory; their addresses.

        The kernel preserves one page for each at boot; here both share one
        page when they fit, kept from one kexec attempt (or ``prepare``) to the
        next, so that the kexec path writes into it and allocates nothing.
        """
        out = self.outgoing_memory
        page = self.memory.PAGE_SIZE
        at = -(-len(sessions) // 8) * 8
        if at + len(flbs) <= page:
            if self._block is None:
                self._block = (out.alloc_preserve(page), page)
            phys = self._block[0]
            self.memory.write(phys, sessions.ljust(at, b"\0") + flbs)
            return phys, phys + at
        header, flb_header = out.alloc_preserve(len(sessions)), out.alloc_preserve(len(flbs))
        self.memory.write(header, sessions)
        self.memory.write(flb_header, flbs)
        return header, flb_header

    def die(self) -> None:
        """The kernel is gone: LUO's references to files close, as at any reboot."""
        with self.lock:
            self._gone = True
            for session in [*self.outgoing, *self.incoming]:
                for f in session.files.files:
                    if f.file is not None:
                        with contextlib.suppress(OSError):
                            os.close(f.file.fd)
                session.files.files.clear()
            self._preserved.clear()
