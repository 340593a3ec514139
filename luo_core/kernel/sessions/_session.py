"""Sessions (``kernel/liveupdate/luo_session.c``) and ``/dev/liveupdate`` (``luo_core.c``).

Userspace opens the device (one opener at a time, ``EBUSY``), creates named
sessions in it and preserves files in them by token.  Sessions still open at
kexec are serialized, their files frozen in order; closing one before that
unpreserves its files.  In the next kernel a session is retrieved by name,
once, its files retrieved by token, and it is finished (or closed, which
finishes it).  Sessions nobody retrieves are dropped by the next kexec.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from luo_core.abi._luo import SESSION_NAME_LENGTH
from luo_core.errors import (
    BadFileError,
    BusyError,
    InvalidArgumentError,
    KernelGoneError,
)
from luo_core.kernel.sessions._files import FileSet

if TYPE_CHECKING:
    from luo_core.kernel.sessions._core import Luo


def check_name(name: object) -> str:
    """A session name as ``luo_session_create`` takes it: 1 to 63 bytes, no NUL (``EINVAL``)."""
    if not isinstance(name, str):
        raise InvalidArgumentError(f"a session name is text, not {type(name).__name__}")
    raw = name.encode(errors="surrogatepass")
    if not raw or len(raw) >= SESSION_NAME_LENGTH or b"\0" in raw:
        raise InvalidArgumentError(
            f"session name must be 1 to {SESSION_NAME_LENGTH - 1} bytes with no NUL "
            f"({len(raw)} bytes given)"
        )
    try:
        raw.decode()
    except UnicodeDecodeError:
        raise InvalidArgumentError("session name is not valid UTF-8") from None
    return name


def check_token(token: object) -> int:
    if not isinstance(token, int) or isinstance(token, bool) or not 0 <= token < 1 << 64:
        raise InvalidArgumentError(f"a token is a u64, not {token!r:.40}")
    return token


class Session:
    """A named set of preserved files: what a session file descriptor stands for."""

    def __init__(self, luo: Luo, name: str, files: FileSet, *, incoming: bool) -> None:
        self._luo = luo
        self.name = name
        """The session's name (``LIVEUPDATE_SESSION_GET_NAME``)."""
        self.files = files
        self.incoming = incoming
        """Handed over by the previous kernel (retrieved), not created here."""
        self.retrieved = False
        self.closed = False
        self.lock = threading.Lock()

    def __repr__(self) -> str:
        kind = "incoming" if self.incoming else "outgoing"
        return f"<Session {self.name!r} {kind}, {len(self.files)} files>"

    def _open(self) -> None:
        self._luo.alive()
        if self.closed:
            raise BadFileError(f"session {self.name!r} is closed")

    def preserve_fd(self, fd: int, token: int) -> None:
        """``LIVEUPDATE_SESSION_PRESERVE_FD``: preserve the open file ``fd`` under ``token``.

        ``EEXIST``: the token is in use; ``EBUSY``: the file is already
        preserved; ``ENOENT``: no handler takes it; ``EBADF``: not an open
        descriptor.  LUO keeps its own reference: ``fd`` may be closed after.
        """
        token = check_token(token)
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise BadFileError(f"fd must be a descriptor number, not {fd!r:.40}")
        with self._luo.lock, self.lock:
            self._open()
            if self.incoming:
                raise InvalidArgumentError(
                    f"session {self.name!r} was handed over: files are retrieved from it, "
                    "not preserved in it"
                )
            self.files.preserve(self._luo.handlers(), token, fd)

    def retrieve_fd(self, token: int) -> int:
        """``LIVEUPDATE_SESSION_RETRIEVE_FD``: a new descriptor for the file preserved as
        ``token`` (``ENOENT`` if unknown).  Any order; asking again is harmless."""
        token = check_token(token)
        with self._luo.lock, self.lock:
            self._open()
            if not self.incoming:
                raise InvalidArgumentError(
                    f"session {self.name!r} was created in this kernel: nothing to retrieve"
                )
            return self._luo.dup(self.files.retrieve(token).fd)

    def finish(self) -> None:
        """``LIVEUPDATE_SESSION_FINISH``: ``EBUSY`` while a ``can_finish`` says no (retry
        later); then every file is finished, newest first, and LUO lets go of them."""
        with self._luo.lock, self.lock:
            self._open()
            if not self.incoming:
                raise InvalidArgumentError(
                    f"session {self.name!r} was created in this kernel: nothing to finish"
                )
            self.files.finish(self._luo.quietly)

    def close(self) -> None:
        """Close the session: an outgoing one unpreserves its files; an incoming one is
        finished (and stays, with :class:`~luo_core.errors.BusyError`, if it cannot be)."""
        with self._luo.lock, self.lock:
            if self.closed:
                return
            try:
                self._luo.alive()
            except KernelGoneError:
                self.closed = True  # its kernel is gone and took the session with it
                return
            if self.incoming:
                try:
                    self.files.finish(self._luo.quietly)
                except BusyError:
                    raise BusyError(
                        f"session {self.name!r} cannot finish yet: not closed"
                    ) from None
            else:
                self.files.unpreserve_all(self._luo.quietly)
            self.closed = True
            self._luo.remove(self)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LiveUpdateDevice:
    """``/dev/liveupdate`` opened: create and retrieve sessions; ``close()`` lets another open it.

    Closing the device does not close its sessions: they are descriptors of
    their own.
    """

    def __init__(self, luo: Luo) -> None:
        self._luo = luo
        self.closed = False

    def _open(self) -> None:
        self._luo.alive()
        if self.closed:
            raise BadFileError("/dev/liveupdate is closed")

    def create_session(self, name: str) -> Session:
        """``LIVEUPDATE_IOCTL_CREATE_SESSION``: ``EEXIST`` for a name in use; ``EINVAL`` for
        an empty name or one of 64 bytes or more."""
        self._open()
        return self._luo.create_session(check_name(name))

    def retrieve_session(self, name: str) -> Session:
        """``LIVEUPDATE_IOCTL_RETRIEVE_SESSION``: ``ENOENT`` if not handed over, ``EINVAL``
        if already retrieved."""
        self._open()
        return self._luo.retrieve_session(check_name(name))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._luo.release_device()

    def __enter__(self) -> LiveUpdateDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
