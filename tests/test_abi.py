"""Versions across kernels: migrations on update, rollback writers, pre-flight, manifests.

The running kernel loads the example pack (NicRecord v3, reads v1..v3, writes
v1 and v2 for older kernels); the "older" kernel loads a v1-only NIC driver
with the same compatible.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import luo_example_nic
import pytest
from luo_example_nic import SUBSYSTEM, FdbOps, FdbRecord, NicState, burned_in_mac, transmit
from luo_example_nic._model import CTRL_ENABLE
from structlog.testing import capture_logs

from luo_core import (
    Device,
    DeviceDriver,
    DeviceDriverOps,
    Kernel,
    KernelConfig,
    State,
    Subsystem,
    hookimpl,
)
from luo_core.abi import state, u16, u64
from luo_core.cli import main
from luo_core.errors import CallbackError, IncompatibleError, LiveUpdateError, ManifestError
from luo_core.kernel._preflight import compare_manifests, load_manifest
from luo_core.kexec import boot as cold_boot
from luo_core.platform import EXAMPLE_NIC, default_host

NIC = "0000:01:00.0"


@state(compatible="luo,example-nic-state", version=1)
class NicRecordV1:
    mac: u64
    tx_tail: u16
    tx_packets: u64


class OldNic(DeviceDriverOps):
    """The NIC driver as it was before ring_size existed (its ring always had 256 slots)."""

    def probe(self, dev: Device) -> None:
        dev.regs["ring_size"] = 256
        dev.regs["tx_tail"] = dev.regs["tx_head"]
        dev.regs["ctrl"] = CTRL_ENABLE
        dev.driver_data = {"mac": dev.regs["mac"], "tx_tail": dev.regs["tx_head"], "tx_packets": 0}

    def prepare(self, dev: Device) -> NicRecordV1:
        return NicRecordV1(**dev.driver_data)

    def restore(self, dev: Device, data: NicRecordV1) -> None:
        dev.driver_data = {"mac": data.mac, "tx_tail": data.tx_tail, "tx_packets": data.tx_packets}


class OldPack:
    @hookimpl
    def luo_subsystems(self) -> Iterator[Subsystem]:
        yield Subsystem(name=SUBSYSTEM, ops=FdbOps(), schema=FdbRecord)

    @hookimpl
    def luo_device_drivers(self) -> Iterator[DeviceDriver]:
        yield DeviceDriver(
            name="example-nic", compatible=[EXAMPLE_NIC], ops=OldNic(), schema=NicRecordV1
        )


NEW = KernelConfig(plugins=[luo_example_nic], discover=False)
OLD = KernelConfig(plugins=[OldPack], discover=False)


def boot(config: KernelConfig) -> Kernel:
    kernel = cold_boot(default_host(), config)
    kernel.devices.request(NIC)
    return kernel


def manifest_of(config: KernelConfig) -> dict[str, Any]:
    return cold_boot(default_host(), config).manifest()


def test_update_from_v1_migrates_to_the_current_version() -> None:
    old = boot(OLD)
    nic = old.devices[NIC]
    mac = nic.regs["mac"]
    assert mac == burned_in_mac(NIC)
    nic.regs["tx_tail"] = 3  # the old driver sends 3 frames
    nic.driver_data = {"mac": mac, "tx_tail": 3, "tx_packets": 3}
    old.prepare()
    new = old.kexec(NEW)
    assert new.devices[NIC].reclaimed
    assert new.devices[NIC].driver_data == NicState(
        mac=mac, tx_tail=3, tx_packets=3, ring_size=256
    )


def test_rollback_without_preflight_fails_only_that_device() -> None:
    kernel = boot(NEW)
    kernel.prepare()
    with capture_logs() as logs:
        old = kernel.kexec(OLD)
    assert old.state is State.UPDATED
    assert old.devices[NIC].preserved and not old.devices[NIC].reclaimed
    failure = next(e for e in logs if e["event"] == "restore_failed")
    assert "luo,example-nic-state v3 is newer than this reader" in failure["error"]
    assert "VersionTooNew" in failure["error"]
    assert old.devices["0000:00:01.0"].reclaimed


def test_preflight_writes_what_the_target_reads() -> None:
    kernel = boot(NEW)
    transmit(kernel.devices[NIC], 9)
    kernel.prepare(target=manifest_of(OLD))
    old = kernel.kexec(OLD)
    assert old.devices[NIC].reclaimed
    assert old.devices[NIC].driver_data["tx_packets"] == 9


def test_preflight_refuses_before_anything_changes() -> None:
    target = manifest_of(OLD)
    del target["schemas"]["luo,example-nic-state"]
    kernel = boot(NEW)
    before = kernel.devices[NIC].driver_data
    with pytest.raises(IncompatibleError, match="cannot read luo,example-nic-state") as info:
        kernel.prepare(target=target)
    assert info.value.errno == errno.EPROTONOSUPPORT
    assert kernel.state is State.NORMAL
    assert kernel.kho.nodes == {} and kernel.stats is None
    assert kernel.devices[NIC].driver_data is before and not before.paused


def test_preflight_refuses_a_version_without_a_writer() -> None:
    target = manifest_of(NEW)
    target["schemas"]["luo,example-nic-state"].update(version=4, min_version=4, migrations=[])
    kernel = boot(NEW)
    with pytest.raises(IncompatibleError, match=r"reads v4\.\.v4 and there is no rollback writer"):
        kernel.prepare(target=target)


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ({}, 'target is not a luo ABI manifest (an object with "format": 1)'),
        ({"format": 1}, 'target: missing key "luo-core"'),
        ("x", 'target is not a luo ABI manifest (an object with "format": 1)'),
        ([], 'target is not a luo ABI manifest (an object with "format": 1)'),
        (
            {"format": 1, "luo-core": "0", "packs": {}, "participants": {}, "schemas": {"a": {}}},
            'target: schemas.a: missing key "compatible"',
        ),
    ],
)
def test_prepare_refuses_a_target_that_is_not_a_manifest(target: Any, problem: str) -> None:
    kernel = boot(NEW)
    with pytest.raises(LiveUpdateError) as info:
        kernel.prepare(target=target)
    assert type(info.value) is ManifestError
    assert str(info.value) == problem
    assert kernel.state is State.NORMAL
    assert kernel.kho.nodes == {} and kernel.stats is None


def test_prepare_checks_its_target_as_a_file_would_be() -> None:
    target = manifest_of(OLD)
    target["schemas"]["luo,example-nic-state"]["version"] = 10**30
    kernel = boot(NEW)
    with pytest.raises(
        ManifestError, match=r'^target: schemas\."luo,example-nic-state"\.version: '
    ):
        kernel.prepare(target=target)
    assert kernel.state is State.NORMAL
    fresh = boot(NEW)
    fresh.prepare(target=None)  # None is no target: the default
    assert fresh.state is State.PREPARED


def test_a_rollback_writer_may_refuse_state_it_cannot_express() -> None:
    kernel = boot(NEW)
    kernel.devices[NIC].driver_data.ring_size = 512
    with pytest.raises(CallbackError, match="cannot run a ring of 512"):
        kernel.prepare(target=manifest_of(OLD))
    assert kernel.state is State.NORMAL


def test_manifest_lists_packs_participants_and_schemas() -> None:
    manifest = manifest_of(NEW)
    assert manifest["packs"].keys() >= {"luo-core", "local:luo_example_nic"}
    assert manifest["participants"]["driver:example-nic"]["record"] == "luo,example-nic-state"
    entry = manifest["schemas"]["luo,example-nic-state"]
    assert (entry["version"], entry["min_version"], entry["writes"]) == (3, 1, [1, 2])
    assert json.dumps(manifest, sort_keys=True) == json.dumps(manifest_of(NEW), sort_keys=True)
    assert load_manifest(json.dumps(manifest)) == manifest


def test_compare_manifests_both_ways() -> None:
    new, old = manifest_of(NEW), manifest_of(OLD)
    update = [f for f in compare_manifests(old, new) if f[2] == "luo,example-nic-state"]
    assert ("info", "update", "luo,example-nic-state") in {f[:3] for f in update}
    assert not [f for f in update if f[0] == "error"]
    # v1-only as the *target* of an update is fine only through the rollback writer.
    back = compare_manifests(new, old)
    assert any(f[0] == "error" and f[1] == "update" for f in back)


def write(path: Path, manifest: dict[str, Any]) -> str:
    path.write_text(json.dumps(manifest))
    return str(path)


def test_luo_compat(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = write(tmp_path / "new.json", manifest_of(NEW))
    old = write(tmp_path / "old.json", manifest_of(OLD))
    assert main(["compat", old, new]) == 0
    assert "compatible: 0 error(s)" in capsys.readouterr().out
    assert main(["compat", new, old]) == 1
    out = capsys.readouterr().out
    assert "incompatible" in out and "luo,example-nic-state" in out
    (tmp_path / "bad.json").write_text("{]")
    assert main(["compat", str(tmp_path / "bad.json"), new]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.json is not JSON" in err[0]


def test_luo_manifest_round_trips_through_compat(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.json"
    assert main(["manifest", "-o", str(path)]) == 0
    manifest = load_manifest(path.read_text())
    assert "luo,example-nic-state" in manifest["schemas"]
    assert main(["compat", str(path), str(path)]) == 0


def test_save_and_inspect_a_handoff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = tmp_path / "handoff.luo"
    assert main(["demo", "--save-handoff", str(saved)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(saved), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    nodes = {n["name"]: n for n in report["nodes"]}
    assert nodes[f"device:{NIC}"]["version"] == 3
    assert nodes[f"device:{NIC}"]["fields"]["ring_size"] == 256
    assert nodes["subsystem:example-nic-fdb"]["fields"] == {"entries": []}
    assert report["liveupdate_number"] == 3  # the last of the built-in host's updates
    assert main(["inspect", str(saved)]) == 0
    assert "valid luo handoff" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage"])
def test_a_damaged_handoff_file_is_one_line_and_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    saved = tmp_path / "handoff.luo"
    assert main(["demo", "--save-handoff", str(saved)]) == 0
    capsys.readouterr()
    blob = bytearray(saved.read_bytes())
    if damage == "flip":
        blob[len(blob) // 2] ^= 0x10
    elif damage == "truncate":
        del blob[len(blob) // 3 :]
    elif damage == "empty":
        blob.clear()
    else:
        blob[:] = b"not a handoff at all" * 10
    saved.write_bytes(bytes(blob))
    assert main(["inspect", str(saved)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("luo inspect: error:")


def test_luo_demo_save_handoff_checksums_every_node(tmp_path: Path) -> None:
    saved = tmp_path / "handoff.luo"
    assert main(["demo", "--save-handoff", str(saved)]) == 0
    from luo_core.abi import load_image, read_root

    memory, root = load_image(saved.read_bytes())
    handed = read_root(memory, root)
    node = handed.nodes[f"device:{NIC}"]
    memory.write(node.phys, b"\xff")
    with pytest.raises(Exception, match="checksum"):
        handed.read(memory, f"device:{NIC}")
