"""In-process kexec: only the handoff bytes and the hardware cross; stats span both kernels."""

from __future__ import annotations

import json

import pytest
from structlog.testing import capture_logs

from luo_core import Kernel, KernelConfig, State
from luo_core.abi import read_root, unseal
from luo_core.errors import HandoffError
from luo_core.platform import PhysicalMemory, default_host
from tests.journal import JournalPack

NIC = "0000:01:00.0"


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
    old, new, _ = updated(journal)
    old_nic, new_nic = old.devices[NIC], new.devices[NIC]
    assert old_nic is not new_nic
    assert old_nic.driver_data is None and old_nic.driver is None
    assert new.registry is not old.registry
    # Only the root's physical address is passed on; booting from it alone
    # (over the same memory) gives the same result.
    assert isinstance(new.kho_root, int)
    again = Kernel(new.machine, KernelConfig(new.config.plugins, discover=False), new.kho_root)
    assert again.devices[NIC].driver_data == {"counter": 41, "paused": False}


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
    }
    assert handed.nodes[f"device:{NIC}"].compatible == "journal-nic"
    assert unseal(handed.read(new.memory, f"device:{NIC}")).payload == b"41"
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
        Kernel(new.machine, new.config, new.kho_root)


@pytest.mark.parametrize("root", [4096 * 5000, 1 << 40, -4096])
def test_a_root_address_pointing_anywhere_else_is_refused(journal: list[str], root: int) -> None:
    _, new, _ = updated(journal)
    with pytest.raises(HandoffError):
        Kernel(new.machine, new.config, root)


def test_a_corrupted_node_fails_only_its_participant(journal: list[str]) -> None:
    _, new, _ = updated(journal)
    assert new.kho_root is not None
    node = read_root(new.memory, new.kho_root).nodes[f"device:{NIC}"]
    corrupt(new.memory, node.phys, 0)
    with capture_logs() as logs:
        again = Kernel(new.machine, new.config, new.kho_root)
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
    assert new.handed_over("subsystem", "alpha") == b"alpha-state"  # nobody claims it
    assert other.live["beta"].booted == b"beta-state"
    assert other.live["gamma"].booted is None


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
        again = Kernel(new.machine, new.config, new.kho_root)
    assert again.devices[NIC].reclaimed
    assert again.devices[NIC].driver_data == {"counter": 41, "paused": False}
    assert any(e["event"] == "handoff_meta_malformed" for e in logs)
    assert again.stats is not None and again.stats.blackout_us is None
    assert list(again.stats.phases) == ["restore"]
