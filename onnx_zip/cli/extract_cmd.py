"""``onnx-zip extract zipped.onnx --task a -o a.onnx``: one task's model from a zipped model."""

from __future__ import annotations

import argparse

from onnx_zip.zipper.extract import extract_file
from onnx_zip.zipper.report import parameter_count

NAME = "extract"
HELP = "extract one task's single-task model from a zipped model"
NEEDS_RUNTIME = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a model written by onnx-zip zip")
    parser.add_argument("--task", required=True, help="the task to extract")
    parser.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    parser.add_argument(
        "--keep-prefix",
        action="store_true",
        help="keep the <task>/ prefix of the inputs and outputs (default: the original names)",
    )


def run(args: argparse.Namespace) -> int:
    # keep_prefix only when asked, so that this also runs with an extract_file that does not know it yet
    model = extract_file(args.model, args.task, args.output, **({"keep_prefix": True} if args.keep_prefix else {}))
    print(
        f"wrote {args.output}: task {args.task}, {parameter_count(model):,} parameters, "
        f"outputs {[o.name for o in model.graph.output]}"
    )
    return 0
