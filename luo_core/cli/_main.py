"""``luo``: argument parsing, logging set-up, and one-line errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from luo_core import _logging
from luo_core.cli import _abi, _bench, _contract, _demo, _drivers, _inspect, _scaffold
from luo_core.errors import LiveUpdateError, MachineError

EXIT_ERROR = 1
EXIT_USAGE = 2


def configure_logging(verbosity: int) -> None:
    """The CLI, not the library, decides where log events go: stderr."""
    _logging.configure({0: "warning", 1: "info"}.get(verbosity, "debug"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="luo", description="Emulate Linux live update (LUO) on an emulated host."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log events to stderr (-vv: all)"
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for module in (_demo, _drivers, _abi, _inspect, _contract, _scaffold, _bench):
        module.add_parser(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        code: int = args.run(args)
    except (LiveUpdateError, MachineError, OSError) as exc:
        if args.debug:
            raise
        print(f"luo {args.verb}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return code
