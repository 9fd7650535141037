"""``onnx-zip demo``: zip the bundled LeNet-5 MNIST + Fashion pair, fine-tune briefly, print one table."""

from __future__ import annotations

import argparse
import sys

from onnx_zip import demo
from onnx_zip.cli.options import add_config_option

NAME = "demo"
HELP = (
    "zip the bundled LeNet-5 MNIST and Fashion-MNIST models, fine-tune briefly, and compare accuracy, size and latency"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="onnx_zip_demo", metavar="DIR", help="output folder (default onnx_zip_demo/, created)"
    )
    parser.add_argument(
        "--models", metavar="DIR", help="the models/ folder (default: the repository's, next to the package)"
    )
    add_config_option(parser, "zip", "share", default=demo.DEFAULT_SHARE)
    add_config_option(parser, "finetune", "steps", default=demo.DEFAULT_STEPS)
    add_config_option(parser, "calibration", "limit", default=demo.DEFAULT_CALIBRATION_LIMIT)
    add_config_option(parser, "calibration", "threads", default=None)
    parser.add_argument(
        "--eval-limit",
        type=int,
        default=demo.DEFAULT_EVAL_LIMIT,
        metavar="N",
        help=f"test samples per task (default {demo.DEFAULT_EVAL_LIMIT})",
    )
    parser.add_argument(
        "--latency-runs",
        type=int,
        default=demo.DEFAULT_LATENCY_RUNS,
        metavar="N",
        help=f"timed runs per latency measurement (default {demo.DEFAULT_LATENCY_RUNS})",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    progress = not args.no_progress and not args.quiet and sys.stderr.isatty()
    result = demo.run_demo(
        args.out,
        models_dir=args.models,
        share=args.share,
        steps=args.steps,
        calibration_limit=args.calib_limit,
        eval_limit=args.eval_limit,
        latency_runs=args.latency_runs,
        threads=args.threads,
        progress=progress,
    )
    print(
        f"LeNet-5 MNIST + LeNet-5 Fashion-MNIST, {100 * args.share:g}% of each hidden layer shared, "
        f"{args.steps} fine-tuning steps"
    )
    print(demo.format_table(result))
    total = sum(result.seconds.values())
    print(f"took {total:.0f} s ({', '.join(f'{k} {v:.1f} s' for k, v in result.seconds.items())}); wrote {args.out}/")
    return 0
