"""The pluggy hook specifications: the callback API packs implement.

Registration hooks (``luo_subsystems``, ``luo_device_drivers``, ``luo_buses``)
are called once per kernel boot and yield frozen records; the registry stamps
each record with the distribution it came from.  They may take ``kernel``:
the kernel being booted (its ``memory``, ``mm`` and ``kho`` are ready; its
devices are not yet), or ``None`` when packs are only listed (``luo drivers``,
``luo manifest``).  Ops objects that need the kernel keep it: they live and
die with it.  Every boot builds a pack's plugin afresh, so registration hooks
are called on a new object each time.  Observer hooks
(``luo_state_changed``, ``luo_phase_started``, ``luo_phase_finished``) are
called for every plugin that implements them, may be ``wrapper=True``, and
never affect the update: an exception in an observer is logged and ignored.
They get data (states, phase names, timings), never the kernel.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pluggy

from luo_core.kernel._records import Bus, Command, DeviceDriver, Subsystem
from luo_core.kernel.sessions._records import FileHandler
from luo_core.platform._models import PROJECT as PROJECT

if TYPE_CHECKING:
    from luo_core.abi._stats import PhaseStats
    from luo_core.kernel._kernel import Kernel
    from luo_core.kernel._state import Event, State
    from luo_core.testing import Contract

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class LuoSpec:
    """Hook specifications of project ``luo`` (version history: all new in 0.1)."""

    @hookspec
    def luo_subsystems(self, kernel: Kernel | None) -> Iterable[Subsystem]:  # type: ignore[empty-body]
        """Register subsystem participants (``liveupdate_register_subsystem``).

        Called once per kernel boot, every implementation's results are kept.
        Yield :class:`~luo_core.Subsystem` records; a name already taken by
        another pack is an error naming both distributions.

        Example::

            >>> from luo_core import Kernel, Machine, Subsystem, SubsystemOps, hookimpl, state, u64
            >>> @state(compatible="acme,counter", version=1)
            ... class CounterRecord:
            ...     value: u64
            >>> class Counter(SubsystemOps):
            ...     def prepare(self):
            ...         return CounterRecord(42)
            ...     def boot(self, data):
            ...         print("next kernel got", data.value)
            >>> class CounterPack:
            ...     @hookimpl
            ...     def luo_subsystems(self):
            ...         yield Subsystem(name="counter", ops=Counter(), schema=CounterRecord)
            >>> kernel = Kernel.boot(Machine(), plugins=[CounterPack], discover=False)
            >>> kernel.prepare()
            >>> new_kernel = kernel.kexec()
            next kernel got 42
            >>> new_kernel.state.value
            'updated'
        """

    @hookspec
    def luo_device_drivers(self, kernel: Kernel | None) -> Iterable[DeviceDriver]:  # type: ignore[empty-body]
        """Register device drivers, bound to devices by their ``compatible`` table.

        Called once per kernel boot, every implementation's results are kept.
        A compatible claimed by two packs is an error naming both.

        Example::

            >>> from luo_core import DeviceDriver, DeviceDriverOps, Kernel, hookimpl, state, u64
            >>> from luo_core.platform import default_host
            >>> @state(compatible="acme,nic-state", version=1)
            ... class NicRecord:
            ...     rx: u64
            >>> class Nic(DeviceDriverOps):
            ...     def probe(self, dev):
            ...         dev.driver_data = {"rx": 0}
            ...     def prepare(self, dev):
            ...         return NicRecord(dev.driver_data["rx"])
            ...     def restore(self, dev, data):
            ...         dev.driver_data = {"rx": data.rx}
            >>> class NicPack:
            ...     @hookimpl
            ...     def luo_device_drivers(self):
            ...         yield DeviceDriver(
            ...             name="nic", compatible=["luo,example-nic"], ops=Nic(), schema=NicRecord
            ...         )
            >>> kernel = Kernel.boot(default_host(), plugins=[NicPack], discover=False)
            >>> kernel.devices["0000:01:00.0"].driver_data["rx"] = 7
            >>> kernel.devices.request("0000:01:00.0")
            >>> kernel.prepare()
            >>> new_kernel = kernel.kexec()
            >>> nic = new_kernel.devices["0000:01:00.0"]
            >>> nic.preserved, nic.reclaimed, nic.driver_data
            (True, True, {'rx': 7})
        """

    @hookspec
    def luo_buses(self, kernel: Kernel | None) -> Iterable[Bus]:  # type: ignore[empty-body]
        """Register bus types.  luo itself registers ``platform`` and ``pci``.

        Called once per kernel boot.  A device can only be preserved if its
        bus (and every ancestor's bus) is registered with ``liveupdate=True``.

        Example::

            >>> from luo_core import Bus, Kernel, hookimpl
            >>> from luo_core.platform import Machine
            >>> class UsbPack:
            ...     @hookimpl
            ...     def luo_buses(self):
            ...         yield Bus(name="usb", liveupdate=False)
            >>> kernel = Kernel.boot(Machine(), plugins=[UsbPack], discover=False)
            >>> sorted(kernel.registry.buses)
            ['pci', 'platform', 'usb']
        """

    @hookspec
    def luo_file_handlers(self, kernel: Kernel | None) -> Iterable[FileHandler]:  # type: ignore[empty-body]
        """Register file handlers (``liveupdate_register_file_handler``), with their FLBs.

        Called once per kernel boot, before the sessions handed over are read:
        a handler the next kernel lacks makes ``/dev/liveupdate`` fail with
        ``EIO`` there.  A compatible claimed by two packs is an error naming
        both.  luo registers ``memfd-v1`` itself.

        Example (a pipe's unread bytes, handed over as a record)::

            >>> import os
            >>> from luo_core import FileHandler, FileHandlerOps, Kernel, Machine, hookimpl, state
            >>> @state(compatible="acme,pipe-data", version=1)
            ... class PipeRecord:
            ...     data: bytes
            >>> class PipeOps(FileHandlerOps):
            ...     def can_preserve(self, file):
            ...         return os.readlink(f"/proc/self/fd/{file.fd}").startswith("pipe:")
            ...     def preserve(self, file):
            ...         return PipeRecord(b"")
            ...     def freeze(self, file, data):
            ...         os.set_blocking(file.fd, False)
            ...         try:
            ...             return PipeRecord(os.read(file.fd, 65536))
            ...         except BlockingIOError:
            ...             return None
            ...     def unpreserve(self, file, data):
            ...         pass
            ...     def retrieve(self, data):
            ...         r, w = os.pipe()
            ...         os.write(w, data.data)
            ...         os.close(w)
            ...         return r
            ...     def finish(self, file, data, retrieved):
            ...         pass
            >>> class PipePack:
            ...     @hookimpl
            ...     def luo_file_handlers(self):
            ...         yield FileHandler("acme,pipe-v1", PipeOps(), schema=PipeRecord)
            >>> kernel = Kernel.boot(Machine(), plugins=[PipePack], discover=False)
            >>> r, w = os.pipe()
            >>> _ = os.write(w, b"in flight")
            >>> session = kernel.open_liveupdate().create_session("app")
            >>> session.preserve_fd(r, token=1)
            >>> new = kernel.kexec()
            >>> fd = new.open_liveupdate().retrieve_session("app").retrieve_fd(1)
            >>> os.read(fd, 100)
            b'in flight'
        """

    @hookspec
    def luo_commands(self, kernel: Kernel | None) -> Iterable[Command]:  # type: ignore[empty-body]
        """Register programs that run in the kernel's userspace (a VMM, an agent).

        Called once per kernel boot; a name claimed by two packs is an error
        naming both.  The operator runs a command by name with a map of plain
        data, in this process or across processes, and gets plain data back:
        this is how a host's userspace (which luo does not model as processes
        of its own) creates VMs, preserves their files before an update and
        takes them back after it.

        Example::

            >>> from luo_core import Command, Kernel, Machine, hookimpl
            >>> class EchoPack:
            ...     @hookimpl
            ...     def luo_commands(self, kernel):
            ...         yield Command("echo", lambda args: {"got": args["text"]})
            >>> kernel = Kernel.boot(Machine(), plugins=[EchoPack], discover=False)
            >>> kernel.command("echo", {"text": "hi"})
            {'got': 'hi'}
        """

    @hookspec
    def luo_contracts(self) -> Iterable[Contract]:  # type: ignore[empty-body]
        """Declare how the contract suite exercises this pack's drivers.

        Yield :class:`luo_core.testing.Contract` records: a host holding your
        device, the devices to request, a workload and a snapshot of what must
        survive.  ``luo contract PACK`` runs the whole suite from them, with no
        test code of yours.

        Example::

            >>> from luo_core import DeviceDriver, DeviceDriverOps, hookimpl, state, u64
            >>> from luo_core.platform import default_host
            >>> from luo_core.testing import Contract, check_round_trip
            >>> @state(compatible="acme,nic-state", version=1)
            ... class NicRecord:
            ...     sent: u64
            >>> class Nic(DeviceDriverOps):
            ...     def probe(self, dev):
            ...         dev.driver_data = {"sent": 0}
            ...     def prepare(self, dev):
            ...         return NicRecord(dev.driver_data["sent"])
            ...     def restore(self, dev, data):
            ...         dev.driver_data = {"sent": data.sent}
            >>> def bump(dev):
            ...     dev.driver_data["sent"] += 5
            >>> class NicPack:
            ...     @hookimpl
            ...     def luo_device_drivers(self):
            ...         yield DeviceDriver(
            ...             name="nic", compatible=["luo,example-nic"], ops=Nic(), schema=NicRecord
            ...         )
            ...     @hookimpl
            ...     def luo_contracts(self):
            ...         yield Contract(
            ...             name="nic", machine=default_host, devices=["0000:01:00.0"],
            ...             workload=bump, snapshot=lambda dev: dev.driver_data,
            ...         )
            >>> check_round_trip(NicPack)  # in-process; luo contract also runs it across processes
        """

    @hookspec
    def luo_state_changed(self, old: State, new: State, event: Event) -> None:
        """Observe a committed change of the global state (rollbacks included).

        ``event`` is what caused it; a rollback reports the event that failed
        (``prepare`` or ``freeze``) with ``new`` being ``normal``.

        Example::

            >>> from luo_core import Kernel, hookimpl
            >>> from luo_core.platform import Machine
            >>> class Watcher:
            ...     @hookimpl
            ...     def luo_state_changed(self, old, new, event):
            ...         print(f"{event.value}: {old.value} -> {new.value}")
            >>> kernel = Kernel.boot(Machine(), plugins=[Watcher], discover=False)
            >>> kernel.prepare()
            prepare: normal -> prepared
            >>> kernel.cancel()
            cancel: prepared -> normal
        """

    @hookspec
    def luo_phase_started(self, phase: str) -> None:
        """Observe the start of a phase: ``prepare``, ``freeze``, ``cancel``,
        ``kexec``, ``restore`` or ``finish``.

        Example (a wrapper sees both ends of the call)::

            >>> from luo_core import Kernel, hookimpl
            >>> from luo_core.platform import Machine
            >>> class Tracer:
            ...     @hookimpl(wrapper=True)
            ...     def luo_phase_started(self, phase):
            ...         print("starting", phase)
            ...         return (yield)
            >>> kernel = Kernel.boot(Machine(), plugins=[Tracer], discover=False)
            >>> kernel.prepare()
            starting prepare
        """

    @hookspec
    def luo_phase_finished(self, phase: str, stats: PhaseStats) -> None:
        """Observe the end of a phase, with its timings (``stats.ok`` is False
        when a callback failed and the phase was rolled back).

        Example::

            >>> from luo_core import Kernel, hookimpl
            >>> from luo_core.platform import Machine
            >>> class Timer:
            ...     @hookimpl
            ...     def luo_phase_finished(self, phase, stats):
            ...         print(phase, stats.ok, stats.duration_us >= 0)
            >>> kernel = Kernel.boot(Machine(), plugins=[Timer], discover=False)
            >>> kernel.prepare()
            prepare True True
        """
