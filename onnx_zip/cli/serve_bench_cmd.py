"""``onnx-zip serve-bench DIR``: task-switch latency and resident memory of an exported folder."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from onnx_zip.deploy.bench import format_table, serve_bench
from onnx_zip.model_io import atomic_write_bytes

NAME = "serve-bench"
HELP = ("measure task-switch latency (cold and warm) and resident memory of a folder written by export-tasks, "
        "against stand-alone models and the multi-output zipped model")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="a folder written by onnx-zip export-tasks")
    parser.add_argument("--zipped", help="the multi-output zipped model (default: the source named in the manifest, next to the folder)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of one switch per task (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per session (default 1)")
    parser.add_argument("--json", help="also write the figures to this JSON file")


def run(args: argparse.Namespace) -> int:
    bench = serve_bench(args.directory, zipped=args.zipped, repeats=args.repeats, threads=args.threads)
    print(format_table(bench), end="")
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(asdict(bench), indent=1, sort_keys=True) + "\n").encode())
    return 0
