"""A hypothesis state machine drives random events against a model of LUO.

Every step checks the kernel against the model: the global state, the errno
of every refused call, the requested flags, who was preserved, and that NIC
counters survive exactly when their device was preserved.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from luo_core import Kernel, State, Subsystem, SubsystemOps
from luo_core.errors import CallbackError, LiveUpdateError
from luo_core.platform import default_host
from tests.journal import Empty, JournalPack

NICS = ("0000:01:00.0", "0000:01:00.1", "0000:02:00.0")
EXTRA = ("x1", "x2")
FAIL = st.integers(0, 3).map(lambda n: n == 0)  # a quarter of the attempts fail


LEGAL = {
    "prepare": {State.NORMAL: State.PREPARED},
    "freeze": {State.PREPARED: State.FROZEN},
    "cancel": {State.PREPARED: State.NORMAL, State.FROZEN: State.NORMAL},
    "finish": {State.UPDATED: State.NORMAL},
}


class LiveUpdateModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.journal: list[str] = []
        self.pack = JournalPack(self.journal)
        self.kernel = Kernel.boot(default_host(), plugins=[self.pack], discover=False)
        self.state = State.NORMAL
        self.requested: set[str] = set()
        self.counters = dict.fromkeys(NICS, 0)
        self.extra: set[str] = set()
        self.preserved: set[str] = set()

    def expect_errno(self, call: Callable[[], object], code: int) -> None:
        with pytest.raises(LiveUpdateError) as info:
            call()
        assert info.value.errno == code, f"{info.value} has errno {info.value.errno_name}"

    def event(self, event: str, fail: bool) -> None:
        target = LEGAL[event].get(self.state)
        call = getattr(self.kernel, event)
        if target is None:
            self.expect_errno(call, errno.EINVAL)
            return
        if fail and event in ("prepare", "freeze"):
            self.pack.fail.add(f"{event}:beta")
            try:
                with pytest.raises(CallbackError) as info:
                    call()
                assert info.value.participant == "subsystem:beta"
            finally:
                self.pack.fail.clear()
            self.state = State.NORMAL
            return
        call()
        if event == "finish":
            self.preserved = set()
        self.state = target

    @rule(fail=FAIL)
    def prepare(self, fail: bool) -> None:
        self.event("prepare", fail)

    @rule(fail=FAIL)
    def freeze(self, fail: bool) -> None:
        self.event("freeze", fail)

    @rule()
    def cancel(self) -> None:
        self.event("cancel", False)

    @rule()
    def finish(self) -> None:
        self.event("finish", False)

    @rule(fail=FAIL)
    def kexec(self, fail: bool) -> None:
        if self.state not in (State.PREPARED, State.FROZEN):
            # A plain kexec (RFC v1 dev_liveupdate: device_shutdown() preserves only
            # during a live update): every device is shut down and reset.
            self.kernel = self.kernel.kexec()
            self.preserved = set()
            self.counters = dict.fromkeys(NICS, 0)
            self.requested = set()
            self.extra = set()
            self.state = State.NORMAL
            return
        if fail and self.state is State.PREPARED:
            self.pack.fail.add("freeze:alpha")
            try:
                with pytest.raises(CallbackError):
                    self.kernel.kexec()
                self.state = State.NORMAL
            finally:
                self.pack.fail.clear()
            return
        self.kernel = self.kernel.kexec()
        self.preserved = set(self.requested)
        for nic in NICS:
            if nic not in self.requested:
                self.counters[nic] = 0
        self.requested = set()
        self.extra = set()
        self.state = State.UPDATED

    @rule(nic=st.sampled_from(NICS))
    def request(self, nic: str) -> None:
        if self.state is State.NORMAL:
            self.kernel.devices.request(nic)
            self.requested.add(nic)
        else:
            self.expect_errno(lambda: self.kernel.devices.request(nic), errno.EINVAL)

    @rule(nic=st.sampled_from(NICS))
    def release(self, nic: str) -> None:
        if self.state is State.NORMAL:
            self.kernel.devices.release(nic)
            self.requested.discard(nic)
        else:
            self.expect_errno(lambda: self.kernel.devices.release(nic), errno.EINVAL)

    @precondition(lambda self: self.state is not State.FROZEN)
    @rule(nic=st.sampled_from(NICS), amount=st.integers(1, 1000))
    def traffic(self, nic: str, amount: int) -> None:
        self.kernel.devices[nic].driver_data["counter"] += amount
        self.counters[nic] += amount

    @rule(name=st.sampled_from(EXTRA), register=st.booleans())
    def registration(self, name: str, register: bool) -> None:
        if self.state not in (State.NORMAL, State.UPDATED):
            code = errno.EBUSY
        elif register:
            code = errno.EEXIST if name in self.extra else 0
        else:
            code = 0 if name in self.extra else errno.ENOENT

        def call() -> None:
            if register:
                self.kernel.register_subsystem(
                    Subsystem(name=name, ops=SubsystemOps(), schema=Empty)
                )
            else:
                self.kernel.unregister_subsystem(name)

        if code:
            self.expect_errno(call, code)
        else:
            call()
            (self.extra.add if register else self.extra.discard)(name)

    @invariant()
    def matches_the_model(self) -> None:
        kernel = self.kernel
        assert kernel.state is self.state
        requested = {d.name for d in kernel.devices.requested()} & set(NICS)
        assert requested == self.requested
        assert {n for n in NICS if kernel.devices[n].preserved} == self.preserved
        for nic in self.preserved:
            assert kernel.devices[nic].reclaimed
        for nic, count in self.counters.items():
            assert kernel.devices[nic].driver_data["counter"] == count
        assert set(kernel.subsystems) == {"alpha", "beta", *self.extra}


LiveUpdateModel.TestCase.settings = settings(
    max_examples=150, stateful_step_count=30, deadline=None
)
test_live_update_model = LiveUpdateModel.TestCase
