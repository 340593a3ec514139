"""Blackout of the default host, in-process and across processes (a measurement, not a test).

The blackout runs from the start of freeze in the old kernel to the last
device restored in the new one (the two kernels share CLOCK_MONOTONIC).  Each
round is one live update of ``default_host`` with every installed pack, its
three NICs preserved and receiving frames from their links, as ``luo demo``
does.  Prints the median and the spread over the rounds, and what the blackout
is made of: freeze, the jump (kexec: shutdown, KHO finalize, the next kernel's
boot up to restore) and restore.

    python benchmarks/bench_blackout.py [--rounds 15] [--mode both|inproc|process]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics

from luo_core import Kernel
from luo_core.abi._stats import UpdateStats
from luo_core.kexec import KernelProcess
from luo_core.platform import EXAMPLE_NIC, Hardware, HardwareProcess, default_host

RX_PPS = 100_000
PARTS = ("freeze", "kexec", "restore")


def inproc_round() -> UpdateStats:
    machine = default_host(rx_pps=RX_PPS)
    with Hardware(machine) as hardware:
        kernel = Kernel.boot(hardware)
        for name, spec in machine.devices.items():
            if spec.compatible == EXAMPLE_NIC:
                kernel.devices.request(name)
        kernel.prepare()
        gc.collect()  # the previous round's garbage is not this round's blackout
        new = kernel.kexec(check_leaks=False)
        assert new.stats is not None
        stats = new.stats
        new.finish()
    return stats


def process_rounds(rounds: int) -> list[UpdateStats]:
    machine = default_host(rx_pps=RX_PPS)
    nics = [n for n, s in machine.devices.items() if s.compatible == EXAMPLE_NIC]
    found = []
    with HardwareProcess(machine) as hardware:
        kernel = KernelProcess.boot(hardware)
        try:
            for _ in range(rounds):
                for nic in nics:
                    kernel.request(nic)
                kernel.prepare()
                kernel = kernel.kexec()
                stats = kernel.stats
                assert stats is not None
                found.append(stats)
                kernel.finish()
        finally:
            kernel.shutdown()
    return found


def summarize(runs: list[UpdateStats]) -> dict[str, object]:
    blackouts = sorted(s.blackout_us or 0.0 for s in runs)
    parts = {
        part: statistics.median(s.phases[part].duration_us for s in runs if part in s.phases)
        for part in PARTS
    }
    return {
        "rounds": len(runs),
        "blackout_ms": {
            "median": round(statistics.median(blackouts) / 1000, 2),
            "min": round(blackouts[0] / 1000, 2),
            "p90": round(blackouts[int(0.9 * (len(blackouts) - 1))] / 1000, 2),
        },
        "median_ms": {part: round(us / 1000, 2) for part, us in parts.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--mode", choices=["both", "inproc", "process"], default="both")
    args = parser.parse_args()
    from luo_core._logging import configure

    configure("warning")
    result: dict[str, object] = {}
    if args.mode in ("both", "inproc"):
        inproc_round()  # warm imports and codecs
        result["inproc"] = summarize([inproc_round() for _ in range(args.rounds)])
    if args.mode in ("both", "process"):
        result["process"] = summarize(process_rounds(args.rounds + 1)[1:])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
