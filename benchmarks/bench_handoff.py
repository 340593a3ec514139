"""Handoff time with 64 MiB vs 8 GiB of preserved guest memory.

Run ``python benchmarks/bench_handoff.py``.

A guest-memory subsystem preserves its RAM through KHO and hands over only
the ranges, so the time from freeze to the end of restore must not grow with
the size of guest memory: nothing is copied.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Iterator

from luo_core import Kernel, Machine, Subsystem, SubsystemOps, hookimpl
from luo_core.cli._main import configure_logging

GIB = 1 << 30
CHUNK = GIB  # the allocator's largest block


class GuestRam(SubsystemOps):
    def __init__(self, kernel: Kernel, size: int) -> None:
        self.kernel = kernel
        self.chunks = [kernel.mm.alloc(min(CHUNK, size - off)) for off in range(0, size, CHUNK)]
        self.size = size
        for phys in self.chunks:  # the guest has touched one page per chunk
            kernel.memory.write(phys, b"guest")

    def prepare(self) -> bytes:
        for i, phys in enumerate(self.chunks):
            self.kernel.kho.preserve(phys, min(CHUNK, self.size - i * CHUNK))
        return b"".join(p.to_bytes(8, "little") for p in self.chunks)


class GuestPack:
    def __init__(self, size: int) -> None:
        self.size = size

    @hookimpl
    def luo_subsystems(self, kernel: Kernel | None) -> Iterator[Subsystem]:
        if kernel is not None and kernel.kho_root is None:
            yield Subsystem(name="guest-ram", ops=GuestRam(kernel, self.size))


def handoff_us(guest_bytes: int) -> tuple[float, float]:
    """(blackout, kexec phase) in µs for one update with ``guest_bytes`` preserved."""
    machine = Machine(memory_size=guest_bytes + 2 * GIB, scratch_size=64 << 20)
    kernel = Kernel.boot(machine, plugins=[GuestPack(guest_bytes)], discover=False)
    kernel.prepare()
    new = kernel.kexec()
    assert new.stats is not None and new.stats.blackout_us is not None
    result = (new.stats.blackout_us, new.stats.phases["kexec"].duration_us)
    new.finish()
    machine.close()
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
