"""Packs with the mistakes real authors make; the contract suite must catch each one.

Each is the example NIC pack (its device model, its driver, one contract on
one NIC) with one thing wrong, so the only difference is the bug.  They are
classes at module level: the cross-process checks load them by reference
(``tests.broken_packs:Name``) in kernels of their own.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any, ClassVar

from luo_example_nic import COMPATIBLE, DRIVER, ExampleNicModel, NicRecord, NicState
from luo_example_nic._contract import golden, snapshot, traffic
from luo_example_nic._model import CTRL_ENABLE
from luo_example_nic._nic import NicOps

from luo_core import Device, DeviceDriver, hookimpl, state, u16, u64
from luo_core.errors import DeviceError
from luo_core.platform import DeviceModel, default_host
from luo_core.testing import Contract

NIC = "0000:01:00.0"


class NicPack:
    """The example pack on one NIC, with ``ops`` (and maybe ``schema``) swapped by subclasses."""

    ops: ClassVar[type[NicOps]] = NicOps
    schema: ClassVar[type[Any]] = NicRecord

    def __init__(self) -> None:
        self.kernel: Any = None

    @hookimpl
    def luo_device_models(self) -> Iterator[type[DeviceModel]]:
        yield ExampleNicModel

    @hookimpl
    def luo_device_drivers(self, kernel: Any) -> Iterator[DeviceDriver]:
        ops = self.ops()
        ops.kernel = kernel  # type: ignore[attr-defined]
        yield DeviceDriver(name=DRIVER, compatible=[COMPATIBLE], ops=ops, schema=self.schema)

    @hookimpl
    def luo_contracts(self) -> Iterator[Contract]:
        yield Contract(
            name=DRIVER,
            machine=default_host,
            devices=[NIC],
            workload=traffic,
            snapshot=snapshot,
            capabilities={"golden-records", "traffic-during-prepare"},
            golden=golden(),
        )


# -- state lost, or smuggled around the handoff ------------------------------------------


class ForgetfulRestore(NicOps):
    """Restores the device but not its counters: state lost across kexec."""

    def restore(self, dev: Device, data: NicRecord) -> None:
        super().restore(dev, data)
        dev.driver_data.tx_packets = 0


class Forgetful(NicPack):
    ops = ForgetfulRestore


class Hider(NicOps):
    """Hands over a record without the packet counter, and gets it back elsewhere."""

    def record(self, dev: Device) -> NicRecord:
        nic: NicState = dev.driver_data
        return NicRecord(nic.mac, nic.tx_tail, 0, nic.ring_size, nic.rx_at_freeze)

    def prepare(self, dev: Device) -> NicRecord:
        self.hide(dev, dev.driver_data.tx_packets)
        return self.record(dev)

    def freeze(self, dev: Device, data: NicRecord) -> NicRecord:
        super().freeze(dev, data)
        return self.record(dev)

    def restore(self, dev: Device, data: NicRecord) -> None:
        super().restore(dev, data)
        dev.driver_data.tx_packets = self.find(dev)

    def hide(self, dev: Device, packets: int) -> None:
        raise NotImplementedError

    def find(self, dev: Device) -> int:
        raise NotImplementedError


_SMUGGLED: dict[str, int] = {}


class GlobalHider(Hider):
    def hide(self, dev: Device, packets: int) -> None:
        _SMUGGLED[dev.name] = packets

    def find(self, dev: Device) -> int:
        return _SMUGGLED.get(dev.name, 0)


class SmuggleGlobal(NicPack):
    ops = GlobalHider


class ClassHider(Hider):
    seen: ClassVar[dict[str, int]] = {}

    def hide(self, dev: Device, packets: int) -> None:
        ClassHider.seen[dev.name] = packets

    def find(self, dev: Device) -> int:
        return ClassHider.seen.get(dev.name, 0)


class SmuggleClassAttribute(NicPack):
    ops = ClassHider


class EnvironmentHider(Hider):
    def hide(self, dev: Device, packets: int) -> None:
        os.environ[self.variable(dev)] = str(packets)

    def find(self, dev: Device) -> int:
        return int(os.environ.get(self.variable(dev), 0))

    @staticmethod
    def variable(dev: Device) -> str:
        return "LUO_SMUGGLED_" + dev.name.replace(":", "_").replace(".", "_")


class SmuggleEnvironment(NicPack):
    ops = EnvironmentHider


class FileHider(Hider):
    @staticmethod
    def path(dev: Device) -> Path:
        return Path(tempfile.gettempdir()) / f"luo-smuggled-{dev.name.replace(':', '_')}"

    def hide(self, dev: Device, packets: int) -> None:
        self.path(dev).write_text(str(packets))

    def find(self, dev: Device) -> int:
        path = self.path(dev)
        return int(path.read_text()) if path.exists() else 0


class SmuggleTempFile(NicPack):
    ops = FileHider


class DirectoryHider(Hider):
    """Writes nothing into a file: the count is the name of a directory it makes."""

    @staticmethod
    def folder(dev: Device) -> Path:
        return Path(tempfile.gettempdir()) / f"luo-smuggled-dir-{dev.name.replace(':', '_')}"

    def hide(self, dev: Device, packets: int) -> None:
        shutil.rmtree(self.folder(dev), ignore_errors=True)
        (self.folder(dev) / str(packets)).mkdir(parents=True)

    def find(self, dev: Device) -> int:
        found = list(self.folder(dev).glob("*")) if self.folder(dev).exists() else []
        return int(found[0].name) if found else 0


class SmuggleDirectoryName(NicPack):
    ops = DirectoryHider


class SharedMemoryHider(Hider):
    """Keeps the count in a POSIX shared memory object (``/dev/shm``)."""

    @staticmethod
    def segment(dev: Device) -> str:
        return f"luo-smuggled-{os.getuid()}-{dev.name.replace(':', '_')}"

    def hide(self, dev: Device, packets: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            shared_memory.SharedMemory(self.segment(dev)).unlink()
        segment = shared_memory.SharedMemory(self.segment(dev), create=True, size=8)
        assert segment.buf is not None
        segment.buf[:8] = packets.to_bytes(8, "little")
        segment.close()

    def find(self, dev: Device) -> int:
        try:
            segment = shared_memory.SharedMemory(self.segment(dev))
        except FileNotFoundError:
            return 0
        assert segment.buf is not None
        packets = int.from_bytes(bytes(segment.buf[:8]), "little")
        segment.close()
        return packets


class SmuggleSharedMemory(NicPack):
    ops = SharedMemoryHider


SCRATCH_OFFSET = 0xE00
"""An offset of the NIC's BAR 0 where its model has no register."""


class RegisterScratchHider(Hider):
    """Keeps the count in BAR bytes the device has no register at."""

    def hide(self, dev: Device, packets: int) -> None:
        dev.regs.write(SCRATCH_OFFSET, packets, 64)

    def find(self, dev: Device) -> int:
        return dev.regs.read(SCRATCH_OFFSET, 64)


class SmuggleUnusedRegisterSpace(NicPack):
    ops = RegisterScratchHider


class StaleMemoryHider(Hider):
    """Leaves the count in memory it never preserved, at an address it can find again."""

    def address(self) -> int:
        memory = self.kernel.memory  # type: ignore[attr-defined]
        return int(memory.size) - 2 * int(memory.PAGE_SIZE)

    def hide(self, dev: Device, packets: int) -> None:
        memory = self.kernel.memory  # type: ignore[attr-defined]
        memory.write(self.address(), packets.to_bytes(8, "little"))

    def find(self, dev: Device) -> int:
        memory = self.kernel.memory  # type: ignore[attr-defined]
        return int.from_bytes(bytes(memory.read(self.address(), 8)), "little")


class SmuggleUnpreservedMemory(NicPack):
    ops = StaleMemoryHider


_BY_ID: dict[int, int] = {}


class IdHider(Hider):
    """Keys its stash on the id of an object it believes outlives the kernel."""

    def key(self, dev: Device) -> int:
        return id(self.kernel.machine.devices[dev.name])  # type: ignore[attr-defined]

    def hide(self, dev: Device, packets: int) -> None:
        _BY_ID[self.key(dev)] = packets

    def find(self, dev: Device) -> int:
        return _BY_ID.get(self.key(dev), 0)


class SmuggleById(NicPack):
    ops = IdHider


class RegisterHider(NicOps):
    """Tries to keep its whole state in a register, as a Python object."""

    def prepare(self, dev: Device) -> NicRecord:
        dev.regs["ring_size"] = dev.driver_data
        return super().prepare(dev)


class SmuggleRegisterObject(NicPack):
    ops = RegisterHider


class ThreadLeaver(NicOps):
    """Freeze leaves a thread behind that writes a register later."""

    def freeze(self, dev: Device, data: NicRecord) -> NicRecord:
        later = threading.Event()

        def finish_later() -> None:
            later.wait(60)
            dev.regs["tx_tail"] = 0

        threading.Thread(target=finish_later, name=f"nic {dev.name} flush", daemon=True).start()
        return super().freeze(dev, data)


class LeftThread(NicPack):
    ops = ThreadLeaver


# -- records that are not what they should be -----------------------------------------------


@state(compatible="luo,test-tagged-nic-state", version=1)
class TaggedRecord:
    mac: u64
    tx_tail: u16
    tx_packets: u64
    tags: list[str]


class HashOrderOps(NicOps):
    """Encodes a set of strings in iteration order: different with every hash seed."""

    def prepare(self, dev: Device) -> TaggedRecord:  # type: ignore[override]
        nic: NicState = dev.driver_data
        tags = {"rx", "tx", "csum", "tso", "gro", "lro", "vlan", "rss", "sg", "ufo"}
        return TaggedRecord(nic.mac, nic.tx_tail, nic.tx_packets, list(tags))

    def freeze(self, dev: Device, data: Any) -> Any:
        dev.driver_data.paused = True
        return data

    def restore(self, dev: Device, data: Any) -> None:
        super().restore(dev, NicRecord(data.mac, data.tx_tail, data.tx_packets))


class HashOrder(NicPack):
    ops = HashOrderOps
    schema = TaggedRecord


@state(compatible="luo,test-noisy-nic-state", version=1)
class NoisyRecord:
    mac: u64
    tx_tail: u16
    tx_packets: u64
    nonce: bytes


class NoisyOps(HashOrderOps):
    """Hands over a random nonce with its state: not deterministic."""

    def prepare(self, dev: Device) -> NoisyRecord:  # type: ignore[override]
        nic: NicState = dev.driver_data
        return NoisyRecord(nic.mac, nic.tx_tail, nic.tx_packets, secrets.token_bytes(4))


class Noisy(NicPack):
    ops = NoisyOps
    schema = NoisyRecord


@state(compatible="luo,test-pickled-nic-state", version=1)
class PickledRecord:
    blob: bytes


class PickleOps(HashOrderOps):
    """Declares a schema of one bytes field, and puts a pickle of its state in it."""

    def prepare(self, dev: Device) -> PickledRecord:  # type: ignore[override]
        nic: NicState = dev.driver_data
        fields = {"mac": nic.mac, "tail": nic.tx_tail, "n": nic.tx_packets}
        return PickledRecord(pickle.dumps(fields))

    def restore(self, dev: Device, data: Any) -> None:
        fields = pickle.loads(data.blob)  # the mistake under test
        record = NicRecord(fields["mac"], fields["tail"], fields["n"])
        super(HashOrderOps, self).restore(dev, record)


class Pickled(NicPack):
    ops = PickleOps
    schema = PickledRecord


@state(compatible="luo,example-nic-state", version=4, min_version=1)
class BumpedRecord:
    """v4 claims to read v1 to v3, but nobody wrote the migrations."""

    mac: u64
    tx_tail: u16
    tx_packets: u64
    ring_size: u16 = 256


class BumpedOps(HashOrderOps):
    def prepare(self, dev: Device) -> BumpedRecord:  # type: ignore[override]
        s = dev.driver_data
        return BumpedRecord(s.mac, s.tx_tail, s.tx_packets, s.ring_size)


class SchemaBump(NicPack):
    ops = BumpedOps
    schema = BumpedRecord


# -- callbacks that misbehave ------------------------------------------------------------


class CancelThatMutates(NicOps):
    """Cancel 'resets' the counters it should have left alone."""

    def cancel(self, dev: Device, data: NicRecord) -> None:
        super().cancel(dev, data)
        dev.driver_data.tx_packets = 0


class MutatingCancel(NicPack):
    ops = CancelThatMutates


class QuiescingOps(NicOps):
    """Prepare sets a 'quiesce' bit in hardware that cancel forgets to clear."""

    def prepare(self, dev: Device) -> NicRecord:
        dev.regs["ctrl"] = CTRL_ENABLE | 0x2
        return super().prepare(dev)


class CancelLeavesRegister(NicPack):
    ops = QuiescingOps


class UnpausedOps(NicOps):
    """Freeze hands its record over but keeps accepting work: the record goes stale."""

    def freeze(self, dev: Device, data: NicRecord) -> NicRecord:
        return dev.driver_data.record()  # type: ignore[no-any-return]


class ChangesAfterFreeze(NicPack):
    ops = UnpausedOps


class SleepyOps(NicOps):
    """Freeze does heavy work (50 ms per device) on the blackout path."""

    def freeze(self, dev: Device, data: NicRecord) -> NicRecord:
        time.sleep(0.05)
        return super().freeze(dev, data)


class SlowFreeze(NicPack):
    ops = SleepyOps


class PickyOps(NicOps):
    """Restore fails for some counter values only."""

    def restore(self, dev: Device, data: NicRecord) -> None:
        if data.tx_packets % 3 == 2:
            raise DeviceError(f"{dev.name}: cannot resume at {data.tx_packets} packets")
        super().restore(dev, data)


class FlakyRestore(NicPack):
    ops = PickyOps


class ConsumingOps(NicOps):
    """Restore 'acknowledges' the hand-over by clearing a register: not idempotent."""

    def restore(self, dev: Device, data: NicRecord) -> None:
        if dev.regs["ring_size"] == 0:
            raise DeviceError(f"{dev.name}: already taken over")
        super().restore(dev, data)
        dev.regs["ring_size"] = 0


class ConsumingRestore(NicPack):
    ops = ConsumingOps


class SwallowingOps(NicOps):
    """Restore hits a problem, swallows it and leaves the device half restored."""

    def restore(self, dev: Device, data: NicRecord) -> None:
        try:
            if data.ring_size != 512:
                raise DeviceError("this driver only knows 512-slot rings")
            super().restore(dev, data)
        except DeviceError:
            dev.driver_data = None  # "we will sort it out later"


class SwallowingRestore(NicPack):
    ops = SwallowingOps
