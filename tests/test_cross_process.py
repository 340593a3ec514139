"""Cross-process kexec as an operator drives it: every kernel a process, the hardware another.

The next kernel is loaded and warmed during prepare; one that cannot start
fails prepare, which is rolled back with nothing lost; at kexec the old
process exits and the new one answers; errors come back with their types.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from luo_core import KernelConfig
from luo_core.errors import (
    DeviceError,
    InvalidTransitionError,
    KernelGoneError,
    KexecError,
    LiveUpdateError,
    NotFoundError,
)
from luo_core.kexec import KernelProcess
from luo_core.platform import HardwareProcess, default_host

REPO = Path(__file__).resolve().parents[1]
NIC = "0000:01:00.0"
EXAMPLE = KernelConfig(["luo_example_nic"], discover=False)


@pytest.fixture(scope="module")
def hardware() -> Iterator[HardwareProcess]:
    """One hardware process for the module: kernels come and go on it, as on a real host."""
    with HardwareProcess(default_host()) as machine:
        yield machine


@pytest.fixture
def kernel(hardware: HardwareProcess) -> Iterator[KernelProcess]:
    with KernelProcess.boot(hardware, EXAMPLE) as booted:
        booted.request(NIC)
        booted.workload("example-nic", NIC)
        yield booted


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_kexec_replaces_the_kernel_process(kernel: KernelProcess) -> None:
    before = kernel.snapshot("example-nic", NIC)
    kernel.prepare()
    assert kernel.state == "prepared"
    loaded = kernel.loaded_pid
    assert loaded is not None and alive(loaded)
    new = kernel.kexec()
    try:
        assert new.pid == loaded != kernel.pid
        assert not alive(kernel.pid)  # the old kernel exited, and was reaped
        assert (new.state, new.liveupdate_number) == ("updated", 1)
        assert new.devices()[NIC].reclaimed
        assert new.snapshot("example-nic", NIC) == before
        stats = new.stats
        assert stats is not None and stats.blackout_us is not None and stats.blackout_us > 0
        assert stats.threads_left == []
        with pytest.raises(KernelGoneError):
            kernel.state  # noqa: B018 (the old kernel answers nothing any more)
        new.finish()
        assert new.state == "normal"
    finally:
        new.shutdown()


def test_a_next_kernel_that_cannot_start_fails_prepare_and_loses_nothing(
    kernel: KernelProcess,
) -> None:
    before = kernel.snapshot("example-nic", NIC)
    with pytest.raises(LiveUpdateError) as failure:
        kernel.prepare(next_python="/bin/false")  # starts, and exits before it is ready
    assert failure.value.errno == errno.ENOEXEC, failure.value
    assert kernel.state == "normal" and kernel.loaded_pid is None
    assert kernel.snapshot("example-nic", NIC) == before
    assert kernel.devices()[NIC].requested
    kernel.workload("example-nic", NIC)  # the device works
    kernel.prepare()  # and the next attempt, with a kernel that starts, goes through
    assert kernel.state == "prepared"
    kernel.cancel()


def test_a_missing_interpreter_is_one_clear_error(kernel: KernelProcess) -> None:
    with pytest.raises(KexecError, match="cannot start a kernel image with /no/such/python"):
        kernel.prepare(next_python="/no/such/python")
    assert kernel.state == "normal"


def test_cancel_unloads_the_next_kernel(kernel: KernelProcess) -> None:
    kernel.prepare()
    loaded = kernel.loaded_pid
    assert loaded is not None
    kernel.cancel()
    assert kernel.loaded_pid is None and not alive(loaded)
    assert kernel.state == "normal"


def test_errors_cross_processes_with_their_types(kernel: KernelProcess) -> None:
    with pytest.raises(NotFoundError, match="no device 'nope'"):
        kernel.request("nope")
    with pytest.raises(DeviceError, match=r"\(no live-update callbacks\)"):
        kernel.request("0000:00:1f.0")
    with pytest.raises(InvalidTransitionError, match="finish: not allowed in state normal"):
        kernel.finish()
    assert kernel.state == "normal"


def test_the_next_kernel_boots_with_the_configuration_it_was_loaded_with(
    kernel: KernelProcess,
) -> None:
    kernel.prepare(next_config=KernelConfig(discover=False))  # luo's own drivers only
    new = kernel.kexec()
    try:
        nic = new.devices()[NIC]
        assert nic.preserved and not nic.reclaimed and nic.driver is None
        assert new.devices()["0000:00:01.0"].reclaimed  # the bridge driver is luo's own
        assert new.config == KernelConfig(discover=False)
    finally:
        new.shutdown()


@pytest.mark.slow
def test_the_next_kernel_can_come_from_another_environment_with_other_pack_versions(
    tmp_path: Path, hardware: HardwareProcess
) -> None:
    """A rollback to an older pack, in its own virtualenv, is a real cross-version update."""
    older = tmp_path / "example-nic-0.0.9"
    shutil.copytree(
        REPO / "drivers" / "example-nic", older, ignore=shutil.ignore_patterns("*.egg-info")
    )
    project = older / "pyproject.toml"
    project.write_text(project.read_text().replace('version = "0.1.0"', 'version = "0.0.9"'))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    for target in (f"{REPO}", f"{older}"):
        done = subprocess.run(
            [python, "-m", "pip", "install", "-q", "-e", target],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with KernelProcess.boot(hardware, KernelConfig(), env=clean) as old:
        assert "luo-example-nic 0.1.0 loaded" in old.packs()
        old.request(NIC)
        old.workload("example-nic", NIC)
        before = old.snapshot("example-nic", NIC)
        old.prepare(next_python=str(python))
        with old.kexec() as new:
            assert new.python == str(python)
            assert "luo-example-nic 0.0.9 loaded" in new.packs()
            assert new.devices()[NIC].reclaimed
            assert new.snapshot("example-nic", NIC) == before
