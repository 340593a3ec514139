"""Per-update statistics: per-phase and per-participant durations, blackout, traces."""

from __future__ import annotations

import threading
import time
from typing import Any

import attrs

now_ns = time.monotonic_ns
"""The clock every kernel on a machine shares (it spans kexec, like CLOCK_MONOTONIC)."""


@attrs.frozen
class CallbackStat:
    """One callback: who, which phase, when (monotonic ns), how long, outcome."""

    participant: str
    phase: str
    start_ns: int
    duration_ns: int
    ok: bool
    thread: int = 0

    @property
    def duration_us(self) -> float:
        return self.duration_ns / 1000


@attrs.define
class PhaseStats:
    """One phase of an update (prepare, freeze, kexec, restore, finish, cancel)."""

    phase: str
    start_ns: int
    end_ns: int = 0
    ok: bool = True
    callbacks: list[CallbackStat] = attrs.field(factory=list)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, repr=False, eq=False)

    @property
    def duration_us(self) -> float:
        return (self.end_ns - self.start_ns) / 1000

    @property
    def participants_us(self) -> dict[str, float]:
        """Time spent in each participant's callbacks, in microseconds."""
        out: dict[str, float] = {}
        for cb in self.callbacks:
            out[cb.participant] = out.get(cb.participant, 0.0) + cb.duration_us
        return out

    @property
    def callbacks_us(self) -> float:
        """Time spent inside participants' callbacks, summed."""
        return sum(cb.duration_ns for cb in self.callbacks) / 1000

    def add(self, stat: CallbackStat) -> None:
        with self._lock:
            self.callbacks.append(stat)

    def to_wire(self) -> list[Any]:
        """A plain list for the handoff: stats cross kexec as data, like all else."""
        return [
            self.phase,
            self.start_ns,
            self.end_ns,
            self.ok,
            [[c.participant, c.start_ns, c.duration_ns, c.ok, c.thread] for c in self.callbacks],
        ]

    @classmethod
    def from_wire(cls, wire: object) -> PhaseStats:
        """Rebuild from :meth:`to_wire`'s list; anything malformed is a ``ValueError``."""
        if not (type(wire) is list and len(wire) == 5):
            raise ValueError("a phase is not [phase, start, end, ok, callbacks]")
        phase, start, end, ok, callbacks = wire
        if not (type(phase) is str and type(start) is int and type(end) is int):
            raise ValueError("a phase's name or times are malformed")
        if type(ok) is not bool or type(callbacks) is not list:
            raise ValueError(f"phase {phase!r} is malformed")
        stats = cls(phase=phase, start_ns=start, end_ns=end, ok=ok)
        for c in callbacks:
            if not (
                type(c) is list
                and len(c) == 5
                and type(c[0]) is str
                and all(type(x) is int for x in (c[1], c[2], c[4]))
                and type(c[3]) is bool
            ):
                raise ValueError(f"a callback of phase {phase!r} is malformed")
            stats.callbacks.append(CallbackStat(c[0], phase, c[1], c[2], c[3], c[4]))
        return stats


@attrs.frozen
class MigrationStat:
    """One record the new kernel read at an older version and upgraded to its own."""

    participant: str
    compatible: str
    from_version: int
    to_version: int

    def to_wire(self) -> list[Any]:
        return [self.participant, self.compatible, self.from_version, self.to_version]

    @classmethod
    def from_wire(cls, wire: object) -> MigrationStat:
        """Rebuild from :meth:`to_wire`'s list; anything malformed is a ``ValueError``."""
        if not (
            type(wire) is list
            and len(wire) == 4
            and type(wire[0]) is str
            and type(wire[1]) is str
            and type(wire[2]) is int
            and type(wire[3]) is int
            and 0 <= wire[2] < wire[3] < 1 << 32  # versions are u32; a migration goes up
        ):
            raise ValueError("a migration is not [participant, compatible, from, to]")
        return cls(wire[0], wire[1], wire[2], wire[3])


@attrs.define
class UpdateStats:
    """Everything measured about one live update, across both kernels.

    ``phases`` keeps the order phases ran in.  ``blackout_us`` runs from the
    start of freeze (old kernel) to the end of restore (new kernel).
    """

    phases: dict[str, PhaseStats] = attrs.field(factory=dict)
    freeze_start_ns: int | None = None
    restore_end_ns: int | None = None
    threads_left: list[str] = attrs.field(factory=list)
    """Threads of the old kernel still running at kexec (a callback's, never luo's own)."""
    migrations: list[MigrationStat] = attrs.field(factory=list)
    """Records the new kernel upgraded as it read them, in participant order."""

    @property
    def blackout_us(self) -> float | None:
        if self.freeze_start_ns is None or self.restore_end_ns is None:
            return None
        return (self.restore_end_ns - self.freeze_start_ns) / 1000

    def to_wire(self) -> dict[str, Any]:
        """Plain data (integers and text only): how stats cross kexec and processes.

        ``migrations`` is left out when there are none, as in the meta record the
        old kernel writes: only the new kernel upgrades records.
        """
        wire: dict[str, Any] = {
            "freeze-start": self.freeze_start_ns,
            "restore-end": self.restore_end_ns,
            "phases": [p.to_wire() for p in self.phases.values()],
            "threads-left": list(self.threads_left),
        }
        if self.migrations:
            wire["migrations"] = [m.to_wire() for m in self.migrations]
        return wire

    @classmethod
    def from_wire(cls, wire: object) -> UpdateStats:
        """Rebuild from :meth:`to_wire`; anything malformed is a ``ValueError``."""
        if not isinstance(wire, dict):
            raise ValueError("statistics are not a map")
        start, end = wire.get("freeze-start"), wire.get("restore-end")
        for value in (start, end):
            if value is not None and type(value) is not int:
                raise ValueError("a statistics time is not an integer")
        left = wire.get("threads-left", [])
        if not (type(left) is list and all(type(t) is str for t in left)):
            raise ValueError("threads-left is not a list of thread names")
        phases = wire.get("phases")
        if type(phases) is not list:
            raise ValueError("phases is not a list")
        migrations = wire.get("migrations", [])  # the old kernel's meta record has none
        if type(migrations) is not list:
            raise ValueError("migrations is not a list")
        stats = cls(
            freeze_start_ns=start,
            restore_end_ns=end,
            threads_left=left,
            migrations=[MigrationStat.from_wire(m) for m in migrations],
        )
        for item in phases:
            phase = PhaseStats.from_wire(item)
            stats.phases[phase.phase] = phase
        return stats

    def summary(self) -> dict[str, Any]:
        """JSON-ready: per phase duration and per participant durations (µs)."""
        return {
            "blackout_us": self.blackout_us,
            "threads_left": list(self.threads_left),
            "migrations": [attrs.asdict(m) for m in self.migrations],
            "phases": {
                name: {
                    "ok": p.ok,
                    "duration_us": p.duration_us,
                    "callbacks_us": p.callbacks_us,
                    "participants_us": p.participants_us,
                }
                for name, p in self.phases.items()
            },
        }

    def chrome_trace(self) -> dict[str, Any]:
        """A Chrome/Perfetto trace (JSON object format) of phases and callbacks."""
        origin = min((p.start_ns for p in self.phases.values()), default=0)
        events: list[dict[str, Any]] = []
        for p in self.phases.values():
            events.append(
                {
                    "name": p.phase,
                    "cat": "phase",
                    "ph": "X",
                    "ts": (p.start_ns - origin) / 1000,
                    "dur": p.duration_us,
                    "pid": 1,
                    "tid": 0,
                }
            )
            events.extend(
                {
                    "name": f"{p.phase} {cb.participant}",
                    "cat": "callback" if cb.ok else "callback,error",
                    "ph": "X",
                    "ts": (cb.start_ns - origin) / 1000,
                    "dur": cb.duration_us,
                    "pid": 1,
                    "tid": cb.thread,
                    "args": {"participant": cb.participant, "ok": cb.ok},
                }
                for cb in p.callbacks
            )
        if self.freeze_start_ns is not None and self.restore_end_ns is not None:
            events.append(
                {
                    "name": "blackout",
                    "cat": "blackout",
                    "ph": "X",
                    "ts": (self.freeze_start_ns - origin) / 1000,
                    "dur": self.blackout_us,
                    "pid": 1,
                    "tid": -1,
                }
            )
        return {"traceEvents": events, "displayTimeUnit": "ms"}
