"""Atomic set and clear of a bit of a 32-bit word in shared memory, by futex(2) ``FUTEX_WAKE_OP``.

Two processes that map the same memfd ``MAP_SHARED`` need a read-modify-write
that neither can tear, and Python has none.  Linux has one: ``FUTEX_WAKE_OP``
performs ``*uaddr2 = *uaddr2 OP oparg`` atomically (a locked instruction on
x86, an exclusive pair on arm64: ``arch_futex_atomic_op_inuser`` in
``arch/*/include/asm/futex.h``) before it wakes anyone, and it wakes no one
when asked to wake none.  With ``FUTEX_OP_OPARG_SHIFT`` the operand is
``1 << oparg``, so ``OR`` and ``ANDN`` set and clear bit ``oparg``
(``kernel/futex/waitwake.c``, ``futex_atomic_op_inuser`` in
``kernel/futex/futex.h`` and ``include/uapi/linux/futex.h``).  The syscall
is a full barrier on both architectures, which the posted-interrupt
ordering argument (:mod:`luo_core.abi._posted`) relies on.  The old value is
not returned: callers read the word separately and reason about order.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import platform
import struct
from typing import Final

from luo_core.errors import PhysicalMemoryError

SYS_FUTEX: Final = {"x86_64": 202, "aarch64": 98}
FUTEX_WAKE_OP: Final = 5
FUTEX_PRIVATE_FLAG: Final = 128
FUTEX_OP_OR: Final = 2
FUTEX_OP_ANDN: Final = 3
FUTEX_OP_OPARG_SHIFT: Final = 8
FUTEX_OP_CMP_EQ: Final = 0
_WORD: Final = struct.Struct("<I")

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = [
    ctypes.c_long,  # SYS_futex
    ctypes.c_void_p,  # uaddr
    ctypes.c_int,  # futex_op
    ctypes.c_int,  # val: how many to wake at uaddr
    ctypes.c_ulong,  # val2 (the timeout slot): how many to wake at uaddr2
    ctypes.c_void_p,  # uaddr2: the word operated on
    ctypes.c_uint,  # val3: the encoded operation
]


def futex_op(op: int, oparg: int) -> int:
    """``FUTEX_OP(op, oparg, FUTEX_OP_CMP_EQ, 0)`` with the operand taken as ``1 << oparg``."""
    return ((op | FUTEX_OP_OPARG_SHIFT) & 0xF) << 28 | (FUTEX_OP_CMP_EQ << 24) | (oparg << 12)


class AtomicWords:
    """The aligned 32-bit words of a writable shared buffer, each bit set or cleared atomically.

    The buffer stays mapped while this object lives: it holds an export of
    it, so the memory cannot be unmapped under an address the kernel is given.
    """

    def __init__(self, buffer: memoryview | mmap.mmap | bytearray) -> None:
        self._view = memoryview(buffer).cast("B")
        if self._view.readonly or self._view.nbytes < _WORD.size:
            raise PhysicalMemoryError(
                "atomic words need a writable buffer of at least one word", errno=errno.EINVAL
            )
        machine = platform.machine()
        if machine not in SYS_FUTEX:
            raise PhysicalMemoryError(
                f"no futex syscall number for {machine}; atomic words run on "
                f"{', '.join(sorted(SYS_FUTEX))}",
                errno=errno.ENOSYS,
            )
        self._sys_futex = SYS_FUTEX[machine]
        self._anchor = ctypes.c_char.from_buffer(self._view)
        self._base = ctypes.addressof(self._anchor)
        if self._base % _WORD.size:
            raise PhysicalMemoryError(
                f"atomic words at address {self._base:#x} are not 4-byte aligned",
                errno=errno.EINVAL,
            )

    @property
    def nbytes(self) -> int:
        return self._view.nbytes

    def load(self, offset: int) -> int:
        """The word at byte ``offset`` (little-endian), read once."""
        self._check(offset, 0)
        value: int = _WORD.unpack_from(self._view, offset)[0]
        return value

    def set_bit(self, offset: int, bit: int) -> None:
        """Atomically set bit ``bit`` of the word at byte ``offset``."""
        self._op(offset, FUTEX_OP_OR, bit)

    def clear_bit(self, offset: int, bit: int) -> None:
        """Atomically clear bit ``bit`` of the word at byte ``offset``."""
        self._op(offset, FUTEX_OP_ANDN, bit)

    def _op(self, offset: int, op: int, bit: int) -> None:
        self._check(offset, bit)
        address = self._base + offset
        # Wake no one at either address: only the atomic operation is wanted.
        done = _syscall(
            self._sys_futex,
            address,
            FUTEX_WAKE_OP | FUTEX_PRIVATE_FLAG,
            0,
            0,
            address,
            futex_op(op, bit),
        )
        if done < 0:
            code = ctypes.get_errno()
            raise PhysicalMemoryError(
                f"futex(FUTEX_WAKE_OP) on the word at offset {offset:#x} failed: "
                f"{errno.errorcode.get(code, code)}",
                errno=code,
            )

    def _check(self, offset: int, bit: int) -> None:
        if offset % _WORD.size or not 0 <= offset <= self._view.nbytes - _WORD.size:
            raise PhysicalMemoryError(
                f"atomic word offset {offset:#x} is not an aligned word inside "
                f"{self._view.nbytes:#x} bytes",
                errno=errno.EINVAL,
            )
        if not 0 <= bit < 32:
            raise PhysicalMemoryError(f"bit {bit} is not in 0..31", errno=errno.EINVAL)
