"""Every error luo raises on purpose: typed, errno-carrying, one line each.

This is the one namespace for them: ``from luo_core.errors import BusyError``.
"""

from __future__ import annotations

import errno as _errno


class LiveUpdateError(Exception):
    """Base of every error luo raises on purpose; carries a kernel errno.

    ``str(error)`` is one line that names the cause, ready for a CLI to print.
    """

    errno: int = _errno.EINVAL

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        if errno is not None:
            self.errno = errno

    @property
    def errno_name(self) -> str:
        return _errno.errorcode.get(self.errno, str(self.errno))


class InvalidTransitionError(LiveUpdateError):
    """An event that is illegal in the current state (``EINVAL``)."""

    errno = _errno.EINVAL


class BusyError(LiveUpdateError):
    """The orchestrator is mid-transition or outside normal/updated (``EBUSY``)."""

    errno = _errno.EBUSY


class TryAgainError(LiveUpdateError):
    """Waited for a concurrent transition and the timeout ran out (``EAGAIN``)."""

    errno = _errno.EAGAIN


class ExistsError(LiveUpdateError):
    """A participant name or driver compatible is already taken (``EEXIST``)."""

    errno = _errno.EEXIST


class NotFoundError(LiveUpdateError):
    """No participant or device by that name (``ENOENT``)."""

    errno = _errno.ENOENT


class InvalidArgumentError(LiveUpdateError, ValueError):
    """An argument the kernel refuses: a bad session name, a missing callback (``EINVAL``)."""

    errno = _errno.EINVAL


class BadFileError(LiveUpdateError):
    """Not an open file descriptor (``EBADF``)."""

    errno = _errno.EBADF


class SessionsUnavailableError(LiveUpdateError):
    """The incoming sessions could not be deserialized; ``/dev/liveupdate`` cannot be
    opened until the next reboot (``EIO``, as ``luo_open`` returns)."""

    errno = _errno.EIO


class DeviceError(LiveUpdateError):
    """A device cannot take part in a live update (``EINVAL``)."""

    errno = _errno.EINVAL


class DependencyCycleError(LiveUpdateError):
    """Device links form a cycle; ``cycle`` lists the devices in it (``ELOOP``)."""

    errno = _errno.ELOOP

    def __init__(self, cycle: list[str]) -> None:
        super().__init__("device links form a cycle: " + " -> ".join(cycle))
        self.cycle = cycle


class CallbackError(LiveUpdateError):
    """A participant's callback failed; the update was rolled back.

    ``participant`` and ``phase`` name the callback; ``__cause__`` is the
    participant's own exception.  ``errno`` is the participant's errno when it
    raised a :class:`LiveUpdateError` or an :class:`OSError`, else ``EIO``.
    """

    errno = _errno.EIO

    def __init__(self, participant: str, phase: str, cause: BaseException) -> None:
        errno = getattr(cause, "errno", None)
        super().__init__(
            f"{phase} failed in {participant}: {type(cause).__name__}: {cause}",
            errno=errno if isinstance(errno, int) else None,
        )
        self.participant = participant
        self.phase = phase


class CommandError(LiveUpdateError):
    """A pack's command failed with an error that is not a :class:`LiveUpdateError`.

    ``errno`` is the cause's when it is an :class:`OSError`, else ``EIO``.
    """

    errno = _errno.EIO

    def __init__(self, command: str, cause: BaseException) -> None:
        errno = getattr(cause, "errno", None)
        super().__init__(
            f"command {command} failed: {type(cause).__name__}: {cause}",
            errno=errno if isinstance(errno, int) else None,
        )
        self.command = command


class CallbackTimeoutError(LiveUpdateError):
    """A callback ran past the kernel's ``callback_timeout`` (``ETIMEDOUT``)."""

    errno = _errno.ETIMEDOUT


class PluginError(LiveUpdateError):
    """A plugin pack is malformed or conflicts with another pack."""

    errno = _errno.EINVAL


class PluginConflictError(PluginError):
    """Two packs claim the same name or compatible (``EEXIST``)."""

    errno = _errno.EEXIST


class HandoffError(LiveUpdateError):
    """The handoff from the previous kernel is malformed (``EBADMSG``)."""

    errno = _errno.EBADMSG


class KernelGoneError(LiveUpdateError):
    """This kernel was replaced by kexec; use the kernel ``kexec()`` returned."""

    errno = _errno.ESHUTDOWN


class KhoError(LiveUpdateError):
    """A KHO request was refused (``errno`` says why: EBUSY, EINVAL, EEXIST...)."""


class AllocatorError(LiveUpdateError):
    """A bad request to the page allocator (``EINVAL``; ``EBUSY`` for memory in use)."""

    errno = _errno.EINVAL


class OutOfMemoryError(AllocatorError):
    """No free block is large enough (``ENOMEM``)."""

    errno = _errno.ENOMEM


class PhysicalMemoryError(LiveUpdateError):
    """An access outside physical memory (``EFAULT``), or memory misused (other errno)."""

    errno = _errno.EFAULT


class MachineError(LiveUpdateError, ValueError):
    """The machine description is inconsistent (unknown parent, bad BDF...) (``EINVAL``)."""


class HostConfigError(MachineError):
    """A host file is refused: ``str(error)`` names the file, the TOML path in it
    (``vm[1].devices[0]``) and the cause (``EINVAL``)."""


class SchemaError(LiveUpdateError):
    """A state class is declared wrongly, or a record does not fit this reader's schema.

    Raised at class definition for unsupported field types, at first use for
    a gap in the migration chain, and on decode for an unknown compatible or
    an unknown mandatory section (``EINVAL``).
    """

    errno = _errno.EINVAL


class VersionTooNewError(SchemaError):
    """A record is newer than the newest version this reader understands."""

    errno = _errno.EPROTONOSUPPORT


class VersionTooOldError(SchemaError):
    """A record is older than the oldest version this reader still migrates."""

    errno = _errno.EPROTONOSUPPORT


class DecodeError(HandoffError):
    """A record's payload is malformed; the message names where (``EBADMSG``)."""


class EnvelopeError(HandoffError):
    """A record's envelope (magic, lengths, checksum, compatible) is malformed."""


class FieldValueError(LiveUpdateError, ValueError):
    """A value does not fit its field's type, e.g. 70000 in a ``u16`` (``ERANGE``)."""

    errno = _errno.ERANGE


class ManifestError(LiveUpdateError):
    """A manifest file is not a luo ABI manifest (``EINVAL``)."""


class IncompatibleError(LiveUpdateError):
    """The target kernel cannot read what this update would hand it."""

    errno = _errno.EPROTONOSUPPORT


class RegisterError(LiveUpdateError):
    """A register access that hardware cannot take: unknown, misaligned, read-only,
    or a value that is not an integer of the register's width (``EINVAL``)."""


class HardwareError(LiveUpdateError):
    """The hardware refused a request or is unreachable (``EIO``, or the errno it sent)."""

    errno = _errno.EIO


class PeerGoneError(LiveUpdateError):
    """The process at the other end of a socket is gone (``EPIPE``)."""

    errno = _errno.EPIPE


class KernelLeakError(LiveUpdateError):
    """Something the old kernel or its packs made is still reachable from the new
    kernel after an in-process kexec: state went around the handoff (``EXDEV``)."""

    errno = _errno.EXDEV


class KexecError(LiveUpdateError):
    """A kernel process could not be started, loaded, booted or reached (``ENOEXEC``)."""

    errno = _errno.ENOEXEC


class IommuFaultError(LiveUpdateError):
    """A DMA the IOMMU refused: unmapped, not permitted, or a broken page table
    (``EFAULT``).  ``device``, ``iova``, ``write`` and ``reason`` say which;
    nothing of the transfer reached memory."""

    errno = _errno.EFAULT

    def __init__(self, device: str, iova: int, *, write: bool, reason: str) -> None:
        access = "write" if write else "read"
        super().__init__(f"{device or 'DMA'}: IOMMU fault on {access} at IOVA {iova:#x}: {reason}")
        self.device = device
        self.iova = iova
        self.write = write
        self.reason = reason


class InterruptRemapFaultError(LiveUpdateError):
    """An MSI the interrupt-remapping hardware refused: a malformed request, an index
    beyond the table, an entry not present or with reserved bits, or a posted
    descriptor outside memory (``EFAULT``).  ``device``, ``index`` (``None`` when
    the request named none) and ``reason`` say which; nothing was posted."""

    errno = _errno.EFAULT

    def __init__(self, device: str, index: int | None, reason: str) -> None:
        entry = "" if index is None else f" for IRTE {index}"
        super().__init__(f"{device or 'MSI'}: interrupt-remapping fault{entry}: {reason}")
        self.device = device
        self.index = index
        self.reason = reason
