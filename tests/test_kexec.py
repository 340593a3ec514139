"""In-process kexec: only the handoff bytes and the hardware cross; stats span both kernels."""

from __future__ import annotations

import json
import re
import threading
import types
from collections.abc import Iterator
from typing import ClassVar

import pytest
from structlog.testing import capture_logs

from luo_core import Device, DeviceDriver, DeviceDriverOps, Kernel, KernelConfig, State, hookimpl
from luo_core.abi import decode_record, decode_state, read_root, schema_of
from luo_core.abi._boot import BootParams
from luo_core.errors import HandoffError, KernelGoneError, KernelLeakError, LiveUpdateError
from luo_core.kernel._hwlink import HardwareLink
from luo_core.platform import EXAMPLE_NIC, PhysicalMemory, default_host
from tests.journal import CounterRecord, JournalPack, JournalRecord

NIC = "0000:01:00.0"
GONE_FIELDS = ("registry", "devices", "memory", "mm", "kho", "stats")


def updated(journal: list[str]) -> tuple[Kernel, Kernel, JournalPack]:
    pack = JournalPack(journal)
    old = Kernel.boot(default_host(), plugins=[pack], discover=False)
    old.devices.request(NIC)
    old.devices[NIC].driver_data["counter"] = 41
    old.prepare()
    old_ops = dict(pack.live)
    new = old.kexec()
    assert pack.live["alpha"] is not old_ops["alpha"]
    return old, new, pack


def boot_again(kernel: Kernel, root: int | None) -> Kernel:
    """Boot another kernel over ``kernel``'s hardware from the KHO root at ``root`` alone.

    ``kernel`` is fenced from then on: another kernel attached to the hardware.
    """
    params = BootParams(kernel.params.hardware, kernel.machine, kernel.config, root)
    return Kernel(params, HardwareLink(params.hardware), power=kernel._power)


def test_state_round_trips_through_kexec(journal: list[str]) -> None:
    _, new, pack = updated(journal)
    assert new.state is State.UPDATED
    assert new.liveupdate_number == 1
    assert pack.live["alpha"].booted == b"alpha-state"
    assert pack.live["beta"].booted == b"beta-state"
    nic = new.devices[NIC]
    assert (nic.preserved, nic.reclaimed) == (True, True)
    assert nic.driver_data == {"counter": 41, "paused": False}


def test_no_python_object_survives(journal: list[str]) -> None:
    pack = JournalPack(journal)
    old = Kernel.boot(default_host(), plugins=[pack], discover=False)
    old.devices.request(NIC)
    old.devices[NIC].driver_data["counter"] = 41
    old_nic, old_registry = old.devices[NIC], old.registry
    old_plugins = [p for p in old_registry.pm.get_plugins() if not isinstance(p, types.ModuleType)]
    old_ops = {name: sub.ops for name, sub in old.subsystems.items()}
    assert old_nic.driver is not None
    old_driver_ops = old_nic.driver.ops
    old.prepare()
    new = old.kexec()

    # The old kernel is gone: its fields and its methods say so.
    for field in GONE_FIELDS:
        with pytest.raises(KernelGoneError):
            getattr(old, field)
    with pytest.raises(KernelGoneError):
        old.prepare()
    with pytest.raises(KernelGoneError):
        old.finish()
    # Its devices are fenced: no register access reaches the hardware any more.
    with pytest.raises(KernelGoneError):
        old_nic.regs["ctrl"]
    with pytest.raises(KernelGoneError):
        old_nic.regs["ctrl"] = 0
    with pytest.raises(KernelGoneError):
        old_nic.config["command"]
    with pytest.raises(KernelGoneError):
        old_nic.set_bus_master(False)

    # Everything the new kernel runs was built afresh.
    new_nic = new.devices[NIC]
    assert new_nic is not old_nic
    assert new_nic.regs["ctrl"] & 1  # the fenced writes above never reached the NIC
    assert new.registry is not old_registry
    new_plugins = new.registry.pm.get_plugins()
    assert old_plugins and not any(p is q for p in old_plugins for q in new_plugins)
    assert set(new.subsystems) == set(old_ops)
    for name, sub in new.subsystems.items():
        assert sub.ops is not old_ops[name]
        assert pack.live[name] is sub.ops
    assert new_nic.driver is not None and new_nic.driver.ops is not old_driver_ops

    # Only the root's physical address is passed on; booting from it alone
    # (over the same hardware) gives the same result.
    assert isinstance(new.kho_root, int)
    again = boot_again(new, new.kho_root)
    assert again.devices[NIC].driver_data == {"counter": 41, "paused": False}
    with pytest.raises(KernelGoneError):  # the kernel that booted first is fenced now
        new_nic.regs["ctrl"]


def test_a_factory_that_returns_one_plugin_for_every_boot_leaks_it(journal: list[str]) -> None:
    shared = JournalPack(journal)()
    old = Kernel.boot(default_host(), plugins=[lambda: shared], discover=False)
    old.prepare()
    with pytest.raises(KernelLeakError) as caught:
        old.kexec()
    message = str(caught.value)
    assert "plugin JournalPlugin of the old kernel is still reachable from the new one" in message
    assert "only the handoff may cross a kexec" in message


def test_a_device_kept_in_a_class_attribute_of_a_pack_is_a_leak() -> None:
    class HoardingNic(DeviceDriverOps):
        def probe(self, dev: Device) -> None:
            HoardingPack.seen.append(dev)

        def prepare(self, dev: Device) -> CounterRecord:
            return CounterRecord(0)

    class HoardingPack:
        seen: ClassVar[list[Device]] = []

        @hookimpl
        def luo_device_drivers(self) -> Iterator[DeviceDriver]:
            yield DeviceDriver(
                name="hoarding-nic",
                compatible=[EXAMPLE_NIC],
                ops=HoardingNic(),
                schema=CounterRecord,
            )

    old = Kernel.boot(default_host(), plugins=[HoardingPack], discover=False)
    assert [d.name for d in HoardingPack.seen] == ["0000:01:00.0", "0000:01:00.1", "0000:02:00.0"]
    old.prepare()
    with pytest.raises(KernelLeakError) as caught:
        old.kexec()
    old_nics = "|".join(re.escape(d.name) for d in HoardingPack.seen[:3])
    assert re.fullmatch(
        rf"device ({old_nics}) of the old kernel is still reachable from the new one "
        r"\(Kernel -> .* -> list -> Device\): only the handoff may cross a kexec",
        str(caught.value),
    )


def test_handoff_holds_one_node_per_participant(journal: list[str]) -> None:
    _, new, _ = updated(journal)
    assert new.kho_root is not None
    handed = read_root(new.memory, new.kho_root)
    assert set(handed.nodes) == {
        "device:pci0000:00",
        "device:0000:00:01.0",
        f"device:{NIC}",
        "subsystem:alpha",
        "subsystem:beta",
        "luo:meta",
        "LUO",  # the sessions' entry, present even with no session (luo_fdt_setup)
    }
    counter = schema_of(CounterRecord).compatible
    assert handed.nodes[f"device:{NIC}"].compatible == counter
    blob = handed.read(new.memory, f"device:{NIC}")
    assert decode_record(blob, {counter: CounterRecord}) == CounterRecord(41)
    assert handed.liveupdate_number == new.liveupdate_number == 1
    for node in handed.nodes.values():  # every blob lies in memory the new kernel reserved
        assert not new.mm.is_free(node.phys, max(node.length, 1))


def test_stats_cover_every_phase_across_both_kernels(journal: list[str]) -> None:
    _, new, _ = updated(journal)
    new.finish()
    stats = new.stats
    assert stats is not None
    assert list(stats.phases) == ["prepare", "freeze", "kexec", "restore", "finish"]
    for phase in stats.phases.values():
        assert phase.ok and phase.duration_us >= phase.callbacks_us >= 0
    assert set(stats.phases["prepare"].participants_us) == {
        "device:pci0000:00",
        "device:0000:00:01.0",
        f"device:{NIC}",
        "subsystem:alpha",
        "subsystem:beta",
    }
    assert stats.blackout_us is not None
    freeze, restore = stats.phases["freeze"], stats.phases["restore"]
    assert stats.blackout_us * 1000 == pytest.approx(restore.end_ns - freeze.start_ns, abs=1e6)
    summary = stats.summary()
    assert json.loads(json.dumps(summary)) == summary


def test_chrome_trace_has_phases_callbacks_and_blackout(journal: list[str]) -> None:
    _, new, _ = updated(journal)
    assert new.stats is not None
    trace = new.stats.chrome_trace()
    events = json.loads(json.dumps(trace))["traceEvents"]
    names = {e["name"] for e in events}
    assert {"prepare", "freeze", "kexec", "restore", "blackout"} <= names
    assert f"restore device:{NIC}" in names
    assert all(e["ph"] == "X" and e["dur"] >= 0 and e["ts"] >= 0 for e in events)


def corrupt(memory: PhysicalMemory, phys: int, offset: int) -> None:
    byte = memory.read(phys + offset, 1)[0]
    memory.write(phys + offset, bytes([byte ^ 0x40]))


@pytest.mark.parametrize(
    ("offset", "message"), [(0, "magic"), (4, "format"), (8, "exceeds|checksum"), (20, "checksum")]
)
def test_corrupted_root_is_refused_with_a_typed_error(
    journal: list[str], offset: int, message: str
) -> None:
    _, new, _ = updated(journal)
    assert new.kho_root is not None
    corrupt(new.memory, new.kho_root, offset)
    with pytest.raises(HandoffError, match=message):
        boot_again(new, new.kho_root)


@pytest.mark.parametrize("root", [4096 * 5000, 1 << 40, -4096])
def test_a_root_address_pointing_anywhere_else_is_refused(journal: list[str], root: int) -> None:
    _, new, _ = updated(journal)
    with pytest.raises(HandoffError):
        boot_again(new, root)


def test_a_corrupted_node_fails_only_its_participant(journal: list[str]) -> None:
    _, new, _ = updated(journal)
    assert new.kho_root is not None
    node = read_root(new.memory, new.kho_root).nodes[f"device:{NIC}"]
    corrupt(new.memory, node.phys, 0)
    with capture_logs() as logs:
        again = boot_again(new, new.kho_root)
    nic = again.devices[NIC]
    assert (nic.preserved, nic.reclaimed, nic.driver) == (True, False, None)
    assert again.devices["0000:00:01.0"].reclaimed
    assert any(e["event"] == "handoff_node_corrupted" for e in logs)


def test_next_kernel_may_load_other_packs(journal: list[str]) -> None:
    pack = JournalPack(journal)
    old = Kernel.boot(default_host(), plugins=[pack], discover=False)
    old.prepare()
    other = JournalPack(journal, subsystems=("beta", "gamma"))
    new = old.kexec(KernelConfig(plugins=[other], discover=False))
    unclaimed = new.handed_over("subsystem", "alpha")  # nobody claims it: its raw payload
    assert isinstance(unclaimed, bytes)
    assert decode_state(JournalRecord, unclaimed, 1) == JournalRecord(b"alpha-state")
    assert other.live["beta"].booted == b"beta-state"
    assert other.live["gamma"].booted is None
    assert "alpha" not in other.live


def test_a_device_that_fails_restore_is_left_unbound(journal: list[str]) -> None:
    pack = JournalPack(journal)
    old = Kernel.boot(default_host(), plugins=[pack], discover=False)
    old.devices.request(NIC)
    old.prepare()
    pack.fail.add(f"restore:{NIC}")
    new = old.kexec()
    nic = new.devices[NIC]
    assert (nic.preserved, nic.reclaimed, nic.driver, nic.driver_data) == (True, False, None, None)


def test_a_damaged_meta_node_costs_the_statistics_not_the_devices(journal: list[str]) -> None:
    _, new, _ = updated(journal)
    assert new.kho_root is not None
    node = read_root(new.memory, new.kho_root).nodes["luo:meta"]
    corrupt(new.memory, node.phys, 3)
    with capture_logs() as logs:
        again = boot_again(new, new.kho_root)
    assert again.devices[NIC].reclaimed
    assert again.devices[NIC].driver_data == {"counter": 41, "paused": False}
    assert any(e["event"] == "handoff_meta_malformed" for e in logs)
    assert again.stats is not None and again.stats.blackout_us is None
    assert list(again.stats.phases) == ["restore"]


def test_a_thread_left_behind_is_reported_and_fenced_from_registers_and_memory(
    journal: list[str],
) -> None:
    """What a timed-out callback's thread finds when it wakes after kexec: nothing it may touch."""
    kernel = Kernel.boot(default_host(), plugins=[JournalPack(journal)], discover=False)
    kernel.devices.request(NIC)
    nic, memory = kernel.devices[NIC], kernel.memory
    wake, done = threading.Event(), threading.Event()
    outcome: list[str] = []

    def late_write() -> None:
        wake.wait(30)
        for attempt in (lambda: nic.regs.__setitem__("ctrl", 0), lambda: memory.read(0, 8)):
            try:
                attempt()
            except LiveUpdateError as exc:
                outcome.append(type(exc).__name__)
        done.set()

    kernel.prepare()
    straggler = threading.Thread(target=late_write, name="left behind", daemon=True)
    straggler.start()  # as a callback that returned early would, before kexec
    new = kernel.kexec()
    assert new.stats is not None and new.stats.threads_left == ["left behind"]
    wake.set()
    assert done.wait(30)
    assert outcome == ["KernelGoneError", "PhysicalMemoryError"]
    assert new.devices[NIC].regs["ctrl"] & 1  # the NIC was never touched
