"""The example forwarding database: a subsystem that learns MAC -> port.

It stands for the host-wide state a subsystem owns (a software bridge's
table): the whole table crosses kexec in its handoff record.
"""

from __future__ import annotations

import json

from luo_core import SubsystemOps

SUBSYSTEM = "example-nic-fdb"


class FdbOps(SubsystemOps):
    def __init__(self) -> None:
        self.table: dict[str, str] = {}
        self.frozen = False

    def learn(self, mac: int, port: str) -> None:
        if self.frozen:
            raise RuntimeError("the forwarding database is frozen for a live update")
        self.table[f"{mac:012x}"] = port

    def prepare(self) -> bytes:
        return json.dumps(self.table, sort_keys=True).encode()

    def freeze(self, data: bytes) -> bytes:
        self.frozen = True
        return json.dumps(self.table, sort_keys=True).encode()

    def cancel(self, data: bytes) -> None:
        self.frozen = False

    def boot(self, data: bytes) -> None:
        self.table = json.loads(data)
