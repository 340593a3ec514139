"""Register files: fixed-width words in MMIO memory that the hardware and the kernel share.

Each device owns one 4 KiB page of the machine's MMIO memory (a memfd the
hardware and every kernel map): the first 256 bytes are its configuration
space, the rest its BAR 0 registers.  A :class:`RegisterMap` is the
datasheet: each :class:`Register` has a name, an offset, a width of 8, 16,
32 or 64 bits, and an owner — the *driver* (configuration, ring tails,
enables) or the *device* (status, counters, heads).  :class:`Registers` reads
and writes them; writing anything but an integer of the register's width is a
:class:`~luo_core.errors.RegisterError`, so no Python object can hide in
hardware.  A write to a *doorbell* register also kicks the device, as a
KVM ioeventfd would.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, Literal

import attrs

from luo_core.errors import RegisterError

MMIO_PAGE: Final = 4096
CONFIG_SIZE: Final = 256
BAR_OFFSET: Final = CONFIG_SIZE
BAR_SIZE: Final = MMIO_PAGE - CONFIG_SIZE
MAX_REGISTERS: Final = 256
BUS_MASTER: Final = 1 << 2
"""The bus-master enable bit of the PCI command register."""

Owner = Literal["driver", "device"]
_NAME: Final = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_FORMATS: Final = {
    8: struct.Struct("<B"),
    16: struct.Struct("<H"),
    32: struct.Struct("<I"),
    64: struct.Struct("<Q"),
}


@attrs.frozen
class Register:
    """One register: where it is, how wide, and who writes it."""

    name: str
    offset: int
    width: int = 32
    owner: Owner = "driver"
    doorbell: bool = False

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise RegisterError(f"register name {self.name!r} must be 1-32 chars of [a-z0-9_]")
        if type(self.width) is not int or self.width not in _FORMATS:
            raise RegisterError(
                f"register {self.name}: width {self.width!r} is not 8, 16, 32 or 64"
            )
        if type(self.offset) is not int or self.offset < 0 or self.offset % (self.width // 8):
            raise RegisterError(
                f"register {self.name}: offset {self.offset!r} is not aligned to its width"
            )
        if self.owner not in ("driver", "device"):
            raise RegisterError(
                f"register {self.name}: owner {self.owner!r} is not driver or device"
            )
        if self.doorbell and self.owner != "driver":
            raise RegisterError(
                f"register {self.name}: only a driver-owned register rings a doorbell"
            )

    @property
    def end(self) -> int:
        return self.offset + self.width // 8


def _registers(value: Sequence[Register]) -> tuple[Register, ...]:
    return tuple(value)


@attrs.frozen
class RegisterMap:
    """A device's registers, by name; they may not overlap and must fit the window."""

    registers: tuple[Register, ...] = attrs.field(default=(), converter=_registers)
    size: int = BAR_SIZE
    _by_name: dict[str, Register] = attrs.field(init=False, factory=dict, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if len(self.registers) > MAX_REGISTERS:
            raise RegisterError(f"a register map holds at most {MAX_REGISTERS} registers")
        seen: dict[str, Register] = {}
        last: Register | None = None
        for reg in sorted(self.registers, key=lambda r: r.offset):
            if not isinstance(reg, Register):
                raise RegisterError(f"{reg!r} is not a Register")
            if reg.name in seen:
                raise RegisterError(f"two registers are named {reg.name!r}")
            if reg.end > self.size:
                raise RegisterError(f"register {reg.name} ends past the {self.size}-byte window")
            if last is not None and reg.offset < last.end:
                raise RegisterError(f"registers {last.name} and {reg.name} overlap")
            seen[reg.name] = last = reg
        self._by_name.update(seen)

    def __getitem__(self, name: str) -> Register:
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(self._by_name) or "none"
            raise RegisterError(f"no register {name!r} (this device has: {known})") from None

    def __iter__(self) -> Iterator[Register]:
        return iter(self.registers)

    def __len__(self) -> int:
        return len(self.registers)

    def to_wire(self) -> list[list[Any]]:
        return [[r.name, r.offset, r.width, r.owner, r.doorbell] for r in self.registers]

    @classmethod
    def from_wire(cls, wire: object) -> RegisterMap:
        """A map read from another process: every field checked."""
        if not isinstance(wire, list) or len(wire) > MAX_REGISTERS:
            raise RegisterError("a register map is a list of at most 256 registers")
        regs = []
        for item in wire:
            if not (isinstance(item, list) and len(item) == 5 and type(item[4]) is bool):
                raise RegisterError(f"malformed register {item!r:.60}")
            regs.append(Register(item[0], item[1], item[2], item[3], item[4]))
        return cls(regs)


CONFIG_REGISTERS: Final = RegisterMap(
    [
        Register("vendor", 0x00, 16, owner="device"),
        Register("device", 0x02, 16, owner="device"),
        Register("command", 0x04, 16),
        Register("status", 0x06, 16, owner="device"),
    ],
    size=CONFIG_SIZE,
)
"""The part of a PCI configuration header luo models: IDs, command, status."""


class Registers:
    """A window of registers in a shared mapping, seen from one side.

    ``side`` is ``"driver"`` (the kernel: it may write only driver-owned
    registers) or ``"device"`` (the hardware: it may write all of them).
    ``check`` runs before every access (the kernel's fence); ``kick`` runs
    after a write to a doorbell register.
    """

    __slots__ = ("_base", "_buffer", "_check", "_kick", "_side", "map")

    def __init__(
        self,
        buffer: Any,
        base: int,
        regmap: RegisterMap,
        *,
        side: Owner,
        check: Callable[[], None] | None = None,
        kick: Callable[[], None] | None = None,
    ) -> None:
        self._buffer = buffer
        self._base = base
        self.map = regmap
        self._side = side
        self._check = check
        self._kick = kick

    def __getitem__(self, name: str) -> int:
        reg = self.map[name]
        return self._read(reg.offset, reg.width)

    def __setitem__(self, name: str, value: int) -> None:
        reg = self.map[name]
        if self._side == "driver" and reg.owner != "driver":
            raise RegisterError(f"register {name} is read-only to the driver (the device owns it)")
        self._write(reg.offset, reg.width, value, name)
        if reg.doorbell and self._kick is not None:
            self._kick()

    def read(self, offset: int, width: int = 32) -> int:
        """A raw read at ``offset`` (bytes into the window)."""
        self._bounds(offset, width)
        return self._read(offset, width)

    def write(self, offset: int, value: int, width: int = 32) -> None:
        """A raw write at ``offset``; the driver side may only write its own registers.

        Every byte a driver writes must belong to one of them: offsets where the
        device has no register are refused (real hardware drops such writes), so
        that no window holds a driver's bytes the device does not know of.
        """
        self._bounds(offset, width)
        end = offset + width // 8
        touched = [r for r in self.map if r.offset < end and offset < r.end]
        if self._side == "driver":
            for reg in touched:
                if reg.owner != "driver":
                    raise RegisterError(
                        f"offset {offset:#x} is register {reg.name}, read-only to the driver"
                    )
            covered = sum(min(end, r.end) - max(offset, r.offset) for r in touched)
            if covered < end - offset:
                raise RegisterError(
                    f"offset {offset:#x} ({width} bits) reaches bytes where the device has no "
                    "register: a driver writes only registers (real hardware drops the rest)"
                )
        self._write(offset, width, value, f"at {offset:#x}")
        if self._kick is not None and any(r.doorbell for r in touched):
            self._kick()

    def values(self, owner: Owner | None = None) -> dict[str, int]:
        """Every register's value (only ``owner``'s, if given), by name."""
        return {
            r.name: self._read(r.offset, r.width) for r in self.map if owner in (None, r.owner)
        }

    def raw(self) -> bytes:
        """The whole window's bytes."""
        if self._check is not None:
            self._check()
        return bytes(self._buffer[self._base : self._base + self.map.size])

    def _bounds(self, offset: int, width: int) -> None:
        if type(width) is not int or width not in _FORMATS:
            raise RegisterError(f"access width {width!r} is not 8, 16, 32 or 64")
        if type(offset) is not int or offset < 0 or offset % (width // 8):
            raise RegisterError(f"offset {offset!r} is not aligned to a {width}-bit access")
        if offset + width // 8 > self.map.size:
            raise RegisterError(f"offset {offset:#x} is outside the {self.map.size}-byte window")

    def _read(self, offset: int, width: int) -> int:
        if self._check is not None:
            self._check()
        value: int = _FORMATS[width].unpack_from(self._buffer, self._base + offset)[0]
        return value

    def _write(self, offset: int, width: int, value: object, what: str) -> None:
        # type() is: bool is an int subclass, and a register holds a number, not a flag object.
        if type(value) is not int or not 0 <= value < 1 << width:
            raise RegisterError(
                f"register {what} takes an integer of {width} bits, not {_describe(value)}"
            )
        if self._check is not None:
            self._check()
        _FORMATS[width].pack_into(self._buffer, self._base + offset, value)


def _describe(value: object) -> str:
    if type(value) is int:
        return f"{value} (out of range)"
    return f"{type(value).__name__} {value!r:.40}"
