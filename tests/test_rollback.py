"""Rollback: a participant failing prepare or freeze, each in turn.

The others that prepared get ``cancel`` as an explicit cancel runs them (the
devices backwards, then the subsystems in registration order), the failing
one gets none, the machine is back in ``normal`` and every device is exactly
as it was before prepare (QEMU's rule: a failed update leaves the source as
it was).
"""

from __future__ import annotations

import copy
import errno
from typing import Any

import pytest
from structlog.testing import capture_logs

from luo_core import Kernel, Machine, State
from luo_core.errors import CallbackError
from luo_core.platform import BUS_MASTER, EXAMPLE_NIC, Hardware, default_host
from tests.journal import Boom, JournalPack, JournalRecord

NICS = ("0000:01:00.0", "0000:01:00.1", "0000:02:00.0")
PARTICIPANTS = [*NICS, "alpha", "beta"]


def boot(journal: list[str], workers: int = 1) -> tuple[Kernel, JournalPack, Hardware]:
    pack = JournalPack(journal)
    hw = Hardware(default_host())
    kernel = Kernel.boot(hw, plugins=[pack], discover=False, workers=workers)
    for name in NICS:
        kernel.devices.request(name)
    for i, name in enumerate(NICS):
        kernel.devices[name].driver_data["counter"] = 10 + i
    return kernel, pack, hw


def snapshot(kernel: Kernel, hw: Hardware) -> dict[str, Any]:
    """Every device as its driver and the hardware see it: driver data, the
    driver-owned registers and the configuration space (read through the
    hardware, not the kernel), bus mastering, and the live-update flags."""
    return {
        dev.name: (
            copy.deepcopy(dev.driver_data),
            hw.registers(dev.name).values(owner="driver"),
            hw.config(dev.name).values(),
            bool(hw.config(dev.name)["command"] & BUS_MASTER),
            dev.requested,
            dev.preserved,
        )
        for dev in kernel.devices.devices()
    }


def phase_order(phase: str) -> list[str]:
    """The order participants run ``phase`` in, from a run that succeeds."""
    journal: list[str] = []
    kernel, _, _ = boot(journal)
    kernel.prepare()
    kernel.freeze()
    return [e.split(":", 1)[1] for e in journal if e.startswith(phase + ":")]


def cancel_order(prepared: list[str]) -> list[str]:
    """How the RFC cancels ``prepared`` (in the order it prepared): devices
    backwards, then subsystems forwards."""
    devices = [p for p in prepared if p in NICS]
    return [*reversed(devices), *(p for p in prepared if p not in NICS)]


@pytest.mark.parametrize("workers", [1, 4])
@pytest.mark.parametrize("victim", PARTICIPANTS)
def test_prepare_failure_cancels_devices_backwards_then_subsystems_in_registration_order(
    victim: str, workers: int
) -> None:
    """If subsystem *k* fails ``prepare``, the subsystems before it get
    ``cancel`` in registration order, forwards ([rfc2] [v3] ``luo_subsystems.c``
    ``luo_do_subsystems_prepare_calls()`` -> ``__luo_do_subsystems_cancel_calls()``,
    ``list_for_each_entry``), after the device layer, which the notifier
    chain rolls back first ([rfc1] ``kernel/liveupdate.c`` ``luo_notify()``,
    ``blocking_notifier_call_chain_robust()``).  The device layer walks its
    list backwards from the failing device ([rfc1] ``dev_liveupdate.c``
    ``__dev_liveupdate_cancel()``).  The failing participant gets none."""
    journal: list[str] = []
    kernel, pack, hw = boot(journal, workers)
    before = snapshot(kernel, hw)
    pack.fail.add(f"prepare:{victim}")
    with pytest.raises(CallbackError) as info:
        kernel.prepare()
    assert info.value.participant.endswith(victim)
    assert info.value.phase == "prepare"
    assert isinstance(info.value.__cause__, Boom)
    assert info.value.errno == errno.EIO

    prepared = [e.split(":", 1)[1] for e in journal if e.startswith("prepare:")]
    cancelled = [e.split(":", 1)[1] for e in journal if e.startswith("cancel:")]
    assert victim not in cancelled
    if workers == 1:
        assert prepared[-1] == victim
        assert cancelled == cancel_order(prepared[:-1])
    else:  # siblings in flight finish too, and are cancelled
        assert sorted(cancelled) == sorted(p for p in prepared if p != victim)
    assert kernel.state is State.NORMAL
    assert snapshot(kernel, hw) == before


@pytest.mark.parametrize("victim", PARTICIPANTS)
def test_freeze_failure_cancels_every_other_prepared_participant(victim: str) -> None:
    """The RFC cancels only the participants that froze before *k* ([rfc2]
    [v3] ``luo_do_subsystems_freeze_calls()``; [rfc1]
    ``__dev_liveupdate_reboot_prepare()``); luo cancels every prepared one
    but *k*, in the order of an explicit cancel (see docs/fidelity.rst)."""
    journal: list[str] = []
    kernel, pack, hw = boot(journal)
    before = snapshot(kernel, hw)
    kernel.prepare()
    prepared = [e.split(":", 1)[1] for e in journal if e.startswith("prepare:")]
    pack.fail.add(f"freeze:{victim}")
    with pytest.raises(CallbackError) as info:
        kernel.freeze()
    assert info.value.phase == "freeze" and info.value.participant.endswith(victim)
    frozen = [e.split(":", 1)[1] for e in journal if e.startswith("freeze:")]
    assert frozen == phase_order("freeze")[: len(frozen)] and frozen[-1] == victim
    cancelled = [e.split(":", 1)[1] for e in journal if e.startswith("cancel:")]
    assert cancelled == [p for p in cancel_order(prepared) if p != victim]
    assert kernel.state is State.NORMAL
    assert snapshot(kernel, hw) == before


def test_a_failed_update_can_be_retried(journal: list[str]) -> None:
    kernel, pack, _ = boot(journal)
    pack.fail.add("freeze:alpha")
    kernel.prepare()
    with pytest.raises(CallbackError):
        kernel.kexec()
    assert kernel.state is State.NORMAL
    pack.fail.clear()
    kernel.prepare()
    new = kernel.kexec()
    assert new.state is State.UPDATED
    assert new.devices["0000:01:00.1"].driver_data["counter"] == 11


@pytest.mark.parametrize("when", ["prepared", "frozen"])
def test_cancel_leaves_devices_unchanged(when: str) -> None:
    """An explicit cancel: the device layer walks its list backwards, bus then
    driver ([rfc1] ``device_liveupdate_cancel()`` -> ``__dev_liveupdate_cancel(NULL)``),
    then the subsystems in registration order ([rfc2] [v3]
    ``luo_do_subsystems_cancel_calls()``)."""
    journal: list[str] = []
    kernel, _, hw = boot(journal)
    before = snapshot(kernel, hw)
    kernel.prepare()
    if when == "frozen":
        kernel.freeze()
        assert all(kernel.devices[n].driver_data["paused"] for n in NICS)
    kernel.cancel()
    assert kernel.state is State.NORMAL
    assert snapshot(kernel, hw) == before
    cancelled = [e.split(":", 1)[1] for e in journal if e.startswith("cancel:")]
    prepared = [e.split(":", 1)[1] for e in journal if e.startswith("prepare:")]
    assert cancelled == cancel_order(prepared)


@pytest.mark.parametrize("phase", ["cancel", "finish"])
def test_cancel_and_finish_callbacks_cannot_fail_the_transition(phase: str) -> None:
    journal: list[str] = []
    kernel, pack, _ = boot(journal)
    pack.fail.update({f"{phase}:alpha", f"{phase}:0000:01:00.0"})
    kernel.prepare()
    with capture_logs() as logs:
        if phase == "cancel":
            kernel.cancel()
        else:
            kernel = kernel.kexec()
            kernel.finish()
    assert kernel.state is State.NORMAL
    assert f"{phase}:beta" in journal and f"{phase}:0000:02:00.0" in journal
    failed = {
        e["participant"]
        for e in logs
        if e["event"] == "callback_must_not_fail" and e["phase"] == phase
    }
    assert failed == {"subsystem:alpha", "device:0000:01:00.0"}


def test_rollback_is_reported_to_observers(journal: list[str]) -> None:
    seen: list[tuple[str, str, str]] = []

    class Watcher:
        from luo_core import hookimpl

        @hookimpl
        def luo_state_changed(self, old: State, new: State, event: Any) -> None:
            seen.append((event.value, old.value, new.value))

    pack = JournalPack(journal)
    pack.fail.add("prepare:beta")
    kernel = Kernel.boot(default_host(), plugins=[pack, Watcher], discover=False)
    with pytest.raises(CallbackError):
        kernel.prepare()
    assert seen == [("prepare", "normal", "normal")]


def test_a_hung_callback_times_out_and_rolls_back(journal: list[str]) -> None:
    import threading

    from luo_core import Subsystem, SubsystemOps
    from luo_core.errors import CallbackTimeoutError

    release = threading.Event()

    class Hangs(SubsystemOps):
        def freeze(self, data: JournalRecord) -> JournalRecord:
            release.wait(timeout=60)
            return data

        def prepare(self) -> JournalRecord:
            return JournalRecord(b"stuck")

    pack = JournalPack(journal)
    kernel = Kernel.boot(default_host(), plugins=[pack], discover=False, callback_timeout=0.5)
    kernel.register_subsystem(Subsystem(name="stuck", ops=Hangs(), schema=JournalRecord))
    kernel.prepare()
    try:
        with pytest.raises(CallbackError) as info:
            kernel.freeze()
    finally:
        release.set()
    assert info.value.participant == "subsystem:stuck"
    assert isinstance(info.value.__cause__, CallbackTimeoutError)
    assert info.value.errno == errno.ETIMEDOUT
    assert kernel.state is State.NORMAL
    assert [e for e in journal if e.startswith("cancel:")] == ["cancel:alpha", "cancel:beta"]


# -- the bus's callbacks --------------------------------------------------------


def fabric_host() -> Machine:
    """A root with three children on a bus of the test's own (``fabric``)."""
    m = Machine()
    m.add("root", bus="fabric", compatible=EXAMPLE_NIC)
    for name in ("a", "b", "c"):
        m.add(name, bus="fabric", compatible=EXAMPLE_NIC, parent="root")
    return m


def fabric_kernel(journal: list[str]) -> tuple[Kernel, JournalPack]:
    pack = JournalPack(journal, subsystems=("alpha",), buses=("fabric",))
    kernel = Kernel.boot(fabric_host(), plugins=[pack], discover=False)
    for name in ("a", "b", "c"):
        kernel.devices.request(name)
    return kernel, pack


def test_the_bus_prepares_after_the_driver(journal: list[str]) -> None:
    """For each device in turn, the driver's ``prepare`` then the bus's; the
    same for freeze ([rfc1] ``drivers/base/dev_liveupdate.c``
    ``__dev_liveupdate_reboot_prepare()``)."""
    kernel, _ = fabric_kernel(journal)
    kernel.prepare()
    steps = ("prepare", "bus-prepare")
    devices = ("a", "b", "c", "root")
    assert journal == [*(f"{step}:{dev}" for dev in devices for step in steps), "prepare:alpha"]
    journal.clear()
    kernel.freeze()
    assert journal[:2] == ["freeze:a", "bus-freeze:a"] and journal[-3:-1] == [
        "freeze:root",
        "bus-freeze:root",
    ]


@pytest.mark.parametrize("phase", ["prepare", "freeze"])
def test_a_failing_bus_callback_cancels_that_devices_driver_first(
    journal: list[str], phase: str
) -> None:
    """If a device's bus fails after its driver succeeded, the driver gets
    ``cancel`` (the bus does not), before the other devices are cancelled
    ([rfc1] ``__dev_liveupdate_reboot_prepare()``, label ``err_cancel_bus``)."""
    kernel, pack = fabric_kernel(journal)
    if phase == "freeze":
        kernel.prepare()
    pack.fail.add(f"bus-{phase}:b")
    journal.clear()
    with pytest.raises(CallbackError) as info:
        getattr(kernel, phase)()
    assert (info.value.participant, info.value.phase) == ("device:b", phase)
    assert isinstance(info.value.__cause__, Boom)
    cancels = [e for e in journal if "cancel:" in e]
    assert cancels[0] == "cancel:b"
    assert "bus-cancel:b" not in cancels and cancels.count("cancel:b") == 1
    others = ["a", "c", "root"] if phase == "freeze" else ["a"]
    for dev in others:
        assert cancels.index(f"bus-cancel:{dev}") < cancels.index(f"cancel:{dev}")
    assert kernel.state is State.NORMAL
