"""The hardware as its users rely on it: an operator that drives it, kernels that attach to it.

Registers hold fixed-width integers and a driver writes only its own; a
doorbell kicks the model; models keep running with no kernel, and one that
crashes takes only its own device down.  The protocol (in this process, and
over the hardware process's socket) answers ``version``, ``regions``,
``doorbells``, ``attach``, ``detach``, ``reset``, ``operator-reset``,
``control`` and ``sync`` as documented, refuses who may not ask, and
survives a peer that sends garbage.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import pytest
from structlog.testing import capture_logs

from luo_core import hookimpl
from luo_core.abi import _wire
from luo_core.abi._frame import HEADER
from luo_core.errors import (
    HardwareError,
    KernelGoneError,
    LiveUpdateError,
    PeerGoneError,
    RegisterError,
)
from luo_core.kernel._hwlink import Fence, HardwareLink
from luo_core.platform import (
    DeviceContext,
    DeviceModel,
    DeviceSpec,
    Hardware,
    HardwareProcess,
    Machine,
    PhysicalMemory,
    Register,
    RegisterMap,
    _hardware,
    default_host,
    discover_models,
)
from luo_core.platform._hardware import DOORBELLS_PER_MESSAGE, PROTOCOL_VERSION, mmio_base
from luo_core.platform._link import Channel, connect
from luo_core.platform._models import ENTRY_POINT_GROUP
from luo_core.platform._registers import BAR_OFFSET, BAR_SIZE, CONFIG_SIZE

ROOT = str(Path(__file__).resolve().parent.parent)
ENV = {**os.environ, "PYTHONPATH": ROOT}
"""The hardware process imports this module's models as ``tests.test_hardware:Models``."""
MODELS_REF = "tests.test_hardware:Models"
COUNTER = "luo,test-counter"
CRASHER = "luo,test-crasher"
BROKEN = "luo,test-broken"
READY = 0xA5
"""What a counter's ``status`` holds after every reset."""
WAIT = 10.0


class CounterModel(DeviceModel):
    """Counts doorbell kicks and ticks; answers a few controls."""

    compatible = (COUNTER,)
    registers = RegisterMap(
        [
            Register("ctrl", 0x00, 32),
            Register("bell", 0x04, 32, doorbell=True),
            Register("kicks", 0x08, 32, owner="device"),
            Register("status", 0x0C, 16, owner="device"),
            Register("flags", 0x0E, 8),
            Register("wide", 0x10, 64),
            Register("ticks", 0x18, 64, owner="device"),
        ]
    )

    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        self.resets = 0
        self.ticks = 0
        self.ticked = threading.Condition()

    def reset(self) -> None:
        self.resets += 1
        self.ctx.regs["status"] = READY

    def kick(self) -> None:
        self.ctx.regs["kicks"] = self.ctx.regs["kicks"] + 1

    def tick(self, now_ns: int) -> None:
        with self.ticked:
            self.ticks += 1
            self.ctx.regs["ticks"] = self.ticks
            self.ticked.notify_all()

    def control(self, op: str, args: Mapping[str, Any]) -> object:
        if op == "resets":
            return self.resets
        if op == "kicks":
            return self.ctx.regs["kicks"]
        if op == "echo":
            return dict(args)
        if op == "period-ms":
            ms = args.get("ms")
            self.period = None if ms is None else ms / 1000
            return None
        if op == "peek":
            return self.ctx.ram.read(args["at"], args["length"])
        if op == "poke":
            self.ctx.ram.write(args["at"], args["data"])
            return None
        if op == "raise":
            raise ValueError("the model tripped over its own feet")
        if op == "float":
            return 0.5
        if op == "object":
            return object()
        return super().control(op, args)


class CrashingModel(CounterModel):
    """Falls over at its first doorbell."""

    compatible = (CRASHER,)

    def kick(self) -> None:
        raise RuntimeError("the model fell over")


class BrokenModel(DeviceModel):
    """Cannot even be built."""

    compatible = (BROKEN,)
    registers = RegisterMap([Register("x", 0)])

    def __init__(self, ctx: DeviceContext) -> None:
        raise RuntimeError("no such chip")


class Models:
    @hookimpl
    def luo_device_models(self) -> Iterator[type[DeviceModel]]:
        yield CounterModel
        yield CrashingModel
        yield BrokenModel


def build(counters: int = 2, *, crashers: int = 0, broken: int = 0, bare: int = 1) -> Machine:
    """A small machine: a root, ``counters`` counting devices, and devices without a model."""
    machine = Machine(memory_size=1 << 24, scratch_size=1 << 20)
    machine.add("root", compatible="luo,test-root")
    for i in range(counters):
        machine.add(f"ctr{i}", compatible=COUNTER, parent="root")
    for i in range(crashers):
        machine.add(f"crash{i}", compatible=CRASHER, parent="root")
    for i in range(broken):
        machine.add(f"broken{i}", compatible=BROKEN, parent="root")
    for i in range(bare):
        machine.add(f"bare{i}", compatible="luo,test-bare", parent="root")
    return machine


@contextlib.contextmanager
def powered(machine: Machine) -> Iterator[Hardware]:
    hw = Hardware(machine, models=[Models()], discover=False)
    try:
        yield hw
    finally:
        hw.close()


@contextlib.contextmanager
def attached(address: str) -> Iterator[HardwareLink]:
    """A kernel's link to the hardware, attached."""
    link = HardwareLink(address)
    try:
        link.attach()
        yield link
    finally:
        link.close()


@pytest.fixture
def hw() -> Iterator[Hardware]:
    with powered(build()) as hardware:
        yield hardware


@pytest.fixture
def link(hw: Hardware) -> Iterator[HardwareLink]:
    with attached(hw.address) as kernel:
        yield kernel


def call_error(channel: Channel, request: dict[str, Any]) -> HardwareError:
    with pytest.raises(HardwareError) as caught:
        channel.call(request)
    assert "\n" not in str(caught.value)
    return caught.value


def attached_generation(hw: Hardware) -> int:
    """The generation of the kernel attached, as MMIO page 0 holds it (0: none)."""
    return int.from_bytes(hw.mmio.read(0, 8), "little")


def counter(hw: Hardware, device: str) -> CounterModel:
    model = hw.model(device)
    assert isinstance(model, CounterModel)
    return model


# -- registers ---------------------------------------------------------------------


BAD_VALUES = [
    ("ctrl", "1", "str '1'"),
    ("ctrl", 1.0, "float 1.0"),
    ("ctrl", True, "bool True"),
    ("ctrl", None, "NoneType None"),
    ("ctrl", b"\x01", "bytes b'\\x01'"),
    ("ctrl", -1, "-1 (out of range)"),
    ("ctrl", 1 << 32, "4294967296 (out of range)"),
    ("flags", 256, "256 (out of range)"),
    ("wide", 1 << 64, "18446744073709551616 (out of range)"),
]


@pytest.mark.parametrize(("name", "value", "shown"), BAD_VALUES)
@pytest.mark.parametrize("side", ["driver", "device"])
def test_a_register_takes_only_an_integer_of_its_width(
    hw: Hardware, link: HardwareLink, side: str, name: str, value: object, shown: str
) -> None:
    regs = link.registers(link.windows["ctr0"]) if side == "driver" else hw.registers("ctr0")
    regs[name] = 7
    with pytest.raises(RegisterError, match="takes an integer of") as caught:
        regs[name] = value  # type: ignore[assignment]
    assert f"register {name} " in str(caught.value)
    assert shown in str(caught.value)
    assert hw.registers("ctr0")[name] == 7  # nothing was written


@pytest.mark.parametrize(
    ("name", "top"), [("flags", 0xFF), ("ctrl", 0xFFFF_FFFF), ("wide", 2**64 - 1)]
)
def test_a_register_holds_every_value_of_its_width(
    hw: Hardware, link: HardwareLink, name: str, top: int
) -> None:
    regs = link.registers(link.windows["ctr0"])
    for value in (0, 1, top):
        regs[name] = value
        assert regs[name] == hw.registers("ctr0")[name] == value
    assert hw.registers("ctr0")["kicks"] == 0  # neighbours untouched


def test_a_raw_write_of_a_bad_value_is_refused_by_offset(link: HardwareLink) -> None:
    regs = link.registers(link.windows["ctr0"])
    with pytest.raises(RegisterError, match="register at 0x0 takes an integer of 32 bits"):
        regs.write(0x00, "x")  # type: ignore[arg-type]
    with pytest.raises(RegisterError, match="out of range"):
        regs.write(0x0E, 0x100, 8)


def test_the_driver_cannot_write_what_the_device_owns(hw: Hardware, link: HardwareLink) -> None:
    regs = link.registers(link.windows["ctr0"])
    hw.registers("ctr0")["kicks"] = 41  # the device may
    for name in ("kicks", "status", "ticks"):
        with pytest.raises(RegisterError, match=f"register {name} is read-only to the driver"):
            regs[name] = 1
    refused = [(0x08, 32), (0x08, 8), (0x0B, 8), (0x0C, 16), (0x08, 64), (0x18, 64), (0x1C, 32)]
    for offset, width in refused:
        with pytest.raises(RegisterError, match="read-only to the driver"):
            regs.write(offset, 1, width)
    assert hw.registers("ctr0")["kicks"] == 41
    assert hw.registers("ctr0")["status"] == READY
    regs.write(0x0E, 3, 8)  # flags: the driver's own byte, between two device registers
    regs.write(0x10, 5, 64)  # wide
    assert (regs["flags"], regs["wide"]) == (3, 5)
    config = link.config(link.windows["ctr0"])
    with pytest.raises(RegisterError, match="register vendor is read-only"):
        config["vendor"] = 0x8086
    config["command"] = 4
    assert hw.config("ctr0")["command"] == 4


@pytest.mark.parametrize(
    ("offset", "width", "match"),
    [
        (2, 32, "not aligned to a 32-bit access"),
        (4, 64, "not aligned to a 64-bit access"),
        (1, 16, "not aligned"),
        (-4, 32, "not aligned"),
        (0, 24, "access width 24"),
        (0, 0, "access width 0"),
        (BAR_SIZE, 8, "outside the 3840-byte window"),
        (BAR_SIZE - 4, 64, "not aligned"),
        (BAR_SIZE - 2, 32, "not aligned"),
        (1 << 40, 32, "outside"),
    ],
)
def test_raw_accesses_misaligned_or_outside_the_window_are_refused(
    link: HardwareLink, offset: int, width: int, match: str
) -> None:
    regs = link.registers(link.windows["ctr0"])
    with pytest.raises(RegisterError, match=match):
        regs.read(offset, width)
    with pytest.raises(RegisterError, match=match):
        regs.write(offset, 0, width)


def test_the_last_word_of_the_window_is_reachable_and_unknown_names_are_refused(
    hw: Hardware, link: HardwareLink
) -> None:
    regs = link.registers(link.windows["ctr0"])
    hw.registers("ctr0").write(BAR_SIZE - 8, 0x1122334455667788, 64)  # the device may
    assert regs.read(BAR_SIZE - 8, 64) == 0x1122334455667788
    with pytest.raises(RegisterError, match=r"no register 'nope' \(this device has: ctrl, bell"):
        regs["nope"]
    bare = link.registers(link.window("bare0", list(hw.machine.devices).index("bare0")))
    with pytest.raises(RegisterError, match="has: none"):
        bare["ctrl"]
    hw.registers("bare0").write(0, 9)  # a device with no model: raw access only
    assert bare.read(0) == 9


@pytest.mark.parametrize(("offset", "width"), [(0x20, 32), (BAR_SIZE - 8, 64), (0x0E, 16)])
def test_the_driver_cannot_write_where_the_device_has_no_register(
    hw: Hardware, link: HardwareLink, offset: int, width: int
) -> None:
    # Real hardware drops such writes; keeping them would make the window a scratch
    # pad that outlives kexec beside the handoff (tests/broken_packs.py).
    regs = link.registers(link.windows["ctr0"])
    before = hw.registers("ctr0").raw()
    with pytest.raises(RegisterError, match=f"offset {offset:#x} .* no register"):
        regs.write(offset, 1, width)
    assert hw.registers("ctr0").raw() == before
    bare = link.registers(link.window("bare0", list(hw.machine.devices).index("bare0")))
    with pytest.raises(RegisterError, match="no register"):
        bare.write(0, 9)
    regs.write(0x00, 1 << 32 | 7, 64)  # ctrl and bell: every byte is a driver register
    assert (regs["ctrl"], regs["bell"]) == (7, 1)


def test_a_doorbell_write_kicks_the_model_and_sync_is_the_barrier(
    hw: Hardware, link: HardwareLink
) -> None:
    regs = link.registers(link.windows["ctr0"])
    other = link.registers(link.windows["ctr1"])
    regs["ctrl"] = 1  # not a doorbell
    regs["wide"] = 1
    hw.sync()
    assert regs["kicks"] == 0
    for rung in range(1, 4):
        regs["bell"] = rung
        hw.sync()
        assert regs["kicks"] == hw.registers("ctr0")["kicks"] == rung
    assert other["kicks"] == 0  # each device has its own doorbell
    other["bell"] = 1
    hw.sync()
    assert (regs["kicks"], other["kicks"]) == (3, 1)


def test_a_raw_write_to_a_doorbell_address_kicks_the_model(
    hw: Hardware, link: HardwareLink
) -> None:
    regs = link.registers(link.windows["ctr0"])
    regs.write(CounterModel.registers["bell"].offset, 1)
    hw.sync()
    assert regs["kicks"] == 1


# -- the model's loop --------------------------------------------------------------


def wait_for_ticks(model: CounterModel, count: int) -> bool:
    with model.ticked:
        return model.ticked.wait_for(lambda: model.ticks >= count, timeout=WAIT)


def test_a_model_keeps_ticking_with_no_kernel_and_after_one_leaves(hw: Hardware) -> None:
    model = counter(hw, "ctr0")
    assert attached_generation(hw) == 0  # no kernel
    assert hw.control("ctr0", "period-ms", {"ms": 1}) is None
    assert wait_for_ticks(model, 3)
    with attached(hw.address) as kernel:
        assert attached_generation(hw) == kernel.fence.generation
        seen = model.ticks
        assert wait_for_ticks(model, seen + 3)
    assert attached_generation(hw) == 0  # the kernel detached
    seen = model.ticks
    assert wait_for_ticks(model, seen + 3)
    hw.sync()
    assert hw.registers("ctr0")["ticks"] >= seen + 3
    assert counter(hw, "ctr1").ticks == 0  # only the device asked to tick does


def crash_and_wait(hw: Hardware, kernel: HardwareLink, device: str) -> None:
    """Ring ``device``'s doorbell and wait until its model's loop has ended."""
    [loop] = [t for t in threading.enumerate() if t.name == f"luo-hw {device}"]
    kernel.registers(kernel.windows[device])["bell"] = 1
    loop.join(timeout=WAIT)
    assert not loop.is_alive()


def test_a_model_that_crashes_takes_only_its_own_device_down() -> None:
    with powered(build(2, crashers=1)) as hw, attached(hw.address) as kernel:
        with capture_logs() as logs:
            crash_and_wait(hw, kernel, "crash0")
        [crashed] = [e for e in logs if e["event"] == "device_model_crashed"]
        assert crashed["device"] == "crash0"
        assert "RuntimeError: the model fell over" in crashed["error"]

        with pytest.raises(HardwareError, match="crash0: the device model crashed") as caught:
            hw.control("crash0", "kicks")
        assert caught.value.errno == errno.EIO
        operator = connect(hw.address, role="operator")
        error = call_error(operator, {"op": "control", "device": "crash0", "name": "kicks"})
        assert "the model fell over" in str(error)
        assert error.errno == errno.EIO

        # Every other device works on: doorbells, controls, resets, the protocol.
        regs = kernel.registers(kernel.windows["ctr0"])
        regs["bell"] = 1
        assert hw.control("ctr0", "kicks") == 1
        kernel.reset("ctr1")
        assert hw.control("ctr1", "resets") == 2
        assert operator.call({"op": "control", "device": "ctr0", "name": "resets"})[0] == {
            "result": 1
        }
        assert kernel.registers(kernel.windows["crash0"])["status"] == READY  # memory stays
        operator.close()


def test_a_model_that_cannot_be_built_leaves_its_device_without_one() -> None:
    with capture_logs() as logs, powered(build(1, broken=1)) as hw:
        assert hw.model("broken0") is None
        assert len(hw.registers("broken0").map) == 0
        with pytest.raises(HardwareError, match="broken0 has no device model") as caught:
            hw.control("broken0", "kicks")
        assert caught.value.errno == errno.ENODEV
        assert hw.control("ctr0", "resets") == 1
    assert any(e["event"] == "device_model_failed" and e["device"] == "broken0" for e in logs)


def test_operator_requests_name_unknown_devices(hw: Hardware) -> None:
    with pytest.raises(HardwareError, match="no device 'nope'") as caught:
        hw.control("nope", "kicks")
    assert caught.value.errno == errno.ENODEV
    with pytest.raises(HardwareError, match="no device 'nope'") as caught:
        hw.reset("nope")
    assert caught.value.errno == errno.ENODEV
    with pytest.raises(HardwareError, match="has no control 'dance'"):
        hw.control("ctr0", "dance")


def test_powering_off_closes_every_descriptor() -> None:
    def ours() -> list[str]:
        found = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{fd}")
                if "eventfd" in target or "luo-ram" in target or "luo-mmio" in target:
                    found.append(target)
        return found

    def power_cycle() -> None:
        with powered(build(10)) as hw, attached(hw.address) as kernel:
            assert len(ours()) >= before + 10 * 3  # a loop's two eventfds, the kernel's copy
            assert all(w.doorbell is not None for w in kernel.windows.values())
        # (A mapping, and the descriptor mmap keeps for it, lives as long as a register
        # window onto it: the Hardware object's own windows go with the object.)

    before = len(ours())
    power_cycle()
    assert len(ours()) <= before


# -- the protocol, in this process -------------------------------------------------


def test_version_regions_and_memory_shared_by_descriptor(hw: Hardware) -> None:
    channel = connect(hw.address)
    assert channel.call({"op": "version"}) == ({"version": PROTOCOL_VERSION}, [])
    reply, fds = channel.call({"op": "regions"})
    try:
        assert len(fds) == 2
        assert (reply["ram-size"], reply["config-size"]) == (1 << 24, CONFIG_SIZE)
        assert reply["mmio-size"] == mmio_base(len(hw.machine.devices))
        # Only devices with a model are listed; equal register maps are sent once.
        assert [d[0] for d in reply["devices"]] == ["ctr0", "ctr1"]
        assert len(reply["maps"]) == 1
        assert RegisterMap.from_wire(reply["maps"][0]) == CounterModel.registers
        names = list(hw.machine.devices)
        for name, base, at, rings in reply["devices"]:
            assert (base, at, rings) == (mmio_base(names.index(name)), 0, True)
        with (
            PhysicalMemory(reply["ram-size"], fd=fds[0]) as ram,
            PhysicalMemory(reply["mmio-size"], fd=fds[1]) as mmio,
        ):
            hw.ram.write(0x12345, b"from the hardware")
            assert ram.read(0x12345, 17) == b"from the hardware"
            ram.write(0xFF_F000, b"from a kernel")
            assert hw.ram.read(0xFF_F000, 13) == b"from a kernel"
            hw.registers("ctr1")["kicks"] = 0xBEEF
            at = mmio_base(names.index("ctr1")) + BAR_OFFSET + 0x08
            assert mmio.read(at, 4) == (0xBEEF).to_bytes(4, "little")
    finally:
        _hardware.close_fds(fds)
        channel.close()


def test_doorbells_come_in_batches_and_every_one_rings_its_own_device() -> None:
    count = DOORBELLS_PER_MESSAGE + 5
    with powered(build(count)) as hw:
        channel = connect(hw.address)
        first, fds = channel.call({"op": "doorbells", "from": 0})
        _hardware.close_fds(fds)
        assert first == {"from": 0, "count": DOORBELLS_PER_MESSAGE, "total": count}
        assert len(fds) == DOORBELLS_PER_MESSAGE
        rest, fds = channel.call({"op": "doorbells", "from": DOORBELLS_PER_MESSAGE})
        _hardware.close_fds(fds)
        assert (rest["count"], len(fds)) == (5, 5)
        assert channel.call({"op": "doorbells", "from": count})[0]["count"] == 0
        for start in (count + 1, -1, "0", None, True):
            assert "no doorbell number" in str(
                call_error(channel, {"op": "doorbells", "from": start})
            )
        channel.close()

        with attached(hw.address) as kernel:
            assert all(kernel.windows[f"ctr{i}"].doorbell is not None for i in range(count))
            assert len({w.doorbell for w in kernel.windows.values()}) == count
            rung = [i for i in range(count) if i % 3 == 0 or i >= DOORBELLS_PER_MESSAGE]
            for i in rung:
                kernel.registers(kernel.windows[f"ctr{i}"])["bell"] = 1
            hw.sync()
            assert [hw.registers(f"ctr{i}")["kicks"] for i in range(count)] == [
                int(i in rung) for i in range(count)
            ]


def test_a_second_attach_fences_the_first_kernel(hw: Hardware) -> None:
    first = HardwareLink(hw.address)
    second = HardwareLink(hw.address)
    try:
        generation = first.attach()
        old = first.registers(first.windows["ctr0"])
        old["ctrl"] = 1
        assert second.attach() == generation + 1 == hw.generation
        Fence.fenced.clear()
        with pytest.raises(KernelGoneError, match=f"generation {generation} is gone"):
            old["ctrl"] = 2
        with pytest.raises(KernelGoneError):
            old.read(0)
        with pytest.raises(KernelGoneError):
            first.config(first.windows["ctr0"])["command"]
        assert list(Fence.fenced) == [(generation, threading.current_thread().name)] * 3
        assert hw.registers("ctr0")["ctrl"] == 1  # the fenced write never landed
        new = second.registers(second.windows["ctr0"])
        new["ctrl"] = 3
        assert new["ctrl"] == 3
        error = call_error(first._channel, {"op": "reset", "device": "ctr0"})
        assert error.errno == errno.ESTALE
        first.close()  # a stale kernel detaching does not detach the current one
        assert attached_generation(hw) == generation + 1
        assert new["ctrl"] == 3
    finally:
        first.close()
        second.close()
    assert attached_generation(hw) == 0


def test_the_operator_sees_that_no_kernel_is_attached_after_it_detaches(hw: Hardware) -> None:
    with attached(hw.address) as kernel:
        assert hw.generation == kernel.fence.generation == attached_generation(hw)
    assert attached_generation(hw) == 0
    assert hw.generation == 0


def test_reset_is_for_the_attached_kernel_only(hw: Hardware, link: HardwareLink) -> None:
    stranger = connect(hw.address)
    error = call_error(stranger, {"op": "reset", "device": "ctr0"})
    assert error.errno == errno.ESTALE
    assert "generation 0 is not the one attached" in str(error)
    regs = link.registers(link.windows["ctr0"])
    regs["ctrl"] = 0xFF
    regs["bell"] = 1
    hw.sync()
    assert regs["kicks"] == 1
    link.reset("ctr0")
    assert (regs["ctrl"], regs["kicks"], regs["status"]) == (0, 0, READY)
    assert hw.control("ctr0", "resets") == 2
    stranger.close()


@pytest.mark.parametrize(
    "request_",
    [
        {"op": "control", "device": "ctr0", "name": "resets"},
        {"op": "sync"},
        {"op": "operator-reset", "device": "ctr0"},
    ],
)
def test_operator_requests_are_refused_to_a_kernel(
    hw: Hardware, link: HardwareLink, request_: dict[str, Any]
) -> None:
    kernel = connect(hw.address)
    assert call_error(kernel, request_).errno == errno.EPERM
    assert call_error(link._channel, request_).errno == errno.EPERM  # attached or not
    operator = connect(hw.address, role="operator")
    assert "error" not in operator.call(request_)[0]
    kernel.close()
    operator.close()


def test_the_operator_resets_behind_the_kernels_back(hw: Hardware, link: HardwareLink) -> None:
    regs = link.registers(link.windows["ctr1"])
    regs["ctrl"] = 9
    operator = connect(hw.address, role="operator")
    assert operator.call({"op": "operator-reset", "device": "ctr1"}) == ({}, [])
    assert (regs["ctrl"], regs["status"]) == (0, READY)
    assert operator.call({"op": "control", "device": "ctr1", "name": "echo", "args": {"a": [1]}})[
        0
    ] == {"result": {"a": [1]}}
    operator.close()


@pytest.mark.parametrize(
    ("request_", "code", "match"),
    [
        ({"op": "reboot"}, errno.EOPNOTSUPP, "unknown request 'reboot'"),
        ({}, errno.EOPNOTSUPP, "unknown request None"),
        ({"op": ["version"]}, errno.EOPNOTSUPP, "unknown request"),
        ({"op": "operator-reset"}, None, "'device' must be text"),
        ({"op": "operator-reset", "device": 1}, None, "'device' must be text"),
        ({"op": "operator-reset", "device": "nope"}, errno.ENODEV, "no device 'nope'"),
        ({"op": "control", "device": "ctr0"}, None, "'name' must be text"),
        ({"op": "control", "device": "ctr0", "name": "x", "args": [1]}, None, "a map"),
        ({"op": "control", "device": "bare0", "name": "x"}, errno.ENODEV, "no device model"),
    ],
)
def test_malformed_requests_get_typed_error_replies(
    hw: Hardware, request_: dict[str, Any], code: int | None, match: str
) -> None:
    operator = connect(hw.address, role="operator")
    error = call_error(operator, request_)
    assert code is None or error.errno == code
    assert match in str(error)
    assert operator.call({"op": "version"})[0] == {"version": PROTOCOL_VERSION}  # still serving
    operator.close()


def test_a_closed_channel_is_refused(hw: Hardware) -> None:
    channel = connect(hw.address)
    channel.close()
    assert call_error(channel, {"op": "version"}).errno == errno.EBADF
    with pytest.raises(HardwareError, match="neither unix:NAME nor local:N"):
        connect("tcp:1.2.3.4")
    with pytest.raises(HardwareError, match="no hardware at local:0") as caught:
        connect("local:0").call({"op": "version"})
    assert caught.value.errno == errno.ENODEV


def test_a_control_the_model_fails_is_an_error_reply(hw: Hardware) -> None:
    operator = connect(hw.address, role="operator")
    error = call_error(operator, {"op": "control", "device": "ctr0", "name": "raise"})
    assert "tripped over its own feet" in str(error)
    operator.close()


def test_a_control_answer_a_message_cannot_carry_is_a_typed_error(hw: Hardware) -> None:
    operator = connect(hw.address, role="operator")
    with pytest.raises(
        LiveUpdateError, match=r"control 'object' failed: TypeError: .*not plain data"
    ):
        operator.call({"op": "control", "device": "ctr0", "name": "object"})
    # A float is plain data as its repr: it compares equal wherever it is read.
    assert operator.call({"op": "control", "device": "ctr0", "name": "float"})[0] == {
        "result": "0.5"
    }
    assert operator.call({"op": "version"})[0] == {"version": PROTOCOL_VERSION}
    operator.close()


# -- descriptors -------------------------------------------------------------------


def test_a_machine_needing_more_descriptors_than_allowed_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    monkeypatch.setattr(
        "luo_core.platform._hardware.resource.getrlimit", lambda _which: (300, hard)
    )
    with pytest.raises(HardwareError, match=r"20 devices with a model need about 316") as caught:
        Hardware(build(20), models=[Models()], discover=False)
    assert "may open 300" in str(caught.value)
    assert caught.value.errno == errno.EMFILE
    # 14 models need 298; devices without a model need no descriptors.
    with powered(build(14, bare=500)) as hw:
        assert hw.control("ctr13", "resets") == 1


def test_the_descriptor_check_uses_the_real_limit_of_the_process() -> None:
    code = (
        "import resource, sys\n"
        "from luo_core.errors import HardwareError\n"
        "from luo_core.platform import Hardware\n"
        "from tests.test_hardware import Models, build\n"
        "_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (320, hard))\n"
        "try:\n"
        "    Hardware(build(30), models=[Models()], discover=False)\n"
        "except HardwareError as exc:\n"
        "    print(exc.errno, exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{errno.EMFILE} 30 devices with a model need about 346")
    assert "may open 320" in done.stdout


# -- the hardware process ----------------------------------------------------------


PROCESS_COUNTERS = DOORBELLS_PER_MESSAGE + 2


@pytest.fixture(scope="module")
def process() -> Iterator[HardwareProcess]:
    with HardwareProcess(
        build(PROCESS_COUNTERS, bare=2), models=[MODELS_REF], discover=False, env=ENV
    ) as hardware:
        yield hardware


def raw_connection(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT)
    sock.connect("\0" + address.removeprefix("unix:"))
    return sock


def test_the_hardware_process_serves_its_operator(process: HardwareProcess) -> None:
    assert process.address.startswith("unix:")
    assert process.pid != os.getpid()
    os.kill(process.pid, 0)  # it is running
    assert process.control("ctr0", "echo", {"n": [1, "two", b"3"]}) == {"n": [1, "two", b"3"]}
    process.sync()
    with attached(process.address) as kernel:
        regs = kernel.registers(kernel.windows["ctr0"])
        kicks = regs["kicks"]
        regs["ctrl"] = 0x77
        regs["bell"] = 1
        process.sync()
        assert regs["kicks"] == process.control("ctr0", "kicks") == kicks + 1
        resets = cast(int, process.control("ctr0", "resets"))
        process.reset("ctr0")
        assert (regs["ctrl"], regs["kicks"], regs["status"]) == (0, 0, READY)
        assert process.control("ctr0", "resets") == resets + 1


def test_memory_from_the_hardware_process_is_shared_with_it(process: HardwareProcess) -> None:
    with attached(process.address) as first, attached(process.address) as second:
        first.memory.write(0x4000, b"written by one kernel")
        assert second.memory.read(0x4000, 21) == b"written by one kernel"
        assert process.control("ctr0", "peek", {"at": 0x4000, "length": 21}) == (
            b"written by one kernel"
        )
        process.control("ctr0", "poke", {"at": 0x8000, "data": b"from the device"})
        assert first.memory.read(0x8000, 15) == b"from the device"


def test_every_doorbell_crosses_the_socket(process: HardwareProcess) -> None:
    with attached(process.address) as kernel:
        assert all(kernel.windows[f"ctr{i}"].doorbell is not None for i in range(PROCESS_COUNTERS))
        before = [
            kernel.registers(kernel.windows[f"ctr{i}"])["kicks"] for i in range(PROCESS_COUNTERS)
        ]
        for i in range(PROCESS_COUNTERS):
            kernel.registers(kernel.windows[f"ctr{i}"])["bell"] = 1
        process.sync()
        after = [
            kernel.registers(kernel.windows[f"ctr{i}"])["kicks"] for i in range(PROCESS_COUNTERS)
        ]
        assert [a - b for a, b in zip(after, before, strict=True)] == [1] * PROCESS_COUNTERS


def test_the_hardware_process_refuses_a_kernel_what_is_the_operators(
    process: HardwareProcess,
) -> None:
    kernel = connect(process.address)
    assert call_error(kernel, {"op": "sync"}).errno == errno.EPERM
    assert call_error(kernel, {"op": "control", "device": "ctr0", "name": "x"}).errno == (
        errno.EPERM
    )
    assert call_error(kernel, {"op": "operator-reset", "device": "ctr0"}).errno == errno.EPERM
    assert call_error(kernel, {"op": "reset", "device": "ctr0"}).errno == errno.ESTALE
    assert call_error(kernel, {"op": "fly"}).errno == errno.EOPNOTSUPP
    assert kernel.call({"op": "version"})[0] == {"version": PROTOCOL_VERSION}
    kernel.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        HEADER.pack(b"LUOC", 1, 0, (1 << 20) + 1),
        _wire.MESSAGE.pack(b"\x80"),
        _wire.MESSAGE.pack(b"\xa1\x62op\xfb" + b"\x00" * 8),
    ],
    ids=["text", "too-big", "not-a-map", "float"],
)
def test_a_malformed_message_gets_an_error_reply_and_the_connection_is_closed(
    process: HardwareProcess, garbage: bytes
) -> None:
    with raw_connection(process.address) as sock:
        sock.sendall(garbage)
        reply, fds = _wire.receive(sock)
        assert fds == []
        assert reply["error"]["errno"] == errno.EBADMSG
        assert "\n" not in reply["error"]["message"]
        with pytest.raises(PeerGoneError):
            _wire.receive(sock)
    # The hardware keeps serving its operator and other connections.
    process.sync()
    other = connect(process.address)
    assert other.call({"op": "version"})[0] == {"version": PROTOCOL_VERSION}
    other.close()


def generation_word(link: HardwareLink) -> int:
    """The attached kernel's generation, as MMIO page 0 holds it (0: none attached)."""
    return int.from_bytes(link.mmio.read(0, 8), "little")


def test_a_kernel_that_vanishes_mid_message_is_detached(process: HardwareProcess) -> None:
    observer = HardwareLink(process.address)  # maps memory, never attaches
    try:
        with raw_connection(process.address) as sock:
            _wire.send(sock, {"op": "attach"})
            generation = _wire.receive(sock)[0]["generation"]
            assert generation_word(observer) == generation
            sock.sendall(_wire.encode({"op": "version"})[:5])
        deadline = time.monotonic() + WAIT
        while generation_word(observer) != 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert generation_word(observer) == 0  # its connection closed: it was detached
        with attached(process.address) as kernel:
            assert kernel.fence.generation == generation + 1
            kernel.registers(kernel.windows["ctr1"])["ctrl"] = 1
    finally:
        observer.close()


def models_factory() -> Models:
    """A pack named by a factory function (``module:function``), as a kernel accepts it."""
    return Models()


def test_a_pack_named_by_a_factory_function_brings_its_models_to_the_hardware_process() -> None:
    # The hardware builds a pack reference as a kernel does (abi._boot.resolve): a
    # function is called, not taken for the plugin.
    ref = "tests.test_hardware:models_factory"
    with HardwareProcess(build(1), models=[ref], discover=False, env=ENV) as hardware:
        assert hardware.control("ctr0", "resets") == 1


def test_an_installed_pack_named_by_a_factory_function_ships_its_models(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ep = metadata.EntryPoint("fn-pack", "tests.test_hardware:models_factory", ENTRY_POINT_GROUP)
    monkeypatch.setattr(metadata, "entry_points", lambda group: [ep])
    assert discover_models()[COUNTER] is CounterModel


def test_powering_off_ends_the_hardware_process() -> None:
    hardware = HardwareProcess(build(1), models=[MODELS_REF], discover=False, env=ENV)
    pid = hardware.pid
    assert hardware.control("ctr0", "resets") == 1
    hardware.close()
    assert hardware._process.returncode == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(HardwareError, match="closed") as caught:
        hardware.sync()
    assert caught.value.errno == errno.EBADF
    with pytest.raises(HardwareError, match="cannot reach the hardware"):
        connect(hardware.address)


def unbuildable_machine() -> Machine:
    machine = build(1)
    machine.devices["orphan"] = DeviceSpec("orphan", "platform", "x", "nobody", None)
    return machine


@pytest.mark.parametrize(
    ("machine", "models", "match"),
    [
        (unbuildable_machine, [MODELS_REF], "power-on failed: device 'orphan': unknown parent"),
        (lambda: build(1), ["tests.no_such_module:Models"], "power-on failed: No module named"),
        (lambda: build(1), ["tests.test_hardware:NoSuchPack"], "power-on failed: "),
    ],
    ids=["unknown-parent", "no-module", "no-attribute"],
)
def test_a_hardware_process_that_cannot_power_on_says_why_in_one_line(
    capfd: pytest.CaptureFixture[str], machine: Any, models: list[str], match: str
) -> None:
    started = time.monotonic()
    with pytest.raises(HardwareError, match=match) as caught:
        HardwareProcess(machine(), models=models, discover=False, env=ENV)
    assert "\n" not in str(caught.value)
    assert caught.value.errno == errno.EIO
    assert time.monotonic() - started < 30
    assert "Traceback" not in capfd.readouterr().err


def test_a_hardware_process_whose_models_need_too_many_descriptors_does_not_power_on(
    capfd: pytest.CaptureFixture[str],
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = len(os.listdir("/proc/self/fd")) + 400
    models = (limit - 256) // 3 + 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))  # the process inherits it
    try:
        with pytest.raises(HardwareError, match=f"power-on failed: {models} devices") as caught:
            HardwareProcess(build(models), models=[MODELS_REF], discover=False, env=ENV)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert f"may open {limit}" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert "Traceback" not in capfd.readouterr().err


def test_a_bad_control_argument_does_not_power_off_the_hardware_process(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with HardwareProcess(default_host()) as hardware:
        with pytest.raises(HardwareError, match="frames"):
            hardware.control("0000:01:00.0", "receive", {"frames": -1})
        hardware.sync()  # still powered on
        assert "Traceback" not in capfd.readouterr().err


def test_a_control_answer_that_cannot_be_sent_does_not_power_off_the_hardware_process() -> None:
    with HardwareProcess(build(1), models=[MODELS_REF], discover=False, env=ENV) as hardware:
        with pytest.raises(HardwareError, match="not plain data"):
            hardware.control("ctr0", "object")
        hardware.sync()
