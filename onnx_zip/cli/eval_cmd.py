"""``onnx-zip eval MODEL --data NPZ``: top-1 accuracy of an ONNX classifier."""

from __future__ import annotations

import argparse
import json

from onnx_zip.cli.inputs import data_problems, model_problems, raise_all
from onnx_zip.evaluate import evaluate

NAME = "eval"
HELP = "top-1 accuracy of an ONNX classifier on labelled .npz data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the .onnx model")
    parser.add_argument("--data", required=True, help=".npz with the model's inputs and 'label'")
    parser.add_argument("--output", help="the output holding class scores (default: first float rank-2 output)")
    parser.add_argument("--batch-size", type=int, default=256, help="samples per run (default 256)")
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    raise_all(model_problems([args.model]) + data_problems([args.data], "--data"))
    result = evaluate(args.model, args.data, output=args.output, batch_size=args.batch_size, threads=args.threads)
    if args.json:
        print(json.dumps({"model": args.model, "data": args.data, **result.to_dict()}, indent=2))
    else:
        print(f"{args.model}: accuracy {100 * result.accuracy:.2f}% ({result.correct}/{result.count}) on {args.data}, output {result.output!r}")
    return 0
