"""``/dev/liveupdate`` and sessions of a kernel in another process, driven from here.

The objects live in the kernel's process; here are handles to them, as a
process holds descriptors.  ``preserve_fd`` sends the descriptor over the
control socket (``SCM_RIGHTS``): the kernel keeps its own reference, so the
caller may close theirs.  ``retrieve_fd`` receives a new descriptor of the
file the next kernel rebuilt.  When the kernel kexecs, every handle to it
fails with :class:`~luo_core.errors.KernelGoneError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from luo_core.abi import _wire
from luo_core.errors import KexecError

if TYPE_CHECKING:
    from luo_core.kexec._process import KernelProcess


class _Handle:
    def __init__(self, kernel: KernelProcess, handle: int) -> None:
        self._kernel = kernel
        self._handle = handle
        self.closed = False

    def _call(self, call: str, fds: list[int] | None = None, **args: Any) -> dict[str, Any]:
        return self._kernel._call({"op": "luo", "handle": self._handle, "call": call, **args}, fds)

    def close(self) -> None:
        if not self.closed:
            self._call("close")
            self.closed = True

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteLiveUpdateDevice(_Handle):
    """:class:`~luo_core.LiveUpdateDevice`, in a kernel process."""

    def create_session(self, name: str) -> RemoteSession:
        reply = self._call("create_session", name=name)
        return RemoteSession(self._kernel, _handle(reply), name)

    def retrieve_session(self, name: str) -> RemoteSession:
        reply = self._call("retrieve_session", name=name)
        return RemoteSession(self._kernel, _handle(reply), name)

    def __enter__(self) -> RemoteLiveUpdateDevice:
        return self


class RemoteSession(_Handle):
    """:class:`~luo_core.Session`, in a kernel process."""

    def __init__(self, kernel: KernelProcess, handle: int, name: str) -> None:
        super().__init__(kernel, handle)
        self.name = name

    def preserve_fd(self, fd: int, token: int) -> None:
        self._call("preserve_fd", [fd], token=token)

    def retrieve_fd(self, token: int) -> int:
        fds = self._kernel._call_fds(
            {"op": "luo", "handle": self._handle, "call": "retrieve_fd", "token": token}
        )
        if len(fds) != 1:
            _wire.close_fds(fds)
            raise KexecError(f"the kernel sent {len(fds)} descriptors for one file")
        return fds[0]

    def finish(self) -> None:
        self._call("finish")

    def __enter__(self) -> RemoteSession:
        return self


def _handle(reply: dict[str, Any]) -> int:
    handle = reply.get("handle")
    if type(handle) is not int:
        raise KexecError("the kernel answered without a handle")
    return handle
