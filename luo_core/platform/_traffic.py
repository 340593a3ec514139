"""Frames arriving at a device model from its network link, at a steady rate.

A NIC model asks :meth:`Arrivals.due` on every tick how many frames its link
delivered since the last tick; the operator changes the rate (control
``link``) or injects frames (control ``receive``), both read as hostile.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

MAX_PPS: Final = 10_000_000
MAX_INJECTED: Final = 1 << 32


class Arrivals:
    """``pps`` frames per second, counted tick by tick without losing fractions."""

    def __init__(self, pps: int = 0) -> None:
        self.pps = pps
        self._last_ns: int | None = None
        self._carry = 0  # frame fractions, in frame-nanoseconds

    def due(self, now_ns: int) -> int:
        """The frames arrived since the last call (none on the first: it sets the clock)."""
        if self._last_ns is None:
            self._last_ns = now_ns
        self._carry += (now_ns - self._last_ns) * self.pps
        self._last_ns = now_ns
        frames, self._carry = divmod(self._carry, 1_000_000_000)
        return frames

    def set_rate(self, args: Mapping[str, Any]) -> int:
        """Control ``link``: the new rate ``pps``; frames already counted stay counted."""
        pps = args.get("pps")
        if type(pps) is not int or not 0 <= pps <= MAX_PPS:
            raise ValueError(f"link takes pps=0..{MAX_PPS}, not {pps!r}")
        self.pps, self._last_ns, self._carry = pps, None, 0
        return pps


def injected(args: Mapping[str, Any]) -> int:
    """Control ``receive``: how many frames the operator injects."""
    frames = args.get("frames")
    if type(frames) is not int or not 0 <= frames < MAX_INJECTED:
        raise ValueError(f"receive takes frames=0..2**32-1, not {frames!r}")
    return frames
