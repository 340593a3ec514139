"""File-Lifecycle-Bound objects (``kernel/liveupdate/luo_flb.c``): shared state, counted by files.

An FLB is preserved with the first file of its handlers and unpreserved with
the last (``luo_flb_file_preserve``/``_unpreserve``); the outgoing count and
data are serialized at kexec (``luo_flb_serialize``).  In the next kernel it
is retrieved once, on first use (``liveupdate_flb_get_incoming``) and
finished with the last of the files counted at kexec
(``luo_flb_file_finish``), retrieved first if nobody asked for it.
"""

from __future__ import annotations

import errno
from typing import Any

import attrs

from luo_core.abi._luo import FlbSer
from luo_core.errors import ExistsError, InvalidArgumentError, LiveUpdateError, NotFoundError
from luo_core.kernel.sessions._memory import Incoming, Outgoing
from luo_core.kernel.sessions._records import REQUIRED_FLB_OPS, FileHandler, Flb, FlbOps, missing


@attrs.define
class _Side:
    count: int = 0
    handle: int = 0
    data: Any = None
    obj: Any = None
    counted: bool = False
    retrieved: bool = False
    finished: bool = False


@attrs.define(eq=False)
class FlbState:
    """``struct luo_flb_private``: one FLB's counts and objects in this kernel."""

    flb: Flb
    users: int = 0
    outgoing: _Side = attrs.field(factory=_Side)
    incoming: _Side = attrs.field(factory=_Side)


class Flbs:
    """Every FLB registered in this kernel, and which handlers use which."""

    def __init__(self, outgoing: Outgoing, incoming: Incoming | None) -> None:
        self._out = outgoing
        self._in = incoming
        self._states: dict[int, FlbState] = {}  # by id(flb): an Flb is one object, as in C
        self._links: dict[int, list[Flb]] = {}  # by id(handler)
        self._incoming_ser: dict[str, FlbSer] = {}

    def set_incoming(self, found: list[FlbSer]) -> None:
        """What ``luo_flb_setup_incoming`` reads at boot (the block is freed with the last
        FLB finished, or never: it is one page)."""
        self._incoming_ser = {f.name: f for f in found}

    def of(self, fh: FileHandler) -> list[Flb]:
        return self._links.get(id(fh), [])

    def forget(self, fh: FileHandler) -> None:
        self._links.pop(id(fh), None)

    def _state(self, flb: Flb) -> FlbState:
        state = self._states.get(id(flb))
        if state is None:
            raise NotFoundError(f"FLB {flb.compatible!r} is not registered")
        return state

    def register(self, fh: FileHandler, flb: Flb) -> None:
        """``liveupdate_register_flb`` (the caller checked the sessions are quiescent)."""
        if not isinstance(flb, Flb):
            raise InvalidArgumentError(f"register_flb takes an Flb, not {type(flb).__name__}")
        absent = missing(flb.ops, FlbOps, REQUIRED_FLB_OPS)
        if absent:
            raise InvalidArgumentError(
                f"FLB {flb.compatible!r} lacks required callbacks: {', '.join(absent)}"
            )
        links = self._links.setdefault(id(fh), [])
        if any(f is flb for f in links):
            raise ExistsError(
                f"FLB {flb.compatible!r} is already registered with handler {fh.compatible!r}"
            )
        state = self._states.get(id(flb))
        if state is None:
            if any(s.flb.compatible == flb.compatible for s in self._states.values()):
                raise ExistsError(f"another FLB is registered as {flb.compatible!r}")
            state = self._states[id(flb)] = FlbState(flb)
        state.users += 1
        links.append(flb)

    def unregister(self, fh: FileHandler, flb: Flb) -> None:
        links = self._links.get(id(fh), [])
        for i, f in enumerate(links):
            if f is flb:
                del links[i]
                break
        else:
            raise NotFoundError(
                f"FLB {flb.compatible!r} is not registered with handler {fh.compatible!r}"
            )
        state = self._states[id(flb)]
        state.users -= 1
        if not state.users:
            del self._states[id(flb)]

    # -- outgoing ------------------------------------------------------------------

    def file_preserve(self, fh: FileHandler) -> None:
        """Count one more file on each of ``fh``'s FLBs, preserving each on its first;
        atomic: a failure unpreserves those this call counted."""
        done: list[Flb] = []
        try:
            for flb in self.of(fh):
                self._preserve_one(flb)
                done.append(flb)
        except BaseException:
            for flb in reversed(done):
                self._unpreserve_one(flb)
            raise

    def _preserve_one(self, flb: Flb) -> None:
        out = self._state(flb).outgoing
        if not out.count:
            data, obj = flb.ops.preserve()
            out.handle = self._out.put(flb.schema, data, f"FLB {flb.compatible}")
            out.obj, out.data = obj, data
        out.count += 1

    def file_unpreserve(self, fh: FileHandler) -> None:
        for flb in reversed(self.of(fh)):
            self._unpreserve_one(flb)

    def _unpreserve_one(self, flb: Flb) -> None:
        out = self._state(flb).outgoing
        out.count -= 1
        if not out.count:
            flb.ops.unpreserve(out.data, out.obj)
            self._out.drop(flb.schema, out.handle)
            out.handle, out.data, out.obj = 0, None, None

    def serialize(self) -> list[FlbSer]:
        """``luo_flb_serialize``: every FLB with files, its data and count."""
        return [
            FlbSer(s.flb.compatible, s.outgoing.handle, s.outgoing.count)
            for s in self._states.values()
            if s.outgoing.count > 0
        ]

    def get_outgoing(self, flb: Flb) -> Any:
        return self._state(flb).outgoing.obj

    # -- incoming ------------------------------------------------------------------

    def get_incoming(self, flb: Flb) -> Any:
        """``liveupdate_flb_get_incoming``: retrieved on first use, then the same object."""
        state = self._state(flb)
        if state.incoming.obj is None:
            self._retrieve(state)
        return state.incoming.obj

    def _retrieve(self, state: FlbState) -> None:
        inc = state.incoming
        if inc.finished:
            raise LiveUpdateError(
                f"FLB {state.flb.compatible!r} was already finished", errno=errno.ENODATA
            )
        if inc.retrieved:
            return
        if self._in is None:
            raise LiveUpdateError("no FLB was handed over to this kernel", errno=errno.ENODATA)
        ser = self._incoming_ser.get(state.flb.compatible)
        if ser is None:
            raise NotFoundError(f"FLB {state.flb.compatible!r} was not handed over")
        if not inc.counted:
            inc.handle, inc.count, inc.counted = ser.data, ser.count, True
        data = self._in.get(state.flb.schema, ser.data, f"FLB {state.flb.compatible}")
        inc.obj = state.flb.ops.retrieve(data)
        inc.retrieved = True

    def file_finish(self, fh: FileHandler) -> None:
        """One file of ``fh`` finished: the last one counted at kexec finishes each FLB."""
        for flb in reversed(self.of(fh)):
            state = self._states.get(id(flb))
            ser = self._incoming_ser.get(flb.compatible)
            if state is None or ser is None or self._in is None or state.incoming.finished:
                continue
            inc = state.incoming
            if not inc.counted:
                inc.handle, inc.count, inc.counted = ser.data, ser.count, True
            inc.count -= 1
            if inc.count > 0:
                continue
            if not inc.retrieved:
                self._retrieve(state)
            flb.ops.finish(inc.obj)
            self._in.release(flb.schema, inc.handle, f"FLB {flb.compatible}")
            inc.obj, inc.finished = None, True
