"""``luo bench``: the framework's own cost per device and per phase.

Devices use a driver whose callbacks do nothing, so what is measured is luo:
ordering, dispatch, timing, logging and the handoff.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
from collections.abc import Iterator
from typing import Any

from luo_core.abi import state
from luo_core.cli._args import positive_int
from luo_core.kernel._hookspecs import hookimpl
from luo_core.kernel._kernel import Kernel
from luo_core.kernel._records import DeviceDriver, DeviceDriverOps
from luo_core.platform import flat_host

NULL_COMPATIBLE = "luo,bench-null"
PHASES = ("prepare", "freeze", "kexec", "restore", "finish")


@state(compatible="luo,bench-null", version=1)
class NullRecord:
    """A null device hands over nothing but the fact that it was preserved."""


class NullDriverPack:
    @hookimpl
    def luo_device_drivers(self) -> Iterator[DeviceDriver]:
        yield DeviceDriver(
            name="bench-null",
            compatible=[NULL_COMPATIBLE],
            ops=DeviceDriverOps(),
            schema=NullRecord,
        )


def add_parser(verbs: Any) -> None:
    parser = verbs.add_parser("bench", help="measure luo's own cost per device and phase")
    parser.add_argument(
        "--devices", type=positive_int, default=1000, help="endpoints with null callbacks"
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=5, help="update cycles; the median is shown"
    )
    parser.add_argument("--workers", type=positive_int, default=1, help="concurrent subtrees")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run)


def cycle(devices: int, workers: int) -> dict[str, float]:
    """One prepare+freeze+kexec+restore+finish over ``devices`` null devices."""
    kernel = Kernel.boot(
        flat_host(devices, NULL_COMPATIBLE),
        plugins=[NullDriverPack],
        discover=False,
        workers=workers,
    )
    for dev in kernel.devices.devices():
        if not dev.children:
            kernel.devices.request(dev.name)
    kernel.prepare()
    new = kernel.kexec(check_leaks=False)
    new.finish()
    assert new.stats is not None and new.stats.blackout_us is not None
    out = {name: new.stats.phases[name].duration_us for name in PHASES}
    out["blackout"] = new.stats.blackout_us
    return out


def measure(devices: int, rounds: int, workers: int) -> dict[str, Any]:
    cycle(min(devices, 16), workers)  # warm imports and caches
    runs = []
    for _ in range(rounds):
        # Start each cycle with no garbage pending, so that a collection of the
        # previous cycle's kernels does not land in this one's phases.
        gc.collect()
        runs.append(cycle(devices, workers))
    participants = devices + (devices + 255) // 256 + 1  # endpoints, bridges, host bridge
    median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    return {
        "devices": devices,
        "participants": participants,
        "rounds": rounds,
        "workers": workers,
        "median_us": median,
        "per_device_us": {key: median[key] / participants for key in PHASES},
    }


def run(args: argparse.Namespace) -> int:
    result = measure(args.devices, args.rounds, args.workers)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"luo bench: {result['participants']} devices with null callbacks "
        f"({result['devices']} endpoints), {args.workers} worker(s), "
        f"median of {args.rounds} cycles"
    )
    print(f"  {'phase':<10}{'total ms':>10}{'µs/device':>12}")
    for phase in PHASES:
        total = result["median_us"][phase] / 1000
        print(f"  {phase:<10}{total:>10.2f}{result['per_device_us'][phase]:>12.2f}")
    print(f"  {'blackout':<10}{result['median_us']['blackout'] / 1000:>10.2f}")
    return 0
