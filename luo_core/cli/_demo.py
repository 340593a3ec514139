"""``luo demo``: the built-in host (or a host file's) through its updates, measured and told.

By default every actor is a process of its own: the hardware powers on first
(its NICs receive frames from their links all along), the first kernel boots
in a new process, each next kernel is started and warmed during ``prepare``,
and at ``kexec`` the old process exits and the new one boots from the handoff.
``--inproc`` does the same with the kernels in this process; ``--cold`` does
plain kexecs instead of live updates, for comparison.  The run itself is
:mod:`luo_core.cli._demo_run`; its report, :mod:`luo_core.cli._demo_report`.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path
from typing import Any

from luo_core.abi._boot import MAX_WORKERS
from luo_core.cli._args import (
    Progress,
    UsageError,
    add_workers,
    check_writable,
    dumps,
    log_level,
    non_empty,
    output_file,
    paragraph,
)
from luo_core.cli._args import mac_address as mac_address  # re-exported: tests import it here
from luo_core.cli._demo_report import summary, text_lines
from luo_core.cli._demo_run import Options, run_demo
from luo_core.cli._demo_trace import chrome_trace
from luo_core.cli._input import read_file, shown
from luo_core.errors import HostConfigError
from luo_core.platform import DEFAULT_HOST_TOML, MAX_HOST_BYTES, HostConfig, load_host

BUILT_IN = "the built-in host"


def add_parser(verbs: Any) -> None:
    parser = verbs.add_parser(
        "demo",
        help="live-update the built-in host several times and report",
        description=paragraph(
            "Boot the built-in host (an IOMMU, interrupt remapping, /dev/kvm, three "
            "example NICs and an NVMe controller of the host's own, and two VMs each given "
            "a virtio-net NIC and an NVMe controller through VFIO) once and run its live "
            "updates in a row (3; a host file says how many): the VMM preserves its VMs, "
            "each update prepares, freezes, jumps to the next kernel, restores and the VMM "
            "resumes the VMs, then finishes, and the workload starts again.  The devices "
            "keep doing DMA and raising interrupts while no kernel runs.  The first update "
            "is written for the previous release's ABI, so the next kernel migrates the "
            "records.  The report gives the process ids, the packs, the device tree with "
            "each device's fate, per update its phases, slowest participants, blackout and "
            "the pause the VMs saw, then the totals: frames, I/Os and interrupts (sent, "
            "lost, duplicated, as the guests count them), DMA faults, migrations.  --cold "
            "runs plain kexecs instead (every device reset, the VMs restarted) and reports "
            "their outage.  The hardware and each kernel run in processes of their own "
            "unless --inproc is given.  On a terminal, stderr shows which step is running.  "
            "--config runs the host a host file describes instead, VMs included."
        ),
        epilog=(
            "examples:\n"
            "  luo demo\n"
            "  luo demo --cold                       # the same host through cold reboots\n"
            "  luo demo --config host.toml           # see 'Host descriptions' in the docs\n"
            "  luo demo --run-dir run && cat run/sys/kernel/liveupdate/state\n"
            "  luo demo --json --trace trace.json    # then open trace.json in Perfetto\n"
            "  luo demo --save-handoff h.luo && luo inspect h.luo"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--json", action="store_true", help="print a JSON summary instead of text (default: text)"
    )
    parser.add_argument(
        "--config",
        type=non_empty,
        metavar="FILE",
        help=f"the host file to run, at most {MAX_HOST_BYTES >> 20} MiB; - reads stdin "
        "(default: the built-in host)",
    )
    parser.add_argument(
        "--trace",
        type=output_file,
        metavar="FILE",
        help="also write a Chrome/Perfetto trace of the whole run to FILE (default: none)",
    )
    parser.add_argument(
        "--run-dir",
        type=output_dir,
        metavar="DIR",
        help="write the running kernel's sysfs view under DIR after boot and every step; "
        "DIR is created if its parent exists (default: none)",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="cold reboots (plain kexec, devices reset) instead of live updates (default: live)",
    )
    parser.add_argument(
        "--save-handoff",
        type=output_file,
        metavar="FILE",
        help="also write the last update's handoff to FILE, for luo inspect (default: none)",
    )
    add_workers(parser, f"threads for independent device subtrees: 1 to {MAX_WORKERS}, default 1")
    parser.add_argument(
        "--inproc",
        action="store_true",
        help="run every kernel in this process (faster, checks less; default: processes)",
    )
    parser.add_argument(
        "--next-python",
        type=non_empty,
        metavar="PATH",
        help=(
            "boot the next kernels with this interpreter, i.e. another environment with "
            "other packs (default: this one; not with --inproc or --cold)"
        ),
    )
    parser.set_defaults(run=run)


def read_host(name: str | None) -> HostConfig:
    """Host file ``name`` (``-``: stdin), or the built-in host for ``None``."""
    if name is None:
        return load_host(DEFAULT_HOST_TOML, BUILT_IN)
    where = shown(name)

    def refuse(reason: str) -> HostConfigError:
        return HostConfigError(f"{where}: {reason}")

    largest = f"a host file (at most {MAX_HOST_BYTES >> 20} MiB)"
    return load_host(read_file(name, MAX_HOST_BYTES, refuse, largest=largest), where)


def output_dir(text: str) -> Path:
    """An argparse ``type=`` for ``--run-dir``: not empty, not an existing file."""
    if not text:
        raise argparse.ArgumentTypeError("a directory name is needed, not an empty string")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a directory")
    return path


def _prepare_run_dir(path: Path) -> Path:
    """``--run-dir``, absolute, created if missing, and writable: refused before the run."""
    path = path.absolute()
    check_writable(path)
    path.mkdir(exist_ok=True)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    return path


def run(args: argparse.Namespace) -> int:
    if args.inproc and args.next_python:
        raise UsageError("--next-python needs a kernel process: drop --inproc")
    if args.cold and args.next_python:
        raise UsageError("--next-python is for live updates: drop --cold")
    for path in (args.trace, args.save_handoff):
        if path is not None:
            check_writable(path)  # before the run, not after it
    host = read_host(args.config)
    run_dir = None if args.run_dir is None else _prepare_run_dir(args.run_dir)
    options = Options(
        mode="cold" if args.cold else "live",
        updates=host.updates,
        inproc=args.inproc,
        workers=args.workers,
        next_python=args.next_python,
        save_handoff=args.save_handoff,
        run_dir=run_dir,
        log=log_level(args.log_verbosity),
        vms=host.vms,
    )
    with Progress("demo") as progress:
        result = run_demo(host.machine, options, progress)
    report = summary(result)
    written = []
    if args.trace:
        args.trace.write_text(json.dumps(chrome_trace(result)))
        written.append(("trace", args.trace))
    if args.save_handoff:
        written.append(("handoff", args.save_handoff))
    notes = [f"{what}: {path} ({path.stat().st_size} bytes)" for what, path in written]
    if run_dir is not None:
        notes.append(f"sysfs view: {run_dir}")
    if args.json:
        print(dumps(report))
        for note in notes:  # stdout is the JSON alone
            print(f"luo demo: wrote {note}", file=sys.stderr)
        return 0
    where = BUILT_IN if args.config is None else f"the host in {shown(args.config)}"
    parents = {name: spec.parent for name, spec in host.machine.devices.items()}
    print("\n".join(text_lines(report, parents, where)))
    for note in notes:
        print(note)
    return 0
