"""A journalling file handler (for eventfds) and FLB, owned by the test that boots with them.

:class:`EventPack` is a plugin *factory*: every boot builds fresh handler and
FLB ops from it, so only the handoff carries an eventfd's counter to the next
kernel.  The factory keeps what the test observes: the journal of callbacks
(``"freeze:0x2"``...) and the callbacks told to fail or to refuse.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from luo_core import FileHandler, FileHandlerOps, Flb, FlbOps, LiveFile, hookimpl, state, u64

COMPATIBLE = "test,eventfd-v1"
FLB_COMPATIBLE = "test,event-core-v1"


class Refused(RuntimeError):
    """What a callback told to fail raises."""


@state(compatible="test,eventfd-state", version=1)
class EventRecord:
    """An eventfd's counter, as handed over."""

    token: u64
    value: u64


@state(compatible="test,event-core", version=1)
class CoreRecord:
    """The FLB's shared state."""

    generation: u64


def is_eventfd(fd: int) -> bool:
    return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"


def read_counter(fd: int) -> int:
    """An eventfd's counter, left as it was."""
    os.set_blocking(fd, False)
    try:
        value = os.eventfd_read(fd)
    except BlockingIOError:  # a counter of zero
        return 0
    os.eventfd_write(fd, value)
    return value


class EventOps(FileHandlerOps):
    def __init__(self, pack: EventPack) -> None:
        self.pack = pack

    def _log(self, what: str, data: Any) -> None:
        token = data.token if isinstance(data, EventRecord) else data
        entry = f"{what}:{token:#x}" if token is not None else what
        self.pack.journal.append(entry)
        if entry in self.pack.fail:
            raise Refused(f"{entry} told to fail")

    def can_preserve(self, file: LiveFile) -> bool:
        return is_eventfd(file.fd)

    def preserve(self, file: LiveFile) -> EventRecord:
        token = self.pack.next_token.pop(0) if self.pack.next_token else 0
        self._log("preserve", token)
        return EventRecord(token, 0)

    def freeze(self, file: LiveFile, data: EventRecord) -> EventRecord:
        self._log("freeze", data)
        return EventRecord(data.token, read_counter(file.fd))

    def unfreeze(self, file: LiveFile, data: EventRecord) -> None:
        self._log("unfreeze", data)

    def unpreserve(self, file: LiveFile, data: EventRecord) -> None:
        self._log("unpreserve", data)

    def retrieve(self, data: EventRecord) -> int:
        self._log("retrieve", data)
        return os.eventfd(data.value)

    def can_finish(self, file: LiveFile | None, data: EventRecord, retrieved: bool) -> bool:
        self.pack.journal.append(f"can_finish:{data.token:#x}")
        return f"can_finish:{data.token:#x}" not in self.pack.refuse

    def finish(self, file: LiveFile | None, data: EventRecord, retrieved: bool) -> None:
        self._log(f"finish({'retrieved' if retrieved else 'unretrieved'})", data)


class CoreOps(FlbOps):
    def __init__(self, pack: EventPack) -> None:
        self.pack = pack

    def preserve(self) -> tuple[CoreRecord, dict[str, int]]:
        self.pack.journal.append("flb-preserve")
        return CoreRecord(self.pack.generation), {"generation": self.pack.generation}

    def unpreserve(self, data: CoreRecord, obj: Any) -> None:
        self.pack.journal.append("flb-unpreserve")

    def retrieve(self, data: CoreRecord) -> dict[str, int]:
        self.pack.journal.append("flb-retrieve")
        return {"generation": data.generation}

    def finish(self, obj: Any) -> None:
        self.pack.journal.append(f"flb-finish:{obj['generation']}")


class EventPlugin:
    def __init__(self, pack: EventPack) -> None:
        self.flb = Flb(FLB_COMPATIBLE, CoreOps(pack), schema=CoreRecord)
        pack.flb = self.flb
        flbs: tuple[Flb, ...] = (self.flb,) if pack.with_flb else ()
        self.handler = FileHandler(COMPATIBLE, EventOps(pack), schema=EventRecord, flbs=flbs)
        pack.handler = self.handler

    @hookimpl
    def luo_file_handlers(self) -> Iterator[FileHandler]:
        yield self.handler


class EventPack:
    """The factory a test passes to ``plugins=``; it outlives kernels, as the test does."""

    def __init__(self, journal: list[str], *, with_flb: bool = True) -> None:
        self.journal = journal
        self.with_flb = with_flb
        self.fail: set[str] = set()
        self.refuse: set[str] = set()
        self.next_token: list[int] = []
        self.generation = 7
        self.handler: FileHandler | None = None
        self.flb: Flb | None = None

    def __call__(self) -> EventPlugin:
        return EventPlugin(self)


def preserve(session: Any, pack: EventPack, token: int, value: int = 0) -> int:
    """A new eventfd holding ``value``, preserved in ``session`` as ``token``."""
    fd = os.eventfd(value)
    pack.next_token.append(token)
    session.preserve_fd(fd, token)
    return fd


def event_pack() -> EventPlugin:
    """The plugin for a kernel in another process (``'tests.filehandlers:event_pack'``):
    its journal stays in that process."""
    return EventPlugin(EventPack([]))


STASH: dict[int, int] = {}
"""Where :class:`StashingOps` keeps counters: a module global, which a real kexec loses."""


class StashingOps(EventOps):
    """Hands over an empty record and keeps the counter in :data:`STASH` instead."""

    def freeze(self, file: LiveFile, data: EventRecord) -> EventRecord:
        STASH[data.token] = read_counter(file.fd)
        return EventRecord(data.token, 0)

    def retrieve(self, data: EventRecord) -> int:
        return os.eventfd(STASH.get(data.token, 0))


def stashing_pack() -> EventPlugin:
    plugin = EventPlugin(EventPack([], with_flb=False))
    plugin.handler = FileHandler(COMPATIBLE, StashingOps(EventPack([])), schema=EventRecord)
    return plugin
