"""``luo``: argument parsing, logging set-up, and how every verb ends.

:func:`main` is the one place that turns what a verb raises into what the
user sees: a :class:`~luo_core.errors.LiveUpdateError`, a
:class:`~luo_core.errors.MachineError` or an ``OSError`` into one line and
exit 1; a :class:`~luo_core.cli._args.UsageError` into the verb's usage and
exit 2; Ctrl-C into ``luo VERB: interrupted`` and exit 130; a reader that
closed stdout (``luo demo | head -1``) into silence and exit 141.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import platform
import select
import sys
from collections.abc import Sequence
from typing import NoReturn

from luo_core import _logging
from luo_core.cli import _abi, _bench, _contract, _demo, _drivers, _inspect, _scaffold
from luo_core.cli._args import UsageError, erase_progress, log_level, paragraph
from luo_core.cli._input import printable
from luo_core.errors import LiveUpdateError, MachineError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports `cat` or `seq` when the reader left

VERBOSITY = "log_verbosity"
"""Where the global ``-v`` count is stored: a name no verb's own option uses."""
_VERB_VERBOSITY = "log_verbosity_after_verb"
_VERB_DEBUG = "debug_after_verb"


def configure_logging(verbosity: int) -> None:
    """The CLI, not the library, decides where log events go: stderr.

    ``verbosity`` is the number of ``-v`` (0: warnings and errors, 1: from
    ``info``, 2: everything).
    """
    _logging.configure(log_level(verbosity))


class _VerbParser(argparse.ArgumentParser):
    """A verb's parser: an unknown argument is reported with the verb's usage.

    argparse parses a verb's arguments with ``parse_known_args`` and leaves
    what it did not know to the top-level parser, whose usage is not the one
    the user needs.
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def _add_global_options(verb: argparse.ArgumentParser) -> None:
    """``-v`` and ``--debug`` after the verb too, with the same meaning as before it."""
    group = verb.add_argument_group("global options (also accepted before the verb)")
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        dest=_VERB_VERBOSITY,
        help="log events to stderr: -v from info up, -vv everything (default: warnings)",
    )
    group.add_argument(
        "--debug", action="store_true", dest=_VERB_DEBUG, help="show tracebacks on errors"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="luo",
        description=paragraph(
            "Emulate Linux live update (LUO) on an emulated host: run an update, list the "
            "installed driver packs, check their ABI and their contract, inspect a handoff."
        ),
        epilog=(
            "examples:\n"
            "  luo demo          run one live update of the built-in host and report it\n"
            "  luo -v demo       the same, with log events on stderr (-vv: all of them)\n"
            "  luo drivers       list the installed packs\n"
            "  luo -V -v         print the versions of luo-core and of every pack\n"
            "  luo VERB -h       a verb's options, with their defaults and limits\n"
            "\n"
            "exit status: 0 success, 1 error or failed check, 2 usage, 130 interrupted,\n"
            "141 stdout closed by its reader (see the luo documentation, 'The luo command')"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-V",
        "--version",
        action="store_true",
        help="print luo-core's version (with -v: and every installed pack's) and exit",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        dest=VERBOSITY,
        help="log events to stderr: -v from info up, -vv everything (default: warnings)",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_VerbParser)
    for module in (_demo, _drivers, _abi, _inspect, _contract, _scaffold, _bench):
        module.add_parser(verbs)
    for verb in verbs.choices.values():
        _add_global_options(verb)
    parser.set_defaults(verb_parsers=verbs.choices)
    return parser


def print_version(verbosity: int) -> int:
    """``luo --version``: luo-core's version; with ``-v``, each pack's and Python's."""
    from luo_core.kernel._registry import CORE_DISTRIBUTION, core_origin

    print(f"{CORE_DISTRIBUTION} {core_origin().version}")
    if verbosity:
        from luo_core.kernel._registry import load_plugins
        from luo_core.kernel.devices import _builtin

        for pack in load_plugins(builtin=_builtin, log_failures=False).packs:
            if pack.origin.distribution == CORE_DISTRIBUTION:
                continue
            status = {"loaded": "", "disabled": "  (disabled)"}.get(
                pack.status, "  (failed to load: see luo drivers)"
            )
            print(f"{pack.origin.distribution} {pack.origin.version}{status}")
        print(f"Python {platform.python_version()} ({sys.executable})")
    return 0


def _say(line: str) -> None:
    """One line on stderr (on a line of its own); a stderr gone too is not worth a traceback."""
    erase_progress()
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


def _stdout_gone() -> bool:
    """Whether stdout is a pipe (or socket) whose reader has closed it."""
    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        ready = poller.poll(0)
    except (AttributeError, OSError, ValueError):
        return False
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in ready)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the flush at exit cannot fail again."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        if exc.filename is None:
            return exc.strerror
        name = exc.filename
        text = os.fsdecode(name) if isinstance(name, bytes) else str(name)
        return f"{printable(text)}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def _usage_error(
    args: argparse.Namespace, parser: argparse.ArgumentParser, exc: UsageError
) -> NoReturn:
    verb_parser: argparse.ArgumentParser = args.verb_parsers.get(args.verb, parser)
    verb_parser.error(str(exc))


def parse_arguments(
    argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None
) -> argparse.Namespace:
    """The command line, with ``-v`` and ``--debug`` merged from either side of the verb.

    ``args.log_verbosity`` is the number of ``-v`` given.  Usage errors raise
    ``SystemExit(2)`` after argparse printed the usage.
    """
    parser = parser or build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    args, extras = parser.parse_known_args(words)
    if extras:  # left by the top-level parser (or by an argparse that bypasses _VerbParser)
        first = words.index(extras[0]) if extras[0] in words else len(words)
        after_verb = args.verb in words and words.index(args.verb) < first
        target = args.verb_parsers[args.verb] if after_verb else parser
        target.error(f"unrecognized arguments: {' '.join(extras)}")
    verbosity = getattr(args, VERBOSITY) + getattr(args, _VERB_VERBOSITY, 0)
    setattr(args, VERBOSITY, verbosity)
    args.debug = args.debug or getattr(args, _VERB_DEBUG, False)
    if args.version:
        args.verb = None
    elif args.verb is None:
        parser.error("the following arguments are required: VERB (or --version)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``luo`` with ``argv`` (default: ``sys.argv[1:]``); the exit status.

    Usage errors raise ``SystemExit(2)`` after argparse printed the usage.
    """
    parser = build_parser()
    args = parse_arguments(argv, parser)
    verbosity: int = getattr(args, VERBOSITY)
    configure_logging(verbosity)
    name = f"luo {args.verb}" if args.verb else "luo"
    try:
        code: int = print_version(verbosity) if args.version else args.run(args)
        sys.stdout.flush()  # here, where a closed pipe can still be handled
    except UsageError as exc:
        _usage_error(args, parser, exc)
    except KeyboardInterrupt:
        if args.debug:
            raise
        _say(f"{name}: interrupted")
        return EXIT_INTERRUPTED
    except (LiveUpdateError, MachineError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno == errno.EPIPE and _stdout_gone():
            _silence_stdout()
            return EXIT_BROKEN_PIPE
        if args.debug:
            raise
        _say(f"{name}: error: {_describe(exc)}")
        return EXIT_ERROR
    return code
