"""How luo logs: structlog events, delivered through the standard ``logging`` module.

luo is a library first, so it is silent unless the application asks: its
loggers are stdlib loggers under ``"luo"`` (with a ``NullHandler``, as the
logging HOWTO advises libraries), wrapped by structlog for structured events.
An event below the ``"luo"`` logger's level costs one level check and is
never rendered, which keeps debug events free on the blackout path.

To see luo's events in an application::

    import logging
    logging.basicConfig(level=logging.INFO)   # or logging.getLogger("luo").setLevel(...)

The ``luo`` command, the hardware process and kernel processes call
:func:`configure`: one line per event on stderr, never on stdout.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

ROOT = "luo"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
logging.getLogger(ROOT).addHandler(logging.NullHandler())


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler that writes to whatever ``sys.stderr`` is when an event comes."""

    _luo_console = True

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class _Logger(structlog.BoundLoggerBase):
    """A structlog logger that asks the stdlib logger's level before doing any work."""

    def debug(self, event: str, **kw: Any) -> Any:
        return self._at(logging.DEBUG, "debug", event, kw)

    def info(self, event: str, **kw: Any) -> Any:
        return self._at(logging.INFO, "info", event, kw)

    def warning(self, event: str, **kw: Any) -> Any:
        return self._at(logging.WARNING, "warning", event, kw)

    def error(self, event: str, **kw: Any) -> Any:
        return self._at(logging.ERROR, "error", event, kw)

    def _at(self, level: int, method: str, event: str, kw: dict[str, Any]) -> Any:
        if not self._logger.isEnabledFor(level):
            return None
        return self._proxy_to_logger(method, event, **kw)


def get_logger(name: str = ROOT) -> Any:
    """luo's logger ``name`` (``"luo"`` or below it)."""
    return structlog.wrap_logger(logging.getLogger(name), wrapper_class=_Logger)


def configure(level: str = "warning", **context: object) -> None:
    """Show luo's events at ``level`` and above on stderr, each tagged with ``context``.

    For the ``luo`` command and luo's own processes only: a library never
    configures logging.
    """
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S.%f"),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
    )
    structlog.contextvars.bind_contextvars(**context)
    logger = logging.getLogger(ROOT)
    _drop_console(logger)
    console = _Stderr()
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    logger.setLevel(LEVELS.get(level, logging.WARNING))
    logger.propagate = False


def reset() -> None:
    """Undo :func:`configure`: luo silent again, its events left to the application."""
    structlog.reset_defaults()
    logger = logging.getLogger(ROOT)
    _drop_console(logger)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True


def _drop_console(logger: logging.Logger) -> None:
    """Remove the stderr handler :func:`configure` added, if any."""
    for handler in list(logger.handlers):
        if getattr(handler, "_luo_console", False):
            logger.removeHandler(handler)
