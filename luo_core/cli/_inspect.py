"""``luo inspect``: decode and validate a saved handoff, as the next kernel would."""

from __future__ import annotations

import argparse
from typing import IO, Any, Final

import attrs

from luo_core.abi import decode_state, load_image, read_root, schema_of, unseal
from luo_core.abi._frame import HEADER, OVERHEAD
from luo_core.abi._image import IMAGE
from luo_core.abi._kho import MemRange
from luo_core.abi._luo import KHO_ENTRY, read_luo, unpack_tree
from luo_core.abi._meta import META_NODE
from luo_core.cli._args import dumps, mac_address
from luo_core.cli._input import (
    STDIN,
    open_regular,
    printable,
    read_upto,
    shown,
    stdin_bytes,
)
from luo_core.errors import HandoffError, LiveUpdateError
from luo_core.kernel._records import DeviceDriver, Subsystem
from luo_core.kernel._registry import load_plugins
from luo_core.kernel.devices import _builtin

MAX_IMAGE_BYTES: Final = IMAGE.max_body + OVERHEAD
"""The largest file a handoff image can be (1 GiB of body and its 16-byte frame)."""

DESCRIPTION = f"""\
Read a saved handoff (luo demo --save-handoff FILE) exactly as the next kernel
would: the image frame, the KHO root, every node's envelope and checksum.
Print the liveupdate-number, the preserved ranges and each node's compatible,
version and length, with its fields decoded by the schema of the installed
pack that declares it, and the sessions in the LUO entry with their files
(token, file handler, data handle) (a field named mac or ending in _mac prints as
aa:bb:cc:dd:ee:ff).  HANDOFF is a regular file of at most 1 GiB + 16 bytes
({MAX_IMAGE_BYTES}, the largest handoff image), or - for stdin; anything else
(a device, a named pipe, a directory, a larger file) is refused before it is
read.  A damaged or hostile handoff is one line naming what is wrong, exit 1."""

EPILOG = """\
examples:
  luo demo --save-handoff h.luo && luo inspect h.luo
  luo inspect --json h.luo
  ssh host cat /var/lib/h.luo | luo inspect -
"""


def handoff_path(text: str) -> str:
    """An argparse ``type=``: a file name or ``-``, not an empty string."""
    if not text:
        raise argparse.ArgumentTypeError("a file name (or - for stdin) is needed, not ''")
    return text


def add_parser(verbs: Any) -> None:
    parser = verbs.add_parser(
        "inspect",
        help="decode and validate a saved handoff",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "handoff",
        type=handoff_path,
        metavar="HANDOFF",
        help=f"a file from luo demo --save-handoff, at most {MAX_IMAGE_BYTES} bytes "
        "(1 GiB + 16); - reads stdin",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print JSON (root, liveupdate_number, preserved, nodes) instead of text",
    )
    parser.set_defaults(run=run)


# -- reading the file, bounded -------------------------------------------------


def _read_image(stream: IO[bytes]) -> bytes:
    """A handoff image from ``stream``: its header is checked first, so that no more
    than the size it declares (plus one byte, to see that nothing follows) is read."""
    header = read_upto(stream, HEADER.size)
    total = IMAGE.size(header)  # refuses a short read, a wrong magic, an oversized body
    blob = header + read_upto(stream, total + 1 - len(header))
    if len(blob) > total:
        raise HandoffError(
            f"more bytes follow the handoff image's {total} bytes: not a handoff image"
        )
    return blob


def read_handoff(name: str) -> bytes:
    """The bytes of saved handoff ``name`` (``-``: stdin).

    Anything that is not a regular file, and a file larger than
    :data:`MAX_IMAGE_BYTES`, is refused before it is read; one that grows
    while being read is refused too.  Errors are :class:`HandoffError` or
    ``OSError`` (a file that cannot be opened).
    """
    if name == STDIN:
        return _read_image(stdin_bytes(HandoffError))
    with open_regular(name, MAX_IMAGE_BYTES, _refuse, largest=_LARGEST) as stream:
        return _read_image(stream)


_LARGEST = f"the largest handoff image ({MAX_IMAGE_BYTES} bytes)"


def _refuse(reason: str) -> HandoffError:
    if reason.endswith("not a regular file"):
        reason += ": a handoff is a file written by luo demo --save-handoff"
    return HandoffError(reason)


# -- decoding --------------------------------------------------------------------


@attrs.frozen
class Schemas:
    """What this environment's packs declare, and the packs that could not say."""

    by_compatible: dict[str, type[Any]]
    missing: tuple[str, ...] = ()
    """Packs that failed to load or were disabled: their schemas are unknown here."""


def known_schemas() -> Schemas:
    """Every schema this environment's packs declare, by compatible."""
    registry = load_plugins(builtin=_builtin, log_failures=False)
    records = [*registry.subsystems.values(), *registry.drivers.values()]
    return Schemas(
        {
            schema_of(r.schema).compatible: r.schema
            for r in records
            if isinstance(r, Subsystem | DeviceDriver) and r.schema is not None
        },
        tuple(
            f"{p.origin.distribution} ({p.status})" for p in registry.packs if p.status != "loaded"
        ),
    )


def _plain(value: Any) -> Any:
    if attrs.has(type(value)):
        return {k: _plain(v) for k, v in attrs.asdict(value, recurse=False).items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "value") and hasattr(value, "name"):  # an enum
        return value.value
    return value


def describe(blob: bytes, schemas: Schemas | None = None) -> dict[str, Any]:
    """What a saved handoff holds, decoded with ``schemas`` (default: this
    environment's); raises the typed error of the first thing found wrong."""
    memory, root = load_image(blob)
    handed = read_root(memory, root)
    if schemas is None:
        schemas = known_schemas()
    nodes = []
    for name, node in sorted(handed.nodes.items()):
        entry: dict[str, Any] = {
            "name": name,
            "compatible": node.compatible,
            "phys": node.phys,
            "length": node.length,
        }
        if name == KHO_ENTRY:
            entry.update(_sessions(memory, handed.preserved, handed.read(memory, name)))
        sealed = unseal(handed.read(memory, name)) if name not in (META_NODE, KHO_ENTRY) else None
        if sealed is not None:
            entry["version"] = sealed.version
            schema = schemas.by_compatible.get(sealed.compatible)
            if schema is not None:
                entry["fields"] = _plain(decode_state(schema, sealed.payload, sealed.version))
            elif sealed.compatible != node.compatible:
                raise HandoffError(f"node {name}: envelope says {sealed.compatible}")
            else:
                entry["payload"] = sealed.payload.hex()
                entry["note"] = "no pack installed here declares this compatible"
                if schemas.missing:
                    entry["note"] += f"; not loaded: {', '.join(schemas.missing)}"
        nodes.append(entry)
    return {
        "root": root,
        "liveupdate_number": handed.liveupdate_number,
        "preserved": [[r.start, r.size] for r in handed.preserved],
        "nodes": nodes,
    }


def _sessions(memory: Any, preserved: tuple[MemRange, ...], blob: bytes) -> dict[str, Any]:
    """The ``LUO`` entry: its sessions, their files by token, and the FLBs."""
    luo = read_luo(memory, preserved, unpack_tree(blob))
    return {
        "sessions": [
            {
                "name": s.name,
                "files": [
                    {"token": f.token, "compatible": f.compatible, "data": f.data}
                    for f in luo.files[s.name]
                ],
            }
            for s in luo.sessions
        ],
        "flbs": [{"compatible": f.name, "data": f.data, "count": f.count} for f in luo.flbs],
    }


# -- printing --------------------------------------------------------------------

MAC_BITS: Final = 48


def is_mac(key: str | None) -> bool:
    return key is not None and (key == "mac" or key.endswith("_mac"))


def show(value: Any, key: str | None = None) -> str:
    """``value`` for a person: a MAC-like field (``mac``, ``*_mac``) that holds a 48-bit
    integer as ``aa:bb:cc:dd:ee:ff``; structures with the same rule inside; text escaped."""
    if is_mac(key) and type(value) is int and 0 <= value < 1 << MAC_BITS:
        return mac_address(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{show(k)} = {show(v, str(k))}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(show(v, key) for v in value) + "]"
    return printable(str(value))


def run(args: argparse.Namespace) -> int:
    name = shown(args.handoff)
    schemas = known_schemas()  # a pack conflict is not the file's fault: no file name
    try:
        report = describe(read_handoff(args.handoff), schemas)
    except LiveUpdateError as exc:
        raise HandoffError(f"{name}: {exc}", errno=exc.errno) from exc
    except OSError as exc:
        if exc.filename is None:
            exc.filename = name
        raise
    if args.json:
        print(dumps(report))
        return 0
    print(
        f"{name}: valid luo handoff, liveupdate-number {report['liveupdate_number']}, "
        f"root at {report['root']:#x}, {len(report['preserved'])} preserved range(s)"
    )
    for node in report["nodes"]:
        version = f" v{node['version']}" if "version" in node else ""
        label = f"{printable(node['name'])}  {printable(node['compatible'])}{version}"
        print(f"  {label}  {node['length']} bytes")
        for key, value in (node.get("fields") or {}).items():
            print(f"      {printable(key)} = {show(value, key)}")
        for session in node.get("sessions", ()):
            files = session["files"]
            print(f"      session {printable(session['name'])}: {len(files)} file(s)")
            for f in files:
                handle = f"data {f['data']:#x}"
                print(f"        token {f['token']:#x}  {printable(f['compatible'])}  {handle}")
        for flb in node.get("flbs", ()):
            print(f"      FLB {printable(flb['compatible'])}: {flb['count']} file(s)")
        if "note" in node:
            print(f"      ({node['note']})")
    return 0
