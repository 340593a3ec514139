"""Typed, errno-carrying errors: what a user or a plugin can get wrong."""

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
