"""The contract checks that need a real kexec: kernels in processes of their own.

The workload runs in the old kernel's process and the snapshot is taken in
the new one's, so state that went anywhere but the handoff — a module
global, a class attribute, the environment, a file, a Python object — is
gone, and the check fails naming the channel it most likely took.  Records
are compared across kernels started with different ``PYTHONHASHSEED``s, so
output that depends on hash order cannot hide.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from luo_core.abi._boot import KernelConfig
from luo_core.errors import LiveUpdateError
from luo_core.kexec import KernelProcess
from luo_core.platform import HardwareProcess
from luo_core.testing._checks import Pack, each_contract
from luo_core.testing._contract import Contract
from luo_core.testing._diff import difference
from luo_core.testing._harness import pack_reference

HASH_SEEDS = ("1", "2")


def reference(pack: Pack) -> str:
    ref = pack_reference(pack)
    if ref is None:
        raise AssertionError(
            f"the pack {pack!r} cannot be loaded by a kernel in another process: give it as a "
            "'module:attr' reference, a module, or a class or function defined at module level"
        )
    return ref


def kernel_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment, with its import path: a kernel image holds the same code."""
    env = dict(os.environ)
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.update(extra or {})
    return env


@contextmanager
def machine(contract: Contract, ref: str, env: Mapping[str, str]) -> Iterator[HardwareProcess]:
    """The contract's host, its hardware in a process of its own."""
    hardware = HardwareProcess(contract.machine(), models=[ref], env=env)
    try:
        yield hardware
    finally:
        hardware.close()


def _call(contract: Contract, what: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except LiveUpdateError as exc:
        raise AssertionError(f"{contract.name}: {what} failed: {exc}") from exc


def check_round_trip_across_processes(pack: Pack) -> None:
    """Workload in one kernel process, snapshot in the next: state survives a real kexec."""
    ref = reference(pack)
    env = kernel_env()
    for contract in each_contract(pack):
        config = KernelConfig(
            [ref, *contract.requires],
            discover=False,
            driver_override=contract.driver_override,
        )
        with machine(contract, ref, env) as hardware:
            old = KernelProcess.boot(hardware, config, env=env)
            try:
                for name in contract.devices:
                    _call(contract, f"requesting {name}", old.request, name)
                for name in contract.devices:
                    _call(contract, f"the workload on {name}", old.workload, contract.name, name)
                before = {
                    n: _call(contract, f"the snapshot of {n}", old.snapshot, contract.name, n)
                    for n in contract.devices
                }
                _call(contract, "prepare", old.prepare)
                findings = old.findings()
                new = _call(contract, "kexec", old.kexec)
            except BaseException:
                old.shutdown()
                raise
            try:
                _judge(contract, new, before, findings)
                for name in contract.devices:
                    _call(
                        contract,
                        f"the workload on {name} after kexec",
                        new.workload,
                        contract.name,
                        name,
                    )
                _call(contract, "finish", new.finish)
            finally:
                new.shutdown()


def _judge(
    contract: Contract, new: KernelProcess, before: dict[str, Any], findings: dict[str, list[str]]
) -> None:
    stats = new.stats
    left = stats.threads_left if stats is not None else []
    assert not left, (
        f"{contract.name}: the old kernel still ran {', '.join(left)} at kexec: a callback "
        "must finish its work before it returns (a real kexec stops every CPU; here that "
        "thread is fenced from the hardware)"
    )
    assert not findings["files"], (
        f"{contract.name}: kernel code wrote {', '.join(findings['files'])}: a kernel has no "
        "files that survive kexec; hand the state over in the record"
    )
    devices = new.devices()
    lost = [n for n in contract.devices if not devices[n].reclaimed]
    assert not lost, (
        f"{contract.name}: {', '.join(lost)} not reclaimed by the next kernel (a new process): "
        "see its restore_failed log line"
    )
    for name, old in before.items():
        got = _call(
            contract, f"the snapshot of {name} after kexec", new.snapshot, contract.name, name
        )
        if got != old:
            change = difference(old, got)
            raise AssertionError(
                f"{contract.name}: {name} lost state across a real kexec ({change}); "
                + _channel(findings)
            )


def _channel(findings: dict[str, list[str]]) -> str:
    """The likeliest way the state left the handoff, from what the old kernel did."""
    hints = []
    if findings["globals"]:
        hints.append(
            "module globals or class attributes changed during the workload: "
            + ", ".join(findings["globals"][:4])
        )
    if findings["environment"]:
        hints.append("the environment was changed: " + ", ".join(findings["environment"][:4]))
    if hints:
        return (
            "the likely channel: "
            + "; ".join(hints)
            + ". None of it survives kexec: hand the state over in the record"
        )
    return (
        "it did not come back from the record: the next kernel is a new process, so state "
        "held in Python objects (driver_data, ops, ids of objects) is gone; put it in the "
        "record or the device's registers"
    )


def check_deterministic_across_processes(pack: Pack) -> None:
    """The same state gives the same record bytes in kernels with different hash seeds."""
    ref = reference(pack)
    for contract in each_contract(pack):
        config = KernelConfig(
            [ref, *contract.requires],
            discover=False,
            driver_override=contract.driver_override,
        )
        records: list[dict[str, bytes]] = []
        for seed in HASH_SEEDS:
            env = kernel_env({"PYTHONHASHSEED": seed})
            with (
                machine(contract, ref, env) as hardware,
                KernelProcess.boot(hardware, config, env=env) as kernel,
            ):
                for name in contract.devices:
                    _call(contract, f"requesting {name}", kernel.request, name)
                    _call(
                        contract,
                        f"the workload on {name}",
                        kernel.workload,
                        contract.name,
                        name,
                    )
                _call(contract, "prepare", kernel.prepare)
                records.append(kernel.records())
                kernel.cancel()
        for name in contract.devices:
            node = f"device:{name}"
            first, second = (r.get(node) for r in records)
            assert first == second, (
                f"{contract.name}: {name}'s record differs between two kernels given the same "
                f"work (started with PYTHONHASHSEED={HASH_SEEDS[0]} and {HASH_SEEDS[1]}): it "
                "holds something besides the device's state, such as hash order (a set, or a "
                "dict built from one: sort it), random numbers, times or object ids"
            )
