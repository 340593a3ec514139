"""``luo manifest`` and ``luo compat``: this environment's ABI, and two compared."""

from __future__ import annotations

import argparse
from typing import Any

from luo_core.cli._args import UsageError, check_writable, dumps, output_file, paragraph
from luo_core.cli._input import (
    STDIN,
    STDIN_SHOWN,
    printable,
    read_file,
    shown,
)
from luo_core.errors import ManifestError, PluginError
from luo_core.kernel._preflight import (
    MAX_MANIFEST_BYTES,
    Manifest,
    build_manifest,
    compare_manifests,
    dump_manifest,
    load_manifest,
)
from luo_core.kernel._registry import load_plugins
from luo_core.kernel.devices import _builtin

LEVELS = ("error", "warning", "info")


def add_parser(verbs: Any) -> None:
    manifest = verbs.add_parser(
        "manifest",
        help="print this environment's ABI manifest (JSON)",
        description=paragraph(
            "Print this environment's ABI manifest as stable JSON: every loaded pack and its "
            "version, every participant and the compatible of the record it writes (null "
            "for one without a record), and every schema's version range, rollback writers, "
            "migrations and field layout.  A pack that failed to load is listed under "
            '"failed" (with why); the manifest is still printed, and luo exits 1 with one '
            "line naming the pack: an incomplete manifest must not pass for a complete one."
        ),
        epilog=(
            "examples:\n"
            "  luo manifest -o before.json     # then upgrade a pack, and:\n"
            "  luo manifest -o after.json\n"
            "  luo compat before.json after.json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    manifest.add_argument(
        "-o",
        "--output",
        type=output_file,
        metavar="FILE",
        help="write the manifest to FILE instead of stdout (default: stdout)",
    )
    manifest.set_defaults(run=run_manifest)
    compat = verbs.add_parser(
        "compat",
        help="compare two manifests both ways; exit 1 if incompatible",
        description=paragraph(
            "Compare two ABI manifests (from luo manifest) both ways, like QEMU's "
            "vmstate-static-checker: update (can NEW read what OLD writes?) and rollback "
            "(can OLD read what NEW writes, directly or through a rollback writer?).  Prints "
            "one line per finding (level, direction, subject: message) and a verdict; exits "
            "0 if compatible, 1 if any finding is an error or a file is not a valid manifest "
            f"(one line naming the file and the path inside it).  A manifest is at most "
            f"{MAX_MANIFEST_BYTES >> 20} MiB of UTF-8 JSON; OLD or NEW may be - for stdin."
        ),
        epilog=(
            "examples:\n"
            "  luo compat before.json after.json\n"
            "  luo compat -q old.json new.json           # only the errors, and the verdict\n"
            "  luo manifest | luo compat target.json -   # this environment as NEW\n"
            "  luo compat --json old.json new.json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compat.add_argument(
        "old", metavar="OLD", help="manifest of the running kernel (a file, or - for stdin)"
    )
    compat.add_argument(
        "new", metavar="NEW", help="manifest of the target kernel (a file, or - for stdin)"
    )
    compat.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="list only the errors (default: every finding); the verdict counts them all",
    )
    compat.add_argument(
        "--json",
        action="store_true",
        help="print the findings and the verdict as JSON (default: text)",
    )
    compat.set_defaults(run=run_compat)


def run_manifest(args: argparse.Namespace) -> int:
    if args.output is not None:
        check_writable(args.output)  # before loading every pack
    manifest = build_manifest(load_plugins(builtin=_builtin, log_failures=False))
    text = dump_manifest(manifest)
    if args.output is not None:
        args.output.write_text(text)
    else:
        print(text, end="")
    failed: dict[str, str] = manifest.get("failed", {})
    if not failed:
        return 0
    first, *others = failed
    if not others:
        raise PluginError(
            f"pack {first} failed to load ({failed[first]}); the manifest lists it under "
            '"failed" and lacks its participants and schemas'
        )
    raise PluginError(
        f"{len(failed)} packs failed to load: {first} ({failed[first]}), {', '.join(others)}; "
        'the manifest lists them under "failed" and lacks their participants and schemas'
    )


def read_manifest(name: str) -> Manifest:
    """The manifest in file ``name`` (``-``: stdin), refused before reading if it is not
    a regular file or is larger than any manifest can be."""
    where = shown(name)

    def refuse(reason: str) -> ManifestError:
        return ManifestError(f"{where}: {reason}")

    data = read_file(name, MAX_MANIFEST_BYTES, refuse, largest=_LARGEST)
    return load_manifest(data, where)


_LARGEST = f"any manifest (at most {MAX_MANIFEST_BYTES >> 20} MiB)"


def run_compat(args: argparse.Namespace) -> int:
    if args.old == STDIN and args.new == STDIN:
        raise UsageError("OLD and NEW cannot both be - (stdin)")
    old = read_manifest(args.old)
    new = read_manifest(args.new)
    findings = compare_manifests(old, new)
    counts = {level: sum(1 for f in findings if f[0] == level) for level in LEVELS}
    verdict = "incompatible" if counts["error"] else "compatible"
    listed = [f for f in findings if f[0] == "error" or not args.quiet]
    if args.json:
        print(
            dumps(
                {
                    "verdict": verdict,
                    "counts": counts,
                    "old": _side(args.old, old),
                    "new": _side(args.new, new),
                    "findings": [
                        {"level": level, "direction": direction, "subject": subject, "message": m}
                        for level, direction, subject, m in listed
                    ],
                }
            )
        )
    else:
        for level, direction, subject, message in listed:
            print(printable(f"{level:<8}{direction:<9}{subject}: {message}"))
        print(
            f"{verdict}: {counts['error']} error(s) in {len(findings)} finding(s) "
            f"({len(old['schemas'])} schemas in OLD, {len(new['schemas'])} in NEW)"
        )
    return 1 if counts["error"] else 0


def _side(name: str, manifest: Manifest) -> dict[str, Any]:
    return {
        "file": STDIN_SHOWN if name == STDIN else name,
        "luo-core": manifest["luo-core"],
        "schemas": len(manifest["schemas"]),
        "failed": sorted(manifest.get("failed", {})),
    }
