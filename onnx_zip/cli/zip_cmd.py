"""``onnx-zip zip A.onnx B.onnx --calib A.npz --calib B.npz -o zipped.onnx``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from onnx_zip.cli._output import print_zip_summary
from onnx_zip.config import METHODS, ZipConfig
from onnx_zip.errors import InputError
from onnx_zip.model_io import check_writable
from onnx_zip.reporting import write_summary
from onnx_zip.zipper.api import DEFAULT_CALIBRATION_LIMIT, zip_models

NAME = "zip"
HELP = "zip two or more models into one multi-output model by Multi-Task Zipping"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL",
                        help="two or more .onnx models (same input domain); further models are matched against the shared neurons")
    parser.add_argument("--calib", action="append", metavar="NPZ", help="calibration data, once per model, in order")
    parser.add_argument("-o", "--output", required=True, help="the zipped .onnx model to write")
    policy = parser.add_mutually_exclusive_group()
    policy.add_argument("--share", type=float, help="fraction of each hidden layer's neurons to share (default 0.5)")
    policy.add_argument("--share-per-layer", metavar="FILE", help="JSON list, one entry per hidden layer: fraction (float) or count (int)")
    policy.add_argument("--max-cost", type=float, metavar="EPS", help="share every pair whose merge cost is at most EPS")
    parser.add_argument("--match", choices=("greedy", "optimal"), default="greedy", help="pair selection (default greedy, the released code's)")
    parser.add_argument("--conv-hessian", choices=("patch", "channel", "auto"), default="auto",
                        help="convolution Hessian: patch (paper), channel (released code), auto (patch while C*k*k+1 <= 1024)")
    parser.add_argument("--pairing", choices=("mtz", "l2", "random", "correlation"), default="mtz",
                        help="mtz, or a baseline with averaging: l2 weight distance, random, activation correlation")
    parser.add_argument("--method", choices=METHODS.names(), default=ZipConfig.method,
                        help="paper: the paper's one-pass MTZ; compensated: every layer, bottom-up, fitted by least squares "
                             f"to the original outputs on the zipped model's own inputs (default {ZipConfig.method})")
    parser.add_argument("--rho", type=float, default=ZipConfig.rho,
                        help=f"ridge of the compensated fit, relative to mean(diag G) (default {ZipConfig.rho:g})")
    parser.add_argument("--damping", type=float, default=0.0, help="relative Hessian damping (default 0)")
    parser.add_argument("--names", help="task names, comma separated (default a,b,c,…)")
    parser.add_argument("--separate-inputs", action="store_true", help="give each task its own graph input")
    parser.add_argument("--map", metavar="FILE", help="JSON mapping of node names of A to node names of B (explicit alignment)")
    parser.add_argument("--no-fold-batchnorm", action="store_true", help="keep BatchNormalization nodes (not supported on zipped paths yet)")
    parser.add_argument("--calib-limit", type=int, metavar="N", default=DEFAULT_CALIBRATION_LIMIT,
                        help=f"use at most N calibration samples per model (default {DEFAULT_CALIBRATION_LIMIT}; 0: all)")
    parser.add_argument("--batch-size", type=int, default=256, help="calibration batch size (default 256)")
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads")
    parser.add_argument("--seed", type=int, default=0, help="seed (random pairing); same inputs and seed give the same bytes")
    parser.add_argument("--report", metavar="FILE", help="write the JSON report here")
    parser.add_argument("--summary", metavar="FILE.md", help="write a Markdown summary here (PNG plots beside it with matplotlib)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    loop = parser.add_argument_group("layer-wise zipping with joint retraining (the paper's Algorithm 1)")
    loop.add_argument("--train", action="append", metavar="TASK=NPZ", help="training data of a task (enables the loop)")
    loop.add_argument("--retrain-steps", metavar="K[,K...]", help="joint fine-tuning steps after each hidden layer (default 100)")
    loop.add_argument("--eval", action="append", metavar="TASK=NPZ", help="test data of a task: accuracy before/after each layer")
    loop.add_argument("--lr", type=float, help="fine-tuning learning rate (default: the optimizer's)")
    loop.add_argument("--batch", type=int, default=64, help="fine-tuning batch size per task (default 64)")
    loop.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd", help="fine-tuning optimizer (default sgd)")


def task_files(items: list[str] | None, option: str) -> dict[str, str]:
    """``["a=x.npz", "b=y.npz"]`` → ``{"a": "x.npz", "b": "y.npz"}``."""
    out: dict[str, str] = {}
    for item in items or []:
        task, sep, path = item.partition("=")
        if not sep or not task or not path:
            raise InputError(f"{option} {item!r}: expected TASK=FILE", hint=f"for example {option} a=a_train.npz")
        if task in out:
            raise InputError(f"{option} names task {task!r} twice")
        out[task] = path
    return out


def _read_json(path: str, what: str) -> object:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{what} {path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} {path}: not valid JSON ({exc})") from None


def run(args: argparse.Namespace) -> int:
    if len(args.models) < 2:
        raise InputError(f"zip takes two or more models, got {len(args.models)}", hint="onnx-zip zip A.onnx B.onnx [C.onnx …] --calib …")
    per_layer = None
    if args.share_per_layer:
        per_layer = _read_json(args.share_per_layer, "share-per-layer file")
        if not isinstance(per_layer, list):
            raise InputError(f"share-per-layer file {args.share_per_layer}: expected a JSON list, one entry per hidden layer")
    mapping = _read_json(args.map, "mapping file") if args.map else None
    if args.summary:
        check_writable(args.summary)
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    needs_data = args.pairing in ("mtz", "correlation") or METHODS.get(args.method).per_layer
    if needs_data and (not args.calib or len(args.calib) != len(args.models)):
        what = f"{args.pairing} pairing" if args.pairing in ("mtz", "correlation") else f"--method {args.method}"
        raise InputError(
            f"{what} needs calibration data for each model: got {len(args.calib or [])} --calib "
            f"for {len(args.models)} models",
            hint="pass one --calib per model, in model order (--calib A.npz --calib B.npz …)",
        )
    options = dict(
        names=names,
        share=args.share,
        share_per_layer=per_layer,
        max_cost=args.max_cost,
        match=args.match,
        conv_hessian=args.conv_hessian,
        damping=args.damping,
        pairing=args.pairing,
        method=args.method,
        rho=args.rho,
        separate_inputs=args.separate_inputs,
        seed=args.seed,
        calibration_limit=args.calib_limit or None,
        batch_size=args.batch_size,
        threads=args.threads,
        fold_batchnorm=not args.no_fold_batchnorm,
        mapping=mapping,
        report_path=args.report,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    train = task_files(args.train, "--train")
    if train:
        from onnx_zip.zipper.layerwise import zip_layerwise  # noqa: PLC0415 - needs the training runtime

        steps: int | list[int] = 100
        if args.retrain_steps:
            try:
                parts = [int(x) for x in args.retrain_steps.split(",")]
            except ValueError:
                raise InputError(f"--retrain-steps {args.retrain_steps!r}: expected whole numbers") from None
            steps = parts[0] if len(parts) == 1 else parts
        finetune_options = {"batch_size": args.batch, "optimizer": args.optimizer, "seed": args.seed,
                            "progress": options["progress"]}
        if args.lr is not None:
            finetune_options["lr"] = args.lr
        result = zip_layerwise(
            args.models, args.calib, train, args.output, retrain_steps=steps,
            evaluation=task_files(args.eval, "--eval") or None, finetune_options=finetune_options, **options,
        )
    else:
        if args.retrain_steps or args.eval:
            raise InputError("--retrain-steps and --eval need --train (the layer-wise loop)")
        result = zip_models(args.models, args.calib, args.output, **options)
    report = result.report
    print_zip_summary(report)
    for record in report.get("layerwise", []):
        before, after = record.get("accuracy_before"), record.get("accuracy_after")
        if before and after:
            accuracies = ", ".join(f"{t} {100 * before[t]:.2f}% -> {100 * after[t]:.2f}%" for t in before)
            print(f"{record['layer']}: {record['steps']} retraining steps, {accuracies}")
    if args.summary:
        summary = write_summary(report, args.summary)
        print(f"wrote {summary.markdown}" + (f" and {len(summary.images)} plots" if summary.images else ""))
    print(f"wrote {args.output}" + (f" and {args.report}" if args.report else ""))
    return 0
