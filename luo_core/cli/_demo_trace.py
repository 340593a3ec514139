"""A demo run as one Chrome/Perfetto trace: every update on one timeline, a track per actor."""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from luo_core.cli._demo_run import Run

UPDATES = "updates"
PHASES = "phases"
BLACKOUT = "blackout"
FIXED = (UPDATES, PHASES, BLACKOUT)
"""The tracks every trace has, first; then one per participant, then any extra ones."""


@attrs.frozen
class Span:
    """Something that took time: on which track, from when to when (monotonic ns), what."""

    track: str
    start_ns: int
    end_ns: int
    label: str


def run_spans(run: Run) -> list[Span]:
    """Each update (or reboot), its phases, its participants' callbacks and its blackout."""
    spans: list[Span] = []
    for step in run.steps:
        n = step.number
        if step.stats is None:  # a cold reboot: the operator's measure is all there is
            spans.append(Span(UPDATES, step.start_ns, step.end_ns, f"reboot {n}"))
            spans.append(Span(BLACKOUT, step.kexec_ns, step.up_ns, f"outage {n}"))
            continue
        spans.append(Span(UPDATES, step.start_ns, step.end_ns, f"update {n}"))
        for phase in step.stats.phases.values():
            spans.append(Span(PHASES, phase.start_ns, phase.end_ns, f"{phase.phase} {n}"))
            spans.extend(
                Span(cb.participant, cb.start_ns, cb.start_ns + cb.duration_ns, cb.phase)
                for cb in phase.callbacks
            )
        start, end = step.stats.freeze_start_ns, step.stats.restore_end_ns
        if start is not None and end is not None:
            end = max(end, step.vm_resumed_ns or 0)  # to the last VM resumed
            spans.append(Span(BLACKOUT, start, end, f"blackout {n}"))
    return spans


def vm_spans(run: Run) -> list[Span]:
    """A track per VM: each update's pause, from its last heartbeat before the update to
    the VMM resuming it in the next kernel."""
    return [
        Span(f"vm {vm}", paused, resumed, f"paused {step.number}")
        for step in run.steps
        for vm, (paused, resumed) in sorted(step.vm_pauses.items())
        if 0 < paused <= resumed
    ]


def chrome_trace(run: Run, extra: Iterable[Span] = ()) -> dict[str, object]:
    """The trace (JSON object format) of ``run``, with ``extra`` spans (a VM's pause,
    say) on tracks of their own; times are µs from the first span."""
    spans = run_spans(run) + vm_spans(run) + list(extra)
    tracks: dict[str, int] = {name: tid for tid, name in enumerate(FIXED)}
    for span in spans:
        tracks.setdefault(span.track, len(tracks))
    origin = min((s.start_ns for s in spans), default=0)
    events: list[dict[str, object]] = [
        {"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": "luo demo"}}
    ]
    for name, tid in tracks.items():
        events.append(
            {"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": name}}
        )
        events.append(
            {
                "name": "thread_sort_index",
                "ph": "M",
                "pid": 1,
                "tid": tid,
                "args": {"sort_index": tid},
            }
        )
    for span in sorted(spans, key=lambda s: s.start_ns):
        events.append(
            {
                "name": span.label,
                "cat": span.track if span.track in FIXED else "participant",
                "ph": "X",
                "ts": (span.start_ns - origin) / 1000,
                "dur": max(0, span.end_ns - span.start_ns) / 1000,
                "pid": 1,
                "tid": tracks[span.track],
            }
        )
    return {"traceEvents": events, "displayTimeUnit": "ms"}
