"""Plugin discovery and registration: entry points, validation, conflicts.

Packs are found in the entry-point group ``luo_core.plugins``; an entry point
names a module or a factory (a class or function that builds the plugin),
and every boot builds its plugins afresh.  A pack that
fails to import, misspells a hook or yields a malformed record is reported
once (``plugin_failed``) and skipped; the rest still load.  Two packs that
claim the same name or compatible are a :class:`PluginConflictError` naming
both distributions.  ``LUO_DISABLE_PLUGINS=dist1,dist2`` blocks packs; a name
in it that matches no installed pack is reported (``plugin_disable_unknown``).
"""

from __future__ import annotations

import difflib
import functools
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
from luo_core.kernel._records import Bus, Command, DeviceDriver, PluginOrigin, Subsystem
from luo_core.kernel.sessions._records import FileHandler
from luo_core.platform._models import (
    DISABLE_ENV,
    ENTRY_POINT_GROUP,
    HardwareSpec,
    disabled_distributions,
    disabled_names,
    normalize,
)

Record = Bus | DeviceDriver | Subsystem | FileHandler | Command
CORE_DISTRIBUTION = "luo-core"

log = get_logger("luo.registry")
R = TypeVar("R", Subsystem, DeviceDriver, Bus, FileHandler, Command)


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


def installed_packs() -> list[metadata.EntryPoint]:
    """Every entry point of the ``luo_core.plugins`` group, in a stable order."""
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=_ep_key)


def unknown_disabled(eps: Iterable[metadata.EntryPoint] | None = None) -> list[str]:
    """The names in ``LUO_DISABLE_PLUGINS`` that match no installed pack (of ``eps``:
    by default, every installed one), as the user wrote them.

    ``luo-core`` is one of them: luo's own plugin is not a pack and cannot be disabled.
    """
    found = installed_packs() if eps is None else eps
    installed = {normalize(origin_of(ep).distribution) for ep in found}
    return [n for n in disabled_names() if normalize(n) not in installed]


_warned: set[tuple[str, ...]] = set()


def _warn_unknown_disabled(unknown: list[str]) -> None:
    # Once per process and list: a kernel loads its image on every boot, and the
    # contract suite boots dozens of them.
    key = tuple(unknown)
    if not unknown or key in _warned:
        return
    _warned.add(key)
    log.warning(
        "plugin_disable_unknown",
        names=unknown,
        env=DISABLE_ENV,
        error=f"{DISABLE_ENV} names no installed pack: {', '.join(unknown)}",
    )


def hook_names() -> list[str]:
    """Every hook a pack may implement: luo's (:class:`LuoSpec`) and the hardware's."""
    marker = f"{PROJECT}_spec"
    return sorted(
        name
        for spec in (LuoSpec, HardwareSpec)
        for name in dir(spec)
        if hasattr(getattr(spec, name), marker)
    )


def misspelt(names: Iterable[str]) -> str:
    """One line naming each unknown hook and the closest known one."""
    known = hook_names()
    parts = []
    for name in names:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"luo's hooks: {', '.join(known)}"
        parts.append(f"unknown hook {name!r} ({hint})")
    return ", ".join(parts)


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

    def __init__(self, *, log_failures: bool = True) -> None:
        self.pm = _Manager(PROJECT)
        self.pm.add_hookspecs(LuoSpec)
        self.pm.add_hookspecs(HardwareSpec)  # packs ship device models beside drivers
        self.packs: list[PackInfo] = []
        self.subsystems: dict[str, Subsystem] = {}
        self.drivers: dict[str, DeviceDriver] = {}
        """Drivers by compatible string."""
        self.buses: dict[str, Bus] = {}
        self.file_handlers: dict[str, FileHandler] = {}
        """File handlers packs yield (``luo_file_handlers``), by compatible."""
        self.commands: dict[str, Command] = {}
        """Programs packs yield (``luo_commands``), by name."""
        self.unknown_disabled: list[str] = []
        """Names in ``LUO_DISABLE_PLUGINS`` that match no installed pack (see
        :func:`unknown_disabled`); set by :func:`load_plugins`."""
        self._origins: dict[str, PluginOrigin] = {}
        self._log_failures = log_failures

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
            unknown = self._unknown_hooks(name)
            self.pm.unregister(name=name)
            self._fail(origin, misspelt(unknown) if unknown else f"unknown hook: {exc}")
            return
        self._origins[name] = origin

    def _unknown_hooks(self, plugin_name: str) -> list[str]:
        """The hooks ``plugin_name`` implements that no spec declares (what
        ``check_pending`` refused)."""
        return sorted(
            hook
            for hook, caller in vars(self.pm.hook).items()
            if isinstance(caller, pluggy.HookCaller)
            and not caller.has_spec()
            and any(
                impl.plugin_name == plugin_name and not impl.optionalhook
                for impl in caller.get_hookimpls()
            )
        )

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
            except (Exception, SystemExit) as exc:  # a pack's sys.exit() fails the pack
                self._fail(
                    source.origin, f"building the plugin failed: {type(exc).__name__}: {exc}"
                )
                continue
            self.add(plugin, source.origin)

    def _fail(self, origin: PluginOrigin, error: str) -> None:
        error = " ".join(error.split())  # one line, whatever the cause printed
        self.packs.append(PackInfo(origin, "failed", error))
        if self._log_failures:
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
            ("luo_file_handlers", FileHandler),
            ("luo_commands", Command),
        )
        for hook_name, kind in hooks:
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if impl.plugin_name in failed:
                    continue
                origin = self._origins[impl.plugin_name]
                try:
                    records = list(_records_of(impl, kernel, kind, hook_name))
                except (Exception, SystemExit) as exc:
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
        elif isinstance(record, FileHandler):
            _claim(self.file_handlers, record.compatible, record, "file handler compatible")
        elif isinstance(record, Command):
            _claim(self.commands, record.name, record, "command")
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
        eps = installed_packs()
        _warn_unknown_disabled(unknown_disabled(eps))
        for ep in eps:
            origin = origin_of(ep)
            if normalize(origin.distribution) in disabled:
                log.info("plugin_disabled", distribution=origin.distribution, env=DISABLE_ENV)
                image.append(PluginSource(origin, None, "disabled"))
                continue
            image.append(source_of(ep))
    for factory in plugins:
        origin = PluginOrigin(f"local:{factory_name(factory)}", "0")
        try:
            loaded = load_factory(factory)
        except (Exception, SystemExit) as exc:
            error = f"loading {factory_name(factory)} failed: {type(exc).__name__}: {exc}"
            image.append(PluginSource(origin, None, "failed", error))
            continue
        image.append(PluginSource(origin, loaded))
    return image


def origin_of(ep: metadata.EntryPoint) -> PluginOrigin:
    """The distribution (name and version) an installed pack's entry point comes from."""
    dist = ep.dist
    return PluginOrigin(dist.name if dist else ep.name, dist.version if dist else "0+unknown")


def source_of(ep: metadata.EntryPoint) -> PluginSource:
    """An installed pack's entry point, loaded (imported, not called); an exception
    while importing it makes a ``failed`` source."""
    try:
        return PluginSource(origin_of(ep), ep.load())
    except (Exception, SystemExit) as exc:  # a pack's sys.exit() must not end the caller
        error = f"loading {ep.value} failed: {type(exc).__name__}: {exc}"
        return PluginSource(origin_of(ep), None, "failed", error)


def _same(plugin: object) -> PluginFactory:
    return plugin if isinstance(plugin, types.ModuleType) else functools.partial(_identity, plugin)


def _identity(plugin: object) -> object:
    return plugin


def build_registry(
    image: Sequence[PluginSource], kernel: object | None = None, *, log_failures: bool = True
) -> PluginRegistry:
    """A registry with a fresh plugin from every factory of ``image``, its records collected.

    ``log_failures=False`` is for a caller that reports failed packs itself (``luo drivers``).
    """
    registry = PluginRegistry(log_failures=log_failures)
    registry.build(image)
    registry.collect(kernel)
    return registry


def load_plugins(
    plugins: Sequence[PluginFactory] = (),
    *,
    discover: bool = True,
    builtin: object | None = None,
    kernel: object | None = None,
    log_failures: bool = True,
) -> PluginRegistry:
    """Build a registry: luo's own plugin, installed packs, then ``plugins``.

    Each of ``plugins`` is a factory (a ``'module:attr'`` reference, a module,
    a class or a function), called now to build a fresh plugin, and registered
    as the distribution ``local:<name>``.
    """
    image = load_image(plugins, discover=discover, builtin=builtin)
    registry = build_registry(image, kernel, log_failures=log_failures)
    if discover:
        registry.unknown_disabled = unknown_disabled()
    return registry
