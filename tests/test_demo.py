"""``luo demo`` as a user runs it: updates in a row, migrations, totals, cold reboots,
the trace of the whole run and the sysfs view of each kernel."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from luo_core.abi._stats import MigrationStat, UpdateStats
from luo_core.cli import main
from luo_core.cli._demo_traffic import Counters, nic_traffic
from luo_core.errors import InvalidArgumentError, LiveUpdateError, NotFoundError
from luo_core.kernel._registry import core_origin
from luo_core.kexec import KernelProcess
from luo_core.platform import DEFAULT_HOST_TOML, Hardware, HardwareProcess, default_host
from luo_core.platform._hardware import Connection

NICS = {"0000:01:00.0", "0000:01:00.1", "0000:02:00.0"}
MAC = r"([0-9a-f]{2}:){5}[0-9a-f]{2}"
NIC_STATE = "luo,example-nic-state"
HOST_NVME = "0000:05:00.0"
PHASES = ["prepare", "freeze", "kexec", "restore", "finish"]


def host_file(folder: Path, updates: int) -> Path:
    path = folder / f"host-{updates}.toml"
    path.write_text(DEFAULT_HOST_TOML.replace("updates = 3", f"updates = {updates}"))
    return path


def run_json(argv: list[str]) -> dict[str, Any]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["demo", "--json", *argv]) == 0
    result: dict[str, Any] = json.loads(out.getvalue())
    return result


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two live updates across processes, with a trace and a run directory."""
    folder = tmp_path_factory.mktemp("live")
    argv = ["--config", str(host_file(folder, 2)), "--trace", str(folder / "trace.json")]
    summary = run_json([*argv, "--run-dir", str(folder / "run")])
    summary["_folder"] = folder
    return summary


@pytest.fixture(scope="module")
def cold(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two cold reboots of the same host, across processes."""
    folder = tmp_path_factory.mktemp("cold")
    return run_json(["--cold", "--config", str(host_file(folder, 2))])


# -- live updates in a row -----------------------------------------------------------


def test_the_host_files_updates_run_one_after_another(live: dict[str, Any]) -> None:
    assert (live["mode"], live["kexec"], live["updates"]) == ("live", "process", 2)
    assert live["liveupdate_number"] == 2
    kernels = live["pids"]["kernels"]
    assert len(set(kernels)) == 3 and live["pids"]["hardware"] not in kernels
    assert [t["update"] for t in live["timeline"]] == [1, 2]
    for entry, blackout in zip(live["timeline"], live["blackout_ms"], strict=True):
        assert list(entry["phases"]) == PHASES
        assert entry["blackout_ms"] == blackout > 0
        assert entry["pids"]["old"] != entry["pids"]["new"]
        assert "device:0000:01:00.0" in entry["phases"]["restore"]["participants_ms"]
        assert entry["threads_left"] == []
    assert [t["pids"]["new"] for t in live["timeline"]] == kernels[1:]
    # The VMs saw each update as a stall of their heartbeat: from their last heartbeat
    # before freeze to their first after the VMM resumed them, so at least that pause.
    for seen, entry in zip(live["vm_blackout_ms"], live["timeline"], strict=True):
        assert seen == entry["vm_blackout_ms"] >= max(entry["vm_pauses_ms"].values()) > 0
    devices = {d["name"]: d for d in live["devices"]}
    assert {n for n, d in devices.items() if d["reclaimed"]} >= NICS
    assert not devices["0000:00:1f.0"]["preserved"] and devices["0000:00:1f.0"]["refused"]
    core = {"name": "luo-core", "version": core_origin().version, "status": "loaded"}
    assert core in live["packs"]
    for nic in NICS:
        counters = live["nics"][nic]
        assert re.fullmatch(MAC, counters["mac"]) and counters["mac"].startswith("02:")
        # The workload ran at boot and again after each finish: the driver's ring survived.
        assert counters["tx_frames"] == 37 * 3
        assert counters["rx_dropped_during_kexec"] == [0, 0]


def test_the_first_update_is_migrated_by_the_next_kernel(live: dict[str, Any]) -> None:
    first, second = live["timeline"]
    assert first["written_for_previous_release"] == {NIC_STATE: 2}
    assert second["written_for_previous_release"] == {}
    expected = [
        {
            "update": 1,
            "participant": f"device:{nic}",
            "compatible": NIC_STATE,
            "from_version": 2,
            "to_version": 3,
        }
        for nic in sorted(NICS)
    ]
    assert first["migrations"] == expected and second["migrations"] == []
    assert live["migrations"] == expected
    # The state is right after the migration: each NIC's snapshot after restore is
    # the one before prepare, and the driver took the device back.
    # The host's NVMe too: the blocks it wrote read back the same after each update.
    kept = dict.fromkeys(sorted({*NICS, HOST_NVME}), True)
    assert first["state_kept"] == second["state_kept"] == kept


def test_a_live_run_loses_no_frame_and_says_what_it_did_not_measure(live: dict[str, Any]) -> None:
    packets = live["packets"]
    assert packets["sent"] == packets["received"] > 0
    assert (packets["lost"], packets["duplicated"]) == (0, 0)
    assert sum(t["packets"]["received"] for t in live["timeline"]) <= packets["received"]
    io = live["io"]  # the guests' NVMe commands, counted by sequence
    assert io["submitted"] > 0 and io["lost"] == 0
    assert io["submitted"] - 8 <= io["completed"] <= io["submitted"]  # at most 4 in flight each
    assert live["unmeasured"] == {}
    assert (live["dma_faults"], live["interrupt_faults"]) == (0, 0)
    assert set(live["posted_interrupts"]) == {"posted", "notified", "suppressed"}


def test_the_vms_guests_counted_every_frame_and_interrupt_through_the_updates(
    live: dict[str, Any],
) -> None:
    """The guests count by sequence number in their own memory, which every update kept:
    their NICs DMA-ed through the IOMMU and posted MSIs through the whole run."""
    vms = {vm["name"]: vm for vm in live["vms"]}
    assert set(vms) == {"vm0", "vm1"}
    for vm in vms.values():
        assert vm["packets"]["received"] > 0
        assert (vm["packets"]["lost"], vm["packets"]["duplicated"]) == (0, 0)
        assert vm["interrupts"]["delivered"] > 0
        assert vm["heartbeat"] > 0 and len(vm["stalls_ms"]) >= 2  # one per update at least
    irq = live["interrupts"]
    assert irq["lost"] == 0 and live["stranded_frames"] == {}
    # Posted interrupts coalesce: fewer deliveries than MSIs, never more.
    assert 0 < irq["delivered"] <= irq["raised"] + irq["spurious"]
    for entry in live["timeline"]:
        assert set(entry["vm_pauses_ms"]) == {"vm0", "vm1"}
        assert "device:dmar0" in entry["phases"]["restore"]["participants_ms"]


def test_the_trace_holds_the_whole_run_with_a_track_per_participant(
    live: dict[str, Any],
) -> None:
    events = json.loads((live["_folder"] / "trace.json").read_text())["traceEvents"]
    assert {e["ph"] for e in events} == {"M", "X"}
    tracks = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert len(tracks) == len(set(tracks.values()))
    names = set(tracks.values())
    assert {"updates", "phases", "blackout"} <= names
    assert {f"device:{nic}" for nic in NICS} | {"subsystem:example-nic-fdb"} <= names
    assert {"vm vm0", "vm vm1"} <= names  # a track per VM: its pause at each update
    spans = [e for e in events if e["ph"] == "X"]
    for e in spans:
        assert type(e["ts"]) in (int, float) and type(e["dur"]) in (int, float)
        assert e["ts"] >= 0 and e["dur"] >= 0 and e["tid"] in tracks
        assert isinstance(e["name"], str) and e["pid"] == 1
    by_track: dict[str, list[dict[str, Any]]] = {}
    for e in spans:
        by_track.setdefault(tracks[e["tid"]], []).append(e)
    assert [e["name"] for e in by_track["updates"]] == ["update 1", "update 2"]
    assert [e["name"] for e in by_track["blackout"]] == ["blackout 1", "blackout 2"]
    assert [e["name"] for e in by_track["vm vm0"]] == ["paused 1", "paused 2"]
    assert [e["name"] for e in by_track["phases"]] == [f"{p} {n}" for n in (1, 2) for p in PHASES]
    # One timeline, in real order: update 2 starts after update 1 ends.
    one, two = by_track["updates"]
    assert two["ts"] >= one["ts"] + one["dur"]
    for blackout, update in zip(by_track["blackout"], by_track["updates"], strict=True):
        assert update["ts"] <= blackout["ts"] <= update["ts"] + update["dur"]


def test_the_run_dir_holds_the_last_kernels_sysfs_view(live: dict[str, Any]) -> None:
    root = live["_folder"] / "run"
    assert (root / "sys/kernel/liveupdate/state").read_text() == "normal\n"
    nic = root / "sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0/liveupdate"
    # After the last finish the devices were requested again, for the next update.
    assert {f: (nic / f).read_text() for f in ("requested", "preserved", "reclaimed")} == {
        "requested": "1\n",
        "preserved": "0\n",
        "reclaimed": "0\n",
    }


def test_the_text_tells_each_update_and_the_totals(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--inproc"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("luo demo: live updates #1 to #3 of the built-in host (in this process)")
    lines = out.splitlines()
    start = lines.index("devices:") + 1
    drawn = [re.findall(r"^[│├└─ ]*\S+", line[2:])[0] for line in lines[start : start + 18]]
    assert drawn == [
        "dmar0",
        "ir0",
        "kvm",
        "pci0000:00",
        "├── 0000:00:01.0",
        "│   ├── 0000:01:00.0",
        "│   └── 0000:01:00.1",
        "├── 0000:00:02.0",
        "│   └── 0000:02:00.0",
        "├── 0000:00:03.0",
        "│   ├── 0000:03:00.0",
        "│   └── 0000:03:00.1",
        "├── 0000:00:04.0",
        "│   ├── 0000:04:00.0",
        "│   └── 0000:04:00.1",
        "├── 0000:00:05.0",
        "│   └── 0000:05:00.0",
        "└── 0000:00:1f.0",
    ]
    assert out.count("devices:") == 1  # the tree once
    for nic in NICS:
        line = next(line for line in lines if nic in line)
        assert re.search(rf"mac {MAC}; preserved, reclaimed; rx \+\d+, dropped 0 across", line)
    assert "(no live-update callbacks)" in out
    assert [line.split(" (")[0] for line in lines if line.startswith("update ")] == [
        "update 1/3",
        "update 2/3",
        "update 3/3",
    ]
    assert f"written for the previous release ({NIC_STATE} v2)" in out
    assert f"migrated device:0000:01:00.0: {NIC_STATE} v2 -> v3" in out
    assert re.search(r"^  restore +\d+\.\d\d ms   slowest: \S+ \d+\.\d\d ms", out, re.M)
    assert len(re.findall(r"^  blackout \d+\.\d\d ms .*frames lost 0 of \d+$", out, re.M)) == 3
    assert len(re.findall(r"^  VMs saw a pause of \d+\.\d\d ms", out, re.M)) == 3
    assert re.search(r"^  interrupts: raised \d+, delivered \d+ .*lost 0", out, re.M)
    assert re.search(r"^  packets: sent (\d+), received \1, lost 0, duplicated 0", out, re.M)
    assert "  DMA faults: 0; interrupt-remapping faults: 0" in lines
    assert f"  migrations: 3 records ({NIC_STATE} v2 -> v3)" in lines
    assert re.search(r"^live: .* 0 frames lost; a cold reboot \(luo demo --cold\)", out, re.M)


# -- cold reboots ----------------------------------------------------------------------


def test_cold_reboots_lose_frames_that_live_updates_keep(
    live: dict[str, Any], cold: dict[str, Any]
) -> None:
    assert (cold["mode"], cold["updates"], cold["liveupdate_number"]) == ("cold", 2, 2)
    assert cold["packets"]["lost"] > 0 and live["packets"]["lost"] == 0
    assert cold["packets"]["sent"] == cold["packets"]["received"] + cold["packets"]["lost"]
    assert len(cold["blackout_ms"]) == 2 and all(b > 0 for b in cold["blackout_ms"])
    assert cold["migrations"] == []
    for entry in cold["timeline"]:
        assert entry["mode"] == "cold" and list(entry["phases"]) == ["kexec"]
        assert 0 < entry["no_kernel_ms"] <= entry["blackout_ms"]
    # The VMs were restarted: the guests saw an outage at every reboot.
    assert len(cold["vm_blackout_ms"]) == 2 and all(v > 0 for v in cold["vm_blackout_ms"])
    # Every device was reset and probed afresh: none preserved, every NIC counted drops.
    assert not any(d["preserved"] for d in cold["devices"])
    assert all(cold["nics"][nic]["rx_dropped_during_kexec"][0] > 0 for nic in NICS)


def test_cold_text_says_what_the_outage_is(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--inproc", "--cold"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("luo demo: 3 cold reboots of the built-in host (in this process)")
    assert re.search(r"0000:01:00\.0 +example-nic +mac \S+; reset, probed afresh", out)
    reboots = re.findall(r"^reboot \d/3 .*: outage \d+\.\d\d ms from the kexec request", out, re.M)
    assert len(reboots) == 3
    assert re.search(
        r"^cold: every device was shut down and reset .* (\d+) frames were lost", out, re.M
    )


# -- bad input, before the run ----------------------------------------------------------


@pytest.mark.parametrize("option", ["--trace", "--run-dir"])
def test_an_unusable_output_is_one_line_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str
) -> None:
    target = tmp_path / "missing-dir" / "out"
    assert main(["demo", "--inproc", option, str(target)]) == 1
    err = capsys.readouterr().err
    assert err == f"luo demo: error: {target}: No such file or directory\n"
    assert not (tmp_path / "missing-dir").exists()


def test_a_run_dir_that_is_a_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(SystemExit) as info:
        main(["demo", "--run-dir", str(tmp_path / "f")])
    assert info.value.code == 2
    assert "exists and is not a directory" in capsys.readouterr().err


def test_next_python_is_refused_with_cold(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", "--cold", "--next-python", "python3"])
    assert info.value.code == 2
    assert "--next-python is for live updates: drop --cold" in capsys.readouterr().err


# -- the pieces: statistics, counters, the operator's ops --------------------------------


def test_migrations_cross_processes_in_the_statistics_and_hostile_ones_are_refused() -> None:
    stats = UpdateStats(freeze_start_ns=1, restore_end_ns=2)
    stats.migrations.append(MigrationStat("device:nic0", NIC_STATE, 2, 3))
    assert UpdateStats.from_wire(stats.to_wire()).migrations == stats.migrations
    assert "migrations" not in UpdateStats().to_wire()  # the meta record stays as it was
    for bad in (
        "nope",
        [["device:nic0", NIC_STATE, 3, 3]],  # a migration goes up
        [["device:nic0", NIC_STATE, True, 3]],
        [["device:nic0", NIC_STATE, 2]],
        [["device:nic0", 7, 2, 3]],
        [["device:nic0", NIC_STATE, -1, 3]],
        [["device:nic0", NIC_STATE, 2, 1 << 32]],
    ):
        wire = {**stats.to_wire(), "migrations": bad}
        with pytest.raises(ValueError, match="migration"):
            UpdateStats.from_wire(wire)


def test_nic_traffic_counts_from_zero_after_a_reset() -> None:
    before = {"a": {"rx_frames": 100, "rx_dropped": 5}, "b": {"rx_frames": 50, "rx_dropped": 0}}
    after = {"a": {"rx_frames": 130, "rx_dropped": 5}, "b": {"rx_frames": 7, "rx_dropped": 3}}
    kept = nic_traffic(before, after, frozenset())
    assert (kept.packets_sent, kept.packets_received, kept.packets_lost) == (40, 37, 3)
    both = nic_traffic(before, after, frozenset({"a", "b"}))
    assert (both.packets_sent, both.packets_received, both.packets_lost) == (145, 137, 8)
    total = Counters()
    total.add(kept)
    total.add(Counters(io_submitted=4, sources={"io"}))
    assert (total.packets_sent, total.io_submitted, total.sources) == (40, 4, {"packets", "io"})
    assert total.to_json()["packets"]["duplicated"] == 0


def test_the_hardware_reports_its_fault_counters_to_the_operator_only() -> None:
    with Hardware(default_host()) as hardware:
        with pytest.raises(LiveUpdateError):
            hardware.iommu.translate(0, 0x1000, write=False)  # no page table: a fault
        reply, _ = hardware.handle({"op": "stats"}, Connection("operator"))
        assert reply["stats"] == {
            "dma-faults": 1,
            "interrupt-faults": 0,
            "posted": 0,
            "notified": 0,
            "suppressed": 0,
        }
        reply, _ = hardware.handle({"op": "stats"}, Connection("kernel"))
        assert reply["error"]["errno"] == 1  # EPERM


@pytest.fixture(scope="module")
def kernel_process() -> Iterator[KernelProcess]:
    with HardwareProcess(default_host()) as hardware, KernelProcess.boot(hardware) as kernel:
        yield kernel


def test_a_kernel_process_writes_its_sysfs_view_where_asked(
    kernel_process: KernelProcess, tmp_path: Path
) -> None:
    kernel_process.write_sysfs(tmp_path)
    assert (tmp_path / "sys/kernel/liveupdate/state").read_text() == "normal\n"
    nic = tmp_path / "sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0/liveupdate"
    assert (nic / "requested").read_text() == "0\n"


def test_a_kernel_process_refuses_a_hostile_sysfs_path(
    kernel_process: KernelProcess, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("")
    cases: list[tuple[object, type[LiveUpdateError], str]] = [
        ("relative/dir", InvalidArgumentError, "is not an absolute path"),
        (str(tmp_path / "missing"), NotFoundError, "is not an existing directory"),
        (str(tmp_path / "file"), NotFoundError, "is not an existing directory"),
        ("/tmp\0/x", InvalidArgumentError, "must be text of 1 to 4096"),
        ("/" + "a" * 5000, InvalidArgumentError, "must be text of 1 to 4096"),
        (42, InvalidArgumentError, "must be text"),
        (None, InvalidArgumentError, "must be text"),
    ]
    for path, kind, message in cases:
        with pytest.raises(kind, match=re.escape(message)):
            kernel_process._call({"op": "sysfs", "path": path})
    assert os.listdir(tmp_path) == ["file"]
    assert kernel_process.state == "normal"  # it still answers
