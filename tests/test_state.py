"""The global state machine: legal and illegal events, errnos, one transition at a time.

Ported from the semantics of the kernel's liveupdate selftests: every event
from every state, registration rules, and concurrent callers.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterator

import pytest
from structlog.testing import capture_logs

from luo_core import (
    DeviceDriver,
    DeviceDriverOps,
    Kernel,
    Machine,
    State,
    Subsystem,
    SubsystemOps,
    hookimpl,
)
from luo_core.errors import (
    BusyError,
    ExistsError,
    InvalidTransitionError,
    KernelGoneError,
    NotFoundError,
    PluginConflictError,
    TryAgainError,
)
from luo_core.kernel._state import TRANSITIONS, Event, StateMachine
from tests.journal import Empty, JournalPack, JournalRecord


def to_state(kernel: Kernel, state: State) -> Kernel:
    """Drive a fresh kernel into ``state``; returns the kernel now in it."""
    if state in (State.PREPARED, State.FROZEN):
        kernel.prepare()
    if state is State.FROZEN:
        kernel.freeze()
    if state is State.UPDATED:
        kernel.prepare()
        kernel = kernel.kexec()
    assert kernel.state is state
    return kernel


EVENTS: dict[Event, Callable[[Kernel], None]] = {
    Event.PREPARE: Kernel.prepare,
    Event.FREEZE: Kernel.freeze,
    Event.CANCEL: Kernel.cancel,
    Event.FINISH: Kernel.finish,
}


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("event", list(Event))
def test_every_event_from_every_state(kernel: Kernel, state: State, event: Event) -> None:
    kernel = to_state(kernel, state)
    legal = TRANSITIONS.get((state, event))
    if legal is None:
        with pytest.raises(InvalidTransitionError) as info:
            EVENTS[event](kernel)
        assert info.value.errno == errno.EINVAL
        assert event.value in str(info.value) and state.value in str(info.value)
        assert kernel.state is state
    else:
        EVENTS[event](kernel)
        assert kernel.state is legal


def test_the_transition_table_is_the_luo_rfc_one() -> None:
    assert TRANSITIONS == {
        (State.NORMAL, Event.PREPARE): State.PREPARED,
        (State.PREPARED, Event.FREEZE): State.FROZEN,
        (State.PREPARED, Event.CANCEL): State.NORMAL,
        (State.FROZEN, Event.CANCEL): State.NORMAL,
        (State.UPDATED, Event.FINISH): State.NORMAL,
    }


def test_kexec_without_prepare_is_a_plain_kexec(kernel: Kernel, journal: list[str]) -> None:
    """No update prepared: a plain kexec, nothing preserved, the next kernel boots cold.

    RFC v1 ``device_shutdown()`` (``drivers/base/core.c`` [rfc1]) keeps a device
    running only while a live update is in progress, and upstream
    ``liveupdate_reboot()`` (``kernel/liveupdate/luo_core.c``) lets every
    ``reboot(LINUX_REBOOT_CMD_KEXEC)`` through.
    """
    new = kernel.kexec()
    assert new.state is State.NORMAL
    assert new.liveupdate_number == 1
    assert not [entry for entry in journal if entry.startswith(("prepare", "freeze"))]
    assert new.handed_over("subsystem", "alpha") is None


def test_kexec_from_prepared_freezes_on_the_way(kernel: Kernel, journal: list[str]) -> None:
    kernel.prepare()
    new = kernel.kexec()
    assert "freeze:alpha" in journal
    assert new.state is State.UPDATED


def test_old_kernel_is_gone_after_kexec(kernel: Kernel) -> None:
    kernel.prepare()
    kernel.kexec()
    for call in (kernel.prepare, kernel.cancel, kernel.finish, kernel.kexec):
        with pytest.raises(KernelGoneError):
            call()
    with pytest.raises(KernelGoneError):
        kernel.devices.request("0000:01:00.0")


def test_finish_returns_to_normal_and_allows_a_second_update(kernel: Kernel) -> None:
    kernel.prepare()
    second = kernel.kexec()
    second.finish()
    second.prepare()
    third = second.kexec()
    third.finish()
    assert third.liveupdate_number == 2
    assert third.state is State.NORMAL


# -- registration -------------------------------------------------------------


def sub(name: str) -> Subsystem:
    return Subsystem(name=name, ops=SubsystemOps(), schema=Empty)


@pytest.mark.parametrize("state", [State.PREPARED, State.FROZEN])
def test_register_and_unregister_outside_normal_or_updated_is_ebusy(
    kernel: Kernel, state: State
) -> None:
    kernel = to_state(kernel, state)
    with pytest.raises(BusyError) as info:
        kernel.register_subsystem(sub("late"))
    assert info.value.errno == errno.EBUSY
    with pytest.raises(BusyError):
        kernel.unregister_subsystem("alpha")
    assert "late" not in kernel.subsystems and "alpha" in kernel.subsystems


def test_register_in_updated_boots_with_handed_over_data(machine: Machine) -> None:
    journal: list[str] = []
    kernel = Kernel.boot(machine, plugins=[JournalPack(journal, ("alpha",))], discover=False)

    class Late(SubsystemOps):
        got: bytes | None = None

        def prepare(self) -> JournalRecord:
            return JournalRecord(b"late-state")

        def boot(self, data: JournalRecord) -> None:
            Late.got = data.payload

    kernel.register_subsystem(Subsystem(name="late", ops=Late(), schema=JournalRecord))
    kernel.prepare()
    new = kernel.kexec()
    assert new.state is State.UPDATED and "late" not in new.subsystems
    new.register_subsystem(Subsystem(name="late", ops=Late(), schema=JournalRecord))
    assert Late.got == b"late-state"


def test_duplicate_registration_is_eexist(kernel: Kernel) -> None:
    kernel.register_subsystem(sub("gamma"))
    with pytest.raises(ExistsError) as info:
        kernel.register_subsystem(sub("gamma"))
    assert info.value.errno == errno.EEXIST
    with pytest.raises(ExistsError):
        kernel.register_subsystem(sub("alpha"))  # registered by the pack


def test_unregister_unknown_and_double_unregister_are_enoent(kernel: Kernel) -> None:
    with pytest.raises(NotFoundError) as info:
        kernel.unregister_subsystem("nope")
    assert info.value.errno == errno.ENOENT
    kernel.unregister_subsystem("alpha")
    with pytest.raises(NotFoundError):
        kernel.unregister_subsystem("alpha")


def test_register_many_all_take_part_in_registration_order(
    kernel: Kernel, journal: list[str]
) -> None:
    names = [f"sub{i:03d}" for i in range(200)]
    for name in names:
        kernel.register_subsystem(sub(name))
    assert list(kernel.subsystems)[2:] == names
    kernel.unregister_subsystem("alpha")
    kernel.prepare()
    assert journal == ["prepare:beta"]
    kernel.cancel()
    assert list(kernel.subsystems) == ["beta", *names]


def test_unregistered_subsystem_takes_no_part(kernel: Kernel, journal: list[str]) -> None:
    kernel.unregister_subsystem("beta")
    kernel.prepare()
    new = kernel.kexec()
    assert not any(entry.endswith(":beta") for entry in journal)
    assert new.handed_over("subsystem", "beta") is None
    assert new.handed_over("subsystem", "alpha") == JournalRecord(b"alpha-state")


# -- one transition at a time -------------------------------------------------


class Gate(SubsystemOps):
    """Blocks inside prepare until released, so a second caller meets a busy machine."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def prepare(self) -> Empty:
        self.entered.set()
        if not self.release.wait(timeout=30):
            raise TimeoutError("gate never released")
        return Empty()


def test_concurrent_callers_get_ebusy_or_eagain(machine: Machine) -> None:
    kernel = Kernel.boot(machine, discover=False)
    gate = Gate()
    kernel.register_subsystem(Subsystem(name="gate", ops=gate, schema=Empty))
    first = threading.Thread(target=kernel.prepare)
    first.start()
    try:
        assert gate.entered.wait(timeout=30)
        with pytest.raises(BusyError) as busy:
            kernel.cancel()
        assert busy.value.errno == errno.EBUSY
        with pytest.raises(BusyError):
            kernel.register_subsystem(sub("racer"))
        with pytest.raises(TryAgainError) as again:
            kernel.cancel(timeout=0.01)
        assert again.value.errno == errno.EAGAIN
    finally:
        gate.release.set()
        first.join()
    assert kernel.state.value == "prepared"
    kernel.cancel(timeout=5)
    assert kernel.state.value == "normal"


def test_waiting_caller_runs_after_the_first_transition() -> None:
    machine = StateMachine()
    order: list[str] = []
    entered, release = threading.Event(), threading.Event()

    def first() -> None:
        with machine.transition(Event.PREPARE) as target:
            entered.set()
            release.wait(timeout=30)
            machine.force(target)
            order.append("prepare")

    thread = threading.Thread(target=first)
    thread.start()
    assert entered.wait(timeout=30)
    waiter = threading.Thread(target=lambda: _cancel_waiting(machine, order))
    waiter.start()
    release.set()
    thread.join()
    waiter.join()
    assert order == ["prepare", "cancel"]
    assert machine.state is State.NORMAL


def _cancel_waiting(machine: StateMachine, order: list[str]) -> None:
    with machine.transition(Event.CANCEL, timeout=30) as target:
        machine.force(target)
        order.append("cancel")


def test_a_failing_observer_does_not_silence_the_others(machine: Machine) -> None:
    seen: list[str] = []

    class Broken:
        @hookimpl
        def luo_phase_started(self, phase: str) -> None:
            raise RuntimeError("observer bug")

    class Watcher:
        @hookimpl
        def luo_phase_started(self, phase: str) -> None:
            seen.append(phase)

    kernel = Kernel.boot(machine, plugins=[Watcher, Broken], discover=False)
    with capture_logs() as logs:
        kernel.prepare()
    assert seen == ["prepare"]
    assert kernel.state is State.PREPARED
    failures = [e for e in logs if e["event"] == "observer_failed"]
    assert len(failures) == 1 and "observer bug" in failures[0]["error"]


def test_two_local_plugins_with_one_driver_name_conflict(machine: Machine) -> None:
    class One:
        @hookimpl
        def luo_device_drivers(self) -> Iterator[DeviceDriver]:
            yield DeviceDriver(
                name="nic", compatible=["a,nic"], ops=DeviceDriverOps(), schema=Empty
            )

    class Two:
        @hookimpl
        def luo_device_drivers(self) -> Iterator[DeviceDriver]:
            yield DeviceDriver(
                name="nic", compatible=["b,nic"], ops=DeviceDriverOps(), schema=Empty
            )

    with pytest.raises(PluginConflictError, match=r"local:.*One.*local:.*Two"):
        Kernel.boot(machine, plugins=[One, Two], discover=False)
