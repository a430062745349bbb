"""The ``codesign`` command line: one top floor over workloads, hwmodels, codesign and search.

Each area registers its sub-commands from its own module (``register(subparsers)``), so the
areas stay independent. Errors from bad input are printed to stderr as ``error: ...`` with exit
status 2 (usage) or 1 (everything else); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib import import_module

#: Modules that contribute sub-commands. Each has ``register(subparsers, parents)`` for top-level
#: commands, or ``register_trace(trace_subparsers, parents)`` for ``codesign trace ...``.
_TOP_MODULES = (
    "codesign.cli_presets",
    "codesign.cli_calibrate",
    "codesign.cli_simulate",
    "codesign.cli_search",
    "codesign.cli_view",
    "codesign.cli_validate",
)
_TRACE_MODULES = ("codesign.cli_trace_io", "codesign.cli_trace_analysis")

Handler = Callable[[argparse.Namespace], int]


def _optional_module(name: str) -> object | None:
    """Import a sub-command module; a module not written yet is absent (never a failing one)."""
    try:
        return import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (tests use it to check the sub-commands exist)."""
    parser = argparse.ArgumentParser(
        prog="codesign",
        description="moe-codesign: simulate and co-design Mixture-of-Experts inference hardware",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="info-level logging")
    # Sub-commands accept the same flags anywhere; SUPPRESS keeps a sub-parser from resetting a
    # flag given before the sub-command to its default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="info logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    trace = sub.add_parser("trace", parents=[common], help="import, inspect, fit and synthesise routing traces")
    trace_sub = trace.add_subparsers(dest="trace_command", metavar="TRACE_COMMAND")
    trace.set_defaults(func=lambda args: _missing(trace))
    for name in _TRACE_MODULES:
        mod = _optional_module(name)
        if mod is not None:
            mod.register_trace(trace_sub, [common])  # type: ignore[attr-defined]
    for name in _TOP_MODULES:
        mod = _optional_module(name)
        if mod is not None:
            mod.register(sub, [common])  # type: ignore[attr-defined]
    return parser


def _missing(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


class _ProgressHandler(logging.Handler):
    """Writes progress lines (`workloads.progress`) as they are to the current ``sys.stderr``."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # a logging handler must not raise
            self.handleError(record)


def _show_progress() -> None:
    """Show the INFO lines of the progress logger on stderr (long steps say what they do), once."""
    from workloads.progress import PROGRESS_LOGGER

    logger = logging.getLogger(PROGRESS_LOGGER)
    logger.setLevel(logging.INFO)
    if not any(isinstance(h, _ProgressHandler) for h in logger.handlers):
        logger.addHandler(_ProgressHandler())
    logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else (logging.INFO if args.verbose else logging.WARNING),
        format="%(levelname)s %(name)s: %(message)s",
    )
    _show_progress()
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # the CLI boundary: report bad input cleanly, never hide with --debug
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
