"""Entry point of ``onnx-zip``: argument parsing, logging levels and exit codes.

Exit codes: 0 success, 2 bad input or usage (an :class:`~onnx_zip.errors.InputError`,
or an argparse usage error), 1 an unexpected failure (rerun with ``-v`` for the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from onnx_zip import runtime
from onnx_zip._version import __version__
from onnx_zip.errors import InputError, OnnxZipError

#: Subcommand modules under ``onnx_zip.cli``; each defines NAME, HELP, add_arguments(parser), run(args).
COMMANDS = ("zip_cmd", "extract_cmd", "align_cmd", "eval_cmd", "inspect_cmd", "report_cmd", "finetune_cmd", "run_cmd", "sweep_cmd", "demo_cmd",
            "export_tasks_cmd", "serve_bench_cmd")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onnx-zip",
        description="Merge pre-trained ONNX models into one multi-task model by Multi-Task Zipping.",
    )
    parser.add_argument("--version", action="version", version=f"onnx-zip {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in COMMANDS:
        module = importlib.import_module(f"onnx_zip.cli.{module_name}")
        sub = subparsers.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run, needs_runtime=getattr(module, "NEEDS_RUNTIME", True))
    return parser


def configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    try:
        if args.needs_runtime:
            runtime.check_installation()
        return int(args.handler(args) or EXIT_OK)
    except InputError as exc:
        if args.verbose:
            logging.getLogger("onnx_zip").exception("bad input")
        print(f"onnx-zip: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OnnxZipError as exc:
        if args.verbose:
            logging.getLogger("onnx_zip").exception("failure")
        print(f"onnx-zip: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("onnx-zip: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence of a CLI
        if args.verbose:
            raise
        print(f"onnx-zip: unexpected failure: {type(exc).__name__}: {exc} (rerun with -v for details)", file=sys.stderr)
        return EXIT_FAILURE


def entry_point() -> None:
    """Console-script entry point."""
    sys.exit(main())
