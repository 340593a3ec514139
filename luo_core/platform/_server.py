"""The hardware process: it powers on before the first kernel and outlives every kernel.

``python -m luo_core.platform --control-fd N`` is started by the operator
(:class:`HardwareProcess`), which sends the machine description on that
socket.  The process builds the :class:`Hardware`, listens on a UNIX socket in
the abstract namespace for kernels, and serves every connection on a thread
of its own, one message at a time.  It powers off when the operator's socket
closes.  A kernel that goes away without detaching is detached when its
connection closes, so its generation can never touch the hardware again.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from luo_core._logging import configure as configure_logging
from luo_core._logging import get_logger
from luo_core.abi import _wire
from luo_core.abi._boot import resolve
from luo_core.abi._machine import Machine
from luo_core.errors import HardwareError, LiveUpdateError, PeerGoneError
from luo_core.platform._hardware import Connection, Hardware, close_fds
from luo_core.platform._link import Channel, SocketChannel

log = get_logger("luo.hw")
START_TIMEOUT = 60.0


def serve(hardware: Hardware, sock: socket.socket, role: str) -> None:
    """Answer ``sock``'s messages until its peer goes; then detach it."""
    conn = Connection(role)
    sock.settimeout(None)
    try:
        while True:
            try:
                request, fds = _wire.receive(sock)
            except PeerGoneError:
                return
            except LiveUpdateError as exc:  # a malformed message: answer, then hang up
                with contextlib.suppress(LiveUpdateError, OSError):
                    _wire.send(sock, {"error": {"errno": exc.errno, "message": str(exc)}})
                log.error("hardware_bad_message", role=role, error=str(exc))
                return
            close_fds(fds)  # no request carries descriptors
            reply, out = hardware.handle(request, conn)
            try:
                _wire.send(sock, reply, out)
            except PeerGoneError:
                return
            except LiveUpdateError as exc:  # an answer that cannot be sent: say so instead
                _wire.send(sock, {"error": {"errno": exc.errno, "message": str(exc)}})
            except OSError:
                return
            finally:
                close_fds(out)
    finally:
        hardware.handle({"op": "detach"}, conn)
        sock.close()


def _accept(hardware: Hardware, listener: socket.socket) -> None:
    while True:
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        threading.Thread(
            target=serve, args=(hardware, sock, "kernel"), name="luo-hw conn", daemon=True
        ).start()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m luo_core.platform")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--log", default="warning")
    args = parser.parse_args(argv)
    # The operator powers the hardware off; Ctrl-C at its terminal is its business.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(args.log, hardware=os.getpid())
    control = socket.socket(fileno=args.control_fd)
    control.settimeout(START_TIMEOUT)
    try:
        request, fds = _wire.receive(control)
        close_fds(fds)
        if request.get("op") != "power-on":
            raise HardwareError(f"expected power-on, got {request.get('op')!r}")
        refs = request.get("models", [])
        if not (isinstance(refs, list) and all(isinstance(r, str) for r in refs)):
            raise HardwareError("power-on models must be a list of 'module:attr' references")
        machine = Machine.from_wire(request.get("machine"))
        hardware = Hardware(
            machine, models=[resolve(r) for r in refs], discover=request.get("discover") is True
        )
    except Exception as exc:
        with contextlib.suppress(Exception):
            _wire.send(control, {"error": {"errno": 5, "message": f"power-on failed: {exc}"}})
        return 1
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    name = f"luo-hw-{os.getpid()}-{secrets.token_hex(4)}"
    listener.bind("\0" + name)
    listener.listen(16)
    threading.Thread(
        target=_accept, args=(hardware, listener), name="luo-hw accept", daemon=True
    ).start()
    try:
        _wire.send(control, {"address": f"unix:{name}", "pid": os.getpid()})
    except (PeerGoneError, OSError):  # the operator went away while we powered on
        listener.close()
        hardware.close()
        return 0
    serve(hardware, control, "operator")
    listener.close()
    hardware.close()
    return 0


class HardwareProcess:
    """The hardware in a process of its own, seen from the operator's side.

    It offers what :class:`Hardware` offers the operator — ``address``,
    ``control``, ``sync``, ``stats``, ``reset``, ``close`` — through messages.  ``models``
    are ``'module:attr'`` references the hardware process imports.
    """

    def __init__(
        self,
        machine: Machine,
        *,
        models: Iterable[str] = (),
        discover: bool = True,
        python: str | None = None,
        env: Mapping[str, str] | None = None,
        log: str = "warning",
    ) -> None:
        machine.check()
        self.machine = machine
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._process = subprocess.Popen(
                [
                    python or sys.executable,
                    "-m",
                    "luo_core.platform",
                    "--control-fd",
                    str(theirs.fileno()),
                ],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C at the terminal is for the operator, not for us
                stdout=2,
                env=dict(env) if env is not None else None,
            )
        finally:
            theirs.close()
        self._channel: Channel = SocketChannel(mine)
        mine.settimeout(START_TIMEOUT)
        try:
            reply, _ = self._channel.call(
                {
                    "op": "power-on",
                    "machine": machine.to_wire(),
                    "models": list(models),
                    "discover": discover,
                }
            )
        except BaseException:
            self.close()
            raise
        address, pid = reply.get("address"), reply.get("pid")
        if not (isinstance(address, str) and address.startswith("unix:") and type(pid) is int):
            self.close()
            raise HardwareError(f"the hardware process answered power-on with {reply!r:.80}")
        self.address: str = address
        self.pid: int = pid

    def control(self, device: str, op: str, args: Mapping[str, Any] | None = None) -> object:
        reply, _ = self._channel.call(
            {"op": "control", "device": device, "name": op, "args": dict(args or {})}
        )
        return reply.get("result")

    def sync(self) -> None:
        self._channel.call({"op": "sync"})

    def stats(self) -> dict[str, int]:
        """The remapping hardware's counters (see :meth:`Hardware.stats`)."""
        reply, _ = self._channel.call({"op": "stats"})
        stats = reply.get("stats")
        if not (
            isinstance(stats, dict)
            and all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in stats.items())
        ):
            raise HardwareError(f"the hardware process answered stats with {stats!r:.80}")
        return stats

    def reset(self, device: str) -> None:
        """A function-level reset, as the operator (firmware) would do it."""
        self._channel.call({"op": "operator-reset", "device": device})

    def close(self) -> None:
        """Power off: the process exits once its operator socket closes."""
        self._channel.close()
        try:
            self._process.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> HardwareProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
