"""Entry point of ``onnx-zip``: argument parsing, logging levels and exit codes.

Exit codes: 0 success (also when the reader of the output goes away early, ``onnx-zip … | head``),
2 bad input or usage (an :class:`~onnx_zip.errors.InputError`, or an argparse usage error, one
``onnx-zip: error: …`` line), 1 an internal failure (an :class:`~onnx_zip.errors.InternalError` or any
other exception: a bug, to be reported; ``-v`` shows the traceback), 130 interrupted.

``-v``/``-q`` are accepted before and after the subcommand (``onnx-zip -v zip …`` and
``onnx-zip zip … -v``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from onnx_zip import runtime
from onnx_zip._version import __version__
from onnx_zip.errors import InputError
from onnx_zip.paths import track_inputs

logger = logging.getLogger("onnx_zip")

#: Subcommand modules under ``onnx_zip.cli``; each defines NAME, HELP, add_arguments(parser), run(args)
#: and optionally NEEDS_RUNTIME (default True). To add a command, add its module name here.
COMMANDS = (
    "zip_cmd",
    "calibrate_cmd",
    "extract_cmd",
    "align_cmd",
    "eval_cmd",
    "inspect_cmd",
    "report_cmd",
    "finetune_cmd",
    "run_cmd",
    "sweep_cmd",
    "demo_cmd",
    "export_tasks_cmd",
    "serve_bench_cmd",
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

#: Where to report internal errors.
REPORT_HINT = "this is a bug in onnx-zip: please report it with the command line (rerun with -v for the traceback)"


def _add_verbosity(parser: argparse.ArgumentParser, *, suffix: str, default: object) -> None:
    """-v/-q on the top-level parser (``suffix=""``) or on a subcommand (``suffix="_sub"``).

    The subcommand's copies write other destinations, so that ``onnx-zip -v zip … -v`` counts both.
    """
    group = parser.add_argument_group("output")
    group.add_argument(
        "-v", "--verbose", dest=f"verbose{suffix}", action="count", default=default, help="more log output (-vv: debug)"
    )
    group.add_argument("-q", "--quiet", dest=f"quiet{suffix}", action="store_true", default=default, help="only errors")


def command_modules() -> list[ModuleType]:
    """The subcommand modules, in :data:`COMMANDS` order."""
    return [importlib.import_module(f"onnx_zip.cli.{name}") for name in COMMANDS]


def build_parser() -> argparse.ArgumentParser:
    """The ``onnx-zip`` parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="onnx-zip",
        description="Merge pre-trained ONNX models into one multi-task model by Multi-Task Zipping.",
    )
    parser.add_argument("--version", action="version", version=f"onnx-zip {__version__}")
    _add_verbosity(parser, suffix="", default=None)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module in command_modules():
        sub = subparsers.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        _add_verbosity(sub, suffix="_sub", default=None)
        sub.set_defaults(handler=module.run, needs_runtime=getattr(module, "NEEDS_RUNTIME", True))
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, then merge the -v/-q given before and after the subcommand into ``verbose``/``quiet``."""
    args = parser.parse_args(argv)
    verbose = (args.verbose or 0) + (getattr(args, "verbose_sub", None) or 0)
    quiet = bool(args.quiet or getattr(args, "quiet_sub", None))
    if verbose and quiet:
        parser.error("-q/--quiet and -v/--verbose exclude each other")
    args.verbose, args.quiet = verbose, quiet
    for name in ("verbose_sub", "quiet_sub"):
        if hasattr(args, name):
            delattr(args, name)
    return args


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is when a record comes (so that tests can capture it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging's own error path
            self.handleError(record)


def configure_logging(verbose: int, quiet: bool) -> None:
    """The ``onnx_zip`` loggers to stderr: errors only (-q), warnings (default), info (-v), debug (-vv).

    Only the package's logger is configured (not the root logger), once however often :func:`main` runs.
    """
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # a library's logging.basicConfig (onnxruntime.tools) must not print it twice


def _silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so that the final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (tests)
        pass


def run_command(handler: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a subcommand's handler and map what it raises to an exit code and one stderr line."""
    try:
        if args.needs_runtime:
            runtime.check_installation()
        with track_inputs():  # no write may replace a file the command has read
            code = int(handler(args) or EXIT_OK)
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # the reader went away (onnx-zip … | head): not an error
        _silence_stdout()
        return EXIT_OK
    except InputError as exc:
        if args.verbose:
            logger.exception("bad input")
        print(f"onnx-zip: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("onnx-zip: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - InternalError and every bug: the last line of defence
        if args.verbose:
            logger.exception("internal error")
        print(f"onnx-zip: internal error: {type(exc).__name__}: {exc}; {REPORT_HINT}", file=sys.stderr)
        return EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code (argparse's usage errors, --help and --version included)."""
    parser = build_parser()
    try:
        args = parse_args(parser, argv)
    except SystemExit as exc:  # argparse: usage error (2), --help or --version (0)
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    saved = logger.level, list(logger.handlers), logger.propagate
    configure_logging(args.verbose, args.quiet)
    try:
        return run_command(args.handler, args)
    finally:  # main() as a function leaves the process's logging as it found it
        logger.setLevel(saved[0])
        logger.handlers[:] = saved[1]
        logger.propagate = saved[2]


def entry_point() -> None:
    """Console-script entry point."""
    sys.exit(main())
