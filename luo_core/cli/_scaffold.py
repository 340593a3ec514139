"""``luo new-driver NAME``: scaffold a complete, installable driver pack.

The pack has a pyproject with the entry point, a driver with a versioned
schema, a contract for the suite, a script that writes golden records, and a
test that runs the contract suite.  Freshly made, it installs with pip and
passes ``luo contract`` and its own pytest.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from luo_core.errors import LiveUpdateError
from luo_core.kernel._registry import CORE_DISTRIBUTION, installed_packs, origin_of
from luo_core.platform._models import normalize

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
MAX_NAME = 40
"""The longest driver name, in characters."""
PREFIX = "luo-"
"""The pack's distribution is ``luo-NAME``, its import package ``luo_NAME``."""
TEMPLATE = "new_driver"

DESCRIPTION = f"""\
Scaffold a complete driver pack in a new folder: a pyproject with the
luo_core.plugins entry point, a device model and a driver with a versioned
schema, a contract for the suite, a script that writes golden records, and a
test that runs the contract suite.  Freshly made, it installs with pip and
passes luo contract and its own pytest.

NAME is lowercase words of letters and digits joined by '-', a letter first,
at most {MAX_NAME} characters, without the luo- prefix: acme-nic makes the
distribution luo-acme-nic, the package luo_acme_nic and the compatible
vendor,acme-nic.  A NAME whose distribution or package is luo's own (core),
already installed or importable, or an installed pack's entry point, is
refused; an existing folder is never touched."""

EPILOG = """\
examples:
  luo new-driver acme-nic                  # creates ./luo-acme-nic
  luo new-driver acme-nic --dir packs/nic  # creates ./packs/nic
  python -m pip install -e ./luo-acme-nic && luo contract acme-nic
"""


def driver_name(text: str) -> str:
    """An argparse ``type=``: a valid driver name, else a usage error."""
    try:
        words(text)
    except LiveUpdateError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def folder(text: str) -> Path:
    """An argparse ``type=``: a folder path, not an empty string."""
    if not text:
        raise argparse.ArgumentTypeError("a folder is needed, not an empty string")
    return Path(text)


def add_parser(verbs: Any) -> None:
    parser = verbs.add_parser(
        "new-driver",
        help="scaffold a driver pack in a new folder",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "name",
        type=driver_name,
        metavar="NAME",
        help=f"the driver's name, e.g. acme-nic: lowercase words joined by '-', "
        f"at most {MAX_NAME} characters",
    )
    parser.add_argument(
        "--dir",
        type=folder,
        metavar="PATH",
        help="where to create the pack; it must not exist (default: ./luo-NAME)",
    )
    parser.set_defaults(run=run)


def words(name: str) -> dict[str, str]:
    """The names a pack called ``name`` gets (distribution, package, class, compatible);
    a :class:`LiveUpdateError` if ``name`` is not a valid driver name."""
    if len(name) > MAX_NAME:
        raise LiveUpdateError(
            f"driver name {name!r} is {len(name)} characters long: at most {MAX_NAME} "
            "(lowercase words joined by '-', like acme-nic)"
        )
    if not _NAME.fullmatch(name):
        raise LiveUpdateError(
            f"driver name {name!r} must be lowercase words joined by '-' (letters and "
            f"digits, a letter first, at most {MAX_NAME} characters), like acme-nic"
        )
    if name == "luo" or name.startswith(PREFIX):
        raise LiveUpdateError(
            f"driver name {name!r} must not start with {PREFIX!r}: the pack is named "
            f"{PREFIX}NAME, so give NAME alone (like acme-nic for {PREFIX}acme-nic)"
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


def clash(values: dict[str, str]) -> str | None:
    """Why a pack with these names cannot be made here, if it cannot: its distribution or
    package is luo's own, already installed or importable, or an installed pack already
    answers to its name (``luo contract NAME`` would be ambiguous)."""
    name, dist, module = values["name"], values["dist"], values["module"]
    core_module = CORE_DISTRIBUTION.replace("-", "_")
    if normalize(dist) == normalize(CORE_DISTRIBUTION) or module == core_module:
        return (
            f"driver name {name!r} would make {dist} / {module}, luo's own distribution and "
            "package: installing the pack would replace luo; choose another name"
        )
    for installed in metadata.distributions():
        found = installed.metadata["Name"] or ""
        if normalize(found) == normalize(dist):
            return (
                f"driver name {name!r} would make {dist}, and {found} {installed.version} is "
                "already installed; choose another name"
            )
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        where = f" ({spec.origin})" if spec.origin else ""
        return (
            f"driver name {name!r} would make the package {module}, and a module {module} "
            f"is already importable{where}; choose another name"
        )
    for ep in installed_packs():
        if normalize(ep.name) == normalize(name):
            owner = origin_of(ep).distribution
            return (
                f"driver name {name!r} is already the entry point of installed pack {owner}; "
                "choose another name"
            )
    return None


def scaffold(name: str, target: Path) -> list[Path]:
    """Write the pack into ``target`` (which must not exist); return the files.

    A name that clashes with luo's own distribution or package, with an
    installed distribution, an importable module or an installed pack's entry
    point is refused (:class:`LiveUpdateError`), and so is an existing ``target``.
    """
    values = words(name)
    refused = clash(values)
    if refused is not None:
        raise LiveUpdateError(refused)
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
    # "pip install -e luo-acme-nic" could be read as a project name: say it is a path.
    shown = str(target)
    if not target.is_absolute() and not shown.startswith("."):
        shown = f"./{shown}"
    where = shlex.quote(shown)
    print(f"created {values['dist']} in {target} ({len(files)} files). Next:")
    print(f"  python -m pip install -e {where}")
    print(f"  luo contract {values['name']}")
    print(f"  python -m pytest {where}")
    return 0
