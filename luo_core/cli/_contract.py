"""``luo contract PACK``: run the contract suite against an installed pack."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from luo_core.errors import LiveUpdateError


def add_parser(verbs: Any) -> None:
    parser = verbs.add_parser("contract", help="run the contract suite against an installed pack")
    parser.add_argument("pack", metavar="PACK", help="the pack's distribution name")
    parser.add_argument(
        "-v", "--verbose", dest="list_tests", action="store_true", help="list every test"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        import pytest
    except ImportError:
        raise LiveUpdateError("luo contract needs pytest: pip install 'luo-core[test]'") from None
    from luo_core.testing import blackout_costs, over_budget
    from luo_core.testing._installed import load_pack

    pack = load_pack(args.pack)  # a one-line error now, rather than inside pytest
    with tempfile.TemporaryDirectory() as tmp:
        ini = Path(tmp) / "pytest.ini"
        ini.write_text("[pytest]\nfilterwarnings = error\n")
        code = pytest.main(
            [
                "-c", str(ini), "--rootdir", tmp, "-p", "no:cacheprovider",
                "-W", "ignore::pytest.PytestAssertRewriteWarning",
                "-p", "luo_core.testing", "--luo-pack", args.pack,
                "-rs", "-v" if args.list_tests else "-q", "--tb=line",
                "--pyargs", "luo_core.testing._installed",
            ]
        )  # fmt: skip
    # The suite's own tests may have reconfigured structlog: the command's rule holds again.
    from luo_core.cli._main import configure_logging

    configure_logging(args.verbose)
    costs = blackout_costs(pack)
    print(f"\nblackout-path cost per device for {args.pack} (median of 3 updates, µs):")
    for device, phases in costs.items():
        print(
            f"  {device}: freeze {phases['freeze']:.1f} + restore {phases['restore']:.1f}"
            f" = {phases['total']:.1f}"
        )
    for line in over_budget(pack, costs):
        print(f"  over budget: {line}")
    verdict = "passed" if code == 0 else "FAILED"
    print(f"luo contract {args.pack}: {verdict}")
    return 0 if code == 0 else 1
