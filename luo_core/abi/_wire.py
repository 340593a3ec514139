"""Messages between luo's processes: frames of deterministic CBOR over UNIX sockets, with fds.

The hardware, each kernel and the controller that drives them talk over
``AF_UNIX`` stream sockets, the way vfio-user and QEMU's cpr-transfer do: a
message is one frame (magic ``LUOC``) whose body is a canonical CBOR map, and
file descriptors (memory, eventfds, sockets) travel beside it as
``SCM_RIGHTS``.  Whoever reads treats the peer as hostile: the frame is
checked before the body is decoded, the body is at most 1 MiB and scanned
strictly, at most :data:`MAX_FDS` descriptors are taken (any more, and every
received one is closed), and a peer that stops mid-message or sends nothing
within the timeout is an error, never a hang.
"""

from __future__ import annotations

import array
import contextlib
import enum
import errno
import os
import socket
from collections.abc import Iterable, Sequence
from typing import Any, Final

import attrs

from luo_core.abi._cbor import decode_canonical, encode_canonical
from luo_core.abi._frame import HEADER, FrameKind
from luo_core.errors import (
    DecodeError,
    HandoffError,
    LiveUpdateError,
    PeerGoneError,
    SchemaError,
)

MESSAGE: Final = FrameKind("message", b"LUOC", 1, max_body=1 << 20)
MAX_FDS: Final = 64
_FD_SPACE: Final = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)


def encode(message: dict[str, Any]) -> bytes:
    """A message as the bytes that go on the socket."""
    try:
        return MESSAGE.pack(encode_canonical(message))
    except SchemaError as exc:
        raise LiveUpdateError(f"message cannot be encoded: {exc}") from None


def decode(frame: bytes) -> dict[str, Any]:
    """The message in ``frame`` (hostile input: checked, then scanned strictly)."""
    body = MESSAGE.unpack(frame)
    try:
        return decode_canonical(body, max_items=1 << 16)
    except DecodeError as exc:
        raise HandoffError(f"malformed message: {exc}") from None


def send(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    """Send one message, with ``fds`` beside its first byte."""
    data = encode(message)
    if len(fds) > MAX_FDS:
        raise LiveUpdateError(f"a message carries at most {MAX_FDS} descriptors, not {len(fds)}")
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    try:
        sent = sock.sendmsg([data], ancillary)
        if sent < len(data):
            sock.sendall(data[sent:])
    except (BrokenPipeError, ConnectionResetError) as exc:
        raise PeerGoneError(f"the peer is gone: {exc.strerror}") from None


def receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One message and the descriptors that came with it; the caller owns the fds.

    The socket's own timeout bounds the wait; on any error every descriptor
    received so far is closed.
    """
    fds: list[int] = []
    try:
        head = _read(sock, HEADER.size, fds, first=True)
        total = MESSAGE.size(head)
        frame = head + _read(sock, total - HEADER.size, fds, first=False)
        return decode(frame), fds
    except BaseException:
        close_fds(fds)
        raise


def close_fds(fds: Iterable[int]) -> None:
    """Close every descriptor in ``fds``, ignoring those already closed."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _read(sock: socket.socket, size: int, fds: list[int], *, first: bool) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < size:
        try:
            data, ancillary, flags, _ = sock.recvmsg(size - got, _FD_SPACE)
        except TimeoutError:
            raise LiveUpdateError(
                "the peer sent no message in time"
                if first and not got
                else "the peer stalled mid-message",
                errno=errno.ETIMEDOUT,
            ) from None
        except ConnectionResetError:
            data, ancillary, flags = b"", [], 0
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % array.array("i").itemsize
                fds.extend(array.array("i", payload[:usable]))
        if flags & socket.MSG_CTRUNC or len(fds) > MAX_FDS:
            raise HandoffError(f"a message carried more than {MAX_FDS} descriptors")
        if not data:
            if first and not got and not chunks:
                raise PeerGoneError("the peer closed the connection")
            raise HandoffError(
                f"the peer closed the connection mid-message ({got} of {size} bytes)"
            )
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def plain(value: object, _depth: int = 0) -> Any:
    """``value`` as data a message can carry and ``==`` can compare across processes.

    attrs instances become maps of their fields, tuples lists, sets sorted
    lists, enums their values, floats and non-text map keys their ``repr``;
    anything else that is not plain data is refused (``TypeError``).
    """
    if _depth > 32:
        raise TypeError("a value nested deeper than 32 levels is not plain data")
    if value is None or type(value) in (bool, int, str, bytes):
        return value
    if type(value) is float:
        return repr(value)
    if isinstance(value, enum.Enum):
        return plain(value.value, _depth + 1)
    if attrs.has(type(value)):
        fields: tuple[attrs.Attribute[Any], ...] = attrs.fields(type(value))  # type: ignore[arg-type]
        return {a.name: plain(getattr(value, a.name), _depth + 1) for a in fields}
    if isinstance(value, list | tuple):
        return [plain(item, _depth + 1) for item in value]
    if isinstance(value, set | frozenset):
        return sorted((plain(item, _depth + 1) for item in value), key=repr)
    if isinstance(value, dict):
        found: dict[str, Any] = {}
        for key, item in value.items():
            text = key if type(key) is str else repr(key)
            if text in found:
                raise TypeError(f"map keys {key!r} and {text!r} are the same as text")
            found[text] = plain(item, _depth + 1)
        return found
    raise TypeError(f"{type(value).__name__} is not plain data (ints, text, bytes, lists, maps)")
