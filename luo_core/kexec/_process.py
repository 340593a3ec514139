"""Cross-process kexec, from the operator's side: every kernel is a process of its own.

:meth:`KernelProcess.boot` starts a kernel image, loads it with its boot
parameters and lets it cold-boot.  ``prepare`` starts the *next* image at
once (from ``next_python``, another environment with other pack versions, if
asked), so that it warms up while the participants prepare; the running
kernel's last prepare step waits for it to report ready over their cpr
socket, and a next kernel that cannot start fails prepare, which is rolled
back.  ``kexec`` makes the running kernel freeze, shut down what is not
preserved, finalize KHO, hand the root's address to the next kernel and exit;
the next kernel boots from its boot parameters alone and answers as the new
:class:`KernelProcess`.  Only bytes cross: the boot parameters, the root's
address, and what is in physical memory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import attrs

from luo_core import errors
from luo_core.abi import _wire
from luo_core.abi._boot import BootParams, KernelConfig
from luo_core.abi._machine import Machine
from luo_core.abi._stats import UpdateStats
from luo_core.errors import CallbackError, KexecError, LiveUpdateError, PeerGoneError
from luo_core.kexec._image import LOAD_TIMEOUT
from luo_core.kexec._sessions import RemoteLiveUpdateDevice

REQUEST_TIMEOUT: Final = 600.0
"""How long the operator waits for a kernel to answer one request (s)."""
EXIT_TIMEOUT: Final = 30.0


class Platform(Protocol):
    """What a kernel process needs of the hardware it runs on: where it is, what it is."""

    @property
    def address(self) -> str: ...

    @property
    def machine(self) -> Machine: ...


@attrs.frozen
class DeviceInfo:
    """One device as a kernel process reports it."""

    name: str
    driver: str | None
    requested: bool
    preserved: bool
    reclaimed: bool
    bus_master: bool


def launch_image(
    python: str,
    *,
    next_kernel: bool,
    log: str = "warning",
    stdout: int | None = None,
    stderr: int | None = None,
    env: Mapping[str, str] | None = None,
    start_new_session: bool = False,
) -> tuple[subprocess.Popen[bytes], socket.socket, socket.socket | None]:
    """Start ``python -m luo_core.kexec`` with a control socket (and, for a next
    kernel, a cpr socket); the process and our ends of its sockets.

    Its ends are closed here once it has them; if it cannot start, ours are
    closed too and the ``OSError`` is raised.
    """
    control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    cpr: socket.socket | None = None
    cpr_theirs: socket.socket | None = None
    if next_kernel:
        cpr, cpr_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    command = [python, "-m", "luo_core.kexec", "--control-fd", str(theirs.fileno())]
    command += ["--log", log]
    passed = [theirs.fileno()]
    if cpr_theirs is not None:
        command += ["--cpr-fd", str(cpr_theirs.fileno())]
        passed.append(cpr_theirs.fileno())
    try:
        process = subprocess.Popen(
            command,
            pass_fds=passed,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=env,
            start_new_session=start_new_session,
        )
    except OSError:
        control.close()
        if cpr is not None:
            cpr.close()
        raise
    finally:
        theirs.close()
        if cpr_theirs is not None:
            cpr_theirs.close()
    return process, control, cpr


class _Image:
    """A kernel image process being started, warmed, and booted."""

    def __init__(
        self,
        python: str | None,
        env: Mapping[str, str] | None,
        *,
        next_kernel: bool,
        log: str,
    ) -> None:
        self.python = python or sys.executable
        self.env = env
        self.tmp = tempfile.mkdtemp(prefix="luo-kernel-")
        environment = dict(os.environ if env is None else env)
        environment["TMPDIR"] = self.tmp  # a kernel's scratch files die with it, as tmpfs would
        try:
            self.process, self.control, self.cpr = launch_image(
                self.python,
                next_kernel=next_kernel,
                log=log,
                stdout=2,
                env=environment,
                # Ctrl-C at the terminal is for the operator, who shuts kernels down.
                start_new_session=True,
            )
        except OSError as exc:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise KexecError(
                f"cannot start a kernel image with {self.python}: {exc.strerror}"
            ) from None

    def load(self, params: BootParams) -> None:
        self.control.settimeout(LOAD_TIMEOUT)
        try:
            _wire.send(self.control, {"op": "load", "params": params.to_bytes()})
        except (LiveUpdateError, OSError) as exc:
            raise KexecError(f"the kernel image did not take its boot parameters: {exc}") from None

    def wait(self, *expected: str, timeout: float | None = LOAD_TIMEOUT) -> dict[str, Any]:
        """The image's next message, which must be one of ``expected``."""
        self.control.settimeout(timeout)
        try:
            message, fds = _wire.receive(self.control)
        except PeerGoneError:
            raise KexecError(
                f"the kernel image (pid {self.process.pid}) exited: {self._status()}"
            ) from None
        except LiveUpdateError as exc:
            raise KexecError(f"the kernel image (pid {self.process.pid}): {exc}") from None
        _wire.close_fds(fds)
        if message.get("op") == "failed":
            raise _rebuild(message.get("error"), prefix="the kernel failed to boot: ")
        if message.get("op") not in expected:
            raise KexecError(f"the kernel image answered {message.get('op')!r}, not {expected}")
        return message

    def discard(self) -> None:
        """The image will not be used: let it go (it exits when its sockets close)."""
        for sock in (self.cpr, self.control):
            if sock is not None:
                sock.close()
        self.reap()

    def reap(self) -> None:
        try:
            self.process.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _status(self) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = self.process.wait(timeout=EXIT_TIMEOUT)
            return f"exit status {code}"
        return "still running"


class KernelProcess:
    """A kernel running in a process of its own, driven from here."""

    def __init__(self, image: _Image, platform: Platform, config: KernelConfig, log: str) -> None:
        self.env = image.env
        """The environment this kernel was started with (the next one gets it too)."""
        self._image = image
        self._platform = platform
        self.config = config
        self._log = log
        self._next: _Image | None = None
        self._gone = False
        self.pid: int = image.process.pid
        """The kernel's process id."""
        self.python = image.python
        """The interpreter (and so the environment and pack versions) this kernel runs."""

    @classmethod
    def boot(
        cls,
        platform: Platform,
        config: KernelConfig | None = None,
        *,
        python: str | None = None,
        env: Mapping[str, str] | None = None,
        log: str = "warning",
    ) -> KernelProcess:
        """Cold-boot a kernel in a new process on ``platform`` (running hardware).

        ``python`` picks the interpreter (another virtual environment, other
        pack versions); ``env`` its environment (``PYTHONHASHSEED``...).
        """
        config = config or KernelConfig()
        image = _Image(python, env, next_kernel=False, log=log)
        try:
            image.load(BootParams(platform.address, platform.machine, config))
            image.wait("booted")
        except BaseException:
            image.discard()
            raise
        return cls(image, platform, config, log)

    # -- what it reports --------------------------------------------------------

    @property
    def loaded_pid(self) -> int | None:
        """The process id of the next kernel, loaded and warm after ``prepare`` (else None)."""
        return self._next.process.pid if self._next is not None else None

    @property
    def state(self) -> str:
        """The global state (``normal``, ``prepared``, ``frozen``, ``updated``)."""
        return str(self._call({"op": "state"})["state"])

    @property
    def liveupdate_number(self) -> int:
        return int(self._call({"op": "state"})["liveupdate-number"])

    @property
    def stats(self) -> UpdateStats | None:
        """The current (or last) live update's timings, as this kernel knows them."""
        wire = self._call({"op": "stats"}).get("stats")
        return None if wire is None else UpdateStats.from_wire(wire)

    def packs(self) -> list[str]:
        """The packs this kernel loaded: ``distribution version status``."""
        packs = self._call({"op": "state"}).get("packs")
        if not (isinstance(packs, list) and all(isinstance(p, str) for p in packs)):
            raise KexecError("the kernel reported its packs wrongly")
        return packs

    def devices(self) -> dict[str, DeviceInfo]:
        found = self._call({"op": "devices"}).get("devices")
        if not isinstance(found, list):
            raise KexecError("the kernel reported its devices wrongly")
        return {
            d["name"]: DeviceInfo(
                d["name"],
                d["driver"],
                d["requested"],
                d["preserved"],
                d["reclaimed"],
                d["bus-master"],
            )
            for d in found
        }

    def records(self) -> dict[str, bytes]:
        """The handoff being built (after prepare): each KHO node's bytes, by name."""
        records = self._call({"op": "records"}).get("records")
        if not isinstance(records, dict):
            raise KexecError("the kernel reported its records wrongly")
        return records

    def handoff(self) -> bytes:
        """The handoff this kernel booted from, as a saved image (for ``luo inspect``)."""
        image = self._call({"op": "handoff"}).get("image")
        if not isinstance(image, bytes):
            raise KexecError("the kernel sent its handoff wrongly")
        return image

    def findings(self) -> dict[str, list[str]]:
        """What this kernel's packs did beyond the handoff: files written, environment
        changed, module globals and class attributes changed since boot."""
        findings = self._call({"op": "findings"}).get("findings")
        if not isinstance(findings, dict):
            raise KexecError("the kernel reported its findings wrongly")
        return findings

    def write_sysfs(self, path: str | os.PathLike[str]) -> None:
        """Have this kernel write its sysfs view (:func:`luo_core.kernel._sysfs.write_sysfs`)
        under ``path``, an existing directory (made absolute here)."""
        self._call({"op": "sysfs", "path": os.path.abspath(path)})

    def manifest(self) -> dict[str, Any]:
        manifest: dict[str, Any] = self._call({"op": "manifest"})["manifest"]
        return manifest

    # -- what it is asked to do -------------------------------------------------------

    def open_liveupdate(self) -> RemoteLiveUpdateDevice:
        """Open this kernel's ``/dev/liveupdate`` (see :meth:`luo_core.Kernel.open_liveupdate`)."""
        reply = self._call({"op": "luo-open"})
        handle = reply.get("handle")
        if type(handle) is not int:
            raise KexecError("the kernel answered luo-open without a handle")
        return RemoteLiveUpdateDevice(self, handle)

    def request(self, device: str) -> None:
        self._call({"op": "request", "device": device})

    def release(self, device: str) -> None:
        self._call({"op": "release", "device": device})

    def link(self, supplier: str, consumer: str) -> None:
        self._call({"op": "link", "supplier": supplier, "consumer": consumer})

    def prepare(
        self,
        *,
        target: Mapping[str, Any] | None = None,
        next_config: KernelConfig | None = None,
        next_python: str | None = None,
        next_env: Mapping[str, str] | None = None,
    ) -> None:
        """normal -> prepared, with the next kernel loaded and warm by the end of it."""
        config = next_config or self.config
        env = self.env if next_env is None else next_env
        image = self._load_next(config, next_python or self.python, env)
        try:
            assert image.cpr is not None
            self._call(
                {"op": "prepare", "target": dict(target) if target else None}, [image.cpr.fileno()]
            )
        except LiveUpdateError as exc:
            image.discard()
            if image.process.returncode not in (None, 0):
                exc.args = (
                    f"{exc} (the next kernel exited with status {image.process.returncode})",
                )
            raise
        except BaseException:
            image.discard()
            raise
        image.cpr.close()  # the running kernel holds its end now
        image.cpr = None
        if self._next is not None:
            self._next.discard()
        self._next = image
        self._next_config = config

    def _load_next(
        self, config: KernelConfig, python: str, env: Mapping[str, str] | None
    ) -> _Image:
        """Start the next kernel image and give it its boot parameters (``kexec -l``)."""
        image = _Image(python, env, next_kernel=True, log=self._log)
        try:
            image.load(BootParams(self._platform.address, self._platform.machine, config))
        except BaseException:
            image.discard()
            raise
        return image

    def freeze(self) -> None:
        try:
            self._call({"op": "freeze"})
        except LiveUpdateError:
            self._drop_next()  # a failed freeze rolled back: the next kernel was unloaded
            raise

    def cancel(self) -> None:
        self._call({"op": "cancel"})
        self._drop_next()

    def finish(self) -> None:
        self._call({"op": "finish"})

    def kexec(self, *, during_blackout: Callable[[], None] | None = None) -> KernelProcess:
        """Jump to the next kernel; this process exits and the one returned takes over.

        ``during_blackout`` runs after the old kernel is gone and before the
        next one boots: no kernel exists while it runs.
        """
        nxt = self._next
        passed: list[int] = []
        if nxt is None:  # no update prepared: load the next kernel now, then jump (plain kexec)
            nxt = self._load_next(self.config, self.python, self.env)
            self._next_config = self.config
            assert nxt.cpr is not None
            passed = [nxt.cpr.fileno()]
        try:
            self._call({"op": "kexec", "hold": during_blackout is not None}, passed)
        except LiveUpdateError:
            if passed:
                nxt.discard()
            elif self.state == "normal":
                self._drop_next()
            raise
        finally:
            if passed and nxt.cpr is not None:
                nxt.cpr.close()
                nxt.cpr = None
        self._gone = True
        self._image.discard()  # the old kernel has exited: no kernel runs now
        self._next = None
        try:
            if during_blackout is not None:
                nxt.wait("held")
                during_blackout()
                _wire.send(nxt.control, {"op": "go"})
            nxt.wait("booted")
        except BaseException:
            nxt.discard()
            raise
        return KernelProcess(nxt, self._platform, self._next_config, self._log)

    def workload(self, contract: str, device: str) -> None:
        """Run ``contract``'s workload on ``device``, in this kernel's process."""
        self._call({"op": "contract", "contract": contract, "call": "workload", "device": device})

    def snapshot(self, contract: str, device: str) -> Any:
        """``contract``'s snapshot of ``device``, taken in this kernel's process, as plain data."""
        return self._call(
            {"op": "contract", "contract": contract, "call": "snapshot", "device": device}
        ).get("result")

    def command(self, name: str, args: Mapping[str, Any] | None = None) -> Any:
        """Run the pack command ``name`` in this kernel's process (:meth:`Kernel.command
        <luo_core.Kernel.command>`); its plain-data result."""
        request = {"op": "command", "name": name, "args": dict(args or {})}
        return self._call(request).get("result")

    def shutdown(self) -> None:
        """Stop this kernel (the hardware runs on); safe to call twice."""
        if self._gone:
            return
        self._gone = True
        self._drop_next()
        with contextlib.suppress(LiveUpdateError, OSError):
            self._call({"op": "shutdown"}, check=False)
        self._image.discard()

    def __enter__(self) -> KernelProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- plumbing ------------------------------------------------------------------

    def _drop_next(self) -> None:
        if self._next is not None:
            self._next.discard()
            self._next = None

    def _call(
        self, request: dict[str, Any], fds: list[int] | None = None, *, check: bool = True
    ) -> dict[str, Any]:
        reply, received = self._exchange(request, fds, check=check)
        _wire.close_fds(received)
        return reply

    def _call_fds(self, request: dict[str, Any]) -> list[int]:
        """A request answered with descriptors, which the caller then owns."""
        return self._exchange(request, None, check=True)[1]

    def _exchange(
        self, request: dict[str, Any], fds: list[int] | None, *, check: bool
    ) -> tuple[dict[str, Any], list[int]]:
        if self._gone and check:
            raise errors.KernelGoneError(f"kernel {self.pid} was replaced by kexec or shut down")
        control = self._image.control
        control.settimeout(REQUEST_TIMEOUT)
        try:
            _wire.send(control, request, fds or ())
            reply, received = _wire.receive(control)
        except PeerGoneError:
            raise KexecError(f"kernel {self.pid} died: {self._image._status()}") from None
        if "error" in reply:
            _wire.close_fds(received)
            raise _rebuild(reply["error"])
        return reply, received


def _rebuild(error: object, prefix: str = "") -> LiveUpdateError:
    """The typed error a kernel process reported."""
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return KexecError(f"{prefix}a kernel reported a malformed error: {error!r:.80}")
    kind = getattr(errors, str(error.get("type")), None)
    code = error.get("errno") if type(error.get("errno")) is int else None
    message = prefix + error["message"]
    if not (isinstance(kind, type) and issubclass(kind, LiveUpdateError)):
        return LiveUpdateError(message, errno=code)
    exc = kind.__new__(kind)
    LiveUpdateError.__init__(exc, message, errno=code)
    if isinstance(exc, CallbackError):
        exc.participant = str(error.get("participant", ""))
        exc.phase = str(error.get("phase", ""))
    return exc
