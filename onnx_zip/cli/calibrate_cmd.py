"""``onnx-zip calibrate A.onnx B.onnx --calib A.npz --calib B.npz -o stats.npz``: the statistics of a zip,
gathered once and written to a file that ``onnx-zip zip --stats FILE`` reads back (a long calibration
is then not repeated for every sharing setting)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from onnx_zip.cli.inputs import collect, data_problems, model_problems, raise_all, read_mapping
from onnx_zip.cli.options import add_config_arguments, configs_from_args
from onnx_zip.cli.zip_cmd import task_names
from onnx_zip.config import PAIRINGS
from onnx_zip.model_io import check_writable

NAME = "calibrate"
HELP = "gather the statistics of a zip once and write them (zip --stats FILE reads them)"
SECTIONS = ("zip", "calibration")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL", help="two or more .onnx models, in zip order")
    parser.add_argument("--calib", action="append", metavar="NPZ", help="calibration data, once per model, in order")
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="the statistics file to write")
    parser.add_argument("--names", help="task names, comma separated (default a,b,c,…)")
    parser.add_argument(
        "--needed-only",
        action="store_true",
        help="only the layers these sharing settings need (default: every hidden layer, any level)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(parser, SECTIONS)


def check(args: argparse.Namespace) -> dict[str, Any]:
    """Every problem of the command line at once.

    Raises:
        InputError: all the problems found.
    """
    problems: list[str] = []
    extra = {"mapping": collect(problems, read_mapping, args.map)} if args.map else {}
    configs, found = configs_from_args(args, SECTIONS, skip=("--map", "--share-per-layer"), extra={"zip": extra})
    problems += found
    if len(args.models) < 2:
        problems.append(f"calibrate takes two or more models, got {len(args.models)}")
    if len(args.calib or []) != len(args.models):
        problems.append(f"got {len(args.calib or [])} --calib for {len(args.models)} models (one per model, in order)")
    pairing = configs["zip"].pairing if configs.get("zip") is not None else None
    if pairing is not None and not PAIRINGS.get(pairing).needs_calibration:
        problems.append(f"{pairing} pairing uses no statistics: nothing to calibrate")
    problems += model_problems(args.models, refuse_zipped=True) + data_problems(args.calib or [], "--calib")
    collect(problems, check_writable, args.output)
    raise_all(problems)
    return configs


def run(args: argparse.Namespace) -> int:
    from onnx_zip.pipeline import calibrate_models  # noqa: PLC0415 - heavy imports after parsing

    configs = check(args)
    progress = not args.no_progress and not args.quiet and sys.stderr.isatty()
    stats = calibrate_models(
        args.models,
        args.calib,
        args.output,
        names=task_names(args.names),
        config=configs["zip"],
        calibration_config=configs["calibration"],
        every_layer=not args.needed_only,
        progress=progress,
    )
    print(
        f"wrote {args.output}: {stats.statistic} statistics of {len(stats.positions)} layers "
        f"for {', '.join(stats.tasks)}"
    )
    return 0
