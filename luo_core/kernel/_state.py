"""The global live-update state machine: states, events, legal transitions, one at a time."""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from luo_core.errors import BusyError, InvalidTransitionError, LiveUpdateError, TryAgainError


class State(enum.Enum):
    """Global live-update state, as in the LUO RFCs."""

    NORMAL = "normal"
    PREPARED = "prepared"
    FROZEN = "frozen"
    UPDATED = "updated"


class Event(enum.Enum):
    """Events that move the global state."""

    PREPARE = "prepare"
    FREEZE = "freeze"
    CANCEL = "cancel"
    FINISH = "finish"


TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.NORMAL, Event.PREPARE): State.PREPARED,
    (State.PREPARED, Event.FREEZE): State.FROZEN,
    (State.PREPARED, Event.CANCEL): State.NORMAL,
    (State.FROZEN, Event.CANCEL): State.NORMAL,
    (State.UPDATED, Event.FINISH): State.NORMAL,
}
"""Every legal ``(state, event) -> new state``; anything else is ``EINVAL``."""

REGISTRATION_STATES = frozenset({State.NORMAL, State.UPDATED})
"""States in which participants may register or unregister (else ``EBUSY``)."""


class StateMachine:
    """Holds the global state and serialises transitions.

    A second caller that arrives while a transition runs waits for it to end,
    as on the RFC's ``luo_state_rwsem`` (``down_write_killable()``); with
    ``timeout`` it waits up to that many seconds and then gets
    :class:`TryAgainError` (``EAGAIN``, what the kernel returns when the wait
    is interrupted).  A call from inside the running transition (its own
    thread, or a callback it runs on another thread) would wait for itself
    forever: it gets :class:`BusyError` (``EBUSY``) at once instead.  The state
    changes only when the transition body succeeds.
    """

    def __init__(self, initial: State = State.NORMAL) -> None:
        self._state = initial
        self._lock = threading.Lock()
        self._holder: str | None = None
        self._owner: int | None = None

    @property
    def state(self) -> State:
        return self._state

    def target(self, event: Event) -> State:
        """The state ``event`` leads to from the current state, or ``EINVAL``."""
        try:
            return TRANSITIONS[(self._state, event)]
        except KeyError:
            raise InvalidTransitionError(
                f"{event.value}: not allowed in state {self._state.value}"
            ) from None

    def held_here(self) -> bool:
        """Whether the calling thread holds this machine."""
        return self._owner == threading.get_ident()

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Mark the calling thread as running a callback of the transition that
        holds this machine, so that a call back into it fails instead of waiting."""
        serving: list[StateMachine] = _callbacks.__dict__.setdefault("serving", [])
        serving.append(self)
        try:
            yield
        finally:
            serving.pop()

    @contextmanager
    def hold(
        self,
        what: str,
        timeout: float | None = None,
        allowed: frozenset[State] | None = None,
        error: type[LiveUpdateError] = BusyError,
    ) -> Iterator[State]:
        """Hold the machine for ``what``, waiting for a running transition to
        end; refuse it (with ``error``) outside ``allowed`` states.  Yields the
        current state."""
        self._refuse_reentry(what)
        if timeout is None:
            self._lock.acquire()
        elif not self._lock.acquire(timeout=timeout):
            raise TryAgainError(f"{what}: a transition still ran after waiting {timeout:g}s")
        self._holder, self._owner = what, threading.get_ident()
        try:
            if allowed is not None and self._state not in allowed:
                raise error(f"{what}: not allowed in state {self._state.value}")
            yield self._state
        finally:
            self._holder = self._owner = None
            self._lock.release()

    def _refuse_reentry(self, what: str) -> None:
        # Read without the lock: they matter only when this thread holds the
        # machine or runs a callback for its holder, and then they cannot change.
        holder = self._holder
        if holder is None:
            return
        if self._owner == threading.get_ident() or self in getattr(_callbacks, "serving", ()):
            raise BusyError(
                f"{what}: called from inside {holder}, which holds the live-update state "
                "and would wait for it forever; do it after the transition returns"
            )

    @contextmanager
    def transition(self, event: Event, timeout: float | None = None) -> Iterator[State]:
        """Hold the machine for ``event`` and yield the state it leads to.

        The body commits with :meth:`force` (to the target, or to ``normal``
        on rollback); if it raises without forcing, the state is unchanged.
        """
        with self.hold(event.value, timeout):
            yield self.target(event)

    def force(self, state: State) -> None:
        """Set the state from inside a held transition (commit or rollback)."""
        self._state = state


_callbacks = threading.local()
"""Per thread: the machines whose transition's callbacks the thread is running."""
