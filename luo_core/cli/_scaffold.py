"""``luo new-driver NAME``: scaffold a complete, installable driver pack.

The pack has a pyproject with the entry point, a driver with a versioned
schema, a contract for the suite, a script that writes golden records, and a
test that runs the contract suite.  Freshly made, it installs with pip and
passes ``luo contract`` and its own pytest.
"""

from __future__ import annotations

import argparse
import re
from importlib import resources
from pathlib import Path
from typing import Any

from luo_core.errors import LiveUpdateError

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
TEMPLATE = "new_driver"


def add_parser(verbs: Any) -> None:
    parser = verbs.add_parser("new-driver", help="scaffold a driver pack in a new folder")
    parser.add_argument("name", metavar="NAME", help="the driver's name, e.g. acme-nic")
    parser.add_argument(
        "--dir", type=Path, metavar="PATH", help="where to create it (default: ./luo-NAME)"
    )
    parser.set_defaults(run=run)


def words(name: str) -> dict[str, str]:
    if not _NAME.match(name) or len(name) > 40:
        raise LiveUpdateError(
            f"driver name {name!r} must be lowercase words joined by '-', like acme-nic"
        )
    return {
        "name": name,
        "dist": f"luo-{name}",
        "module": "luo_" + name.replace("-", "_"),
        "Class": "".join(part.capitalize() for part in name.split("-")),
        "compatible": f"vendor,{name}",
    }


def render(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def scaffold(name: str, target: Path) -> list[Path]:
    """Write the pack into ``target`` (which must not exist); return the files."""
    values = words(name)
    if target.exists():
        raise LiveUpdateError(f"{target} already exists; choose another --dir")
    written = []
    root = resources.files("luo_core.cli").joinpath("templates", TEMPLATE)
    stack = [(root, target)]
    while stack:
        source, dest = stack.pop()
        for entry in source.iterdir():
            out = dest / render(entry.name, values).removesuffix(".tmpl")
            if entry.is_dir():
                stack.append((entry, out))
            else:
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(render(entry.read_text(), values))
                written.append(out)
    return sorted(written)


def run(args: argparse.Namespace) -> int:
    values = words(args.name)
    target = args.dir or Path(values["dist"])
    files = scaffold(args.name, target)
    print(f"created {values['dist']} in {target} ({len(files)} files). Next:")
    print(f"  python -m pip install -e {target}")
    print(f"  luo contract {values['dist']}")
    print(f"  python -m pytest {target}")
    return 0
