"""A hypothesis state machine that drives a pack through random live updates.

Rules: the contract's workload on any device (in every state: while frozen it
must be refused or its effect handed over), prepare, freeze, cancel, kexec
and finish, legal or not (a kexec with no update prepared is a plain kexec:
every device starts cold).  The model is the global state and, per device, the
snapshot the next kernel (or a cancel) must give back.  The sequences are the
same on every run (a fixed seed), so a restore that fails only on some inputs
fails every time, and the failing sequence is printed.
"""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from luo_core.errors import InvalidTransitionError
from luo_core.kernel._kernel import Kernel
from luo_core.kernel._state import TRANSITIONS, Event, State
from luo_core.testing._checks import snapshot
from luo_core.testing._contract import Contract
from luo_core.testing._diff import difference
from luo_core.testing._harness import boot

EXAMPLES = 40
STEPS = 20


def pack_machine(pack: Any, contract: Contract) -> type[RuleBasedStateMachine]:
    """A state machine class for one contract of ``pack``."""
    traffic_in_prepared = "traffic-during-prepare" in contract.capabilities

    class PackModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.kernel: Kernel = boot(contract, pack)
            self.state = State.NORMAL
            self.plain = False
            self.expected = {n: self.snap(n) for n in contract.devices}

        def snap(self, name: str) -> Any:
            return snapshot(contract, self.kernel, name, f"in state {self.state.value}")

        def check_devices(self, after: str) -> None:
            for name, want in self.expected.items():
                got = self.snap(name)
                assert got == want, (
                    f"{contract.name}: {name} after {after}: {difference(want, got)}"
                )

        @rule(name=st.sampled_from(contract.devices))
        def workload(self, name: str) -> None:
            if self.state is State.PREPARED and not traffic_in_prepared:
                return
            if self.state is State.FROZEN:
                # Refused, or not: either way what the driver now holds must reach the next kernel.
                with contextlib.suppress(Exception):
                    contract.workload(self.kernel.devices[name])
            else:
                contract.workload(self.kernel.devices[name])
            self.expected[name] = self.snap(name)

        @rule(event=st.sampled_from(list(Event)))
        def event(self, event: Event) -> None:
            target = TRANSITIONS.get((self.state, event))
            call = getattr(self.kernel, event.value)
            if target is None:
                try:
                    call()
                except InvalidTransitionError:
                    return
                raise AssertionError(f"{event.value} from {self.state.value} was accepted")
            call()
            self.state = target
            if event is Event.CANCEL:
                self.check_devices("cancel")
            if event is Event.FINISH:  # a new kernel starts with nothing requested
                for name in contract.devices:
                    self.kernel.devices.request(name)

        # A plain kexec (no update prepared): one per sequence is enough to see the pack
        # boot cold after it; more only make a failing sequence slow to shrink.
        @precondition(lambda self: self.state in (State.PREPARED, State.FROZEN) or not self.plain)
        @rule()
        def kexec(self) -> None:
            if self.state not in (State.PREPARED, State.FROZEN):
                self.plain = True
                self.kernel = self.kernel.kexec()
                self.state = State.NORMAL
                for name in contract.devices:
                    assert not self.kernel.devices[name].preserved, (
                        f"{contract.name}: {name} preserved by a kexec without prepare"
                    )
                    self.kernel.devices.request(name)
                    self.expected[name] = self.snap(name)
                return
            self.kernel = self.kernel.kexec()
            self.state = State.UPDATED
            for name in contract.devices:
                dev = self.kernel.devices[name]
                assert dev.preserved and dev.reclaimed, (
                    f"{contract.name}: {name} not reclaimed after kexec (see restore_failed)"
                )
            self.check_devices("kexec")

        @invariant()
        def state_matches(self) -> None:
            assert self.kernel.state is self.state

    PackModel.__name__ = f"PackModel[{contract.name}]"
    return PackModel


def check_random_sequences(
    pack: Any, *, examples: int = EXAMPLES, steps: int = STEPS, shrink: bool = True
) -> None:
    """Random sequences of workload and events against the model, per contract.

    The sequences come from a fixed seed: the same on every run."""
    from luo_core.testing._checks import each_contract

    for contract in each_contract(pack):
        run_state_machine_as_test(
            pack_machine(pack, contract),
            settings=settings(
                max_examples=examples,
                stateful_step_count=steps,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
                phases=[p for p in Phase if shrink or p not in (Phase.shrink, Phase.explain)],
            ),
        )
