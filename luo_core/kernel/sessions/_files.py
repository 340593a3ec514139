"""The files of one session (``kernel/liveupdate/luo_file.c``): preserve, freeze, retrieve, finish.

Each preserved file is a :class:`LuoFile`: its handler, LUO's own reference
to the file, the user's token and the data handle.  Freeze runs in
preservation order and unfreezes the earlier files if one fails
(``luo_file_freeze``); unpreserve and finish run in reverse order; finish
asks every ``can_finish`` first and fails with ``EBUSY`` if one says no
(``luo_file_finish``).  Retrieval is on demand, in any order, once: a failed
retrieve keeps its error (``luo_retrieve_file``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import attrs

from luo_core.abi._luo import FILE_SER, FileSer
from luo_core.errors import BadFileError, BusyError, ExistsError, LiveUpdateError, NotFoundError
from luo_core.kernel.sessions._fileid import PreservedFiles
from luo_core.kernel.sessions._flb import Flbs
from luo_core.kernel.sessions._memory import Incoming, Outgoing
from luo_core.kernel.sessions._records import FileHandler, LiveFile


@attrs.define(eq=False)
class LuoFile:
    """``struct luo_file``."""

    fh: FileHandler
    token: int
    handle: int
    file: LiveFile | None = None
    data: Any = None
    retrieve_error: LiveUpdateError | None = None

    @property
    def retrieved(self) -> bool:
        return self.file is not None

    @property
    def owner(self) -> str:
        return f"file {self.token:#x} ({self.fh.compatible})"


class FileSet:
    """``struct luo_file_set``: one session's files, in preservation order."""

    def __init__(
        self,
        flbs: Flbs,
        preserved: PreservedFiles,
        outgoing: Outgoing,
        incoming: Incoming | None = None,
    ) -> None:
        self.files: list[LuoFile] = []
        self.array = 0
        """Where the ``luo_file_ser`` array goes at kexec: preserved pages sized as files
        are preserved (``luo_alloc_files_mem``), so that kexec only writes into them."""
        self._array_size = 0
        self._flbs = flbs
        self._preserved = preserved  # by any session: a file is preserved once
        self._out = outgoing
        self._in = incoming

    def __len__(self) -> int:
        return len(self.files)

    # -- outgoing -------------------------------------------------------------------

    def preserve(self, handlers: list[FileHandler], token: int, fd: int) -> None:
        """``luo_preserve_file``: EEXIST, EBADF, ENOENT, EBUSY, in the kernel's order."""
        if any(f.token == token for f in self.files):
            raise ExistsError(f"token {token:#x} is already used in this session")
        try:
            own = os.dup(fd)  # LUO keeps its own reference, as fget() does
        except OSError as exc:
            raise BadFileError(f"fd {fd}: {exc.strerror}", errno=exc.errno) from None
        try:
            file = LiveFile(own)
            fh = next((h for h in handlers if h.ops.can_preserve(file)), None)
            if fh is None:
                raise NotFoundError(f"no file handler can preserve fd {fd}")
            file_id = fh.ops.get_id(file)
            earlier = self._preserved.find(own, file_id)
            if earlier is not None:
                raise BusyError(f"fd {fd} is already preserved (token {earlier.token:#x})")
            self._grow_array(len(self.files) + 1)
            self._flbs.file_preserve(fh)
            try:
                data = fh.ops.preserve(file)
                handle = self._out.put(fh.schema, data, f"file handler {fh.compatible}")
            except BaseException:
                self._flbs.file_unpreserve(fh)
                raise
        except BaseException:
            os.close(own)
            self._grow_array(len(self.files))
            raise
        luo_file = LuoFile(fh, token, handle, file, data)
        self._preserved.add(own, file_id, luo_file)
        self.files.append(luo_file)

    def unpreserve_all(self, call: Callable[[str, Callable[..., object]], None]) -> None:
        """``luo_file_unpreserve_files``: newest first; ``call`` runs each callback and
        logs its failure (unpreserve must not fail)."""
        while self.files:
            f = self.files.pop()
            call(f.owner, lambda f=f: f.fh.ops.unpreserve(_held(f), f.data))
            call(f.owner, lambda f=f: self._flbs.file_unpreserve(f.fh))
            self._out.drop(f.fh.schema, f.handle)
            self._preserved.remove(f)
            os.close(_held(f).fd)
        self._grow_array(0)

    def _grow_array(self, count: int) -> None:
        """Preserved pages for ``count`` entries, exactly (none for none): the next
        kernel frees what the entries cover, so no page is left over."""
        page = self._out.memory.PAGE_SIZE
        size = -(-count * FILE_SER.size // page) * page
        if size == self._array_size:
            return
        if self.array:
            self._out.unpreserve_free(self.array)
        self.array = self._out.alloc_preserve(size) if size else 0
        self._array_size = size

    def freeze(self) -> list[FileSer]:
        """``luo_file_freeze``: each file in order; on a failure the earlier ones are
        unfrozen and the error raised.  Returns the ``luo_file_ser`` entries."""
        done: list[LuoFile] = []
        for f in self.files:
            try:
                new = f.fh.ops.freeze(_held(f), f.data)
                if new is not None:
                    handle = self._out.put(f.fh.schema, new, f"file handler {f.fh.compatible}")
                    self._out.drop(f.fh.schema, f.handle)
                    f.data, f.handle = new, handle
            except BaseException:
                self.unfreeze(done)
                raise
            done.append(f)
        return [FileSer(f.fh.compatible, f.handle, f.token) for f in self.files]

    def unfreeze(self, files: list[LuoFile] | None = None) -> None:
        for f in self.files if files is None else files:
            try:
                f.fh.ops.unfreeze(_held(f), f.data)
            except Exception:  # unfreeze returns void in the kernel: nothing stops it
                continue

    # -- incoming -------------------------------------------------------------------

    def deserialize(
        self, handlers: dict[str, FileHandler], found: list[FileSer], session: str
    ) -> None:
        """``luo_file_deserialize``: a handler unknown here is ``ENOENT``."""
        for ser in found:
            fh = handlers.get(ser.compatible)
            if fh is None:
                raise NotFoundError(
                    f"session {session!r}: no file handler {ser.compatible!r} in this kernel"
                )
            if any(f.token == ser.token for f in self.files):
                raise ExistsError(f"session {session!r}: token {ser.token:#x} appears twice")
            self.files.append(LuoFile(fh, ser.token, ser.data))

    def _data(self, f: LuoFile) -> Any:
        assert self._in is not None
        if f.data is None:
            f.data = self._in.get(f.fh.schema, f.handle, f.owner)
        return f.data

    def retrieve(self, token: int) -> LiveFile:
        """``luo_retrieve_file``: ENOENT if unknown; the same file if retrieved before."""
        f = next((f for f in self.files if f.token == token), None)
        if f is None:
            raise NotFoundError(f"no file with token {token:#x} in this session")
        if f.retrieve_error is not None:
            raise f.retrieve_error
        if f.file is not None:
            return f.file
        try:
            fd = f.fh.ops.retrieve(self._data(f))
            if not isinstance(fd, int) or isinstance(fd, bool):
                raise TypeError(
                    f"{f.owner}: retrieve returned {type(fd).__name__}, not a descriptor"
                )
            os.fstat(fd)
        except Exception as exc:
            error = (
                exc
                if isinstance(exc, LiveUpdateError)
                else LiveUpdateError(
                    f"retrieve of {f.owner} failed: {type(exc).__name__}: {exc}",
                    errno=getattr(exc, "errno", None)
                    if isinstance(getattr(exc, "errno", None), int)
                    else None,
                )
            )
            f.retrieve_error = error
            raise error from None
        f.file = LiveFile(fd)
        return f.file

    def finish(self, call: Callable[[str, Callable[..., object]], None]) -> None:
        """``luo_file_finish``: every ``can_finish`` first (``EBUSY`` if one says no),
        then ``finish`` newest first."""
        for f in self.files:
            if not f.fh.ops.can_finish(f.file, self._data(f), f.retrieved):
                raise BusyError(f"{f.owner} cannot finish yet (can_finish said no)")
        assert self._in is not None
        while self.files:
            f = self.files.pop()
            call(f.owner, lambda f=f: f.fh.ops.finish(f.file, self._data(f), f.retrieved))
            call(f.owner, lambda f=f: self._flbs.file_finish(f.fh))
            call(f.owner, lambda f=f: self._release(f))
            if f.file is not None:
                os.close(f.file.fd)

    def _release(self, f: LuoFile) -> None:
        assert self._in is not None
        self._in.release(f.fh.schema, f.handle, f.owner)


def _held(f: LuoFile) -> LiveFile:
    """An outgoing file: LUO holds it from preserve to unpreserve."""
    if f.file is None:
        raise LiveUpdateError(f"{f.owner} is not held by LUO")
    return f.file
