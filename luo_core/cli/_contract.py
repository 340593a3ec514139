"""``luo contract PACK``: run the contract suite against an installed pack."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import attrs

from luo_core.cli._args import dumps
from luo_core.errors import LiveUpdateError

DESCRIPTION = """\
Run the contract suite against an installed pack, from the contracts it
declares through its luo_contracts hook: a real kexec across processes and one
in process, cancel after prepare and after freeze, a fault and a hang injected
into each callback, hostile, newer and golden records, random sequences
against a model, and the blackout budget.  The pack is first loaded as a
kernel would load it: a pack that fails to import, misspells a hook or whose
luo_contracts hook raises is refused in one line before any check runs.  Then
it prints the failed and skipped checks with their reasons, the blackout-path
cost of each device (freeze and restore, median of 3 updates) and the devices
over budget, and ends with "luo contract PACK: passed" or "FAILED".  Exit
status: 0 if every check passed, 1 otherwise (or for a pack that is not
installed, does not load or declares no contract).  Progress, one line per
check, goes to stderr when it is a terminal; the global -v shows log events."""

EPILOG = """\
examples:
  luo contract luo-example-nic          # by distribution name
  luo contract acme-nic                 # the name given to luo new-driver
  luo contract acme-nic --list          # every check and its outcome
  luo contract acme-nic --json > contract.json
"""


def pack_name(text: str) -> str:
    """An argparse ``type=``: a pack's name, not an empty string."""
    if not text.strip():
        raise argparse.ArgumentTypeError("a pack's name is needed, not an empty string")
    return text


def add_parser(verbs: Any) -> None:
    parser = verbs.add_parser(
        "contract",
        help="run the contract suite against an installed pack",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "pack",
        type=pack_name,
        metavar="PACK",
        help="the installed pack: its distribution name (luo-acme-nic), its entry point's "
        "name, or the name given to luo new-driver (acme-nic)",
    )
    parser.add_argument(
        "--list",
        dest="list_tests",
        action="store_true",
        help="list every check with its outcome (default: only the failed and skipped ones)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print JSON instead of text: the pack, every check (name, outcome, message, "
        "duration_ms), the blackout-path costs (µs), the devices over budget and the verdict",
    )
    parser.set_defaults(run=run)


@attrs.define
class Check:
    """One test of the suite, as it ended: passed, failed, skipped, or error (in
    its set-up or tear-down)."""

    name: str
    outcome: str = "passed"
    message: str | None = None
    duration_s: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "outcome": self.outcome,
            "message": self.message,
            "duration_ms": self.duration_s * 1e3,
        }


def check_name(nodeid: str) -> str:
    """A check's name from its test's node id: ``...::TestInstalledPack::test_cancel[freeze]``
    -> ``cancel[freeze]``."""
    return nodeid.rsplit("::", 1)[-1].removeprefix("test_")


def _message(report: Any) -> str | None:
    longrepr = report.longrepr
    if longrepr is None:
        return None
    if isinstance(longrepr, tuple):  # a skip: (file, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    return str(crash.message) if crash is not None else str(longrepr)


class Collector:
    """A pytest plugin that records each check's outcome and, when asked, prints one
    progress line per check as it finishes."""

    def __init__(self, progress: IO[str] | None) -> None:
        self.progress = progress
        self.checks: dict[str, Check] = {}
        self.total = 0
        self.errors: list[str] = []
        """Why the suite could not be collected, if it could not."""
        self.interrupted = False

    def pytest_collection_finish(self, session: Any) -> None:
        self.total = len(session.items)

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            self.errors.append(" ".join(str(_message(report)).split()))

    def pytest_keyboard_interrupt(self, excinfo: Any) -> None:
        self.interrupted = True

    def pytest_runtest_logreport(self, report: Any) -> None:
        check = self.checks.setdefault(report.nodeid, Check(check_name(report.nodeid)))
        check.duration_s += report.duration
        if check.outcome == "passed" and not report.passed:
            if report.skipped:
                check.outcome = "skipped"
            else:
                check.outcome = "failed" if report.when == "call" else "error"
            check.message = _message(report)
        if report.when == "teardown" and self.progress is not None:
            done = len(self.checks)
            width = len(str(self.total))
            self.progress.write(
                f"luo contract: [{done:>{width}}/{self.total}] {check.outcome:<7} {check.name}\n"
            )


def _progress_stream() -> IO[str] | None:
    """The terminal behind stderr, reopened so that pytest's capture of file
    descriptor 2 cannot swallow progress; ``None`` when stderr is not a terminal."""
    try:
        if not sys.stderr.isatty():
            return None
        fd = os.dup(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        return None
    return os.fdopen(fd, "w", buffering=1, encoding="utf-8", errors="replace")


def run_suite(pack: str, *, verbose: int, progress: IO[str] | None) -> tuple[int, Collector]:
    """Run the suite on installed ``pack`` (its distribution name) in this process."""
    import pytest

    collector = Collector(progress)
    with tempfile.TemporaryDirectory() as tmp:
        ini = Path(tmp) / "pytest.ini"
        ini.write_text("[pytest]\nfilterwarnings = error\n")
        argv = [
            "-c", str(ini), "--rootdir", tmp,
            "-p", "no:cacheprovider", "-p", "no:terminal",  # the collector reports
            "-W", "ignore::pytest.PytestAssertRewriteWarning",
            "-p", "luo_core.testing", "--luo-pack", pack,
            "--pyargs", "luo_core.testing._installed",
        ]  # fmt: skip
        if verbose:
            argv.append("--capture=no")  # -v: the log events of the checks reach stderr
        code = int(pytest.main(argv, plugins=[collector]))
    if collector.interrupted:
        raise KeyboardInterrupt
    if code not in (0, 1):
        why = "; ".join(collector.errors) or f"pytest exit status {code}"
        raise LiveUpdateError(f"the contract suite could not run for {pack}: {why}")
    return code, collector


def _costs(reference: str) -> tuple[dict[str, dict[str, float]] | None, list[str], str | None]:
    """The blackout-path cost of each device, those over budget, or why they could not
    be measured (a pack that fails its checks may fail here too)."""
    from luo_core.testing import blackout_costs, over_budget

    try:
        costs = blackout_costs(reference)
        return costs, over_budget(reference, costs), None
    except Exception as exc:
        return None, [], " ".join(f"{type(exc).__name__}: {exc}".split())


def run(args: argparse.Namespace) -> int:
    try:
        import pytest  # noqa: F401
    except ImportError:
        raise LiveUpdateError("luo contract needs pytest: pip install 'luo-core[test]'") from None
    from luo_core.testing._installed import resolve_pack

    # stdout is the report's (and --json's): what the pack prints, importing or running,
    # goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        pack = resolve_pack(args.pack)  # a one-line refusal now, rather than inside pytest
        progress = _progress_stream()
        try:
            started = time.perf_counter()
            code, collector = run_suite(
                pack.distribution, verbose=args.log_verbosity, progress=progress
            )
            elapsed = time.perf_counter() - started
            if progress is not None:
                progress.write("luo contract: measuring the blackout-path cost (3 updates)\n")
            costs, over, cost_error = _costs(pack.reference)
        finally:
            if progress is not None:
                progress.close()
    checks = list(collector.checks.values())
    passed = code == 0 and all(c.outcome in ("passed", "skipped") for c in checks)
    verdict = "passed" if passed else "FAILED"
    if args.json:
        print(
            dumps(
                {
                    "pack": pack.distribution,
                    "version": pack.version,
                    "entry_point": pack.entry_point,
                    "checks": [c.as_json() for c in checks],
                    "blackout_us": costs,
                    "blackout_error": cost_error,
                    "over_budget": over,
                    "verdict": verdict,
                }
            )
        )
    else:
        _print_text(str(pack), checks, elapsed, args.list_tests)
        _print_costs(pack.distribution, costs, over, cost_error)
        print(f"luo contract {pack.distribution}: {verdict}")
    return 0 if passed else 1


def _print_text(pack: str, checks: list[Check], elapsed: float, every: bool) -> None:
    print(f"luo contract {pack}: {len(checks)} checks")
    for check in checks:
        if check.outcome == "passed" and not every:
            continue
        lines = (check.message or "").splitlines() or [""]
        head = f"  {check.outcome:<7} {check.name}"
        print(f"{head}: {lines[0]}" if lines[0] else head)
        for line in lines[1:]:
            print(f"            {line}")
    counts = {o: sum(c.outcome == o for c in checks) for o in ("passed", "failed", "error")}
    skipped = sum(c.outcome == "skipped" for c in checks)
    summary = ", ".join(f"{n} {o}" for o, n in counts.items() if n or o != "error")
    print(f"{summary}, {skipped} skipped in {elapsed:.1f} s")


def _print_costs(
    name: str, costs: dict[str, dict[str, float]] | None, over: list[str], error: str | None
) -> None:
    if costs is None:
        print(f"\nblackout-path cost for {name} not measured: {error}")
        return
    print(f"\nblackout-path cost per device for {name} (median of 3 updates, µs):")
    for device, phases in costs.items():
        print(
            f"  {device}: freeze {phases['freeze']:.1f} + restore {phases['restore']:.1f}"
            f" = {phases['total']:.1f}"
        )
    for line in over:
        print(f"  over budget: {line}")
