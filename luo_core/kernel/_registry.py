"""Plugin discovery and registration: entry points, validation, conflicts.

Packs are found in the entry-point group ``luo_core.plugins``; an entry point
names a module or a factory (a class or function that builds the plugin),
and every boot builds its plugins afresh.  A pack that
fails to import, misspells a hook or yields a malformed record is reported
once (``plugin_failed``) and skipped; the rest still load.  Two packs that
claim the same name or compatible are a :class:`PluginConflictError` naming
both distributions.  ``LUO_DISABLE_PLUGINS=dist1,dist2`` blocks packs.
"""

from __future__ import annotations

import functools
import os
import re
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib import metadata
from typing import Any, ClassVar, Literal, TypeVar

import attrs
import pluggy
from pluggy import HookimplOpts, HookspecOpts

from luo_core._logging import get_logger
from luo_core.abi._boot import PluginFactory, factory_name, load_factory, resolve
from luo_core.errors import PluginConflictError, PluginError
from luo_core.kernel._hookspecs import PROJECT, LuoSpec
from luo_core.kernel._records import Bus, DeviceDriver, PluginOrigin, Record, Subsystem
from luo_core.platform._models import ENTRY_POINT_GROUP, HardwareSpec

DISABLE_ENV = "LUO_DISABLE_PLUGINS"
CORE_DISTRIBUTION = "luo-core"

log = get_logger("luo.registry")
R = TypeVar("R", Subsystem, DeviceDriver, Bus)


def normalize(name: str) -> str:
    """PEP 503 normalisation, so ``Luo_Example`` and ``luo-example`` match."""
    return re.sub(r"[-_.]+", "-", name).lower()


def core_origin() -> PluginOrigin:
    try:
        version = metadata.version(CORE_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    return PluginOrigin(CORE_DISTRIBUTION, version)


@attrs.frozen
class PackInfo:
    """What happened to one plugin: loaded, disabled, or failed (with why)."""

    origin: PluginOrigin
    status: Literal["loaded", "disabled", "failed"]
    error: str | None = None
    records: tuple[Record, ...] = ()


def disabled_distributions() -> frozenset[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return frozenset(normalize(n.strip()) for n in raw.split(",") if n.strip())


class _Manager(pluggy.PluginManager):
    """pluggy's manager, remembering what it learnt about a class's or module's hooks.

    pluggy inspects every attribute of a plugin on registration.  A kernel
    registers fresh plugins on every boot, on the blackout path, but their
    classes and modules do not change: what was found once is found again.
    """

    _specs: ClassVar[dict[tuple[object, str], HookspecOpts | None]] = {}
    _impls: ClassVar[dict[tuple[object, str], HookimplOpts | None]] = {}

    def parse_hookspec_opts(self, module_or_class: Any, name: str) -> HookspecOpts | None:
        key = (module_or_class, name)
        if key not in self._specs:
            self._specs[key] = super().parse_hookspec_opts(module_or_class, name)
        found = self._specs[key]
        return None if found is None else found.copy()

    def parse_hookimpl_opts(self, plugin: object, name: str) -> HookimplOpts | None:
        holder: object = plugin if isinstance(plugin, types.ModuleType) else type(plugin)
        if holder is not plugin and name in getattr(plugin, "__dict__", ()):
            return super().parse_hookimpl_opts(plugin, name)  # set on the instance itself
        key = (holder, name)
        if key not in self._impls:
            self._impls[key] = super().parse_hookimpl_opts(plugin, name)
        found = self._impls[key]
        return None if found is None else found.copy()


class PluginRegistry:
    """The packs of one kernel, their hooks, and the records they registered."""

    def __init__(self) -> None:
        self.pm = _Manager(PROJECT)
        self.pm.add_hookspecs(LuoSpec)
        self.pm.add_hookspecs(HardwareSpec)  # packs ship device models beside drivers
        self.packs: list[PackInfo] = []
        self.subsystems: dict[str, Subsystem] = {}
        self.drivers: dict[str, DeviceDriver] = {}
        """Drivers by compatible string."""
        self.buses: dict[str, Bus] = {}
        self._origins: dict[str, PluginOrigin] = {}

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call each observer on its own, so one that raises cannot silence the
        rest; failures are logged (``observer_failed``), never raised."""
        for plugin, caller in self.observers(hook_name):
            try:
                caller(**kwargs)
            except Exception as exc:
                log.error(
                    "observer_failed",
                    hook=hook_name,
                    plugin=plugin,
                    error=f"{type(exc).__name__}: {exc}",
                )

    def observers(self, hook_name: str) -> list[tuple[str, Callable[..., Any]]]:
        """One caller per plugin implementing ``hook_name`` (wrappers included)."""
        impls = getattr(self.pm.hook, hook_name).get_hookimpls()
        if len(impls) <= 1:
            return [(impl.plugin_name, getattr(self.pm.hook, hook_name)) for impl in impls]
        plugins = [impl.plugin for impl in impls]
        return [
            (
                impl.plugin_name,
                self.pm.subset_hook_caller(
                    hook_name, remove_plugins=[p for p in plugins if p is not impl.plugin]
                ),
            )
            for impl in impls
        ]

    # -- loading ---------------------------------------------------------

    def add(self, plugin: object, origin: PluginOrigin) -> None:
        """Register one plugin object (a module or instance) for ``origin``."""
        name = f"{origin.distribution}:{len(self._origins)}"
        try:
            self.pm.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            self._fail(origin, f"invalid hook implementation: {exc}")
            return
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=name)
            self._fail(origin, f"unknown hook (misspelt?): {exc}")
            return
        self._origins[name] = origin

    def build(self, image: Sequence[PluginSource]) -> None:
        """Build and register a fresh plugin from each of ``image``'s factories."""
        for source in image:
            if source.status == "disabled":
                self.packs.append(PackInfo(source.origin, "disabled"))
                continue
            if source.error is not None or source.factory is None:
                self._fail(source.origin, source.error or "no factory")
                continue
            try:
                plugin = resolve(source.factory)
            except Exception as exc:
                self._fail(
                    source.origin, f"building the plugin failed: {type(exc).__name__}: {exc}"
                )
                continue
            self.add(plugin, source.origin)

    def _fail(self, origin: PluginOrigin, error: str) -> None:
        error = " ".join(error.split())  # one line, whatever the cause printed
        self.packs.append(PackInfo(origin, "failed", error))
        log.error("plugin_failed", distribution=origin.distribution, error=error)

    # -- collecting records ----------------------------------------------

    def collect(self, kernel: object | None = None) -> None:
        """Call the registration hooks and index their records (conflicts raise)."""
        by_plugin: dict[str, list[Record]] = {name: [] for name in self._origins}
        failed: set[str] = set()
        hooks: tuple[tuple[str, type[Record]], ...] = (
            ("luo_buses", Bus),
            ("luo_device_drivers", DeviceDriver),
            ("luo_subsystems", Subsystem),
        )
        for hook_name, kind in hooks:
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if impl.plugin_name in failed:
                    continue
                origin = self._origins[impl.plugin_name]
                try:
                    records = list(_records_of(impl, kernel, kind, hook_name))
                except Exception as exc:
                    failed.add(impl.plugin_name)
                    self._fail(origin, f"{hook_name}: {type(exc).__name__}: {exc}")
                    continue
                by_plugin[impl.plugin_name].extend(
                    attrs.evolve(record, origin=origin) for record in records
                )
        for name, records in by_plugin.items():
            if name in failed:
                self.pm.unregister(name=name)
                continue
            self.packs.append(PackInfo(self._origins[name], "loaded", records=tuple(records)))
            for record in records:
                self._index(record)

    def _index(self, record: Record) -> None:
        if isinstance(record, Subsystem):
            _claim(self.subsystems, record.name, record, "subsystem")
        elif isinstance(record, Bus):
            _claim(self.buses, record.name, record, "bus")
        else:
            names = {d.name: d for d in self.drivers.values()}
            if record.name in names:
                _conflict("driver name", record.name, names[record.name], record)
            for compatible in record.compatible:
                _claim(self.drivers, compatible, record, "compatible")


def _ep_key(ep: metadata.EntryPoint) -> tuple[str, str]:
    return (ep.dist.name if ep.dist else "", ep.name)


def _records_of(
    impl: pluggy.HookImpl, kernel: object | None, kind: type[Record], hook_name: str
) -> Iterator[Record]:
    result = impl.function(**({"kernel": kernel} if "kernel" in impl.argnames else {}))
    if result is None:
        return
    if not isinstance(result, Iterable):
        raise PluginError(f"{hook_name} returned {result!r}, expected an iterable of records")
    for record in result:
        if not isinstance(record, kind):
            raise PluginError(f"{hook_name} yielded {record!r}, expected a {kind.__name__}")
        yield record


def _claim(table: dict[str, R], key: str, record: R, what: str) -> None:
    if key in table:
        _conflict(what, key, table[key], record)
    table[key] = record


def _conflict(what: str, key: str, first: Record, second: Record) -> None:
    raise PluginConflictError(
        f"{what} {key!r} is claimed by both {first.origin} and {second.origin}"
    )


@attrs.frozen
class PluginSource:
    """One plugin of a kernel image: where it comes from and the factory that builds it."""

    origin: PluginOrigin
    factory: PluginFactory | None
    status: Literal["ok", "disabled", "failed"] = "ok"
    error: str | None = None


def load_image(
    plugins: Sequence[PluginFactory] = (), *, discover: bool = True, builtin: object | None = None
) -> list[PluginSource]:
    """What a kernel image holds: the factories of luo's own plugin, the installed packs
    (``discover``) and ``plugins``, imported but not called.

    Loading is the slow part (reading every installed distribution's entry
    points, importing modules); it happens once, as ``kexec -l`` loads an image
    early, and every boot from the image builds its plugins afresh.
    """
    image: list[PluginSource] = []
    if builtin is not None:
        image.append(PluginSource(core_origin(), _same(builtin)))
    if discover:
        disabled = disabled_distributions()
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=_ep_key):
            dist = ep.dist
            origin = PluginOrigin(
                dist.name if dist else ep.name, dist.version if dist else "0+unknown"
            )
            if normalize(origin.distribution) in disabled:
                log.info("plugin_disabled", distribution=origin.distribution, env=DISABLE_ENV)
                image.append(PluginSource(origin, None, "disabled"))
                continue
            try:
                image.append(PluginSource(origin, ep.load()))
            except Exception as exc:
                error = f"loading {ep.value} failed: {type(exc).__name__}: {exc}"
                image.append(PluginSource(origin, None, "failed", error))
    for factory in plugins:
        origin = PluginOrigin(f"local:{factory_name(factory)}", "0")
        try:
            loaded = load_factory(factory)
        except Exception as exc:
            error = f"loading {factory_name(factory)} failed: {type(exc).__name__}: {exc}"
            image.append(PluginSource(origin, None, "failed", error))
            continue
        image.append(PluginSource(origin, loaded))
    return image


def _same(plugin: object) -> PluginFactory:
    return plugin if isinstance(plugin, types.ModuleType) else functools.partial(_identity, plugin)


def _identity(plugin: object) -> object:
    return plugin


def build_registry(image: Sequence[PluginSource], kernel: object | None = None) -> PluginRegistry:
    """A registry with a fresh plugin from every factory of ``image``, its records collected."""
    registry = PluginRegistry()
    registry.build(image)
    registry.collect(kernel)
    return registry


def load_plugins(
    plugins: Sequence[PluginFactory] = (),
    *,
    discover: bool = True,
    builtin: object | None = None,
    kernel: object | None = None,
) -> PluginRegistry:
    """Build a registry: luo's own plugin, installed packs, then ``plugins``.

    Each of ``plugins`` is a factory (a ``'module:attr'`` reference, a module,
    a class or a function), called now to build a fresh plugin, and registered
    as the distribution ``local:<name>``.
    """
    return build_registry(load_image(plugins, discover=discover, builtin=builtin), kernel)
