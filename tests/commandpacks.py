"""Packs with commands, for kernels in this process and in processes of their own."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Mapping
from typing import Any

from luo_core import Command, hookimpl
from luo_core.errors import BusyError


class Counter:
    """A command's per-kernel state: created once per boot with the plugin."""

    def __init__(self) -> None:
        self.count = 0

    def add(self, args: Mapping[str, Any]) -> object:
        self.count += int(args.get("by", 1))
        return {"count": self.count, "pid": os.getpid()}


def _fail(args: Mapping[str, Any]) -> object:
    kind = args.get("kind")
    if kind == "busy":
        raise BusyError("the thing is busy")
    if kind == "os":
        raise OSError(errno.ENOSPC, "no room")
    return object()  # not plain data


class CommandPack:
    def __init__(self) -> None:
        self.counter = Counter()

    @hookimpl
    def luo_commands(self) -> Iterator[Command]:
        yield Command("count", self.counter.add)
        yield Command("fail", _fail)


def command_pack() -> CommandPack:
    """``'tests.commandpacks:command_pack'``: a new counter per kernel boot."""
    return CommandPack()
