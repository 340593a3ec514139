"""Registration records plugins yield, and the callback tables they carry.

A record is a small frozen value (the conda pattern): it names a participant
and holds its callback table, the way a kernel subsystem hands LUO a
``struct liveupdate_subsystem`` with an ``ops`` pointer.  The registry stamps
each record with the distribution that provided it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from luo_core.abi import schema_of
from luo_core.abi._schema import COMPATIBLE

if TYPE_CHECKING:
    from luo_core.kernel.devices import Device


def _require_name(what: str, value: object) -> None:
    """Names and compatibles follow one rule, the same as schema compatibles."""
    if not isinstance(value, str) or not COMPATIBLE.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} must be 1-63 chars of [a-z0-9,._+-], "
            "starting with a letter or digit"
        )


def _check_name(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    _require_name(attribute.name, value)


def _compatibles(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    items = tuple(value)
    if not items:
        raise ValueError("compatible must list at least one string")
    for item in items:
        _require_name("compatible", item)
    return items


@attrs.frozen
class PluginOrigin:
    """The distribution a record came from."""

    distribution: str
    version: str

    def __str__(self) -> str:
        return f"{self.distribution} {self.version}"


class SubsystemOps:
    """Callbacks of a subsystem participant (``liveupdate_subsystem_ops``).

    Override what you need.  ``prepare`` and ``freeze`` return an instance of
    the participant's ``schema`` (the ``@state`` class of its
    :class:`Subsystem` record), never bytes: anything else fails the callback
    with a ``TypeError`` naming it.  ``None`` hands over the schema's default
    value, ``schema()``, which exists only when every field has a default.
    The value is encoded and sealed into the participant's handoff record (at
    the schema's version, or the older one ``prepare(target=...)`` chose,
    through a rollback writer), and that record is the only thing that
    reaches the next kernel.

    * ``prepare()`` runs while VMs still run: do the heavy serialisation here
      and return the value to hand over.
    * ``freeze(data)`` runs on the kexec path (blackout): stay light.  ``data``
      is the value prepare handed over; return the final one.  Returning
      ``data`` itself costs nothing, as its record is already sealed, so to
      change it return a new value (``attrs.evolve(data, ...)``) rather than
      changing a list or dict inside it; ``None`` hands over the default value,
      not ``data``.
    * ``cancel(data)`` undoes prepare and freeze; subsystems are cancelled in
      registration order, after the devices, as in the RFC.  ``data`` is the
      last value handed over.  It must not fail: an exception is logged
      (``callback_must_not_fail``) and the cancel goes on.
    * ``boot(data)`` runs in the next kernel when the old one handed over a
      record for this subsystem: ``data`` is that record decoded with this
      kernel's schema (older versions migrated), a new object.
    * ``finish(data)`` runs in the next kernel when the update is complete,
      with the value ``boot`` got, or ``None`` when nothing was handed over
      (or the record could not be decoded).  It must not fail.
    """

    def prepare(self) -> Any:
        return None

    def freeze(self, data: Any) -> Any:
        return data

    def cancel(self, data: Any) -> None:
        return None

    def boot(self, data: Any) -> None:
        return None

    def finish(self, data: Any | None) -> None:
        return None


class DeviceDriverOps:
    """Callbacks of a device driver: binding plus ``dev_liveupdate`` callbacks.

    ``prepare`` and ``freeze`` return an instance of the driver's ``schema``
    (the ``@state`` class of its :class:`DeviceDriver` record), one per
    device, never bytes: anything else fails the callback with a
    ``TypeError`` naming the driver.  ``None`` hands over the schema's default
    value, ``schema()``, which exists only when every field has a default.
    The value is encoded and sealed into the device's handoff record, the
    only driver state that reaches the next kernel; the device itself keeps
    running, with its registers and memory.

    * ``probe(dev)`` binds a device on a cold boot, or in the next kernel a
      device that was not preserved; a probe that raises leaves the device
      unbound (``probe_failed``).  ``shutdown(dev)`` runs at kexec for each
      device that is not preserved.
    * ``can_preserve(dev)`` says whether this device can be requested.
    * ``prepare(dev)``: heavy serialisation while the device runs; returns
      the value to hand over.  The bus's prepare runs after it.
    * ``freeze(dev, data)``: quiesce the driver (not the device: DMA goes on)
      and return the final value; light, on the blackout path.  ``data`` is
      the value prepare handed over.  Returning ``data`` itself costs nothing,
      as its record is already sealed, so to change it return a new value
      (``attrs.evolve(data, ...)``) rather than changing a list or dict inside
      it; ``None`` hands over the default value, not ``data``.  The bus's
      freeze runs after the driver's.
    * ``cancel(dev, data)``: undo prepare and freeze exactly, after the bus's
      cancel; ``data`` is the last value handed over.  It also runs, alone,
      when the bus's prepare or freeze failed after the driver's succeeded.
      Must not fail: an exception is logged (``callback_must_not_fail``) and
      the cancel goes on.
    * ``restore(dev, data)``: the next kernel reclaims the running device
      instead of probing it, after the bus's restore, parents first; ``data``
      is the record decoded with this kernel's schema (older versions
      migrated).  Light, on the blackout path.  A restore that raises leaves
      the device unbound (``restore_failed``).
    * ``finish(dev, data)``: heavy cleanup after the update, for each device
      restore reclaimed, with the value restore got, children before parents;
      the bus's finish runs after it.  A device handed over but not reclaimed
      has no driver bound (restore failed, or this kernel has none), so only
      its bus's finish runs.  Must not fail.
    """

    def probe(self, dev: Device) -> None:
        return None

    def shutdown(self, dev: Device) -> None:
        return None

    def can_preserve(self, dev: Device) -> bool:
        return True

    def prepare(self, dev: Device) -> Any:
        return None

    def freeze(self, dev: Device, data: Any) -> Any:
        return data

    def cancel(self, dev: Device, data: Any) -> None:
        return None

    def restore(self, dev: Device, data: Any) -> None:
        return None

    def finish(self, dev: Device, data: Any | None) -> None:
        return None


class BusOps:
    """Bus-level ``dev_liveupdate`` callbacks, run around the driver's.

    ``prepare`` runs after the driver's prepare, ``freeze`` after the
    driver's freeze, ``cancel`` before the driver's cancel, ``restore``
    before the driver's restore and ``finish`` after the driver's finish (a
    bus keeps, say, bus mastering on for a preserved device).  Each also runs
    for a device with no driver bound, which takes part in the update as the
    ancestor of a requested device.  If the bus's ``prepare`` or ``freeze``
    raises, the device has failed: its driver gets ``cancel`` and the bus
    does not.  ``cancel`` also runs for devices whose freeze never ran (a
    cancel from ``prepared``), so it must be a no-op for them.
    """

    def prepare(self, dev: Device) -> None:
        return None

    def freeze(self, dev: Device) -> None:
        return None

    def cancel(self, dev: Device) -> None:
        return None

    def restore(self, dev: Device) -> None:
        return None

    def finish(self, dev: Device) -> None:
        return None


def _check_schema(_instance: object, _attribute: object, value: type[Any] | None) -> None:
    if value is not None:
        schema_of(value)  # a SchemaError unless it is a @state class


def _require_schema(instance: object, attribute: object, value: type[Any] | None) -> None:
    if value is None:
        name = getattr(instance, "name", "?")
        raise ValueError(
            f"{name}: declare the state it hands over as a @state class (schema=...); "
            "an empty one if it hands over nothing"
        )
    _check_schema(instance, attribute, value)


@attrs.frozen
class Subsystem:
    """A subsystem participant: one name, one callback table, one handoff record.

    ``schema`` is the ``@state`` class its callbacks preserve: every record is
    declared and versioned.
    """

    name: str = attrs.field(validator=_check_name)
    ops: SubsystemOps = attrs.field(validator=attrs.validators.instance_of(SubsystemOps))
    schema: type[Any] | None = attrs.field(default=None, validator=_require_schema)
    origin: PluginOrigin | None = attrs.field(default=None, eq=False)


@attrs.frozen
class DeviceDriver:
    """A device driver, bound to devices whose ``compatible`` is in its table.

    ``liveupdate=False`` declares a driver without live-update callbacks: its
    devices (and their descendants) cannot be requested.  ``schema`` is the
    ``@state`` class its callbacks preserve per device; a driver with
    live-update callbacks must declare one.
    """

    name: str = attrs.field(validator=_check_name)
    compatible: tuple[str, ...] = attrs.field(converter=_compatibles)
    ops: DeviceDriverOps = attrs.field(validator=attrs.validators.instance_of(DeviceDriverOps))
    liveupdate: bool = True
    schema: type[Any] | None = attrs.field(default=None, validator=_check_schema)
    origin: PluginOrigin | None = attrs.field(default=None, eq=False)

    def __attrs_post_init__(self) -> None:
        if self.liveupdate and self.schema is None:
            _require_schema(self, None, None)


@attrs.frozen
class Bus:
    """A bus type.  ``liveupdate=False`` means its devices cannot be preserved."""

    name: str = attrs.field(validator=_check_name)
    ops: BusOps = attrs.field(factory=BusOps, validator=attrs.validators.instance_of(BusOps))
    liveupdate: bool = True
    origin: PluginOrigin | None = attrs.field(default=None, eq=False)


def _callable(_instance: object, _attribute: object, value: Any) -> None:
    if not callable(value):
        raise TypeError(f"a command runs a callable, not {type(value).__name__}")


@attrs.frozen
class Command:
    """A program a pack runs in the kernel's userspace, on the operator's request.

    It stands for what a host runs above the kernel: a VMM that creates its
    VMs, preserves their files in a session before an update and takes them
    back after it.  ``run(args)`` takes a map of plain data (text, integers,
    bytes, lists, maps) and returns plain data; it fails by raising a
    :class:`~luo_core.errors.LiveUpdateError`.  The operator runs it with
    :meth:`Kernel.command <luo_core.Kernel.command>` or, across processes,
    ``KernelProcess.command``.
    """

    name: str = attrs.field(validator=_check_name)
    run: Callable[[Mapping[str, Any]], object] = attrs.field(validator=_callable)
    origin: PluginOrigin | None = attrs.field(default=None, eq=False)


Record = Subsystem | DeviceDriver | Bus
