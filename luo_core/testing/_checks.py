"""The contract checks that run in this process: each raises AssertionError saying what broke.

Every check powers on a fresh host from the pack's contracts, boots it with
only that pack loaded and drives it through live updates with an in-process
kexec.  The checks that need a real kexec — state across processes,
determinism across hash seeds — are in :mod:`luo_core.testing._process`.
"""

from __future__ import annotations

import contextlib
import errno
import pickletools
import statistics
import threading
from collections.abc import Iterator
from typing import Any

from luo_core.abi import decode_state, schema_of, seal, unseal
from luo_core.abi._cbor import decode_canonical
from luo_core.abi._wire import plain
from luo_core.errors import CallbackError, LiveUpdateError, VersionTooNewError
from luo_core.kernel._kernel import Kernel
from luo_core.kernel._preserved import Preserved
from luo_core.kernel._state import State
from luo_core.kexec._inproc import reboot
from luo_core.platform import Hardware
from luo_core.testing._contract import Contract
from luo_core.testing._diff import difference
from luo_core.testing._harness import boot, contracts_of, power_on, record_of

Pack = Any
BUDGET_RUNS = 3


def each_contract(pack: Pack) -> list[Contract]:
    contracts = contracts_of(pack)
    assert contracts, "the pack declares no contract: implement the luo_contracts hook"
    return contracts


class Loaded:
    """A kernel on a fresh host, its hardware, and the devices' snapshots after the workload."""

    def __init__(self, contract: Contract, pack: Pack, **kwargs: Any) -> None:
        self.contract = contract
        self.hardware = power_on(contract, pack)
        self.kernel = boot(contract, pack, hardware=self.hardware, **kwargs)
        for name in contract.devices:
            contract.workload(self.kernel.devices[name])
        self.before = snapshots(contract, self.kernel)
        self.registers = registers(self.hardware, contract)


def snapshot(contract: Contract, kernel: Kernel, name: str, when: str) -> Any:
    try:
        # Plain data: compared as the cross-process checks compare it, and no
        # longer tied to the driver's live objects.
        return plain(contract.snapshot(kernel.devices[name]))
    except Exception as exc:
        raise AssertionError(
            f"{contract.name}: {name} cannot be observed {when} (half restored?): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def snapshots(contract: Contract, kernel: Kernel) -> dict[str, Any]:
    return {
        name: snapshot(contract, kernel, name, "for its first snapshot")
        for name in contract.devices
    }


def registers(hardware: Hardware, contract: Contract) -> dict[str, Any]:
    """What the driver owns in hardware: its registers, the configuration space, bus mastering."""
    return {
        name: {
            "registers": hardware.registers(name).values(owner="driver"),
            "config": hardware.config(name).values(),
        }
        for name in contract.devices
    }


def unchanged(contract: Contract, kernel: Kernel, before: dict[str, Any], after_what: str) -> None:
    for name, old in before.items():
        new = snapshot(contract, kernel, name, f"after {after_what}")
        assert new == old, (
            f"{contract.name}: {name} changed by {after_what}: {difference(old, new)}"
        )


def registers_unchanged(loaded: Loaded, after_what: str) -> None:
    now = registers(loaded.hardware, loaded.contract)
    for name, old in loaded.registers.items():
        assert now[name] == old, (
            f"{loaded.contract.name}: {name}'s hardware changed by {after_what}: "
            f"{difference(old, now[name])} (cancel must leave registers and bus mastering "
            "exactly as they were before prepare)"
        )


def works(contract: Contract, kernel: Kernel, when: str) -> None:
    for name in contract.devices:
        try:
            contract.workload(kernel.devices[name])
        except Exception as exc:
            raise AssertionError(
                f"{contract.name}: {name} does not work {when}: {type(exc).__name__}: {exc}"
            ) from exc


def check_round_trip(pack: Pack, *, workers: int = 1) -> None:
    """State survives an in-process kexec; the devices are reclaimed and keep working."""
    for contract in each_contract(pack):
        loaded = Loaded(contract, pack, workers=workers)
        loaded.kernel.prepare()
        new = loaded.kernel.kexec()
        for name in contract.devices:
            assert new.devices[name].reclaimed, (
                f"{contract.name}: {name} was not reclaimed after kexec (see restore_failed)"
            )
        unchanged(contract, new, loaded.before, "the live update (state lost across kexec)")
        new.finish()
        works(contract, new, "after the live update")


def check_restore_idempotent(pack: Pack) -> None:
    """Restoring the same handoff twice gives the same devices (restore only reads)."""
    for contract in each_contract(pack):
        loaded = Loaded(contract, pack)
        loaded.kernel.prepare()
        again = reboot(loaded.kernel.kexec())
        for name in contract.devices:
            assert again.devices[name].reclaimed, (
                f"{contract.name}: {name} could not be restored a second time from the same "
                "handoff: restore must not consume or change what it restores from"
            )
        unchanged(contract, again, loaded.before, "a second restore from the same handoff")


def check_traffic_during_prepare(pack: Pack) -> None:
    """What the workload did between prepare and freeze reaches the next kernel."""
    for contract in each_contract(pack):
        kernel = Loaded(contract, pack).kernel
        kernel.prepare()
        works(contract, kernel, "between prepare and freeze")
        frozen = snapshots(contract, kernel)
        new = kernel.kexec()
        unchanged(contract, new, frozen, "kexec after traffic during prepare")


def check_frozen_workload(pack: Pack) -> None:
    """Work asked of a frozen device is refused, or what it changed is handed over."""
    for contract in each_contract(pack):
        kernel = Loaded(contract, pack).kernel
        kernel.prepare()
        kernel.freeze()
        for name in contract.devices:
            # Refused, as it should be, or not: what it may have changed is checked below.
            with contextlib.suppress(Exception):
                contract.workload(kernel.devices[name])
        frozen = snapshots(contract, kernel)
        new = kernel.kexec()
        lost = [n for n in contract.devices if not new.devices[n].reclaimed]
        assert not lost, (
            f"{contract.name}: {', '.join(lost)} could not be reclaimed after work asked of it "
            "while frozen (see restore_failed): what was handed over no longer matched the "
            "device; refuse work while frozen (raise luo_core.errors.BusyError)"
        )
        for name, old in frozen.items():
            got = snapshot(contract, new, name, "after kexec")
            assert got == old, (
                f"{contract.name}: {name} changed after freeze and the next kernel did not get "
                f"the change ({difference(old, got)}): refuse work while frozen (raise "
                "luo_core.errors.BusyError) or hand the change over"
            )


def check_cancel(pack: Pack, after: str) -> None:
    """Cancel after ``prepare`` or ``freeze`` leaves every device as it was, registers
    and bus mastering included, and working."""
    for contract in each_contract(pack):
        loaded = Loaded(contract, pack)
        kernel = loaded.kernel
        kernel.prepare()
        if after == "freeze":
            kernel.freeze()
        kernel.cancel()
        assert kernel.state is State.NORMAL
        unchanged(contract, kernel, loaded.before, f"cancel after {after}")
        registers_unchanged(loaded, f"cancel after {after}")
        works(contract, kernel, f"after cancel after {after}")


def check_fault(pack: Pack, callback: str) -> None:
    """A fault in ``callback`` ends in a defined state with nothing lost."""
    for contract in each_contract(pack):
        loaded = Loaded(contract, pack, fail=callback)
        kernel = loaded.kernel
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
            unchanged(contract, kernel, loaded.before, f"a rolled-back fault in {callback}")
            registers_unchanged(loaded, f"a rolled-back fault in {callback}")
            works(contract, kernel, f"after a fault in {callback}")
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


def check_hang(pack: Pack, callback: str) -> None:
    """A callback hanging past its budget ends in a defined state.

    prepare or freeze: the update is rolled back with ``ETIMEDOUT`` naming the
    participant, and every *other* device is as it was; restore: that device
    is left preserved, not reclaimed and unbound, the others are reclaimed.
    """
    for contract in each_contract(pack):
        release = threading.Event()
        try:
            loaded = Loaded(
                contract, pack, fail=f"hang-{callback}", release=release, timeout=HANG_BUDGET_S
            )
            kernel, hung = loaded.kernel, contract.devices[0]
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
                others = {n: s for n, s in loaded.before.items() if n != hung}
                unchanged(contract, kernel, others, f"a hung {callback} in {hung}")
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


def check_hostile_records(pack: Pack) -> None:
    """Damaged or too-new records for this pack give typed errors, never a crash."""
    for contract in each_contract(pack):
        kernel = Loaded(contract, pack).kernel
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


def check_no_pickle(pack: Pack) -> None:
    """No record field carries a pickle stream: state is declared, field by field."""
    for contract in each_contract(pack):
        kernel = Loaded(contract, pack).kernel
        kernel.prepare()
        for name in contract.devices:
            payload = decode_canonical(unseal(record_of(kernel, name)).payload)
            for where in _pickles(payload, "record"):
                raise AssertionError(
                    f"{contract.name}: {name}'s {where} holds a pickle stream: pickle is never "
                    "a handoff format; declare the state's fields in the schema"
                )
        kernel.cancel()


def _pickles(value: object, where: str) -> Iterator[str]:
    if isinstance(value, bytes):
        if _is_pickle(value):
            yield where
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _pickles(item, f"{where}.{key}")
    elif isinstance(value, list):
        for at, item in enumerate(value):
            yield from _pickles(item, f"{where}[{at}]")


def _is_pickle(blob: bytes) -> bool:
    """A whole pickle stream (protocol 2 or later): PROTO first, STOP last, nothing left."""
    if len(blob) < 4 or blob[0] != 0x80 or blob[-1:] != b".":
        return False
    try:
        end = 0
        for opcode, _arg, pos in pickletools.genops(blob):
            end = (pos or 0) + 1
            if opcode.name == "STOP":
                break
        return end == len(blob)
    except Exception:
        return False


def check_golden(pack: Pack) -> None:
    """Records written by every older version the pack reads still open: one golden record
    for each of ``min_version`` .. ``version - 1`` (the current version's records are
    written and read by every other check)."""
    for contract in each_contract(pack):
        kernel = boot(contract, pack)
        driver = kernel.devices[contract.devices[0]].driver
        assert driver is not None and driver.schema is not None, (
            f"{contract.name}: golden records need a schema"
        )
        schema = schema_of(driver.schema)
        for version, blob in sorted(contract.golden.items()):
            sealed = unseal(blob)
            assert sealed.version == version, f"golden v{version} is not a v{version} record"
            decode_state(driver.schema, sealed.payload, sealed.version)
        missing = set(range(schema.min_version, schema.version)) - set(contract.golden)
        assert not missing, (
            f"{contract.name}: reads v{schema.min_version}..v{schema.version} but ships no "
            f"golden record for {', '.join(f'v{v}' for v in sorted(missing))}"
        )


def blackout_costs(pack: Pack, runs: int = BUDGET_RUNS) -> dict[str, dict[str, float]]:
    """Per device, the median over ``runs`` live updates of freeze, restore and their sum (µs)."""
    samples: dict[str, dict[str, list[float]]] = {}
    for contract in each_contract(pack):
        for _ in range(runs):
            kernel = Loaded(contract, pack).kernel
            kernel.prepare()
            new = kernel.kexec()
            assert new.stats is not None
            for name in contract.devices:
                spent = {
                    phase: new.stats.phases[phase].participants_us.get(f"device:{name}", 0.0)
                    for phase in ("freeze", "restore")
                }
                spent["total"] = spent["freeze"] + spent["restore"]
                row = samples.setdefault(f"{contract.name}:{name}", {})
                for key, value in spent.items():
                    row.setdefault(key, []).append(value)
    return {
        device: {key: statistics.median(values) for key, values in row.items()}
        for device, row in samples.items()
    }


def over_budget(pack: Pack, costs: dict[str, dict[str, float]]) -> list[str]:
    """Devices whose freeze plus restore cost more than their contract allows."""
    found = []
    for contract in each_contract(pack):
        for name in contract.devices:
            spent = costs[f"{contract.name}:{name}"]
            if spent["total"] > contract.blackout_budget_us:
                found.append(
                    f"{contract.name}: {name} spends {spent['total']:.0f} µs in freeze and "
                    f"restore (freeze {spent['freeze']:.0f}, restore {spent['restore']:.0f}; "
                    f"median of {BUDGET_RUNS}), over its blackout budget of "
                    f"{contract.blackout_budget_us:.0f} µs: move the work to prepare or finish"
                )
    return found


def check_blackout_budget(pack: Pack) -> dict[str, dict[str, float]]:
    """Freeze plus restore per device stays within the contract's blackout budget."""
    costs = blackout_costs(pack)
    problems = over_budget(pack, costs)
    assert not problems, "; ".join(problems)
    return costs
