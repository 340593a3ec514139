"""A kernel process reads its control and cpr sockets as hostile input.

Whatever arrives — garbage, a frame that is not a load request, boot
parameters whose KHO root points at nothing, a malformed jump, hostile
requests once booted — the kernel process answers with a typed error (type,
errno, one-line message) or exits cleanly: it never hangs and never dies with
a Python traceback.  Each test starts ``python -m luo_core.kexec`` itself,
as :mod:`luo_core.kexec._process` does, and bounds every wait.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from luo_example_nic._nic import NicOps, NicRecord

from luo_core import Device, errors
from luo_core.abi import _wire
from luo_core.abi._boot import BootParams, KernelConfig
from luo_core.abi._frame import HEADER
from luo_core.errors import DeviceError, LiveUpdateError, PeerGoneError
from luo_core.kexec import KernelProcess
from luo_core.kexec._process import _rebuild, launch_image
from luo_core.platform import HardwareProcess, default_host
from tests.broken_packs import NIC, NicPack

WAIT = 30.0
"""The longest any step may take (a kernel image starts in well under a second)."""


class Image:
    """A kernel image process we started, with our ends of its sockets."""

    def __init__(self, *, next_kernel: bool) -> None:
        self.process, self.control, self.cpr = launch_image(
            sys.executable,
            next_kernel=next_kernel,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        if self.cpr is not None:
            self.cpr.settimeout(WAIT)
        self.control.settimeout(WAIT)
        self.output = ""

    def send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        _wire.send(self.control, message, fds or [])

    def receive(self) -> dict[str, Any]:
        message, fds = _wire.receive(self.control)
        for fd in fds:
            os.close(fd)
        return message

    def load(self, params: BootParams) -> None:
        self.send({"op": "load", "params": params.to_bytes()})

    def ready(self) -> dict[str, Any]:
        """The next kernel's ``ready``, on the cpr socket."""
        assert self.cpr is not None
        message, fds = _wire.receive(self.cpr)
        assert fds == []
        assert message == {"op": "ready", "pid": self.process.pid}
        return message

    def exit_status(self) -> int:
        """Wait for the process to end (bounded); its stdout and stderr are kept."""
        out, err = self.process.communicate(timeout=WAIT)
        self.output = out.decode(errors="replace") + err.decode(errors="replace")
        return self.process.returncode

    def close(self) -> None:
        for sock in (self.control, self.cpr):
            if sock is not None:
                sock.close()
        if self.process.poll() is None:
            try:
                self.exit_status()
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.communicate()


@pytest.fixture
def start() -> Iterator[Any]:
    images: list[Image] = []

    def starter(*, next_kernel: bool = False) -> Image:
        image = Image(next_kernel=next_kernel)
        images.append(image)
        return image

    yield starter
    for image in images:
        image.close()


@pytest.fixture(scope="module")
def hardware() -> Iterator[HardwareProcess]:
    with HardwareProcess(default_host()) as machine:
        yield machine


def params(hardware: HardwareProcess, **config: Any) -> BootParams:
    return BootParams(hardware.address, hardware.machine, KernelConfig(**config))


def typed(reply: dict[str, Any], kind: type[LiveUpdateError], code: int, match: str) -> None:
    """``reply`` carries ``kind`` as data, and the operator rebuilds the same typed error."""
    error = reply["error"]
    assert set(error) >= {"type", "errno", "message"}
    assert error["type"] == kind.__name__
    assert error["errno"] == code
    assert match in error["message"]
    assert "\n" not in error["message"]
    rebuilt = _rebuild(error)
    assert type(rebuilt) is kind
    assert rebuilt.errno == code


def failed(
    image: Image, kind: type[LiveUpdateError], code: int, match: str, *, status: int | None = 1
) -> None:
    """The image reports ``failed`` with ``kind`` and then exits without a traceback."""
    message = image.receive()
    assert message["op"] == "failed"
    typed(message, kind, code, match)
    returncode = image.exit_status()
    assert status is None or returncode == status
    assert "Traceback" not in image.output


# -- before the load -------------------------------------------------------------


VALID_LOAD = _wire.encode({"op": "load", "params": b"x"})


@pytest.mark.parametrize(
    ("garbage", "match"),
    [
        (b"hello, kernel, please boot\n", "not a luo message"),
        (HEADER.pack(b"LUOC", 1, 0, (1 << 20) + 1), "exceeds the 1048576-byte limit"),
        (HEADER.pack(b"LUOC", 2, 0, 1), "format 2 is not supported"),
        (VALID_LOAD[:-1] + bytes([VALID_LOAD[-1] ^ 1]), "checksum mismatch"),
    ],
    ids=["text", "too-big", "format", "checksum"],
)
def test_garbage_instead_of_a_load_request_fails_with_a_typed_error(
    start: Any, garbage: bytes, match: str
) -> None:
    image = start()
    image.control.sendall(garbage)  # the socket stays open: the image must not wait for more
    failed(image, errors.HandoffError, 74, match)


def test_a_peer_that_stops_mid_load_gets_a_typed_error(start: Any) -> None:
    image = start()
    image.control.sendall(VALID_LOAD[:10])
    image.control.shutdown(socket.SHUT_WR)
    failed(image, errors.HandoffError, 74, "closed the connection mid-message")


def test_a_peer_that_goes_away_before_loading_ends_the_image_quietly(start: Any) -> None:
    image = start()
    image.control.close()
    assert image.exit_status() == 1
    assert "Traceback" not in image.output


@pytest.mark.parametrize(
    ("message", "match"),
    [
        ({"op": "boot"}, "loaded with {op: load"),
        ({"op": "load"}, "loaded with {op: load"),
        ({"op": "load", "params": "boot me"}, "loaded with {op: load"),
        ({"op": "load", "params": [1, 2]}, "loaded with {op: load"),
        ({"op": "load", "params": b"LUOB not really"}, "boot parameters truncated"),
        ({"op": "load", "params": b"x" * 64}, "not a luo boot parameters"),
        ({"load": True}, "loaded with {op: load"),
    ],
)
def test_a_frame_that_is_not_a_load_request_fails_with_a_typed_error(
    start: Any, message: dict[str, Any], match: str
) -> None:
    image = start()
    image.send(message)
    failed(image, errors.HandoffError, 74, match)


def test_boot_parameters_for_hardware_that_is_not_there_fail_with_a_typed_error(
    start: Any,
) -> None:
    image = start()
    image.load(BootParams("unix:luo-no-such-hardware", default_host(), KernelConfig()))
    failed(image, errors.HardwareError, 19, "cannot reach the hardware at unix:luo-no-such")


def test_corrupted_boot_parameters_fail_with_a_typed_error(
    start: Any, hardware: HardwareProcess
) -> None:
    blob = bytearray(params(hardware).to_bytes())
    blob[len(blob) // 2] ^= 0x10
    image = start()
    image.send({"op": "load", "params": bytes(blob)})
    failed(image, errors.HandoffError, 74, "checksum mismatch")


# -- a next kernel, waiting for its jump -----------------------------------------


def loaded_next_kernel(start: Any, hardware: HardwareProcess) -> Image:
    image: Image = start(next_kernel=True)
    image.load(params(hardware))
    image.ready()
    return image


@pytest.mark.parametrize(
    ("root", "match"),
    [
        (12345, "KHO root at 0x3039: not a luo KHO root"),
        (0, "KHO root at 0x0: not a luo KHO root"),
        ((1 << 30) - 4, "is outside memory"),
        ((1 << 64) - 1, "is outside memory"),
        (-1, "KHO root at -0x1"),
    ],
)
def test_a_jump_to_a_kho_root_that_points_at_nothing_fails_with_a_typed_error(
    start: Any, hardware: HardwareProcess, root: int, match: str
) -> None:
    image = loaded_next_kernel(start, hardware)
    assert image.cpr is not None
    _wire.send(image.cpr, {"op": "jump", "kho-root": root, "hold": False})
    failed(image, errors.HandoffError, 74, match)


@pytest.mark.parametrize(
    "jump",
    [
        {"op": "jump", "kho-root": "12345", "hold": False},
        {"op": "jump", "kho-root": 12345},
        {"op": "jump", "kho-root": 12345, "hold": 0},
        {"op": "go"},
    ],
)
def test_a_malformed_jump_fails_with_a_typed_error(
    start: Any, hardware: HardwareProcess, jump: dict[str, Any]
) -> None:
    image = loaded_next_kernel(start, hardware)
    assert image.cpr is not None
    _wire.send(image.cpr, jump)
    failed(image, errors.HandoffError, 74, "malformed jump from the old kernel", status=None)


def test_garbage_from_the_old_kernel_fails_with_a_typed_error(
    start: Any, hardware: HardwareProcess
) -> None:
    image = loaded_next_kernel(start, hardware)
    assert image.cpr is not None
    image.cpr.sendall(b"\x00" * 40)
    failed(image, errors.HandoffError, 74, "not a luo message", status=None)


def test_a_next_kernel_whose_update_is_cancelled_exits_cleanly(
    start: Any, hardware: HardwareProcess
) -> None:
    image = loaded_next_kernel(start, hardware)
    assert image.cpr is not None
    image.cpr.close()  # the running kernel let it go: it is unloaded
    with pytest.raises(PeerGoneError):
        image.receive()
    assert image.exit_status() == 0
    assert "Traceback" not in image.output


def test_a_held_kernel_told_anything_but_go_fails_with_a_typed_error(
    start: Any, hardware: HardwareProcess
) -> None:
    image = loaded_next_kernel(start, hardware)
    assert image.cpr is not None
    _wire.send(image.cpr, {"op": "jump", "kho-root": 12345, "hold": True})
    assert image.receive() == {"op": "held", "pid": image.process.pid}
    image.send({"op": "boot"})
    failed(image, errors.HandoffError, 74, "expected go, got 'boot'")


# -- a booted kernel, serving its operator ---------------------------------------


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_booted_kernel_answers_hostile_requests_with_typed_errors(
    start: Any, hardware: HardwareProcess
) -> None:
    image: Image = start()
    image.load(params(hardware))
    booted = image.receive()
    assert (booted["op"], booted["state"]) == ("booted", "normal")

    def ask(request: dict[str, Any], fds: list[int] | None = None) -> dict[str, Any]:
        image.send(request, fds)
        return image.receive()

    typed(ask({"op": "reboot"}), errors.NotFoundError, 95, "does not know the request 'reboot'")
    typed(ask({"op": "request", "device": 7}), errors.HandoffError, 74, "'device' must be text")
    typed(ask({"op": "request", "device": "nope"}), errors.NotFoundError, 2, "no device 'nope'")
    typed(ask({"op": "kexec"}), errors.InvalidTransitionError, 22, "no next kernel is loaded")

    # Descriptors a request does not take are refused, and closed.
    held = open_fds(image.process.pid)
    r, w = os.pipe()
    try:
        reply = ask({"op": "state"}, [r, w, r])
        typed(reply, errors.HandoffError, 74, "state carries no descriptors")
        reply = ask({"op": "prepare"}, [r, w])
        typed(reply, errors.HandoffError, 74, "exactly one descriptor")
    finally:
        os.close(r)
        os.close(w)
    assert open_fds(image.process.pid) == held

    # A next kernel that talks garbage, or goes away, fails prepare; nothing changes.
    for behave in ("garbage", "vanish", "fail"):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with ours:
            image.send({"op": "prepare"}, [theirs.fileno()])
            theirs.close()
            if behave == "garbage":
                ours.sendall(b"garbage!" * 4)
            elif behave == "fail":
                _wire.send(ours, {"op": "failed", "error": {"message": "no room"}})
            else:
                ours.close()
            reply = image.receive()
        cause, code = {
            "garbage": ("HandoffError: not a luo message", 74),
            "vanish": ("the next kernel exited before it was ready", 8),
            "fail": ("the next kernel failed to load: no room", 8),
        }[behave]
        typed(reply, errors.CallbackError, code, cause)
        assert reply["error"]["phase"] == "prepare"
        assert ask({"op": "state"})["state"] == "normal"
    assert open_fds(image.process.pid) == held

    # A stream it cannot trust any more: one error reply, then it powers off.
    image.control.sendall(HEADER.pack(b"LUOC", 1, 0, 1 << 30))
    reply = image.receive()
    typed(reply, errors.HandoffError, 74, "exceeds the 1048576-byte limit")
    assert image.exit_status() == 1
    assert "Traceback" not in image.output


def test_prepare_with_a_descriptor_that_is_not_a_socket_is_a_typed_error(
    start: Any, hardware: HardwareProcess
) -> None:
    image: Image = start()
    image.load(params(hardware))
    assert image.receive()["op"] == "booted"
    r, w = os.pipe()
    try:
        image.send({"op": "prepare"}, [r])
        reply = image.receive()
    finally:
        os.close(r)
        os.close(w)
    typed(reply, errors.HandoffError, 74, "descriptor is not a socket")


# -- the operator's side -------------------------------------------------------------


class FreezeFailsOps(NicOps):
    def freeze(self, dev: Device, data: NicRecord) -> NicRecord:
        raise DeviceError(f"{dev.name}: told to fail freeze")


class FreezeFails(NicPack):
    """The example NIC pack whose freeze fails (a kernel process loads it by reference)."""

    ops = FreezeFailsOps


def test_a_failed_freeze_unloads_the_next_kernel(hardware: HardwareProcess) -> None:
    config = KernelConfig(["tests.test_kernel_process:FreezeFails"], discover=False)
    with KernelProcess.boot(hardware, config) as kernel:
        kernel.request(NIC)
        kernel.prepare()
        loaded = kernel._next
        assert loaded is not None
        with pytest.raises(errors.CallbackError, match="told to fail freeze"):
            kernel.freeze()
        assert kernel.state == "normal" and kernel.loaded_pid is None
        # The running kernel let the next one go, which exited on its own as unloaded
        # (not killed when the operator gave up waiting for it).
        assert loaded.process.returncode == 0
