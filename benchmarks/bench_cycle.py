"""Framework cost of one live update as the host grows: ``python benchmarks/bench_cycle.py``.

Runs ``luo bench``'s measurement for several host sizes and worker counts and
prints µs per device per phase, so a change to a hot path can be compared
before and after on the same machine.
"""

from __future__ import annotations

import argparse
import json

from luo_core.cli._bench import PHASES, measure
from luo_core.cli._main import configure_logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100,1000,4000", help="comma-separated device counts")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    configure_logging(0)  # a library never configures logging; this script does
    rows = [
        measure(int(size), args.rounds, int(workers))
        for size in args.sizes.split(",")
        for workers in args.workers.split(",")
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        f"{'devices':>8} {'workers':>8} " + " ".join(f"{p:>9}" for p in PHASES) + "  blackout ms"
    )
    for row in rows:
        per = " ".join(f"{row['per_device_us'][p]:>9.2f}" for p in PHASES)
        blackout = row["median_us"]["blackout"] / 1000
        print(f"{row['participants']:>8} {row['workers']:>8} {per}  {blackout:>10.2f}")


if __name__ == "__main__":
    main()
