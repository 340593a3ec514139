"""The example forwarding database: a subsystem that learns MAC -> port.

It stands for the host-wide state a subsystem owns (a software bridge's
table): the whole table crosses kexec as one versioned record.
"""

from __future__ import annotations

import attrs

from luo_core import SubsystemOps, state, u64

SUBSYSTEM = "example-nic-fdb"


@attrs.frozen
class FdbEntry:
    mac: u64
    port: str


@state(compatible="luo,example-nic-fdb", version=1)
class FdbRecord:
    entries: list[FdbEntry]


class FdbOps(SubsystemOps):
    def __init__(self) -> None:
        self.table: dict[int, str] = {}
        self.frozen = False

    def learn(self, mac: int, port: str) -> None:
        if self.frozen:
            raise RuntimeError("the forwarding database is frozen for a live update")
        self.table[mac] = port

    def record(self) -> FdbRecord:
        return FdbRecord([FdbEntry(mac, port) for mac, port in sorted(self.table.items())])

    def prepare(self) -> FdbRecord:
        return self.record()

    def freeze(self, data: FdbRecord) -> FdbRecord:
        self.frozen = True
        final = self.record()
        return data if final == data else final

    def cancel(self, data: FdbRecord) -> None:
        self.frozen = False

    def boot(self, data: FdbRecord) -> None:
        self.table = {entry.mac: entry.port for entry in data.entries}
