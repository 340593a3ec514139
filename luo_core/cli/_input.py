"""Files and stdin named on the command line, read with bounds.

Every verb that reads a file a user names (``luo inspect``, ``luo compat``,
``luo demo --config``) opens it here: anything that is not a regular file, and a file larger than
the verb's limit, is refused before a byte is read; a file that grows while
it is read, and stdin, are read no further than the limit allows.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable
from typing import IO, Final

STDIN: Final = "-"
"""The file name that means standard input."""
STDIN_SHOWN: Final = "<stdin>"
"""How standard input is named in messages."""


def printable(text: str) -> str:
    """``text`` from outside, on one line: control characters (a terminal's escape
    sequences among them) escaped as Python would, the rest as it is."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def shown(name: str) -> str:
    """File ``name`` as messages show it."""
    return STDIN_SHOWN if name == STDIN else printable(name)


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, for a message."""
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((what for test, what in kinds if test(mode)), "not a regular file")


def read_upto(stream: IO[bytes], limit: int) -> bytes:
    """At most ``limit`` bytes of ``stream``, however it delivers them."""
    chunks, left = [], limit
    while left > 0:
        chunk = stream.read(min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def stdin_bytes(refuse: Callable[[str], Exception]) -> IO[bytes]:
    """Standard input as bytes; ``refuse(reason)`` is raised when there is none."""
    stream = sys.stdin
    if stream is None:
        raise refuse("there is no standard input")
    binary: IO[bytes] | None = getattr(stream, "buffer", None)
    if binary is None:
        raise refuse("standard input is not a byte stream")
    return binary


def open_regular(
    name: str, limit: int, refuse: Callable[[str], Exception], *, largest: str
) -> IO[bytes]:
    """Regular file ``name``, open for reading, after checks that read nothing.

    ``refuse(reason)`` is raised for a file that is not a regular one and for
    one larger than ``limit`` bytes (``largest`` says what that limit is, as
    in "the largest handoff image").  Opening never waits: a named pipe is
    refused, not read.  ``OSError`` (a file that cannot be opened) names the
    file as :func:`shown` does.
    """
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, shown(name)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise refuse(f"{file_kind(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise refuse(too_big(info.st_size, largest))
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def too_big(size: int, largest: str) -> str:
    """The reason a ``size``-byte input is refused."""
    return f"{size} bytes, larger than {largest}"


def read_file(name: str, limit: int, refuse: Callable[[str], Exception], *, largest: str) -> bytes:
    """All of file ``name`` (``-``: stdin), at most ``limit`` bytes, checked as
    :func:`open_regular` does; a file or stdin that turns out longer is refused."""
    if name == STDIN:
        blob = read_upto(stdin_bytes(refuse), limit + 1)
    else:
        with open_regular(name, limit, refuse, largest=largest) as stream:
            blob = read_upto(stream, limit + 1)  # a file may have grown since its size was seen
    if len(blob) > limit:
        raise refuse(too_big(len(blob), largest))
    return blob
