"""What a kernel in its own process answers its operator: the live-update events, and more.

One request at a time on the control socket: the ``dev_liveupdate`` requests
(``request``, ``release``, ``link``), the events (``prepare``, ``freeze``,
``cancel``, ``finish``, ``kexec``), what the operator may look at (``state``,
``devices``, ``stats``, ``records``, ``manifest``), a contract's workload or
snapshot on a device, and ``shutdown``.  Errors go back as data (type, errno,
one-line message) and become the same typed errors on the operator's side.
At ``kexec`` this process jumps: it hands the next kernel the KHO root over
the cpr socket it was given at ``prepare``, answers, and exits.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
from pathlib import Path
from typing import Any, Final

from luo_core.abi import _wire, save_image
from luo_core.errors import (
    BadFileError,
    CallbackError,
    HandoffError,
    InvalidArgumentError,
    InvalidTransitionError,
    LiveUpdateError,
    NotFoundError,
    PeerGoneError,
)
from luo_core.kernel._kernel import Kernel
from luo_core.kernel._state import State
from luo_core.kernel._sysfs import write_sysfs
from luo_core.kernel.sessions import LiveUpdateDevice, Session
from luo_core.kexec._watch import watch

PATH_MAX: Final = 4096
"""The longest path the ``sysfs`` request takes, as Linux's ``PATH_MAX``."""
READY_TIMEOUT: Final = 60.0
"""How long prepare waits for the next kernel to report ready (s)."""


def error_reply(exc: BaseException) -> dict[str, Any]:
    """An exception as data the operator turns back into the same typed error."""
    code = getattr(exc, "errno", None)
    message = str(exc) if isinstance(exc, LiveUpdateError) else f"{type(exc).__name__}: {exc}"
    error: dict[str, Any] = {
        "type": type(exc).__name__,
        "errno": code if type(code) is int else errno.EIO,
        "message": " ".join(message.split()),
    }
    if isinstance(exc, CallbackError):
        error["participant"], error["phase"] = exc.participant, exc.phase
    return {"error": error}


class KernelServer:
    """Serves one booted kernel to its operator."""

    def __init__(self, kernel: Kernel, control: socket.socket) -> None:
        self.kernel = kernel
        self.control = control
        self.cpr: socket.socket | None = None
        self.handles: dict[int, LiveUpdateDevice | Session] = {}
        """Open ``/dev/liveupdate`` and session objects, by the number the operator holds
        (as a process holds descriptors)."""
        self._next_handle = 1

    def describe(self) -> dict[str, Any]:
        kernel = self.kernel
        stats = kernel.stats.to_wire() if kernel.stats is not None else None
        return {
            "pid": os.getpid(),
            "state": kernel.state.value,
            "liveupdate-number": kernel.liveupdate_number,
            "generation": kernel.generation,
            "stats": stats,
            "packs": [f"{p.origin} {p.status}" for p in kernel.registry.packs],
        }

    def serve(self) -> int:
        self.control.settimeout(None)
        while True:
            try:
                request, fds = _wire.receive(self.control)
            except PeerGoneError:
                self._power_off()
                return 0
            except LiveUpdateError as exc:  # the stream cannot be trusted any more
                with contextlib.suppress(LiveUpdateError, OSError):
                    _wire.send(self.control, error_reply(exc))
                self._power_off()
                return 1
            leave = False
            passed: list[int] = []
            try:
                reply, leave = self._dispatch(request, fds)
                passed = reply.pop("fds", [])
            except Exception as exc:
                _wire.close_fds(fds)
                reply = error_reply(exc)
            if self.kernel.state is State.NORMAL:
                self._unload()  # no update in progress (cancelled, rolled back): no next kernel
            try:
                _wire.send(self.control, reply, passed)
            except (PeerGoneError, OSError):  # the operator went away mid-answer
                self._power_off()
                return 0
            finally:
                _wire.close_fds(passed)
            if leave:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(0)  # a kexec stops every CPU: no thread of this kernel runs on

    def _dispatch(self, request: dict[str, Any], fds: list[int]) -> tuple[dict[str, Any], bool]:
        op = request.get("op")
        kernel = self.kernel
        if op not in ("prepare", "kexec", "luo") and fds:
            raise HandoffError(f"{op} carries no descriptors")
        if op == "state":
            return self.describe(), False
        if op in ("request", "release"):
            device = _text(request, "device")
            (kernel.devices.request if op == "request" else kernel.devices.release)(device)
            return {}, False
        if op == "link":
            kernel.devices.link(_text(request, "supplier"), _text(request, "consumer"))
            return {}, False
        if op == "prepare":
            return self._prepare(request, fds), False
        if op == "freeze":
            kernel.freeze()
            return self.describe(), False
        if op == "cancel":
            kernel.cancel()
            return self.describe(), False
        if op == "finish":
            kernel.finish()
            return self.describe(), False
        if op == "kexec":
            return self._kexec(request, fds), True
        if op == "luo-open":
            return {"handle": self._hold(kernel.open_liveupdate())}, False
        if op == "luo":
            return self._luo(request, fds), False
        if op == "devices":
            return {"devices": [_device(d) for d in kernel.devices.devices()]}, False
        if op == "stats":
            return self.describe(), False
        if op == "records":
            nodes = kernel.kho.nodes
            return {
                "records": {
                    n: kernel.memory.read(node.phys, node.length) for n, node in nodes.items()
                }
            }, False
        if op == "handoff":
            if kernel.kho_root is None:
                raise NotFoundError("this kernel was cold-booted: it has no handoff")
            return {"image": save_image(kernel.memory, kernel.kho_root)}, False
        if op == "manifest":
            return {"manifest": kernel.manifest()}, False
        if op == "contract":
            return {"result": self._contract(request)}, False
        if op == "command":
            args = request.get("args", {})
            if not isinstance(args, dict):
                raise InvalidArgumentError("a command's args must be a map")
            return {"result": kernel.command(_text(request, "name"), args)}, False
        if op == "findings":
            return {"findings": watch().findings()}, False
        if op == "sysfs":
            return _sysfs(kernel, request), False
        if op == "shutdown":
            self._power_off()
            return {}, True
        raise NotFoundError(f"a kernel does not know the request {op!r}", errno=errno.EOPNOTSUPP)

    def _prepare(self, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        if len(fds) != 1:
            raise HandoffError("prepare carries exactly one descriptor: the next kernel's socket")
        self._unload()
        self.cpr = _unix_socket(fds[0], "prepare")
        target = request.get("target")
        try:
            self.kernel.prepare(target=target, load=self._await_ready)
        except BaseException:
            self._unload()
            raise
        return self.describe()

    def _await_ready(self) -> None:
        """The last step of prepare: the next kernel must be loaded and warm."""
        assert self.cpr is not None
        self.cpr.settimeout(READY_TIMEOUT)
        try:
            message, fds = _wire.receive(self.cpr)
        except PeerGoneError:
            raise LiveUpdateError(
                "the next kernel exited before it was ready", errno=errno.ENOEXEC
            ) from None
        _wire.close_fds(fds)
        if message.get("op") == "failed":
            error = message.get("error")
            reason = error.get("message") if isinstance(error, dict) else None
            raise LiveUpdateError(f"the next kernel failed to load: {reason}", errno=errno.ENOEXEC)
        if message.get("op") != "ready":
            raise HandoffError(f"the next kernel answered {message.get('op')!r}, not ready")

    def _kexec(self, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        """Jump.  Without a prepared update the next kernel's socket comes with the
        request (``kexec -l`` just before ``kexec -e``): a plain kexec."""
        hold = request.get("hold") is True
        if fds:
            if self.cpr is not None or len(fds) != 1:
                _wire.close_fds(fds)
                raise HandoffError(
                    "kexec carries the next kernel's socket only when none is loaded"
                )
            self.cpr = _unix_socket(fds[0], "kexec")
            self._await_ready()
        if self.cpr is None:
            state = self.kernel.state.value
            raise InvalidTransitionError(f"kexec: no next kernel is loaded (state {state})")
        root = self.kernel._jump()
        self.handles.clear()
        stats = self.kernel.stats
        left = list(stats.threads_left) if stats is not None else []
        self.kernel._die()
        _wire.send(self.cpr, {"op": "jump", "kho-root": root, "hold": hold})
        return {"kho-root": root, "threads-left": left}

    def _contract(self, request: dict[str, Any]) -> object:
        name, call, device = (
            _text(request, "contract"),
            _text(request, "call"),
            _text(request, "device"),
        )
        contracts = [
            c for result in self.kernel.registry.pm.hook.luo_contracts() for c in result or ()
        ]
        for contract in contracts:
            if getattr(contract, "name", None) == name:
                break
        else:
            raise NotFoundError(f"no contract {name!r} in this kernel's packs")
        dev = self.kernel.devices[device]
        if call == "workload":
            contract.workload(dev)
            return None
        if call == "snapshot":
            return _wire.plain(contract.snapshot(dev))
        raise NotFoundError(f"a contract has no {call!r}")

    def _hold(self, obj: LiveUpdateDevice | Session) -> int:
        handle = self._next_handle
        self._next_handle += 1
        self.handles[handle] = obj
        return handle

    def _luo(self, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        """A call on an open ``/dev/liveupdate`` or session, by handle."""
        handle, call = request.get("handle"), _text(request, "call")
        obj = self.handles.get(handle) if type(handle) is int else None
        if obj is None:
            raise BadFileError(f"no open liveupdate object {handle!r:.20}")
        if call == "preserve_fd":
            if len(fds) != 1 or not isinstance(obj, Session):
                raise HandoffError("preserve_fd carries exactly one descriptor, to a session")
            try:
                obj.preserve_fd(fds[0], _token(request))
            finally:
                os.close(fds[0])  # LUO holds its own reference
            return {}
        if fds:
            raise HandoffError(f"{call} carries no descriptors")
        if call == "close":
            obj.close()
            del self.handles[handle]  # type: ignore[arg-type]
            return {}
        if isinstance(obj, LiveUpdateDevice):
            if call == "create_session":
                session = obj.create_session(_text(request, "name"))
            elif call == "retrieve_session":
                session = obj.retrieve_session(_text(request, "name"))
            else:
                raise NotFoundError(f"/dev/liveupdate has no {call!r}", errno=errno.ENOTTY)
            return {"handle": self._hold(session), "name": session.name}
        if call == "retrieve_fd":
            return {"fds": [obj.retrieve_fd(_token(request))]}
        if call == "finish":
            obj.finish()
            return {}
        raise NotFoundError(f"a session has no {call!r}", errno=errno.ENOTTY)

    def _unload(self) -> None:
        if self.cpr is not None:
            self.cpr.close()
            self.cpr = None

    def _power_off(self) -> None:
        self._unload()
        with contextlib.suppress(Exception):
            self.kernel.power_off()
        with contextlib.suppress(Exception):
            self.kernel._die()


def _device(dev: Any) -> dict[str, Any]:
    return {
        "name": dev.name,
        "driver": dev.driver.name if dev.driver is not None else None,
        "requested": dev.requested,
        "preserved": dev.preserved,
        "reclaimed": dev.reclaimed,
        "bus-master": dev.bus_master,
    }


def _sysfs(kernel: Kernel, request: dict[str, Any]) -> dict[str, Any]:
    """Write the kernel's sysfs view under the request's ``path``: an absolute path
    to an existing directory, read as hostile as every field."""
    path = request.get("path")
    if not (isinstance(path, str) and 0 < len(path) <= PATH_MAX and "\0" not in path):
        raise InvalidArgumentError(f"sysfs: the path must be text of 1 to {PATH_MAX} characters")
    if not os.path.isabs(path):
        raise InvalidArgumentError(f"sysfs: {path!r:.80} is not an absolute path")
    if not os.path.isdir(path):
        raise NotFoundError(
            f"sysfs: {path!r:.80} is not an existing directory", errno=errno.ENOTDIR
        )
    try:
        write_sysfs(kernel, Path(path))
    except OSError as exc:
        raise InvalidArgumentError(
            f"sysfs: cannot write under {path!r:.80}: {exc.strerror}", errno=exc.errno
        ) from None
    return {}


def _unix_socket(fd: int, what: str) -> socket.socket:
    """The next kernel's end of the cpr channel, as received: it must be a UNIX stream."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        os.close(fd)
        raise HandoffError(
            f"{what}: the next kernel's descriptor is not a socket: {exc}"
        ) from None
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.close()
        raise HandoffError(f"{what}: the next kernel's descriptor is not a UNIX stream socket")
    return sock


def _token(request: dict[str, Any]) -> int:
    token = request.get("token")
    if type(token) is not int:
        raise HandoffError("request field 'token' must be an integer")
    return token


def _text(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str):
        raise HandoffError(f"request field {key!r} must be text")
    return value
