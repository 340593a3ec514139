"""Host files as a person writes them: the built-in host, VMs, and one line for each mistake."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from luo_core.cli import main
from luo_core.errors import HostConfigError, MachineError
from luo_core.platform import (
    DEFAULT_HOST_TOML,
    MAX_HOST_BYTES,
    HostConfig,
    VmSpec,
    default_host,
    load_host,
)
from tests.journal import one_error

DOCS = Path(__file__).resolve().parent.parent / "docs" / "hosts.rst"

BASE = """\
[[device]]
name = "pci0000:00"
compatible = "pci-host-bridge"

[[device]]
name = "0000:00:01.0"
bus = "pci"
compatible = "pci-bridge"
parent = "pci0000:00"

[[device]]
name = "0000:01:00.0"
bus = "pci"
compatible = "luo,example-nic"
parent = "0000:00:01.0"

[[device]]
name = "0000:02:00.0"
bus = "pci"
compatible = "luo,example-nic"
parent = "0000:00:01.0"
iommu_group = 40

[[device]]
name = "0000:02:00.1"
bus = "pci"
compatible = "luo,example-nic"
parent = "0000:00:01.0"
iommu_group = 40
"""
"""Five devices (so the next one described is ``device[5]``); the last two share a group."""


def documented_example() -> str:
    """The complete host file of the documentation page (its first ``toml`` block)."""
    text = DOCS.read_text(encoding="utf-8")
    block = text.split(".. code-block:: toml\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("   "):
            break
        lines.append(line[3:])
    return "\n".join(lines).strip() + "\n"


# -- what loads ------------------------------------------------------------------


def test_the_built_in_host_file_describes_the_demo_host() -> None:
    """The live platform: the remapping units and /dev/kvm, the host's NICs as
    ``default_host`` has them, and two VMs each given a NIC alone in its IOMMU group."""
    host = load_host(DEFAULT_HOST_TOML)
    devices = host.machine.devices
    assert {devices[n].compatible for n in ("dmar0", "ir0", "kvm")} == {
        "intel,vtd",
        "intel,vtd-ir",
        "luo,kvm",
    }
    host_nics = default_host(rx_pps=100_000).devices
    assert all(
        (devices[n].compatible, devices[n].parent, devices[n].params)
        == (spec.compatible, spec.parent, spec.params)
        for n, spec in host_nics.items()
    )
    assert host.updates == 3 and len(host.vms) == 2
    groups = [d.iommu_group for d in devices.values()]
    for vm in host.vms:
        nic, nvme = vm.devices  # a virtio-net NIC and an NVMe controller, each alone in its group
        assert devices[nic].compatible == "pci1af4,1041" and nic not in host_nics
        assert devices[nvme].compatible == "pci1b36,0010"
        assert (
            groups.count(devices[nic].iommu_group) == groups.count(devices[nvme].iommu_group) == 1
        )
    # The host keeps an NVMe controller of its own, restored after the IOMMU it DMAs through.
    assert devices["0000:05:00.0"].compatible == "pci1b36,0010"
    assert ("dmar0", "0000:05:00.0") in host.machine.links


def test_the_documented_host_with_vms_loads_as_the_page_says() -> None:
    host = load_host(documented_example(), "host.toml")
    machine = host.machine
    assert (machine.memory_size, machine.scratch_size) == (8 << 30, 64 << 20)
    assert host.updates == 3
    assert host.vms == (
        VmSpec("web", 64 << 20, 4, ("0000:01:00.0",)),
        VmSpec("db", 32 << 20, 2, ("0000:02:00.0",)),
        VmSpec("batch", 16 << 20, 1, ()),
    )
    nic = machine.devices["0000:01:00.0"]
    assert (nic.bus, nic.parent, dict(nic.params)) == ("pci", "0000:00:01.0", {"rx_pps": 2_000})
    # Functions behind a bridge without ACS, put in one group by hand: never passed through.
    assert (
        machine.devices["0000:03:00.0"].iommu_group == machine.devices["0000:03:00.1"].iommu_group
    )
    assert machine.devices["rtc0"].bus == "platform"
    assert machine.links == [("0000:02:00.0", "0000:01:00.0")]


SIZES = [("4096", 4096), ('"4096"', 4096), ('"64K"', 64 << 10), ('"512M"', 512 << 20)]
SIZES += [('"512MiB"', 512 << 20), ('"2 G"', 2 << 30), ('"512 GiB"', 512 << 30)]


@pytest.mark.parametrize(("written", "size"), SIZES)
def test_sizes_are_bytes_or_a_number_with_a_binary_unit(written: str, size: int) -> None:
    kvm = '[[device]]\nname = "kvm"\ncompatible = "luo,kvm"\n'
    host = load_host(f'memory = "1T"\n{kvm}[[vm]]\nname = "a"\nmemory = {written}\n')
    assert host.machine.memory_size == 1 << 40
    assert host.vms[0].memory_size == size


def test_a_host_file_may_be_bytes_and_needs_nothing_but_devices() -> None:
    host = load_host(BASE.encode())
    assert (host.machine.memory_size, host.machine.scratch_size) == (1 << 30, 16 << 20)
    assert list(host.machine.devices)[-1] == "0000:02:00.1"
    assert (
        host.machine.devices["0000:01:00.0"].iommu_group == 2
    )  # one of its own, as add_pci gives
    assert isinstance(load_host(""), HostConfig)


# -- one line for each mistake ---------------------------------------------------

KNOWN = "known: memory, scratch, updates, device, link, vm"
NIC = '[[device]]\nname = "{name}"\nbus = "pci"\ncompatible = "luo,example-nic"\n'
VM = '[[vm]]\nname = "{name}"\nmemory = "{memory}"\ndevices = [{devices}]\n'


def vm(name: str = "a", memory: str = "64M", devices: str = "") -> str:
    return VM.format(name=name, memory=memory, devices=devices)


MISTAKES = [
    # (top-level lines, tables after BASE, the line)
    ('memroy = "1G"\n', "", "memroy: unknown key (did you mean 'memory'?)"),
    ("colour = 1\n", "", f"colour: unknown key ({KNOWN})"),
    ('"a\\nb" = 1\n', "", f'"a\\nb": unknown key ({KNOWN})'),
    ("vm = 5\n", "", "vm: expected an array, not an integer"),
    (
        'memory = "1.5G"\n',
        "",
        "memory: '1.5G' is not a size: a whole number of bytes, or one "
        'with K, M, G or T (powers of 1024), as in "512M"',
    ),
    ("memory = 4097\n", "", "memory: 4097 bytes is not a multiple of the 4096-byte page"),
    ('memory = "2T"\n', "", "memory: 2199023255552 is out of range (1 to 1099511627776)"),
    ("memory = 1.5e9\n", "", "memory: expected an integer, not a float"),
    (
        'memory = "1G"\nscratch = "1G"\n',
        "",
        "scratch: 1073741824 bytes do not fit in the 1073741824 bytes of memory",
    ),
    ("updates = 0\n", "", "updates: 0 is out of range (1 to 1000)"),
    ("updates = true\n", "", "updates: expected an integer, not a boolean"),
    ("updates = 2024-01-01\n", "", "updates: expected an integer, not a date or time"),
    (
        "",
        '[[device]]\nname = "x"\ncompatable = "a"\n',
        "device[5].compatable: unknown key (did you mean 'compatible'?)",
    ),
    ("", '[[device]]\nname = "x"\n', "device[5]: missing key 'compatible'"),
    (
        "",
        '[[device]]\nname = 5\ncompatible = "a"\n',
        "device[5].name: expected a string, not an integer",
    ),
    (
        "",
        NIC.format(name="0000:1:0.0") + 'parent = "pci0000:00"\n',
        "device[5]: '0000:1:0.0' is not a PCI address (dddd:bb:dd.f, lowercase hex)",
    ),
    (
        "",
        NIC.format(name="0000:09:00.0"),
        "device[5]: missing key 'parent' (a PCI function has one)",
    ),
    (
        "",
        NIC.format(name="0000:09:00.0") + 'parent = "nope"\n',
        "device[5].parent: no device 'nope' (a parent is listed before its children)",
    ),
    (
        "",
        NIC.format(name="0000:01:00.0") + 'parent = "pci0000:00"\n',
        "device[5]: device '0000:01:00.0' is already on this machine",
    ),
    (
        "",
        '[[device]]\nname = "x"\ncompatible = "A B"\n',
        "device[5]: device x: compatible 'A B' is not 1-63 chars of [a-z0-9,._+-]",
    ),
    (
        "",
        '[[device]]\nname = "x"\ncompatible = "a"\niommu_group = -1\n',
        "device[5].iommu_group: -1 is out of range (0 to 2147483647)",
    ),
    (
        "",
        '[[device]]\nname = "x"\ncompatible = "a"\nparams = { rx_pps = "fast" }\n',
        "device[5].params.rx_pps: expected an integer, not a string",
    ),
    (
        "",
        '[[device]]\nname = "x"\ncompatible = "a"\nparams = { rx_pps = -1 }\n',
        "device[5].params.rx_pps: -1 is out of range (0 to 18446744073709551615)",
    ),
    (
        "",
        '[[device]]\nname = "x"\ncompatible = "a"\nparams = { RX = 1 }\n',
        "device[5]: parameter name 'RX' must be 1-32 chars of [a-z0-9_]",
    ),
    (
        "",
        '[[device]]\nname = "x"\ncompatible = "a"\nparams = 3\n',
        "device[5].params: expected a table, not an integer",
    ),
    (
        "",
        '[[link]]\nsupplier = "0000:01:00.0"\nconsumer = "nope"\n',
        "link[0]: link 0000:01:00.0 -> nope: unknown device 'nope'",
    ),
    ("", vm() + vm("b", devices='"0000:09:00.0"'), "vm[1].devices[0]: no device '0000:09:00.0'"),
    (
        "",
        vm(devices='"pci0000:00"'),
        "vm[0].devices[0]: device 'pci0000:00' is behind no IOMMU: it cannot do DMA",
    ),
    (
        "",
        vm(devices='"0000:02:00.1"'),
        "vm[0].devices[0]: device '0000:02:00.1' shares IOMMU group 40 with '0000:02:00.0': "
        "only a device alone in its group is passed through",
    ),
    (
        "",
        vm(devices='"0000:01:00.0"') + vm("b", devices='"0000:01:00.0"'),
        "vm[1].devices[0]: device '0000:01:00.0' is already passed to VM 'a'",
    ),
    ("", vm(devices="5"), "vm[0].devices[0]: expected a device name, not an integer"),
    ("", vm() + vm(), "vm[1].name: a VM named 'a' is already described"),
    ("", vm(name="no space"), "vm[0].name: 'no space' is not 1-64 chars of [A-Za-z0-9._-]"),
    ("", '[[vm]]\nname = "a"\n', "vm[0]: missing key 'memory'"),
    (
        "",
        vm(memory="600M") + vm("b", memory="600M"),
        "vm[1].memory: the VMs need 1258291200 bytes, more than the host's 1056964608 outside "
        "the scratch area",
    ),
    ("", vm() + "vcpus = 0\n", "vm[0].vcpus: 0 is out of range (1 to 1024)"),
    ("", vm() + "vcpu = 2\n", "vm[0].vcpu: unknown key (did you mean 'vcpus'?)"),
]


@pytest.mark.parametrize(("top", "more", "line"), MISTAKES, ids=[m[2][:40] for m in MISTAKES])
def test_each_mistake_is_one_line_naming_file_path_and_cause(
    top: str, more: str, line: str
) -> None:
    with pytest.raises(HostConfigError) as caught:
        load_host(top + BASE + more, "host.toml")
    assert str(caught.value) == f"host.toml: {line}"
    assert isinstance(caught.value, MachineError) and caught.value.errno_name == "EINVAL"


@pytest.mark.parametrize(
    ("source", "line"),
    [
        ("memory = \n", "not TOML: Invalid value (at line 1, column 10)"),
        (b"memory = \xff\n", "not UTF-8 text (byte 9)"),
        ("a = " + "1" * 5000, "not TOML: a number too long to read"),
        ("a = " + "[" * 5000, "not TOML: arrays or tables nested too deeply"),
        (
            "#" * (MAX_HOST_BYTES + 1),
            f"{MAX_HOST_BYTES + 1} bytes, larger than a host file can be",
        ),
        ("[[vm]]\n" * 257, "vm: 257 items, more than the 256 allowed"),
    ],
    ids=["toml", "utf-8", "long-number", "deep", "large", "many-vms"],
)
def test_text_that_is_no_host_file_is_one_line(source: str | bytes, line: str) -> None:
    with pytest.raises(HostConfigError) as caught:
        load_host(source, "host.toml")
    assert str(caught.value) == f"host.toml: {line}"


# -- anything at all: the typed error or a host ----------------------------------

KEYS = ["memory", "scratch", "updates", "device", "link", "vm", "name", "compatible", "bus"]
KEYS += ["parent", "iommu_group", "params", "rx_pps", "supplier", "consumer", "vcpus", "devices"]
NAMES = ["pci0000:00", "0000:00:01.0", "0000:01:00.0", "pci", "512M", "1G", "4096", "x"]


def _toml(value: Any) -> str:
    """``value`` as a TOML value (JSON's string escapes are TOML's too)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


_KEY = st.sampled_from(KEYS) | st.text(max_size=8)
_SCALAR = (
    st.integers(-(1 << 70), 1 << 70)
    | st.sampled_from(NAMES)
    | st.text(max_size=12)
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
)
_VALUE = st.recursive(
    _SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEY, inner, max_size=5),
    max_leaves=20,
)
_DOCUMENT = st.dictionaries(_KEY, _VALUE, max_size=6).map(
    lambda top: "".join(f"{json.dumps(k)} = {_toml(v)}\n" for k, v in top.items())
)
_LINES = st.lists(
    st.sampled_from(["[[device]]", "[[vm]]", "[[link]]", "[device.params]", "params = {"])
    | st.sampled_from([f"{k} = " for k in KEYS]).flatmap(
        lambda key: _VALUE.map(lambda v: key + _toml(v))
    )
    | st.text(alphabet="[]{}=\"'.,#\n \\0123456789abcdeGMKT_-:x", max_size=30),
    max_size=20,
).map("\n".join)


def _loads_or_one_line(source: str | bytes) -> None:
    try:
        load_host(source, "host.toml")
    except HostConfigError as exc:
        message = str(exc)
        assert message.startswith("host.toml: ") and message.isprintable(), message


@settings(max_examples=300, deadline=None)
@given(_DOCUMENT | _LINES | st.text(max_size=200))
def test_any_text_loads_or_is_one_typed_line(source: str) -> None:
    _loads_or_one_line(source)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_load_or_are_one_typed_line(source: bytes) -> None:
    _loads_or_one_line(source)


# -- luo demo --config -----------------------------------------------------------


def test_demo_runs_the_host_a_file_describes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "host.toml"
    path.write_text(documented_example())
    assert main(["demo", "--inproc", "--json", "--config", str(path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in summary["devices"]] == list(
        load_host(path.read_text()).machine.devices
    )
    # The NICs passed to the VMs are counted by their guests, the others by their counters.
    assert set(summary["nics"]) == {"0000:03:00.0", "0000:03:00.1"}
    assert {vm["name"] for vm in summary["vms"]} == {"web", "db", "batch"}
    assert summary["packets"]["lost"] == summary["packets"]["duplicated"] == 0
    assert summary["liveupdate_number"] == summary["updates"] == 3  # the file's updates run


def test_demo_reads_a_host_file_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(BASE.encode()))
    monkeypatch.setattr("sys.stdin", stdin)
    assert main(["demo", "--inproc", "--config", "-"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("luo demo: live update #1 of the host in <stdin> (in this process)")
    assert re.search(r"0000:01:00\.0 .* preserved, reclaimed", out)
    # The kernel, too, preserves only a device alone in its IOMMU group.
    assert re.search(r"0000:02:00\.1 .* not preserved: it shares IOMMU group 40", out)


def test_demo_refuses_a_bad_host_file_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "host.toml"
    path.write_text(BASE + vm(devices='"0000:09:00.0"'))
    assert one_error(["demo", "--config", str(path)], capsys) == (
        f"luo demo: error: {path}: vm[0].devices[0]: no device '0000:09:00.0'"
    )


def test_demo_refuses_what_is_no_regular_file_or_too_large_before_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.toml"
    with big.open("wb") as f:
        f.truncate(MAX_HOST_BYTES + 1)  # sparse: costs no disk
    for name, cause in [
        ("/dev/zero", "a character device, not a regular file"),
        (str(fifo), "a named pipe, not a regular file"),
        (str(tmp_path), "a directory, not a regular file"),
        (str(big), f"{MAX_HOST_BYTES + 1} bytes, larger than a host file (at most 1 MiB)"),
        (str(tmp_path / "missing.toml"), "No such file or directory"),
    ]:
        assert one_error(["demo", "--config", name], capsys) == f"luo demo: error: {name}: {cause}"


def test_vms_need_kvm_and_devices_passed_through_need_the_remapping_units() -> None:
    kvm = '[[device]]\nname = "kvm"\ncompatible = "luo,kvm"\n'
    with pytest.raises(HostConfigError, match=r'vm: no device with compatible "luo,kvm"'):
        load_host(BASE + vm(), "host.toml")
    with pytest.raises(
        HostConfigError, match=r'no device with compatible "intel,vtd" \(the IOMMU'
    ):
        load_host(BASE + kvm + vm(devices='"0000:01:00.0"'), "host.toml")
    assert load_host(BASE + kvm + vm(), "host.toml").vms[0].name == "a"
