"""``luo manifest`` and ``luo compat``: this environment's ABI, and two compared."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from luo_core.kernel._preflight import (
    build_manifest,
    compare_manifests,
    dump_manifest,
    load_manifest,
)
from luo_core.kernel._registry import load_plugins
from luo_core.kernel.devices import _builtin


def add_parser(verbs: Any) -> None:
    manifest = verbs.add_parser("manifest", help="print this environment's ABI manifest (JSON)")
    manifest.add_argument("-o", "--output", type=Path, metavar="FILE", help="write it to FILE")
    manifest.set_defaults(run=run_manifest)
    compat = verbs.add_parser(
        "compat", help="compare two manifests both ways; non-zero if incompatible"
    )
    compat.add_argument("old", type=Path, metavar="OLD", help="manifest of the running kernel")
    compat.add_argument("new", type=Path, metavar="NEW", help="manifest of the target kernel")
    compat.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    compat.set_defaults(run=run_compat)


def run_manifest(args: argparse.Namespace) -> int:
    text = dump_manifest(build_manifest(load_plugins(builtin=_builtin)))
    if args.output:
        args.output.write_text(text)
    else:
        print(text, end="")
    return 0


def run_compat(args: argparse.Namespace) -> int:
    old = load_manifest(args.old.read_text(), str(args.old))
    new = load_manifest(args.new.read_text(), str(args.new))
    findings = compare_manifests(old, new)
    errors = sum(1 for level, *_ in findings if level == "error")
    for level, direction, subject, message in findings:
        if args.quiet and level != "error":
            continue
        print(f"{level:<8}{direction:<9}{subject}: {message}")
    verdict = "incompatible" if errors else "compatible"
    print(
        f"{verdict}: {errors} error(s) in {len(findings)} finding(s) "
        f"({len(old['schemas'])} schemas in OLD, {len(new['schemas'])} in NEW)"
    )
    return 1 if errors else 0
