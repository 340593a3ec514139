"""How a kernel (or the operator) reaches the hardware: a channel to an address.

An address is ``unix:NAME`` (the hardware process's socket, in the abstract
namespace) or ``local:N`` (hardware running in this process, for fast tests).
Both carry the same messages as bytes; the local one only skips the socket.
Every reply is checked: an ``error`` reply becomes a :class:`HardwareError`
with the hardware's errno and message.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from luo_core.abi import _wire
from luo_core.errors import HardwareError, LiveUpdateError
from luo_core.platform._hardware import Connection, local_hardware

CONNECT_TIMEOUT = 10.0
REPLY_TIMEOUT = 60.0


class Channel(Protocol):
    def call(self, request: Mapping[str, Any]) -> tuple[dict[str, Any], list[int]]: ...

    def close(self) -> None: ...


def connect(address: str, role: str = "kernel") -> Channel:
    """A channel to the hardware at ``address``."""
    if address.startswith("local:"):
        return LocalChannel(address, role)
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect("\0" + address.removeprefix("unix:"))
        except OSError as exc:
            sock.close()
            raise HardwareError(
                f"cannot reach the hardware at {address}: {exc.strerror}", errno=errno.ENODEV
            ) from None
        return SocketChannel(sock)
    raise HardwareError(f"hardware address {address!r} is neither unix:NAME nor local:N")


def check(reply: dict[str, Any], fds: list[int]) -> tuple[dict[str, Any], list[int]]:
    """``reply`` unless it reports an error, which is raised (and ``fds`` closed)."""
    error = reply.get("error")
    if error is None:
        return reply, fds
    _wire.close_fds(fds)
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        code = error.get("errno")
        raise HardwareError(error["message"], errno=code if type(code) is int else None)
    raise HardwareError(f"the hardware sent a malformed error: {error!r:.80}")


class LocalChannel:
    """Hardware in this process, spoken to in bytes all the same."""

    def __init__(self, address: str, role: str) -> None:
        self._address = address
        self._conn = Connection(role)
        self._closed = False

    def call(self, request: Mapping[str, Any]) -> tuple[dict[str, Any], list[int]]:
        if self._closed:
            raise HardwareError("the channel to the hardware is closed", errno=errno.EBADF)
        hardware = local_hardware(self._address)
        message = _wire.decode(_wire.encode(dict(request)))
        reply, fds = hardware.handle(message, self._conn)
        try:
            decoded = _wire.decode(_wire.encode(reply))
        except BaseException:
            _wire.close_fds(fds)
            raise
        return check(decoded, fds)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(LiveUpdateError):
            local_hardware(self._address).handle({"op": "detach"}, self._conn)


class SocketChannel:
    """The hardware process, over a UNIX socket; one request at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        sock.settimeout(REPLY_TIMEOUT)

    def call(self, request: Mapping[str, Any]) -> tuple[dict[str, Any], list[int]]:
        with self._lock:
            if self._sock.fileno() < 0:
                raise HardwareError("the channel to the hardware is closed", errno=errno.EBADF)
            _wire.send(self._sock, dict(request))
            return check(*_wire.receive(self._sock))

    def close(self) -> None:
        with self._lock:
            self._sock.close()
