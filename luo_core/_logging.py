"""Where log events go in luo's own processes: stderr, one line each.

A library never configures logging; the ``luo`` command, the hardware process
and kernel processes do, with this (so that their output cannot be mistaken
for a verb's own, on stdout).
"""

from __future__ import annotations

import logging
import sys

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def configure(level: str = "warning", **context: object) -> None:
    """Log events at ``level`` and above to stderr, each tagged with ``context``."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S.%f"),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.WARNING)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    structlog.contextvars.bind_contextvars(**context)
