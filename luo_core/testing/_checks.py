"""The contract checks, as plain functions: each raises AssertionError saying what broke.

Every check boots fresh hosts from the pack's contracts, with only that pack
loaded, and drives them through real (in-process) live updates.
"""

from __future__ import annotations

import copy
import errno
import threading
from collections.abc import Iterator
from typing import Any

from luo_core.abi import schema_of, seal, unseal
from luo_core.errors import CallbackError, LiveUpdateError, VersionTooNewError
from luo_core.kernel._kernel import Kernel
from luo_core.kernel._preserved import Preserved
from luo_core.kernel._state import State
from luo_core.testing._contract import Contract
from luo_core.testing._harness import boot, contracts_of, record_of


def each_contract(pack: object) -> list[Contract]:
    contracts = contracts_of(pack)
    assert contracts, "the pack declares no contract: implement the luo_contracts hook"
    return contracts


def _loaded(contract: Contract, pack: object, **kwargs: Any) -> tuple[Kernel, dict[str, Any]]:
    """A kernel with the workload run on every device, and their snapshots."""
    kernel = boot(contract, pack, **kwargs)
    for name in contract.devices:
        contract.workload(kernel.devices[name])
    return kernel, _snapshots(contract, kernel)


def _snapshot(contract: Contract, kernel: Kernel, name: str, when: str) -> Any:
    try:
        # Copied: a snapshot that returns live driver state must not change with it.
        return copy.deepcopy(contract.snapshot(kernel.devices[name]))
    except Exception as exc:
        raise AssertionError(
            f"{contract.name}: {name} cannot be observed {when} (half restored?): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _snapshots(contract: Contract, kernel: Kernel) -> dict[str, Any]:
    return {
        name: _snapshot(contract, kernel, name, "for its first snapshot")
        for name in contract.devices
    }


def _unchanged(
    contract: Contract, kernel: Kernel, before: dict[str, Any], after_what: str
) -> None:
    for name, old in before.items():
        new = _snapshot(contract, kernel, name, f"after {after_what}")
        assert new == old, (
            f"{contract.name}: {name} changed by {after_what}: {old!r} became {new!r}"
        )


def _works(contract: Contract, kernel: Kernel, when: str) -> None:
    for name in contract.devices:
        try:
            contract.workload(kernel.devices[name])
        except Exception as exc:
            raise AssertionError(
                f"{contract.name}: {name} does not work {when}: {type(exc).__name__}: {exc}"
            ) from exc


def check_round_trip(pack: object, *, workers: int = 1) -> None:
    """State survives a kexec; the devices are reclaimed and keep working."""
    for contract in each_contract(pack):
        kernel, before = _loaded(contract, pack, workers=workers)
        kernel.prepare()
        new = kernel.kexec()
        for name in contract.devices:
            assert new.devices[name].reclaimed, (
                f"{contract.name}: {name} was not reclaimed after kexec (see restore_failed)"
            )
        _unchanged(contract, new, before, "the live update (state lost across kexec)")
        new.finish()
        _works(contract, new, "after the live update")


def check_restore_idempotent(pack: object) -> None:
    """Restoring the same handoff twice gives the same devices (restore only reads)."""
    for contract in each_contract(pack):
        kernel, before = _loaded(contract, pack)
        kernel.prepare()
        first = kernel.kexec()
        assert first.kho_root is not None
        again = Kernel(first.machine, first.config, first.kho_root)
        for name in contract.devices:
            assert again.devices[name].reclaimed, (
                f"{contract.name}: {name} could not be restored a second time from the same "
                "handoff: restore must not consume or change what it restores from"
            )
        _unchanged(contract, again, before, "a second restore from the same handoff")


def check_traffic_during_prepare(pack: object) -> None:
    """What the workload did between prepare and freeze reaches the next kernel."""
    for contract in each_contract(pack):
        kernel, _ = _loaded(contract, pack)
        kernel.prepare()
        _works(contract, kernel, "between prepare and freeze")
        frozen = _snapshots(contract, kernel)
        new = kernel.kexec()
        _unchanged(contract, new, frozen, "kexec after traffic during prepare")


def check_cancel(pack: object, after: str) -> None:
    """Cancel after ``prepare`` or ``freeze`` leaves every device as it was, working."""
    for contract in each_contract(pack):
        kernel, before = _loaded(contract, pack)
        kernel.prepare()
        if after == "freeze":
            kernel.freeze()
        kernel.cancel()
        assert kernel.state is State.NORMAL
        _unchanged(contract, kernel, before, f"cancel after {after}")
        _works(contract, kernel, f"after cancel after {after}")


def check_fault(pack: object, callback: str) -> None:
    """A fault in ``callback`` ends in a defined state with nothing lost."""
    for contract in each_contract(pack):
        kernel, before = _loaded(contract, pack, fail=callback)
        if callback in ("prepare", "freeze"):
            try:
                kernel.prepare()
                kernel.freeze()
            except CallbackError:
                pass
            else:
                raise AssertionError(
                    f"{contract.name}: a fault in {callback} did not stop the update"
                )
            assert kernel.state is State.NORMAL, f"{contract.name}: not back in normal"
            _unchanged(contract, kernel, before, f"a rolled-back fault in {callback}")
            _works(contract, kernel, f"after a fault in {callback}")
        elif callback == "cancel":
            kernel.prepare()
            kernel.cancel()  # must not raise: cancel callbacks cannot fail a transition
            assert kernel.state is State.NORMAL
        elif callback == "restore":
            kernel.prepare()
            new = kernel.kexec()
            for name in contract.devices:
                dev = new.devices[name]
                assert dev.preserved and not dev.reclaimed and dev.driver is None, (
                    f"{contract.name}: {name} is half restored after a fault in restore"
                )
            new.finish()
            assert new.state is State.NORMAL
        elif callback == "finish":
            kernel.prepare()
            new = kernel.kexec()
            new.finish()
            assert new.state is State.NORMAL
        else:
            raise ValueError(f"no fault check for {callback!r}")


HANG_BUDGET_S = 0.25


def check_hang(pack: object, callback: str) -> None:
    """A callback hanging past its budget ends in a defined state.

    prepare or freeze: the update is rolled back with ``ETIMEDOUT`` naming the
    participant, and every *other* device is as it was; restore: that device
    is left preserved, not reclaimed and unbound, the others are reclaimed.
    """
    for contract in each_contract(pack):
        release = threading.Event()
        try:
            kernel, before = _loaded(
                contract, pack, fail=f"hang-{callback}", release=release, timeout=HANG_BUDGET_S
            )
            hung = contract.devices[0]
            if callback in ("prepare", "freeze"):
                failure: CallbackError | None = None
                try:
                    kernel.prepare()
                    kernel.freeze()
                except CallbackError as exc:
                    failure = exc
                assert failure is not None, f"{contract.name}: a hung {callback} went unnoticed"
                assert failure.errno == errno.ETIMEDOUT, f"{contract.name}: {failure}"
                hung = failure.participant.partition(":")[2]
                assert kernel.state is State.NORMAL
                others = {n: s for n, s in before.items() if n != hung}
                _unchanged(contract, kernel, others, f"a hung {callback} in {hung}")
            elif callback == "restore":
                kernel.prepare()
                new = kernel.kexec()
                stuck = [n for n in contract.devices if not new.devices[n].reclaimed]
                assert stuck, f"{contract.name}: a hung restore went unnoticed"
                for name in stuck:
                    dev = new.devices[name]
                    assert dev.preserved and dev.driver is None, f"{name} is half restored"
            else:
                raise ValueError(f"no hang check for {callback!r}")
        finally:
            release.set()


def check_deterministic(pack: object) -> None:
    """The same state always gives the same record bytes."""
    for contract in each_contract(pack):
        blobs = []
        for _ in range(2):
            kernel, _snap = _loaded(contract, pack)
            kernel.prepare()
            blobs.append({name: record_of(kernel, name) for name in contract.devices})
        for name in contract.devices:
            assert blobs[0][name] == blobs[1][name], (
                f"{contract.name}: {name}'s record differs between two identical runs"
            )


def _mutations(blob: bytes) -> Iterator[tuple[str, bytes]]:
    yield "empty", b""
    for cut in (1, 4, len(blob) // 2, len(blob) - 1):
        yield f"truncated to {cut} bytes", blob[:cut]
    for at in range(0, len(blob), max(1, len(blob) // 16)):
        for bit in (0, 7):
            flipped = bytearray(blob)
            flipped[at] ^= 1 << bit
            yield f"bit {bit} of byte {at} flipped", bytes(flipped)
    yield "trailing garbage", blob + b"\x00garbage"


def check_hostile_records(pack: object) -> None:
    """Damaged or too-new records for this pack give typed errors, never a crash."""
    for contract in each_contract(pack):
        kernel, _ = _loaded(contract, pack)
        kernel.prepare()
        for name in contract.devices:
            driver = kernel.devices[name].driver
            assert driver is not None
            blob = record_of(kernel, name)
            for what, bad in _mutations(blob):
                _open_must_be_typed(contract, name, what, driver.name, driver.schema, bad)
            if driver.schema is not None:
                sealed = unseal(blob)
                schema = schema_of(driver.schema)
                newer = seal(sealed.compatible, schema.version + 1, sealed.payload)
                try:
                    Preserved().open(("device", name), driver.name, driver.schema, newer)
                except VersionTooNewError:
                    pass
                else:
                    raise AssertionError(
                        f"{contract.name}: a v{schema.version + 1} record was accepted"
                    )


def _open_must_be_typed(
    contract: Contract, name: str, what: str, owner: str, schema: type[Any] | None, blob: bytes
) -> None:
    try:
        Preserved().open(("device", name), owner, schema, blob)
    except LiveUpdateError:
        pass
    except Exception as exc:
        raise AssertionError(
            f"{contract.name}: {name}'s record {what} raised {type(exc).__name__}: {exc} "
            "instead of a typed luo error"
        ) from exc


def check_golden(pack: object) -> None:
    """Records written by every older version the pack claims to read still open."""
    for contract in each_contract(pack):
        kernel = boot(contract, pack)
        driver = kernel.devices[contract.devices[0]].driver
        assert driver is not None and driver.schema is not None, (
            f"{contract.name}: golden records need a schema"
        )
        schema = schema_of(driver.schema)
        for version, blob in sorted(contract.golden.items()):
            assert unseal(blob).version == version, f"golden v{version} is not a v{version} record"
            Preserved().open(("device", "golden"), driver.name, driver.schema, blob)
        missing = set(range(schema.min_version, schema.version)) - set(contract.golden)
        assert not missing, (
            f"{contract.name}: reads v{schema.min_version}..v{schema.version} but ships no "
            f"golden record for {', '.join(f'v{v}' for v in sorted(missing))}"
        )


def blackout_costs(pack: object) -> dict[str, dict[str, float]]:
    """freeze and restore time per device (µs), from one live update."""
    costs: dict[str, dict[str, float]] = {}
    for contract in each_contract(pack):
        kernel, _ = _loaded(contract, pack)
        kernel.prepare()
        new = kernel.kexec()
        assert new.stats is not None
        for phase in ("freeze", "restore"):
            spent = new.stats.phases[phase].participants_us
            for name in contract.devices:
                costs.setdefault(f"{contract.name}:{name}", {})[phase] = spent[f"device:{name}"]
    return costs


def over_budget(pack: object, costs: dict[str, dict[str, float]]) -> list[str]:
    """Devices whose freeze or restore cost more than their contract allows."""
    found = []
    for contract in each_contract(pack):
        for name in contract.devices:
            spent = costs[f"{contract.name}:{name}"]
            for phase, budget in (
                ("freeze", contract.freeze_budget_us),
                ("restore", contract.restore_budget_us),
            ):
                if spent[phase] > budget:
                    found.append(
                        f"{contract.name}: {name} {phase} took {spent[phase]:.0f} µs "
                        f"(budget {budget:.0f} µs)"
                    )
    return found
