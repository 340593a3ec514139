"""The kernel's sessions API: ``/dev/liveupdate``, file handlers and FLBs, named as upstream."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from luo_core.kernel._base import KernelBase

if TYPE_CHECKING:
    from luo_core.kernel.sessions import FileHandler, Flb, LiveUpdateDevice


class SessionsApi(KernelBase):
    """What userspace and file-handler modules call on a kernel (upstream 6.19 model)."""

    def open_liveupdate(self) -> LiveUpdateDevice:
        """Open ``/dev/liveupdate``: one opener at a time (``EBUSY``), and ``EIO`` for good
        if the sessions handed over could not be deserialized."""
        self._alive()
        return self.luo.open()

    def register_file_handler(self, fh: FileHandler) -> None:
        """``liveupdate_register_file_handler``: ``EEXIST`` for a compatible taken, ``EBUSY``
        while sessions exist, ``EINVAL`` for a callback table missing a required op."""
        self._alive()
        self.luo.register_file_handler(fh)

    def unregister_file_handler(self, fh: FileHandler) -> None:
        """``liveupdate_unregister_file_handler``: ``EBUSY`` while sessions exist or FLBs
        are registered with it."""
        self._alive()
        self.luo.unregister_file_handler(fh)

    def register_flb(self, fh: FileHandler, flb: Flb) -> None:
        """``liveupdate_register_flb``: ``EEXIST`` if ``flb`` is already on ``fh``."""
        self._alive()
        self.luo.register_flb(fh, flb)

    def unregister_flb(self, fh: FileHandler, flb: Flb) -> None:
        self._alive()
        self.luo.unregister_flb(fh, flb)

    def flb_get_incoming(self, flb: Flb) -> Any:
        """``liveupdate_flb_get_incoming``: the object the previous kernel's FLB handed
        over, retrieved on first use and the same object after."""
        self._alive()
        return self.luo.flb_get_incoming(flb)

    def flb_get_outgoing(self, flb: Flb) -> Any:
        """``liveupdate_flb_get_outgoing``: the live object preserved with the first file
        (``None`` before)."""
        self._alive()
        return self.luo.flb_get_outgoing(flb)
