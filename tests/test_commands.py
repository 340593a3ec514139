"""Pack commands: the host's userspace programs, run by the operator in a kernel."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

import pytest

from luo_core import Command, Kernel, KernelConfig, Machine, hookimpl
from luo_core.errors import (
    BusyError,
    CommandError,
    InvalidArgumentError,
    NotFoundError,
    PluginConflictError,
)
from luo_core.kexec import KernelProcess
from luo_core.platform import HardwareProcess
from tests.commandpacks import CommandPack, command_pack

CONFIG = KernelConfig(["tests.commandpacks:command_pack"], discover=False)


def test_a_command_runs_with_plain_data_and_its_state_is_the_kernels() -> None:
    kernel = Kernel.boot(Machine(), plugins=[command_pack], discover=False)
    assert kernel.command("count", {"by": 2})["count"] == 2  # type: ignore[index]
    assert kernel.command("count")["count"] == 3  # type: ignore[index]
    kernel.prepare()
    new = kernel.kexec()
    assert new.command("count")["count"] == 1  # type: ignore[index]  # a new boot, a new counter


def test_errors_keep_their_type_and_errno() -> None:
    kernel = Kernel.boot(Machine(), plugins=[CommandPack], discover=False)
    with pytest.raises(NotFoundError, match=r"no command 'nope' \(known: count, fail\)"):
        kernel.command("nope")
    with pytest.raises(BusyError, match="busy"):
        kernel.command("fail", {"kind": "busy"})
    with pytest.raises(CommandError, match="command fail failed: OSError") as info:
        kernel.command("fail", {"kind": "os"})
    assert info.value.errno == errno.ENOSPC
    with pytest.raises(CommandError, match="not plain data") as info:
        kernel.command("fail")
    assert info.value.errno == errno.EIO


def test_a_command_name_claimed_twice_names_both_packs() -> None:
    class Other:
        @hookimpl
        def luo_commands(self) -> Iterator[Command]:
            yield Command("count", lambda args: None)

    with pytest.raises(PluginConflictError, match=r"command 'count' is claimed by both .*Other"):
        Kernel.boot(Machine(), plugins=[CommandPack, Other], discover=False)


def test_a_command_record_is_checked() -> None:
    with pytest.raises(ValueError, match="must be 1-63 chars"):
        Command("Bad Name", lambda args: None)
    with pytest.raises(TypeError, match="callable"):
        Command("ok", "not callable")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def hardware() -> Iterator[HardwareProcess]:
    with HardwareProcess(Machine(), discover=False) as hw:
        yield hw


def test_a_command_runs_in_the_kernels_process(hardware: HardwareProcess) -> None:
    with KernelProcess.boot(hardware, CONFIG) as kernel:
        got = kernel.command("count", {"by": 5})
        assert got == {"count": 5, "pid": kernel.pid} and kernel.pid != os.getpid()
        with pytest.raises(CommandError, match="OSError") as info:
            kernel.command("fail", {"kind": "os"})
        assert info.value.errno == errno.ENOSPC
        with pytest.raises(NotFoundError):
            kernel.command("nope")
        with pytest.raises(InvalidArgumentError, match="args must be a map"):
            kernel._call({"op": "command", "name": "count", "args": [1]})


def test_luo_drivers_lists_a_command_as_a_command() -> None:
    from luo_core.cli._drivers import describe

    assert describe(Command("vmm-start", lambda args: None)) == {
        "kind": "command",
        "name": "vmm-start",
    }
