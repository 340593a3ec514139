"""What the verbs share: argument types, usage errors, progress on stderr, JSON output."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from luo_core.abi._boot import MAX_WORKERS


def paragraph(text: str) -> str:
    """A verb's ``description=``, wrapped for a terminal (with RawDescriptionHelpFormatter,
    which keeps the epilog's examples as they are written)."""
    return textwrap.fill(" ".join(text.split()), width=79, break_on_hyphens=False)


class UsageError(Exception):
    """Options that are valid one by one but not together (``--inproc --next-python``).

    ``luo``'s ``main`` prints the verb's usage and this message, and exits 2.
    """


def int_range(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type=``: a whole number from ``low`` to ``high``, else a usage error."""

    def whole_number(text: str) -> int:
        shown = repr(text) if len(text) <= 40 else repr(text[:40]) + "..."
        if len(text) > 40 and text.strip().lstrip("+-").isdigit():
            raise argparse.ArgumentTypeError(f"{shown} is out of range ({low} to {high})")
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{shown} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range ({low} to {high})")
        return value

    return whole_number


def add_workers(parser: argparse.ArgumentParser, help: str) -> None:
    """``--workers N``: threads for independent device subtrees, 1 to ``MAX_WORKERS``."""
    parser.add_argument(
        "--workers", type=int_range(1, MAX_WORKERS), default=1, metavar="N", help=help
    )


def log_level(verbosity: int) -> str:
    """The log level for ``verbosity`` ``-v``: 0 warning, 1 info, 2 or more debug."""
    return {0: "warning", 1: "info"}.get(verbosity, "debug")


def mac_address(value: int) -> str:
    """A MAC address as ``aa:bb:cc:dd:ee:ff`` (the low 48 bits of a register)."""
    return ":".join(f"{byte:02x}" for byte in (value & (1 << 48) - 1).to_bytes(6, "big"))


def non_empty(text: str) -> str:
    """An argparse ``type=`` for a name or path that cannot be an empty string."""
    if not text:
        raise argparse.ArgumentTypeError("a value is needed, not an empty string")
    return text


def output_file(text: str) -> Path:
    """An argparse ``type=`` for a file to write: not empty, not an existing directory.

    A missing parent directory is left to the verb (a run-time error, exit 1).
    """
    if not text:
        raise argparse.ArgumentTypeError("a file name is needed, not an empty string")
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory, not a file")
    return path


def check_writable(path: Path) -> None:
    """Refuse, before any work, a file that cannot be created for want of its directory."""
    if not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))


def _rounded(value: Any, digits: int) -> Any:
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {
            key: _rounded(item, 2 if str(key).endswith("_ms") else digits)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_rounded(item, digits) for item in value]
    return value


def dumps(value: Any) -> str:
    """JSON as every ``--json`` prints it: indent 2, keys in a stable order, floats
    rounded (times in µs to 0.1; under a key ending in ``_ms``, to 0.01)."""
    return json.dumps(_rounded(value, 1), indent=2, ensure_ascii=False)


class Progress:
    """One line of progress on stderr, redrawn in place, when stderr is a terminal.

    Nothing is written otherwise (a pipe, a file, a test's capture), so that
    logs and error lines stay clean.  Leaving the ``with`` block, normally or
    by an exception (Ctrl-C), erases the line; so does :func:`erase_progress`,
    which ``main`` calls before it prints an error, in case Ctrl-C came in the
    middle of a redraw.
    """

    def __init__(self, verb: str, stream: TextIO | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        try:
            self.enabled = self.stream.isatty()
        except (AttributeError, ValueError):
            self.enabled = False
        self.prefix = f"luo {verb}: "
        self._width = 0

    def __call__(self, text: str) -> None:
        global _shown
        if not self.enabled:
            return
        line = self.prefix + text
        pad = max(0, self._width - len(line))
        self._width = max(self._width, len(line))  # first: what may be on screen
        _shown = self
        self._write("\r" + line + " " * pad)

    def clear(self) -> None:
        global _shown
        if self.enabled and self._width:
            self._write("\r" + " " * (self._width + 2) + "\r")  # + 2: a "^C" echoed there
            self._width = 0  # after: interrupted before, the line is erased again
        if _shown is self:
            _shown = None

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self.enabled = False  # a terminal that went away: progress is not worth an error

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.clear()


_shown: Progress | None = None


def erase_progress() -> None:
    """Erase the progress line on the terminal, if one is shown."""
    if _shown is not None:
        _shown.clear()
