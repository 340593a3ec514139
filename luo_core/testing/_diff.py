"""A short account of how two snapshots differ: what an author reads first when a check fails."""

from __future__ import annotations

from typing import Final

MAX_LINES: Final = 6
MAX_REPR: Final = 60


def difference(old: object, new: object) -> str:
    """``"tx_packets: 37 -> 0; paused: False -> True"``, at most a few entries."""
    found: list[str] = []
    _walk(old, new, "", found)
    if not found:
        return "no difference"
    more = f" (and {len(found) - MAX_LINES} more)" if len(found) > MAX_LINES else ""
    return "; ".join(found[:MAX_LINES]) + more


def _walk(old: object, new: object, path: str, found: list[str]) -> None:
    if len(found) > MAX_LINES:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            where = f"{path}.{key}" if path else str(key)
            if key not in new:
                found.append(f"{where} is gone (was {_short(old[key])})")
            elif key not in old:
                found.append(f"{where} appeared ({_short(new[key])})")
            elif old[key] != new[key]:
                _walk(old[key], new[key], where, found)
        return
    if isinstance(old, list | tuple) and isinstance(new, list | tuple) and len(old) == len(new):
        for at, (a, b) in enumerate(zip(old, new, strict=True)):
            if a != b:
                _walk(a, b, f"{path}[{at}]", found)
        return
    found.append(f"{path or 'value'}: {_short(old)} -> {_short(new)}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= MAX_REPR else text[: MAX_REPR - 3] + "..."
