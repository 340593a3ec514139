"""A kernel's live-update sysfs and KHO debugfs, mirrored as files under a directory.

:func:`write_sysfs` renders what a host shows under ``/sys`` — the global
state (``sys/kernel/liveupdate/state``), each device's ``dev_liveupdate``
flags (``sys/devices/<path>/liveupdate/{requested,preserved,reclaimed}``)
and what the previous kernel handed over (``sys/kernel/debug/kho/in/``) —
so that a person or a script can ``cat`` them.  :func:`apply_requested`
takes the ``requested`` files back as a user wrote them.  Those files are
hostile input: each is read at most a few bytes, and only ``0`` or ``1``
with an optional newline is accepted (narrower than ``kstrtobool()``, which
also takes ``y``, ``n``, ``on``, ``off``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from luo_core.errors import InvalidArgumentError, NotFoundError

if TYPE_CHECKING:
    from luo_core.abi._kho import HandedOver
    from luo_core.kernel._kernel import Kernel
    from luo_core.kernel.devices import Device

STATE = Path("sys/kernel/liveupdate/state")
"""The global state file, relative to the view's root."""
DEVICES = Path("sys/devices")
"""Where the device tree starts, relative to the view's root."""
KHO_IN = Path("sys/kernel/debug/kho/in")
"""The incoming KHO tree, relative to the view's root."""
FLAGS = ("requested", "preserved", "reclaimed")
"""Each device's ``liveupdate/`` attributes; only ``requested`` is writable."""
_FLAG_MAX = len(b"1\n")
_BOOL = {b"0": False, b"0\n": False, b"1": True, b"1\n": True}


def write_sysfs(kernel: Kernel, root: Path) -> None:
    """Render ``kernel``'s view under ``root``; each file is replaced whole, so a
    reader sees the old content or the new one, never half of either."""
    _put(root / STATE, f"{kernel.state.value}\n")
    for dev in kernel.devices.values():
        for flag in FLAGS:
            _put(flag_path(root, dev, flag), f"{int(getattr(dev, flag))}\n")
    _write_kho_in(kernel.kho_in, root / KHO_IN)


def flag_path(root: Path, dev: Device, flag: str) -> Path:
    """The file of ``dev``'s ``flag`` (one of :data:`FLAGS`) under ``root``."""
    return root / DEVICES / dev.path / "liveupdate" / flag


def _write_kho_in(handed: HandedOver | None, where: Path) -> None:
    nodes = where / "sub_fdts"
    wanted: set[str] = set()
    if handed is not None:
        _put(where / "liveupdate_number", f"{handed.liveupdate_number}\n")
        for node in handed.nodes.values():
            # The root refused any name that is not [A-Za-z0-9][A-Za-z0-9,._:+-]*:
            # none can climb out of the directory.
            _put(nodes / node.name, f"compatible={node.compatible}\nlength={node.length}\n")
            wanted.add(node.name)
    else:
        (where / "liveupdate_number").unlink(missing_ok=True)
    if nodes.is_dir():
        for stale in nodes.iterdir():  # nodes of an earlier handoff, released by finish
            if stale.name not in wanted:
                stale.unlink()


def apply_requested(kernel: Kernel, root: Path) -> list[str]:
    """Read every ``requested`` file under ``root`` and request or release the
    devices whose file differs from their flag; returns their names.

    Every file is checked before any device changes: one that is missing or
    holds anything but ``0``/``1`` (and a newline) is refused, naming it,
    and nothing changes.  A refused request (``EINVAL`` from
    :meth:`~luo_core.kernel.devices.DeviceTree.request`) stops there, as a
    failed ``echo`` would: the devices before it keep their change.  The
    ``requested`` files are rewritten from the kernel either way.
    """
    devices = list(kernel.devices.values())
    changed: list[str] = []
    try:
        wanted = {dev: _read_flag(flag_path(root, dev, "requested"), root) for dev in devices}
        for dev, value in wanted.items():
            if value == dev.requested:
                continue
            if value:
                kernel.devices.request(dev.name)
            else:
                kernel.devices.release(dev.name)
            changed.append(dev.name)
    finally:
        for dev in devices:
            path = flag_path(root, dev, "requested")
            if not path.is_dir():  # a file cannot replace a directory put in its place
                _put(path, f"{int(dev.requested)}\n")
    return changed


def _read_flag(path: Path, root: Path) -> bool:
    shown = path.relative_to(root)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise NotFoundError(f"{shown}: no such file; write the view first") from None
    except OSError as exc:
        raise InvalidArgumentError(f"{shown}: cannot be opened ({exc.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidArgumentError(f"{shown}: not a regular file")
        blob = os.read(fd, _FLAG_MAX + 1)  # one byte more tells a longer file apart
    finally:
        os.close(fd)
    value = _BOOL.get(blob)
    if value is None:
        raise InvalidArgumentError(f"{shown}: holds {_describe(blob)}, not 0 or 1")
    return value


def _describe(blob: bytes) -> str:
    """Hostile bytes, said without printing more than a few, or a terminal escape."""
    if len(blob) > _FLAG_MAX:
        return f"more than {_FLAG_MAX} bytes"
    return repr(blob) if blob else "nothing"


def _put(path: Path, text: str) -> None:
    """Write ``path`` whole: a temporary file beside it, then a rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text, encoding="ascii")
    os.replace(temp, path)
