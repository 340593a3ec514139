"""Registration records plugins yield, and the callback tables they carry.

A record is a small frozen value (the conda pattern): it names a participant
and holds its callback table, the way a kernel subsystem hands LUO a
``struct liveupdate_subsystem`` with an ``ops`` pointer.  The registry stamps
each record with the distribution that provided it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import attrs

from luo_core.abi import schema_of
from luo_core.abi._schema import COMPATIBLE

if TYPE_CHECKING:
    from luo_core.kernel.devices import Device


def _require_name(what: str, value: object) -> None:
    """Names and compatibles follow one rule, the same as schema compatibles."""
    if not isinstance(value, str) or not COMPATIBLE.match(value):
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

    Override what you need.  What ``prepare`` and ``freeze`` return — an
    instance of the participant's ``schema`` (``None``: the schema's default
    value) — is sealed into its handoff record, the only thing that reaches
    the next kernel; ``boot``, ``cancel`` and ``finish`` get that value back
    (``boot`` a fresh one decoded from the record).

    * ``prepare()`` runs while VMs still run: do the heavy serialisation here
      and return the preserved data.
    * ``freeze(data)`` runs on the kexec path (blackout): stay light; return
      the final data (usually ``data`` itself, or a small update of it).
    * ``cancel(data)`` undoes prepare/freeze; it must not fail.
    * ``boot(data)`` runs in the next kernel, with what the old one handed over.
    * ``finish(data)`` runs in the next kernel when the update is complete; it
      must not fail.  ``data`` is ``None`` when nothing was handed over.
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

    * ``probe(dev)`` binds a device on a cold boot (or one that was not
      preserved); ``shutdown(dev)`` runs at kexec for devices not preserved.
    * ``can_preserve(dev)`` says whether this device can be requested.
    * ``prepare(dev)``: heavy serialisation while the device runs; returns an
      instance of the driver's ``schema`` (``None``: its default value).
    * ``freeze(dev, data)``: quiesce the driver (not the device: DMA goes on)
      and return the final value; light, on the blackout path.
    * ``cancel(dev, data)``: undo prepare/freeze exactly; must not fail.
    * ``restore(dev, data)``: the next kernel reclaims the running device from
      ``data`` instead of probing it; light, on the blackout path.
    * ``finish(dev, data)``: heavy cleanup after the update; must not fail.
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

    ``freeze`` runs after the driver's freeze, ``restore`` before the driver's
    restore, ``cancel`` before the driver's cancel (a bus keeps, say, bus
    mastering on for a preserved device).  ``cancel`` also runs for devices
    whose freeze never ran (a cancel from ``prepared``), so it must be a no-op
    for them.
    """

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


Record = Subsystem | DeviceDriver | Bus
