"""``onnx-zip inspect MODEL [--json]``: a zipped model's tasks, sharing and provenance, or any
other model's zippable layers."""

from __future__ import annotations

import argparse
import json

from onnx_zip.inspect_model import format_inspection, inspect_model

NAME = "inspect"
HELP = "describe a model: a zipped model's tasks, sharing, parameters and provenance, or any model's zippable layers"
NEEDS_RUNTIME = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the .onnx model")
    parser.add_argument("--json", action="store_true", help="print the description as JSON")


def run(args: argparse.Namespace) -> int:
    info = inspect_model(args.model)
    print(json.dumps(info, indent=2, sort_keys=True) if args.json else format_inspection(info))
    return 0
