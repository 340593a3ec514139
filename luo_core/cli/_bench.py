"""``luo bench``: the framework's own cost per device and per phase.

Devices use a driver whose callbacks do nothing, so what is measured is luo:
ordering, dispatch, timing, logging and the handoff.
"""

from __future__ import annotations

import argparse
import gc
import statistics
from collections.abc import Callable, Iterator
from typing import Any

from luo_core.abi import state
from luo_core.abi._boot import MAX_WORKERS
from luo_core.cli._args import Progress, add_workers, dumps, int_range, paragraph
from luo_core.kernel._hookspecs import hookimpl
from luo_core.kernel._kernel import Kernel
from luo_core.kernel._records import DeviceDriver, DeviceDriverOps
from luo_core.platform import flat_host

NULL_COMPATIBLE = "luo,bench-null"
PHASES = ("prepare", "freeze", "kexec", "restore", "finish")
MAX_DEVICES = 31 * 256
"""What :func:`~luo_core.platform.flat_host` holds: 31 bridges of 256 functions."""
MAX_ROUNDS = 1000


@state(compatible=NULL_COMPATIBLE, version=1)
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
    parser = verbs.add_parser(
        "bench",
        help="measure luo's own cost per device and phase",
        description=paragraph(
            "Measure luo's own cost per device and per phase: N endpoints behind PCI "
            "bridges, bound to a driver whose callbacks do nothing, go through whole "
            "update cycles (prepare, freeze, kexec, restore, finish) with both kernels in "
            "this process.  After one warm-up cycle, the median of the rounds is printed, "
            "in total and per device (bridges included).  On a terminal, stderr shows "
            "which round is running."
        ),
        epilog=(
            "examples:\n"
            "  luo bench --devices 4000 --rounds 10 --workers 4\n"
            "  luo bench --devices 7936 --rounds 1 --json   # the largest host, once"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--devices",
        type=int_range(1, MAX_DEVICES),
        default=1000,
        metavar="N",
        help=f"endpoints with null callbacks: 1 to {MAX_DEVICES}, default 1000",
    )
    parser.add_argument(
        "--rounds",
        type=int_range(1, MAX_ROUNDS),
        default=5,
        metavar="N",
        help=f"update cycles, of which the median is shown: 1 to {MAX_ROUNDS}, default 5",
    )
    add_workers(parser, f"threads for independent subtrees: 1 to {MAX_WORKERS}, default 1")
    parser.add_argument(
        "--json", action="store_true", help="print JSON instead of a table (default: a table)"
    )
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


def measure(
    devices: int, rounds: int, workers: int, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    say = progress or (lambda _text: None)
    say("warming up")
    cycle(min(devices, 16), workers)  # warm imports and caches
    runs = []
    for number in range(1, rounds + 1):
        say(f"round {number}/{rounds} ({devices} endpoints)")
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
    with Progress("bench") as progress:
        result = measure(args.devices, args.rounds, args.workers, progress)
    if args.json:
        print(dumps(result))
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
