"""The contract suite against an installed pack (``luo contract PACK``): finding the
pack by any of its names, and refusing one that does not load, in one line."""

from __future__ import annotations

import difflib
from importlib import metadata
from typing import Any

import attrs
import pytest

from luo_core.errors import PluginError
from luo_core.kernel._registry import (
    CORE_DISTRIBUTION,
    PluginRegistry,
    installed_packs,
    origin_of,
    source_of,
)
from luo_core.platform._models import ENTRY_POINT_GROUP, normalize
from luo_core.testing._harness import contracts_of
from luo_core.testing._suite import DriverPackContract

SCAFFOLD_PREFIX = "luo-"
"""``luo new-driver NAME`` makes the distribution ``luo-NAME``."""


@attrs.frozen
class InstalledPack:
    """An installed pack that loads and declares contracts, and the entry point
    that declares them."""

    distribution: str
    version: str
    entry_point: str
    """The entry point that declares the contracts, as ``name = module:attr``."""
    reference: str
    """That entry point's ``module:attr``: what a kernel, in this process or another,
    loads the pack from."""
    contracts: int

    def __str__(self) -> str:
        return f"{self.distribution} {self.version} (entry point {self.entry_point})"


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def find_pack(name: str) -> list[metadata.EntryPoint]:
    """The entry points of the installed pack ``name`` names.

    ``name`` is the pack's distribution name (``luo-acme-nic``), one of its
    entry points' names (``acme-nic``), or the name given to ``luo new-driver``
    (``acme-nic`` for ``luo-acme-nic``), compared after PEP 503 normalisation,
    in that order of preference.  A miss is a :class:`PluginError` that lists
    the close matches.
    """
    eps = installed_packs()
    key = normalize(name)
    for tier in range(3):
        found = sorted({origin_of(ep).distribution for ep in eps if _tier(ep, key) == tier})
        if len(found) > 1:
            raise PluginError(
                f"{name!r} names more than one installed pack ({', '.join(found)}): "
                "give its distribution name"
            )
        if found:
            return [ep for ep in eps if origin_of(ep).distribution == found[0]]
    if key in (CORE_DISTRIBUTION, normalize(CORE_DISTRIBUTION).removeprefix(SCAFFOLD_PREFIX)):
        packs = sorted({origin_of(ep).distribution for ep in eps})
        raise PluginError(
            f"{CORE_DISTRIBUTION} is luo itself, not a pack: it declares no contract (luo's "
            "own tests check its built-in drivers); installed packs: "
            + (", ".join(packs) or "none")
        )
    raise PluginError(_miss(name, eps))


def _tier(ep: metadata.EntryPoint, key: str) -> int | None:
    """How well ``ep`` answers to ``key`` (normalised): 0 by its distribution's name, 1 by
    its own name, 2 by the name given to ``luo new-driver``; ``None``: not at all."""
    dist = normalize(origin_of(ep).distribution)
    if dist == key:
        return 0
    if normalize(ep.name) == key:
        return 1
    if dist == SCAFFOLD_PREFIX + key:
        return 2
    return None


def _miss(name: str, eps: list[metadata.EntryPoint]) -> str:
    """No installed pack is called ``name``: say so, with the close matches."""
    names: dict[str, str] = {}  # every name a pack answers to -> its distribution
    for ep in eps:
        dist = origin_of(ep).distribution
        for alias in (dist, ep.name, normalize(dist).removeprefix(SCAFFOLD_PREFIX)):
            names.setdefault(normalize(alias), dist)
    close = difflib.get_close_matches(normalize(name), list(names), n=5)
    message = f"no installed pack {name!r} in the {ENTRY_POINT_GROUP} group"
    suggestions = list(dict.fromkeys(names[c] for c in close))
    if suggestions:
        return message + f"; did you mean {' or '.join(suggestions)}?"
    return message + "; installed packs: " + (", ".join(sorted(set(names.values()))) or "none")


def check_loads(ep: metadata.EntryPoint) -> None:
    """Load ``ep`` as a kernel would (import it, build its plugin, validate its hooks
    with pluggy, collect its records) and raise, in one line, if it fails."""
    registry = PluginRegistry(log_failures=False)
    registry.build([source_of(ep)])
    registry.collect()
    for pack in registry.packs:
        if pack.status == "failed":
            origin = pack.origin
            raise PluginError(
                f"pack {origin.distribution} {origin.version} (entry point "
                f"{ep.name} = {ep.value}) failed to load: {pack.error}"
            )


def resolve_pack(name: str) -> InstalledPack:
    """The installed pack ``name`` names (see :func:`find_pack`), checked to load and
    to declare contracts; every refusal is one :class:`PluginError` line."""
    eps = find_pack(name)
    for ep in eps:
        check_loads(ep)
    for ep in eps:
        origin = origin_of(ep)
        try:
            contracts = contracts_of(ep.value)
        except Exception as exc:
            raise PluginError(
                f"pack {origin.distribution} {origin.version} (entry point {ep.name} = "
                f"{ep.value}): its luo_contracts hook failed: {_one_line(exc)}"
            ) from exc
        if contracts:
            return InstalledPack(
                origin.distribution,
                origin.version,
                f"{ep.name} = {ep.value}",
                ep.value,
                len(contracts),
            )
    origin = origin_of(eps[0])
    raise PluginError(
        f"pack {origin.distribution} {origin.version} declares no contract "
        "(implement the luo_contracts hook)"
    )


def load_pack(name: str) -> str:
    """The entry point (a ``'module:attr'`` reference) of installed pack ``name`` that
    declares contracts: what a kernel, in this process or another, loads the pack from."""
    return resolve_pack(name).reference


_RESOLVED = pytest.StashKey[str]()


class TestInstalledPack(DriverPackContract):
    @pytest.fixture
    def luo_pack(self, request: pytest.FixtureRequest) -> Any:
        name = request.config.getoption("luo_pack")
        if not name:
            pytest.skip("pass --luo-pack PACK to run the contract suite on an installed pack")
        stash = request.config.stash
        if _RESOLVED not in stash:  # loading and checking the pack once per run is enough
            stash[_RESOLVED] = load_pack(name)
        return stash[_RESOLVED]
