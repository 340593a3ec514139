"""Handoff time with 64 MiB vs 8 GiB of preserved guest memory.

Run ``python benchmarks/bench_handoff.py``.

A guest-memory subsystem preserves its RAM through KHO and hands over only
the ranges, so the time from freeze to the end of restore must not grow with
the size of guest memory: nothing is copied.
"""

from __future__ import annotations

import argparse
import functools
import statistics
from collections.abc import Iterator

from luo_core import Kernel, Machine, PhysRange, Subsystem, SubsystemOps, hookimpl, state
from luo_core.cli._main import configure_logging
from luo_core.platform import Hardware

GIB = 1 << 30
CHUNK = GIB  # the allocator's largest block


@state(compatible="luo,bench-guest-ram", version=1)
class GuestRamRecord:
    """Where the guest's RAM is: only the ranges cross, never the memory."""

    chunks: list[PhysRange]


class GuestRam(SubsystemOps):
    def __init__(self, kernel: Kernel, size: int) -> None:
        self.kernel = kernel
        self.chunks = [
            PhysRange(kernel.mm.alloc(min(CHUNK, size - off)), min(CHUNK, size - off))
            for off in range(0, size, CHUNK)
        ]
        for chunk in self.chunks:  # the guest has touched one page per chunk
            kernel.memory.write(chunk.start, b"guest")

    def prepare(self) -> GuestRamRecord:
        for chunk in self.chunks:
            self.kernel.kho.preserve(chunk.start, chunk.size)
        return GuestRamRecord(self.chunks)


class GuestPack:
    """Built afresh by every boot; only a cold-booted kernel has a guest to preserve."""

    def __init__(self, size: int) -> None:
        self.size = size

    @hookimpl
    def luo_subsystems(self, kernel: Kernel | None) -> Iterator[Subsystem]:
        if kernel is not None and kernel.kho_root is None:
            ops = GuestRam(kernel, self.size)
            yield Subsystem(name="guest-ram", ops=ops, schema=GuestRamRecord)


def handoff_us(guest_bytes: int) -> tuple[float, float]:
    """(blackout, kexec phase) in µs for one update with ``guest_bytes`` preserved."""
    machine = Machine(memory_size=guest_bytes + 2 * GIB, scratch_size=64 << 20)
    with Hardware(machine) as hardware:
        plugins = [functools.partial(GuestPack, guest_bytes)]
        kernel = Kernel.boot(hardware, plugins=plugins, discover=False)
        kernel.prepare()
        new = kernel.kexec()
        assert new.stats is not None and new.stats.blackout_us is not None
        result = (new.stats.blackout_us, new.stats.phases["kexec"].duration_us)
        new.finish()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    configure_logging(0)
    handoff_us(64 << 20)  # warm up
    rows = {}
    for label, size in (("64 MiB", 64 << 20), ("8 GiB", 8 * GIB)):
        runs = [handoff_us(size) for _ in range(args.rounds)]
        rows[label] = (
            statistics.median(r[0] for r in runs),
            statistics.median(r[1] for r in runs),
        )
        print(f"{label:>7}: blackout {rows[label][0]:8.1f} µs, kexec {rows[label][1]:8.1f} µs")
    ratio = rows["8 GiB"][0] / rows["64 MiB"][0]
    print(f"blackout ratio 8 GiB / 64 MiB: {ratio:.2f} (median of {args.rounds})")


if __name__ == "__main__":
    main()
