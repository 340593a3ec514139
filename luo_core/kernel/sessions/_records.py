"""File handlers and FLBs: the records and callback tables of ``include/linux/liveupdate.h``.

A :class:`FileHandler` says which open files it can preserve (``can_preserve``)
and how (``preserve``, ``freeze``, ``retrieve``, ``finish``...); its
``compatible`` names its data in the handoff, and the next kernel needs a
handler with the same ``compatible`` to take those files back.  An
:class:`Flb` (File-Lifecycle-Bound object) is state shared by every file of
the handlers it is registered with: preserved with the first such file and
unpreserved or finished with the last.

What a callback hands over (``data``) crosses kexec as bytes: an instance of
the handler's ``schema`` (a ``@state`` class, sealed and versioned like every
record) or, with no schema, a ``u64`` the handler gives a meaning to itself —
the kernel's opaque handle, typically the physical address of a structure the
handler wrote into preserved memory (``memfd-v1`` does this).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterable
from typing import Any

import attrs

from luo_core.abi import schema_of
from luo_core.abi._luo import FLB_COMPAT_LENGTH, HNDL_COMPAT_LENGTH, c_string
from luo_core.kernel._records import PluginOrigin


@attrs.frozen
class LiveFile:
    """An open file as LUO holds it: ``fd`` is LUO's own reference (a descriptor in
    the kernel's process), valid until the file is unpreserved or finished."""

    fd: int

    def stat(self) -> os.stat_result:
        return os.fstat(self.fd)


class FileHandlerOps:
    """``struct liveupdate_file_ops``.  ``can_preserve``, ``preserve``, ``unpreserve``,
    ``retrieve`` and ``finish`` are required (registration refuses a table
    without them, ``EINVAL``); the rest are optional.

    Every callback but ``retrieve`` gets the ``file`` (a :class:`LiveFile`;
    ``None`` in ``can_finish`` and ``finish`` for a file never retrieved) and
    its ``data``.  A callback fails by raising; an :class:`OSError` or a
    :class:`~luo_core.errors.LiveUpdateError` keeps its errno.
    """

    def can_preserve(self, file: LiveFile) -> bool:
        """Whether this handler preserves ``file`` (light: no side effects)."""
        raise NotImplementedError

    def preserve(self, file: LiveFile) -> Any:
        """The heavy work, done while the workload runs; return the data to hand over."""
        raise NotImplementedError

    def unpreserve(self, file: LiveFile, data: Any) -> None:
        """Undo ``preserve`` (the session was closed before kexec)."""
        raise NotImplementedError

    def freeze(self, file: LiveFile, data: Any) -> Any:
        """On the kexec path, in preservation order: return new data, or ``None`` to keep it."""
        return None

    def unfreeze(self, file: LiveFile, data: Any) -> None:
        """Undo ``freeze`` (a later file's freeze failed; the kexec is refused)."""
        return None

    def retrieve(self, data: Any) -> int:
        """In the next kernel, on demand: rebuild the file, return a new OS descriptor."""
        raise NotImplementedError

    def can_finish(self, file: LiveFile | None, data: Any, retrieved: bool) -> bool:
        """Whether the session may finish now (``False`` makes finish fail with ``EBUSY``)."""
        return True

    def finish(self, file: LiveFile | None, data: Any, retrieved: bool) -> None:
        """Last cleanup in the next kernel; after it LUO lets go of the file."""
        raise NotImplementedError

    def get_id(self, file: LiveFile) -> Hashable | None:
        """What makes two descriptors the same file (a file is preserved once).

        ``None`` (the default) means the open file itself, as the kernel's
        default (the ``struct file``): luo compares descriptors with
        ``kcmp(KCMP_FILE)``.
        """
        return None


REQUIRED_FILE_OPS = ("can_preserve", "preserve", "unpreserve", "retrieve", "finish")


class FlbOps:
    """``struct liveupdate_flb_ops``: all four are required."""

    def preserve(self) -> tuple[Any, Any]:
        """With the first file: return ``(data to hand over, the live object)``."""
        raise NotImplementedError

    def unpreserve(self, data: Any, obj: Any) -> None:
        """With the last file unpreserved before kexec."""
        raise NotImplementedError

    def retrieve(self, data: Any) -> Any:
        """In the next kernel, on first use: rebuild the live object."""
        raise NotImplementedError

    def finish(self, obj: Any) -> None:
        """With the last file finished in the next kernel."""
        raise NotImplementedError


REQUIRED_FLB_OPS = ("preserve", "unpreserve", "retrieve", "finish")


def missing(ops: object, base: type, required: tuple[str, ...]) -> list[str]:
    """The required callbacks ``ops`` does not implement."""
    return [name for name in required if getattr(type(ops), name, None) is getattr(base, name)]


def _schema(_instance: object, _attribute: object, value: type[Any] | None) -> None:
    if value is not None:
        schema_of(value)


def _compatible(limit: int, what: str) -> Any:
    def check(_instance: object, _attribute: object, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError(f"{what} must be a non-empty string")
        c_string(value, limit, what)

    return check


@attrs.frozen(eq=False)
class Flb:
    """``struct liveupdate_flb``: shared state of the files of the handlers it is
    registered with (:meth:`~luo_core.Kernel.register_flb`)."""

    compatible: str = attrs.field(validator=_compatible(FLB_COMPAT_LENGTH, "FLB compatible"))
    ops: FlbOps = attrs.field(validator=attrs.validators.instance_of(FlbOps))
    schema: type[Any] | None = attrs.field(default=None, validator=_schema)


def _tuple_of_flbs(value: Iterable[Flb]) -> tuple[Flb, ...]:
    flbs = tuple(value)
    for flb in flbs:
        if not isinstance(flb, Flb):
            raise TypeError(f"flbs holds Flb records, not {type(flb).__name__}")
    return flbs


@attrs.frozen(eq=False)
class FileHandler:
    """``struct liveupdate_file_handler``: a ``compatible`` and its callbacks.

    ``schema`` is the ``@state`` class of the data its callbacks hand over
    (``None``: a ``u64`` handle).  ``flbs`` are registered with it when a
    pack yields it (``luo_file_handlers``).
    """

    compatible: str = attrs.field(
        validator=_compatible(HNDL_COMPAT_LENGTH, "file handler compatible")
    )
    ops: FileHandlerOps = attrs.field(validator=attrs.validators.instance_of(FileHandlerOps))
    schema: type[Any] | None = attrs.field(default=None, validator=_schema)
    flbs: tuple[Flb, ...] = attrs.field(default=(), converter=_tuple_of_flbs)
    origin: PluginOrigin | None = attrs.field(default=None, eq=False)

    @property
    def name(self) -> str:
        return self.compatible
