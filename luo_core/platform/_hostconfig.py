"""Host descriptions in TOML: a person's file, read as hostile, into a machine and its run.

:func:`load_host` turns the text of a host file (the schema is in the
documentation, "Host descriptions") into a :class:`HostConfig`: the
:class:`~luo_core.Machine` built through :meth:`Machine.add
<luo_core.Machine.add>` and :meth:`~luo_core.Machine.add_pci`, so that every
check of a machine applies, plus the run's settings and the VMs.  Every
problem is one :class:`~luo_core.errors.HostConfigError` line naming the
file, the place in it as a TOML path (``vm[1].devices[0]``) and the cause.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from luo_core.abi._machine import MAX_DEVICES, MAX_MEMORY, PAGE_SIZE, Machine
from luo_core.errors import HostConfigError, MachineError

MAX_HOST_BYTES: Final = 1 << 20
"""The largest host file read (1 MiB: some ten thousand devices)."""
MAX_UPDATES: Final = 1000
MAX_VMS: Final = 256
MAX_VCPUS: Final = 1024

_TOP: Final = ("memory", "scratch", "updates", "device", "link", "vm")
_DEVICE: Final = ("name", "compatible", "bus", "parent", "iommu_group", "params")
_LINK: Final = ("supplier", "consumer")
_VM: Final = ("name", "memory", "vcpus", "devices")
_UNITS: Final = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}
_SIZE: Final = re.compile(r"([0-9]{1,16}) ?([KMGT]?)(?:iB)?")
_VM_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]{1,40}")


@attrs.frozen
class VmSpec:
    """A virtual machine of the host: its memory, its vCPUs, the devices passed through."""

    name: str
    memory_size: int
    vcpus: int = 1
    devices: tuple[str, ...] = ()


@attrs.frozen(eq=False)
class HostConfig:
    """A host file, read: the machine to power on, how many updates to run, the VMs."""

    machine: Machine
    updates: int = 1
    vms: tuple[VmSpec, ...] = ()


def _key(key: str) -> str:
    """A key as a TOML path shows it: bare when it can be, else quoted and escaped."""
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key[:40])


def _kind(value: object) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    kinds.update({list: "an array", dict: "a table"})
    return kinds.get(type(value), "a date or time")


@attrs.frozen
class _Reader:
    """Reads one file's data, naming ``where`` and the path of every problem."""

    where: str

    def error(self, path: str, cause: str) -> HostConfigError:
        return HostConfigError(
            f"{self.where}: {path}: {cause}" if path else f"{self.where}: {cause}"
        )

    def table(self, value: object, path: str, known: Sequence[str] | None) -> dict[str, Any]:
        """``value`` as a table holding only ``known`` keys (a near miss is suggested);
        ``None``: any key."""
        if not isinstance(value, dict):
            raise self.error(path, f"expected a table, not {_kind(value)}")
        for key in value:
            if known is not None and key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(known)
                raise self.error(_join(path, key), f"unknown key ({hint})")
        return value

    def tables(self, value: object, path: str, known: Sequence[str], limit: int) -> list[Any]:
        """An array of tables (``[[path]]``), at most ``limit`` long."""
        items = self.array(value, path, limit)
        return [self.table(item, f"{path}[{at}]", known) for at, item in enumerate(items)]

    def array(self, value: object, path: str, limit: int) -> list[Any]:
        if not isinstance(value, list):
            raise self.error(path, f"expected an array, not {_kind(value)}")
        if len(value) > limit:
            raise self.error(path, f"{len(value)} items, more than the {limit} allowed")
        return value

    def text(self, table: Mapping[str, Any], key: str, path: str) -> str:
        if key not in table:
            raise self.error(path, f"missing key {key!r}")
        value = table[key]
        if not isinstance(value, str):
            raise self.error(_join(path, key), f"expected a string, not {_kind(value)}")
        return value

    def integer(self, value: object, path: str, low: int, high: int) -> int:
        if type(value) is not int:  # bool is an int subclass, and true is no count
            raise self.error(path, f"expected an integer, not {_kind(value)}")
        if not low <= value <= high:
            raise self.error(path, f"{value} is out of range ({low} to {high})")
        return value

    def size(self, value: object, path: str) -> int:
        """Bytes, given as an integer or as a string with a binary unit (``"512M"``)."""
        if isinstance(value, str):
            match = _SIZE.fullmatch(value)
            if match is None:
                raise self.error(
                    path,
                    f"{value[:40]!r} is not a size: a whole number of bytes, or one with "
                    'K, M, G or T (powers of 1024), as in "512M"',
                )
            value = int(match[1]) << _UNITS[match[2]]
        size = self.integer(value, path, 1, MAX_MEMORY)
        if size % PAGE_SIZE:
            raise self.error(path, f"{size} bytes is not a multiple of the {PAGE_SIZE}-byte page")
        return size


def _join(path: str, key: str) -> str:
    return f"{path}.{_key(key)}" if path else _key(key)


def _parse(source: str | bytes, read: _Reader) -> dict[str, Any]:
    if len(source) > MAX_HOST_BYTES:
        raise read.error("", f"{len(source)} bytes, larger than a host file can be")
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise read.error("", f"not UTF-8 text (byte {exc.start})") from None
    try:
        return tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        raise read.error("", f"not TOML: {exc}") from None
    except ValueError:  # an integer of thousands of digits: Python refuses to convert it
        raise read.error("", "not TOML: a number too long to read") from None
    except RecursionError:
        raise read.error("", "not TOML: arrays or tables nested too deeply") from None


def _devices(machine: Machine, items: list[dict[str, Any]], read: _Reader) -> None:
    for at, item in enumerate(items):
        path = f"device[{at}]"
        name = read.text(item, "name", path)
        compatible = read.text(item, "compatible", path)
        bus = read.text(item, "bus", path) if "bus" in item else "platform"
        parent = read.text(item, "parent", path) if "parent" in item else None
        if parent is not None and parent not in machine.devices:
            raise read.error(
                f"{path}.parent", f"no device {parent!r} (a parent is listed before its children)"
            )
        group = item.get("iommu_group")
        if group is not None:
            group = read.integer(group, f"{path}.iommu_group", 0, (1 << 31) - 1)
        params = read.table(item.get("params", {}), f"{path}.params", None)
        for key, value in params.items():
            read.integer(value, _join(f"{path}.params", key), 0, (1 << 64) - 1)
        try:
            if bus == "pci":
                if parent is None:
                    raise read.error(path, "missing key 'parent' (a PCI function has one)")
                machine.add_pci(
                    name, compatible=compatible, parent=parent, iommu_group=group, params=params
                )
            else:
                machine.add(
                    name,
                    bus=bus,
                    compatible=compatible,
                    parent=parent,
                    iommu_group=group,
                    params=params,
                )
        except HostConfigError:
            raise
        except MachineError as exc:
            raise read.error(path, str(exc)) from None


def _links(machine: Machine, items: list[dict[str, Any]], read: _Reader) -> None:
    for at, item in enumerate(items):
        path = f"link[{at}]"
        supplier, consumer = read.text(item, "supplier", path), read.text(item, "consumer", path)
        try:
            machine.link(supplier, consumer)
        except MachineError as exc:
            raise read.error(path, str(exc)) from None


def _vms(machine: Machine, items: list[dict[str, Any]], read: _Reader) -> tuple[VmSpec, ...]:
    groups: dict[int, list[str]] = {}
    for spec in machine.devices.values():
        if spec.iommu_group is not None:
            groups.setdefault(spec.iommu_group, []).append(spec.name)
    room = machine.memory_size - machine.scratch_size
    owner: dict[str, str] = {}
    vms: dict[str, VmSpec] = {}
    for at, item in enumerate(items):
        path = f"vm[{at}]"
        name = read.text(item, "name", path)
        if not _VM_NAME.fullmatch(name):
            raise read.error(f"{path}.name", f"{name[:70]!r} is not 1-64 chars of [A-Za-z0-9._-]")
        if name in vms:
            raise read.error(f"{path}.name", f"a VM named {name!r} is already described")
        if "memory" not in item:
            raise read.error(path, "missing key 'memory'")
        memory = read.size(item["memory"], f"{path}.memory")
        room -= memory
        if room < 0:
            used = machine.memory_size - machine.scratch_size - room
            raise read.error(
                f"{path}.memory",
                f"the VMs need {used} bytes, more than the host's "
                f"{machine.memory_size - machine.scratch_size} outside the scratch area",
            )
        vcpus = read.integer(item.get("vcpus", 1), f"{path}.vcpus", 1, MAX_VCPUS)
        names = read.array(item.get("devices", []), f"{path}.devices", MAX_DEVICES)
        for slot, device in enumerate(names):
            where = f"{path}.devices[{slot}]"
            if not isinstance(device, str):
                raise read.error(where, f"expected a device name, not {_kind(device)}")
            found = machine.devices.get(device)
            if found is None:
                raise read.error(where, f"no device {device[:70]!r}")
            if found.iommu_group is None:
                raise read.error(where, f"device {device!r} is behind no IOMMU: it cannot do DMA")
            mates = [other for other in groups[found.iommu_group] if other != device]
            if mates:
                raise read.error(
                    where,
                    f"device {device!r} shares IOMMU group {found.iommu_group} with "
                    f"{mates[0]!r}: only a device alone in its group is passed through",
                )
            if device in owner:
                raise read.error(
                    where, f"device {device!r} is already passed to VM {owner[device]!r}"
                )
            owner[device] = name
        vms[name] = VmSpec(name, memory, vcpus, tuple(names))
    return tuple(vms.values())


KVM: Final = "luo,kvm"
DMAR: Final = "intel,vtd"
IR: Final = "intel,vtd-ir"


def _platform_for(machine: Machine, vms: tuple[VmSpec, ...], read: _Reader) -> None:
    """VMs need /dev/kvm; a device passed through needs the remapping units."""
    have = {spec.compatible for spec in machine.devices.values()}
    needs = []
    if vms:
        needs.append((KVM, "/dev/kvm, for the VMs"))
    if any(vm.devices for vm in vms):
        needs.append((DMAR, "the IOMMU, for the devices passed through"))
        needs.append((IR, "interrupt remapping, for their MSIs"))
    for compatible, why in needs:
        if compatible not in have:
            raise read.error(
                "vm", f'no device with compatible "{compatible}" ({why}): add a [[device]] for it'
            )


def load_host(source: str | bytes, where: str = "host.toml") -> HostConfig:
    """Read a host file's text (``where`` names it in errors; give it printable).

    Raises :class:`~luo_core.errors.HostConfigError`, and nothing else, for
    any text: not UTF-8, not TOML, an unknown key, a value of the wrong type
    or out of bounds, a machine that cannot be built, a VM that cannot run.
    """
    read = _Reader(where)
    top = read.table(_parse(source, read), "", _TOP)
    memory = read.size(top.get("memory", 1 << 30), "memory")
    scratch = read.size(top.get("scratch", 16 << 20), "scratch")
    if scratch >= memory:
        raise read.error("scratch", f"{scratch} bytes do not fit in the {memory} bytes of memory")
    machine = Machine(memory_size=memory, scratch_size=scratch)
    machine.check()
    _devices(machine, read.tables(top.get("device", []), "device", _DEVICE, MAX_DEVICES), read)
    _links(machine, read.tables(top.get("link", []), "link", _LINK, MAX_DEVICES), read)
    vms = _vms(machine, read.tables(top.get("vm", []), "vm", _VM, MAX_VMS), read)
    _platform_for(machine, vms, read)
    updates = read.integer(top.get("updates", 1), "updates", 1, MAX_UPDATES)
    return HostConfig(machine, updates, vms)
