"""A kernel image in a process of its own: loaded and warmed early, booted from bytes.

``python -m luo_core.kexec --control-fd C [--cpr-fd P]`` is started by the
operator (:class:`~luo_core.kexec.KernelProcess`).  On its control socket it
gets the boot parameters it is *loaded* with (hardware address, machine,
configuration: what ``kexec -l`` loads), and warms up: the interpreter is up,
luo and the packs are imported, their schemas' codecs are built, the hardware
is connected and memory mapped.  A cold kernel then boots at once.  A next
kernel (``--cpr-fd``: a socket to the running kernel, as in QEMU's
cpr-transfer) reports ``ready`` there and waits for the jump, which carries
one number: the KHO root's physical address.  Then it boots from those boot
parameters alone, and serves its operator until it kexecs or shuts down.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from typing import Any, Final

from luo_core._logging import configure as configure_logging
from luo_core.abi import _wire
from luo_core.abi._boot import BootParams
from luo_core.abi._luo import LuoTree, pack_tree, unpack_tree
from luo_core.errors import HandoffError, LiveUpdateError, PeerGoneError
from luo_core.kernel._registry import PluginSource
from luo_core.kexec._leaks import pack_prefixes
from luo_core.kexec._watch import watch

LOAD_TIMEOUT: Final = 60.0
"""How long a kernel image may take to start and warm up (s)."""
EXIT_UNLOADED: Final = 0


def warm(params: BootParams) -> list[PluginSource]:
    """Load everything a boot will need that is code, not state: the packs' factories
    (the kernel image) and the codecs of their schemas (file handlers' and FLBs' too:
    the VMM retrieves files right after the blackout)."""
    from luo_core.abi._cbor import converter
    from luo_core.kernel._kernel import load_kernel_image
    from luo_core.kernel._registry import build_registry

    image = load_kernel_image(params.config)
    # A dry collection finds every schema (the plugins built here are thrown away).
    registry = build_registry(image)
    handlers = list(registry.file_handlers.values())
    flbs = [flb for handler in handlers for flb in handler.flbs]
    for record in [*registry.subsystems.values(), *registry.drivers.values(), *handlers, *flbs]:
        schema = getattr(record, "schema", None)
        if schema is not None:
            converter.get_structure_hook(schema)
            converter.get_unstructure_hook(schema)
    # What runs after the jump is imported now: an import there is blackout.
    from luo_core.kexec import _serve  # noqa: F401

    # So is the first run of the LUO entry's codec (both ends: this image writes one
    # at its own kexec and reads one at boot), which fills its caches.
    unpack_tree(pack_tree(LuoTree(0, 0, 0)))

    # The image is this kernel's text, never garbage: freezing it (and dropping what
    # warming left) keeps a collection on the blackout path from walking all of it.
    gc.collect()
    gc.freeze()
    return image


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m luo_core.kexec")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--cpr-fd", type=int)
    parser.add_argument("--log", default="warning")
    args = parser.parse_args(argv)
    # Ctrl-C at the terminal reaches the whole process group; the operator is the
    # one that shuts a kernel down, so a kernel does not die of it on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(args.log, kernel=os.getpid())
    sys.dont_write_bytecode = True  # a kernel writes no files, not even bytecode caches
    # tempfile probes its directory by writing a file there, once: let it, before the
    # watch starts, so that a pack asking where temporary files go is not taken for
    # a pack writing one.
    tempfile.gettempdir()
    watch()
    control = socket.socket(fileno=args.control_fd)
    cpr = socket.socket(fileno=args.cpr_fd) if args.cpr_fd is not None else None
    control.settimeout(LOAD_TIMEOUT)
    try:
        request, fds = _wire.receive(control)
        _wire.close_fds(fds)
        if request.get("op") != "load" or not isinstance(request.get("params"), bytes):
            raise HandoffError(
                "a kernel image is loaded with {op: load, params: <boot parameters>}"
            )
        loaded = BootParams.from_bytes(request["params"])
        image = warm(loaded)
        from luo_core.kernel._hwlink import HardwareLink

        link = HardwareLink(loaded.hardware)
    except Exception as exc:
        _fail(control, cpr, exc)
        return 1
    if cpr is None:
        params = loaded
    else:
        jump = _await_jump(cpr, control)
        if jump is None:
            link.close()
            return EXIT_UNLOADED
        root, hold = jump
        if hold:
            _wire.send(control, {"op": "held", "pid": os.getpid()})
            control.settimeout(None)
            go, fds = _wire.receive(control)
            _wire.close_fds(fds)
            if go.get("op") != "go":
                _fail(control, None, HandoffError(f"expected go, got {go.get('op')!r}"))
                link.close()
                return 1
        params = BootParams(loaded.hardware, loaded.machine, loaded.config, root)
    return _boot_and_serve(params, link, image, control)


def _await_jump(cpr: socket.socket, control: socket.socket) -> tuple[int, bool] | None:
    """Tell the running kernel we are ready, then wait for its jump (None: unloaded)."""
    try:
        _wire.send(cpr, {"op": "ready", "pid": os.getpid()})
        cpr.settimeout(None)
        message, fds = _wire.receive(cpr)
        _wire.close_fds(fds)
    except (PeerGoneError, OSError):
        return None  # the update was cancelled: this image is unloaded
    except LiveUpdateError as exc:
        _fail(control, None, exc)
        return None
    root, hold = message.get("kho-root"), message.get("hold")
    if message.get("op") != "jump" or type(root) is not int or type(hold) is not bool:
        _fail(control, None, HandoffError(f"malformed jump from the old kernel: {message!r:.80}"))
        return None
    return root, hold


def _boot_and_serve(
    params: BootParams, link: Any, image: list[PluginSource], control: socket.socket
) -> int:
    from luo_core.kexec._serve import KernelServer

    try:
        from luo_core.kernel._kernel import Kernel

        kernel = Kernel(params, link, image=image)
    except Exception as exc:
        _fail(control, None, exc)
        return 1
    watch().arm(pack_prefixes(kernel))
    server = KernelServer(kernel, control)
    try:
        _wire.send(control, {"op": "booted", **server.describe()})
    except (PeerGoneError, OSError):  # the operator went away: nobody to serve
        return 0
    return server.serve()


def _fail(control: socket.socket, cpr: socket.socket | None, exc: BaseException) -> None:
    from luo_core.kexec._serve import error_reply

    reply = error_reply(exc)
    for sock in (cpr, control):
        if sock is not None:
            with contextlib.suppress(LiveUpdateError, OSError):
                _wire.send(sock, {"op": "failed", **reply})
