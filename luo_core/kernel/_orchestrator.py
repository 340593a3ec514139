"""Runs one phase over participants: order, concurrency, timing, logging.

A phase either stops at the first failure (prepare, freeze, restore of a
subtree) or must go through everything (cancel, finish).  Devices run in
dependency order from a graph, earliest first by the phase's order key; with
``workers > 1`` independent subtrees run concurrently, like the kernel's
async suspend, handed to the workers in the same order, and a phase that
succeeds ends as in serial mode.  After a failure, work already handed to
the workers still finishes, where serial mode would not have started it.
"""

from __future__ import annotations

import graphlib
import heapq
import queue
import threading
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import attrs

from luo_core._logging import get_logger
from luo_core.abi._stats import CallbackStat, PhaseStats, now_ns
from luo_core.errors import CallbackTimeoutError

if TYPE_CHECKING:
    from luo_core.kernel._state import StateMachine

log = get_logger("luo")
K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


@attrs.define
class GraphOutcome(Generic[K]):
    """Which nodes succeeded (completion order), failed, or never ran."""

    succeeded: list[K] = attrs.field(factory=list)
    failed: list[tuple[K, Exception]] = attrs.field(factory=list)
    skipped: list[K] = attrs.field(factory=list)


class PhaseRunner:
    """Times and logs every callback of one phase into its :class:`PhaseStats`."""

    def __init__(
        self,
        phase: str,
        workers: int = 1,
        timeout: float | None = None,
        abandoned: list[threading.Thread] | None = None,
        machine: StateMachine | None = None,
    ) -> None:
        self.phase = phase
        self.workers = max(1, workers)
        self.timeout = timeout
        self.abandoned = [] if abandoned is None else abandoned
        """Where the threads of callbacks given up on (timed out) are kept."""
        self.machine = machine
        """The state machine whose transition runs this phase: a callback that
        calls back into it, from whatever thread, fails instead of waiting forever."""
        self.stats = PhaseStats(phase=phase, start_ns=now_ns())
        # Bind once per phase: an unbound structlog proxy re-binds on every call.
        self.log = log.bind(phase=phase)

    def call(self, participant: str, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)``; record its time and outcome; re-raise its error."""
        start = now_ns()
        try:
            if self.timeout is None:
                result = self._serve(fn, *args)
            else:
                result = _bounded(
                    self.timeout, participant, self.phase, self.abandoned, self._serve, fn, *args
                )
        except Exception as exc:
            duration = now_ns() - start
            self.stats.add(
                CallbackStat(
                    participant, self.phase, start, duration, False, threading.get_native_id()
                )
            )
            self.log.warning(
                "callback",
                participant=participant,
                duration_us=duration / 1000,
                outcome="error",
                error=f"{type(exc).__name__}: {exc}",
            )
            raise
        duration = now_ns() - start
        self.stats.add(
            CallbackStat(participant, self.phase, start, duration, True, threading.get_native_id())
        )
        self.log.debug(
            "callback",
            participant=participant,
            duration_us=duration / 1000,
            outcome="ok",
        )
        return result

    def _serve(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on the calling thread, marked as serving ``machine`` unless the
        thread holds it (then a call back in is refused already, and this runs once per
        callback on the blackout path)."""
        if self.machine is None or self.machine.held_here():
            return fn(*args)
        with self.machine.serving():
            return fn(*args)

    def call_quietly(self, participant: str, fn: Callable[..., object], *args: object) -> bool:
        """For callbacks that must not fail (cancel, finish): log and go on."""
        try:
            self.call(participant, fn, *args)
        except Exception as exc:
            self.log.error(
                "callback_must_not_fail",
                participant=participant,
                error=f"{type(exc).__name__}: {exc}",
            )
            return False
        return True

    def run_graph(
        self,
        graph: Mapping[K, set[K]],
        fn: Callable[[K], object],
        order_key: Callable[[K], int],
        *,
        stop_on_error: bool,
    ) -> GraphOutcome[K]:
        """Run ``fn`` on every node after the nodes it depends on.

        A failed node's dependents never run (they are ``skipped``).  With
        ``stop_on_error`` nothing new starts after the first failure; work in
        flight finishes.
        """
        sorter = graphlib.TopologicalSorter(graph)
        sorter.prepare()
        outcome: GraphOutcome[K] = GraphOutcome()
        ran: set[K] = set()

        def settle(node: K, error: Exception | None) -> None:
            ran.add(node)
            if error is None:
                outcome.succeeded.append(node)
                sorter.done(node)
            else:
                outcome.failed.append((node, error))

        if self.workers == 1:
            ready = [(order_key(n), n) for n in sorter.get_ready()]
            heapq.heapify(ready)
            while ready and not (stop_on_error and outcome.failed):
                _, node = heapq.heappop(ready)
                settle(node, _attempt(fn, node))
                for n in sorter.get_ready():
                    heapq.heappush(ready, (order_key(n), n))
        else:
            # Completions arrive on a queue: O(1) per device, however wide the tree.
            finished: queue.SimpleQueue[tuple[K, Exception | None]] = queue.SimpleQueue()

            def work(node: K) -> None:
                finished.put((node, _attempt(fn, node)))

            with ThreadPoolExecutor(self.workers, thread_name_prefix="luo-phase") as pool:
                in_flight = 0
                while True:
                    if not (stop_on_error and outcome.failed):
                        for node in sorted(sorter.get_ready(), key=order_key):
                            pool.submit(work, node)
                            in_flight += 1
                    if not in_flight:
                        break
                    settle(*finished.get())
                    in_flight -= 1
        outcome.skipped = sorted((n for n in graph if n not in ran), key=order_key)
        return outcome

    def close(self, ok: bool = True, end_ns: int | None = None) -> PhaseStats:
        self.stats.end_ns = now_ns() if end_ns is None else end_ns
        self.stats.ok = ok
        return self.stats


def _bounded(
    timeout: float,
    participant: str,
    phase: str,
    abandoned: list[threading.Thread],
    fn: Callable[..., T],
    *args: object,
) -> T:
    """``fn(*args)`` on a thread of its own, given up on after ``timeout`` seconds.

    A callback that hangs cannot be killed: its thread runs on, like a stuck
    kernel thread, and is kept in ``abandoned``; a kexec reports it, and the
    hardware fences it once its kernel is gone.
    """
    box: list[Any] = []
    done = threading.Event()

    def target() -> None:
        try:
            box.append(("ok", fn(*args)))
        except BaseException as exc:
            box.append(("error", exc))
        finally:
            done.set()

    thread = threading.Thread(target=target, name=f"luo {phase} {participant}", daemon=True)
    thread.start()
    if not done.wait(timeout):
        abandoned.append(thread)
        raise CallbackTimeoutError(f"{phase} of {participant} did not return within {timeout:g}s")
    kind, value = box[0]
    if kind == "error":
        raise value
    result: T = value
    return result


def _attempt(fn: Callable[[K], object], node: K) -> Exception | None:
    try:
        fn(node)
    except Exception as exc:
        return exc
    return None
