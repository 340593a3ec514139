"""The public API is exactly what ``luo_core.__all__`` says; errors live in one namespace."""

from __future__ import annotations

import luo_core
import luo_core.errors

PUBLIC = {
    "FileHandler",
    "FileHandlerOps",
    "Flb",
    "FlbOps",
    "LiveFile",
    "LiveUpdateDevice",
    "Session",
    "Bus",
    "BusOps",
    "Command",
    "Device",
    "DeviceDriver",
    "DeviceDriverOps",
    "Event",
    "Kernel",
    "KernelConfig",
    "Machine",
    "PhaseStats",
    "PhysAddr",
    "PhysRange",
    "State",
    "Subsystem",
    "SubsystemOps",
    "UpdateStats",
    "errors",
    "hookimpl",
    "s8",
    "s16",
    "s32",
    "s64",
    "schema_of",
    "section",
    "state",
    "u8",
    "u16",
    "u32",
    "u64",
}
SUBPACKAGES = {"abi", "cli", "kernel", "kexec", "platform", "testing"}


def test_all_is_pinned() -> None:
    assert set(luo_core.__all__) == PUBLIC
    assert len(luo_core.__all__) == len(PUBLIC)


def test_every_public_name_is_exported_and_nothing_else() -> None:
    exported = {name for name in vars(luo_core) if not name.startswith("_")}
    assert exported - SUBPACKAGES == PUBLIC


def test_no_error_is_exported_at_the_top_level() -> None:
    for name in PUBLIC:
        obj = getattr(luo_core, name)
        assert not (isinstance(obj, type) and issubclass(obj, BaseException)), name


def test_every_error_shares_one_base_and_carries_an_errno() -> None:
    errors = [
        obj
        for obj in vars(luo_core.errors).values()
        if isinstance(obj, type) and issubclass(obj, BaseException)
    ]
    assert len(errors) > 20
    for error in errors:
        assert issubclass(error, luo_core.errors.LiveUpdateError), error
        assert isinstance(error.errno, int)


def test_the_pluggy_project_is_the_documented_one() -> None:
    assert luo_core.hookimpl.project_name == "luo"


def test_the_library_is_silent_unless_the_application_asks() -> None:
    """The README snippet prints its one line and nothing else; basicConfig shows the rest."""
    import subprocess
    import sys

    snippet = (
        "from luo_core import Kernel\n"
        "from luo_core.platform import default_host\n"
        "kernel = Kernel.boot(default_host())\n"
        "kernel.devices.request('0000:01:00.0')\n"
        "kernel.prepare()\n"
        "kernel = kernel.kexec()\n"
        "print(kernel.devices['0000:01:00.0'].reclaimed)\n"
        "kernel.finish()\n"
    )
    quiet = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "True\n", "")
    loud = subprocess.run(
        [
            sys.executable,
            "-c",
            "import logging; logging.basicConfig(level=logging.INFO)\n" + snippet,
        ],
        capture_output=True,
        text=True,
    )
    assert loud.returncode == 0 and loud.stdout == "True\n"
    assert "state_changed" in loud.stderr and "blackout" in loud.stderr
