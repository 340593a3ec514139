"""The global state machine: legal and illegal events, errnos, one transition at a time.

Ported from the semantics of the kernel's liveupdate selftests: every event
from every state, registration rules, and concurrent callers.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from luo_core import (
    Device,
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
from luo_core.platform import EXAMPLE_NIC
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


class Contended:
    """The state machine's lock, telling the test when a second caller starts to wait."""

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock
        self.waiting = threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self.lock.locked():
            self.waiting.set()
        return self.lock.acquire(blocking, timeout)

    def release(self) -> None:
        self.lock.release()


class Gated:
    """A kernel whose ``prepare`` is held in a subsystem's callback until ``open()``."""

    def __init__(self, machine: Machine) -> None:
        self.events: list[tuple[str, str, str]] = []
        events = self.events

        class Watcher:
            @hookimpl
            def luo_state_changed(self, old: State, new: State, event: Event) -> None:
                events.append((event.value, old.value, new.value))

        self.kernel = Kernel.boot(machine, plugins=[JournalPack([]), Watcher], discover=False)
        self.gate = Gate()
        self.kernel.register_subsystem(Subsystem(name="gate", ops=self.gate, schema=Empty))
        self.kernel.devices.request("0000:01:00.0")
        self.lock = Contended(self.kernel._sm._lock)
        self.kernel._sm._lock = self.lock  # type: ignore[assignment]
        self.first = threading.Thread(target=self.kernel.prepare)

    def __enter__(self) -> Gated:
        self.first.start()
        assert self.gate.entered.wait(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.open()

    def open(self) -> None:
        self.gate.release.set()
        self.first.join(timeout=30)


def in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Start ``call`` on a thread; the list gets what it returned or raised."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_a_second_event_waits_for_the_running_one(machine: Machine) -> None:
    """A second event waits for the running one, then runs from the state it
    left: each event takes ``luo_state_rwsem`` with ``down_write_killable()``
    ([rfc2] ``luo_core.c`` ``__luo_prepare()``, ``__luo_cancel()``; [rfc1]
    ``kernel/liveupdate.c`` ``luo_prepare()``)."""
    with Gated(machine) as gated:
        second, outcome = in_thread(gated.kernel.cancel)
        assert gated.lock.waiting.wait(timeout=30)
        assert outcome == []  # still waiting: the prepare has not returned
        gated.open()
        second.join(timeout=30)
    assert outcome == [None]
    assert gated.events == [("prepare", "normal", "prepared"), ("cancel", "prepared", "normal")]


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda k: k.register_subsystem(sub("racer")), id="register"),
        pytest.param(lambda k: k.unregister_subsystem("alpha"), id="unregister"),
        pytest.param(lambda k: k.devices.request("0000:02:00.0"), id="request"),
        pytest.param(lambda k: k.devices.release("0000:01:00.0"), id="release"),
    ],
)
def test_registration_and_requests_wait_then_see_the_new_state(
    machine: Machine, call: Callable[[Kernel], object]
) -> None:
    """Registration and ``requested`` writes wait for a running event (they
    take ``luo_state_rwsem`` for reading), then are judged by the state it
    left: ``EBUSY`` for registration outside normal/updated, ``EINVAL`` for a
    request outside normal ([v3] ``luo_subsystems.c``
    ``liveupdate_register_subsystem()``; [rfc1] ``drivers/base/dev_liveupdate.c``
    ``requested_store()``)."""
    with Gated(machine) as gated:
        waiter, outcome = in_thread(lambda: call(gated.kernel))
        assert gated.lock.waiting.wait(timeout=30)
        assert outcome == []
        gated.open()
        waiter.join(timeout=30)
    assert gated.kernel.state is State.PREPARED
    [error] = outcome
    assert isinstance(error, (BusyError, InvalidTransitionError)), error
    assert "not allowed in state prepared" in str(error)


def test_a_timeout_gives_eagain_and_changes_nothing(machine: Machine) -> None:
    """A caller that gives up waiting gets ``EAGAIN``, as a wait interrupted
    in ``down_write_killable()`` does ([rfc2] ``luo_core.c`` ``__luo_cancel()``)."""
    with Gated(machine) as gated:
        with pytest.raises(TryAgainError) as again:
            gated.kernel.cancel(timeout=0.01)
        assert again.value.errno == errno.EAGAIN
        with pytest.raises(TryAgainError):
            gated.kernel.register_subsystem(sub("racer"), timeout=0.01)
    assert gated.kernel.state is State.PREPARED and "racer" not in gated.kernel.subsystems
    gated.kernel.cancel(timeout=5)
    assert gated.kernel.state.value == "normal"


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
    with machine.transition(Event.CANCEL) as target:
        machine.force(target)
        order.append("cancel")


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({}, id="serial"),
        pytest.param({"workers": 3}, id="workers"),
        pytest.param({"callback_timeout": 10.0}, id="callback-thread"),
    ],
)
def test_a_callback_calling_back_into_the_kernel_fails_at_once(
    machine: Machine, config: dict[str, Any]
) -> None:
    """A callback that starts another event would wait for the event running
    it, forever (the kernel deadlocks on its own rwsem): in luo it gets
    ``EBUSY`` at once, whichever thread runs it, and can go on."""
    seen: list[BusyError] = []

    class Reentrant(DeviceDriverOps):
        def prepare(self, dev: Device) -> Empty:
            calls: list[Callable[[], object]] = [
                kernel.cancel,
                lambda: kernel.devices.release(dev.name),
            ]
            for call in calls:
                try:
                    call()
                except BusyError as exc:
                    seen.append(exc)
            return Empty()

    class Pack:
        @hookimpl
        def luo_device_drivers(self) -> Iterator[DeviceDriver]:
            yield DeviceDriver(name="nic", compatible=[EXAMPLE_NIC], ops=Reentrant(), schema=Empty)

    kernel = Kernel.boot(machine, plugins=[Pack], discover=False, **config)
    kernel.devices.request("0000:01:00.0")
    kernel.devices.request("0000:02:00.0")
    kernel.prepare()
    assert kernel.state is State.PREPARED
    assert len(seen) == 4 and all(e.errno == errno.EBUSY for e in seen)
    assert "called from inside prepare" in str(seen[0])


def test_a_driver_check_calling_back_into_the_kernel_fails_at_once(machine: Machine) -> None:
    """The same holds for a call made under a request (``can_preserve``)."""

    class Nosy(DeviceDriverOps):
        def can_preserve(self, dev: Device) -> bool:
            with pytest.raises(BusyError, match="called from inside request"):
                kernel.devices.request("0000:02:00.0")
            return True

    class Pack:
        @hookimpl
        def luo_device_drivers(self) -> Iterator[DeviceDriver]:
            yield DeviceDriver(name="nic", compatible=[EXAMPLE_NIC], ops=Nosy(), schema=Empty)

    kernel = Kernel.boot(machine, plugins=[Pack], discover=False)
    kernel.devices.request("0000:01:00.0")
    assert kernel.devices["0000:01:00.0"].requested


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
