"""What a kernel process notices its packs doing beyond the handoff.

A kernel has no files and no environment that survive kexec, and its packs'
module globals and class attributes are gone with its process.  So a pack
that changes a file system (writes a file, makes a directory, renames,
truncates, links or touches one, creates shared memory), changes the
environment, or keeps state in a module global or a class attribute is
about to lose that state, or to smuggle it around the handoff.  The watch
records the first two as they happen (a ``sys.addaudithook`` hook, armed
once the kernel has booted) and fingerprints the packs' module globals and
class attributes after boot, so that it can name what changed since.  The
contract suite asks for these findings to tell an author *which* channel
their state took.
"""

from __future__ import annotations

import os
import sys
import threading
import types
import zlib
from collections.abc import Iterable
from typing import Any, Final

MAX_FINDINGS: Final = 64
_WRITE_FLAGS: Final = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_FILE_EVENTS: Final = frozenset(
    {
        "os.chmod",
        "os.chown",
        "os.link",
        "os.mkdir",
        "os.remove",
        "os.rename",
        "os.rmdir",
        "os.symlink",
        "os.truncate",  # also what creating a POSIX shared memory object does
        "os.utime",
        "sqlite3.connect",
    }
)
"""Audit events that change a file system without an ``open`` for writing."""
_HARMLESS: Final = ("/dev/null", "/dev/tty")


class Watch:
    """Findings of one kernel process (there is one watch per process)."""

    def __init__(self) -> None:
        self.armed = False
        self.files: list[str] = []
        self.environment: list[str] = []
        self._packs: tuple[str, ...] = ()
        self._baseline: dict[str, int] = {}
        sys.addaudithook(self._audit)

    def arm(self, packs: Iterable[str]) -> None:
        """Start watching: ``packs`` are the top-level packages of the loaded packs."""
        self._packs = tuple(sorted(set(packs)))
        self._baseline = self._fingerprints()
        self.armed = True

    def findings(self) -> dict[str, list[str]]:
        """What the packs did beyond the handoff so far."""
        now = self._fingerprints()
        changed = sorted(
            name for name, value in now.items() if self._baseline.get(name) not in (None, value)
        )
        added = sorted(name for name in now if name not in self._baseline)
        return {
            "files": list(self.files),
            "environment": list(self.environment),
            "globals": changed + [f"{name} (new)" for name in added],
        }

    def _audit(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.armed or len(self.files) + len(self.environment) >= MAX_FINDINGS:
            return
        if event == "open" and len(args) >= 3:
            path, mode, flags = args[0], args[1], args[2]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS
            )
            if writes and isinstance(path, str | bytes) and not _harmless(path):
                self.files.append(f"{os.fsdecode(path)} ({threading.current_thread().name})")
        elif event in _FILE_EVENTS and args:
            target = args[0]
            if event == "sqlite3.connect" and target in (":memory:", b":memory:", ""):
                return
            if isinstance(target, str | bytes):
                if _harmless(target):
                    return
                where = os.fsdecode(target)
            else:
                where = f"descriptor {target!r:.20}"
            thread = threading.current_thread().name
            self.files.append(f"{where} ({event.removeprefix('os.')}; {thread})")
        elif event in ("os.putenv", "os.unsetenv") and args:
            self.environment.append(f"{os.fsdecode(args[0])} ({event.removeprefix('os.')})")

    def _fingerprints(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for name, module in list(sys.modules.items()):
            if module is None or not name.startswith(self._packs) or not self._packs:
                continue
            for key, value in list(vars(module).items()):
                if key.startswith("__") or isinstance(value, types.ModuleType):
                    continue
                if isinstance(value, type) and value.__module__ == name:
                    for attr, item in list(vars(value).items()):
                        if not (attr.startswith("__") or callable(item) or _descriptor(item)):
                            found[f"{name}.{key}.{attr}"] = _fingerprint(item)
                elif not callable(value):
                    found[f"{name}.{key}"] = _fingerprint(value)
        return found


def _fingerprint(value: object) -> int:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__qualname__} {id(value)}>"
    return zlib.crc32(text[:65536].encode("utf-8", "replace")) ^ len(text)


def _descriptor(item: object) -> bool:
    return isinstance(item, property | staticmethod | classmethod | types.MemberDescriptorType)


def _harmless(path: str | bytes) -> bool:
    """Paths a write to cannot keep state: ``/dev/null``, the terminal, this process."""
    text = os.fsdecode(path)
    return text in _HARMLESS or text.startswith("/proc/self/")


WATCH: Watch | None = None


def watch() -> Watch:
    """This process's watch (installed on first use: audit hooks cannot be removed)."""
    global WATCH
    if WATCH is None:
        WATCH = Watch()
    return WATCH
