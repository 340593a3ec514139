"""Which files are preserved, by identity: a file is preserved once, whatever its descriptor.

The kernel keys ``luo_preserved_files`` by the ``struct file`` (or by the
handler's ``get_id``).  Python cannot see a ``struct file``; ``kcmp(2)``
with ``KCMP_FILE`` can tell whether two descriptors are the same one, so
files without a handler-given id are compared that way (where ``kcmp`` is
missing, by inode, which confuses files that share one, such as eventfds).
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Hashable
from typing import Any, Final

_KCMP_FILE: Final = 0
_SYSCALL: Final = {"x86_64": 312, "aarch64": 272, "i686": 349, "i386": 349, "armv7l": 378}
_libc: Any = None


def same_file(a: int, b: int) -> bool:
    """Whether descriptors ``a`` and ``b`` of this process are one open file."""
    global _libc
    number = _SYSCALL.get(platform.machine())
    if number is not None:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        pid = os.getpid()
        result = _libc.syscall(number, pid, pid, _KCMP_FILE, a, b)
        if result >= 0:
            return bool(result == 0)
    first, second = os.fstat(a), os.fstat(b)
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


class PreservedFiles:
    """``luo_preserved_files``: every file preserved by any session of this kernel."""

    def __init__(self) -> None:
        self._by_id: dict[Hashable, Any] = {}
        self._by_file: list[tuple[int, Any]] = []  # (LUO's own fd, owner)

    def find(self, fd: int, file_id: Hashable | None) -> Any | None:
        if file_id is not None:
            return self._by_id.get(file_id)
        return next((owner for own, owner in self._by_file if same_file(own, fd)), None)

    def add(self, fd: int, file_id: Hashable | None, owner: Any) -> None:
        if file_id is not None:
            self._by_id[file_id] = owner
        else:
            self._by_file.append((fd, owner))

    def remove(self, owner: Any) -> None:
        self._by_id = {k: v for k, v in self._by_id.items() if v is not owner}
        self._by_file = [(fd, o) for fd, o in self._by_file if o is not owner]

    def clear(self) -> None:
        self._by_id.clear()
        self._by_file.clear()
