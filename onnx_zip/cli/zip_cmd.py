"""``onnx-zip zip A.onnx B.onnx --calib A.npz --calib B.npz -o zipped.onnx``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from onnx_zip.cli._output import print_zip_summary
from onnx_zip.cli.inputs import collect, data_problems, model_problems, raise_all, read_json, read_mapping, task_files
from onnx_zip.cli.options import add_config_arguments, configs_from_args
from onnx_zip.config import PAIRINGS, ZipConfig
from onnx_zip.model_io import check_writable
from onnx_zip.paths import check_outputs

NAME = "zip"
HELP = "zip two or more models into one multi-output model by Multi-Task Zipping"

#: The settings of a one-pass zip; the layer-wise loop adds ``retrain``.
SECTIONS = ("zip", "calibration", "retrain")
#: Flags whose value this command reads itself (files whose format the configuration does not know).
OWN_VALUES = ("--map", "--share-per-layer")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="two or more .onnx models (same input domain); further models are matched against the shared neurons",
    )
    parser.add_argument("--calib", action="append", metavar="NPZ", help="calibration data, once per model, in order")
    parser.add_argument("-o", "--output", required=True, help="the zipped .onnx model to write")
    parser.add_argument("--names", help="task names, comma separated (default a,b,c,…)")
    parser.add_argument("--report", metavar="FILE", help="write the JSON report here")
    parser.add_argument(
        "--summary", metavar="FILE.md", help="write a Markdown summary here (PNG plots beside it with matplotlib)"
    )
    parser.add_argument(
        "--stats", metavar="FILE", help="statistics written by `onnx-zip calibrate` (instead of calibrating again)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(parser, SECTIONS)
    loop = parser.add_argument_group("data of the layer-wise loop")
    loop.add_argument("--train", action="append", metavar="TASK=NPZ", help="training data of a task (enables the loop)")
    loop.add_argument(
        "--eval", action="append", metavar="TASK=NPZ", help="test data of a task: accuracy before/after each layer"
    )


def _file_problems(args: argparse.Namespace, train: dict[str, str], evaluation: dict[str, str]) -> list[str]:
    problems = []
    if len(args.models) < 2:
        problems.append(
            f"zip takes two or more models, got {len(args.models)} (onnx-zip zip A.onnx B.onnx … --calib …)"
        )
    problems += model_problems(args.models, refuse_zipped=True)
    problems += data_problems(args.calib or [], "--calib")
    problems += data_problems(train.values(), "--train") + data_problems(evaluation.values(), "--eval")
    for path in (args.output, args.summary, args.report):
        if path:
            collect(problems, check_writable, path)
    inputs = [("model", m) for m in args.models] + [("--calib", c) for c in args.calib or []]
    inputs += [("--train", p) for p in train.values()] + [("--eval", p) for p in evaluation.values()]
    inputs += [(flag, getattr(args, attr)) for flag, attr in (("--stats", "stats"), ("--map", "map"),
                                                             ("--share-per-layer", "share_per_layer"))]
    outputs = [("-o", args.output), ("--report", args.report), ("--summary", args.summary)]
    collect(problems, check_outputs, inputs, outputs)
    return problems


def check(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """Every problem of the command line at once: ``(configs, train, evaluation)`` when there is none.

    Raises:
        InputError: all the problems found.
    """
    problems: list[str] = []
    train = task_files(args.train, "--train", problems)
    evaluation = task_files(args.eval, "--eval", problems)
    extra: dict[str, Any] = {}
    if args.share_per_layer:
        per_layer = collect(problems, read_json, args.share_per_layer, "--share-per-layer")
        if per_layer is not None and not isinstance(per_layer, list):
            problems.append(
                f"--share-per-layer {args.share_per_layer}: expected a JSON list, one entry per hidden layer"
            )
        elif per_layer is not None:
            extra["share_per_layer"] = per_layer
    if args.map:
        extra["mapping"] = collect(problems, read_mapping, args.map)
    if args.stats and train:
        problems.append("--stats serves the one-pass zip; the layer-wise loop (--train) calibrates each layer anew")
    sections = SECTIONS if train else SECTIONS[:2]
    configs, found = configs_from_args(args, sections, skip=OWN_VALUES, extra={"zip": extra})
    problems += found
    if not train and (
        evaluation or any(getattr(args, a) is not None for a in ("retrain_steps", "lr", "optimizer", "batch"))
    ):
        problems.append("--retrain-steps, --lr, --optimizer, --batch and --eval need --train (the layer-wise loop)")
    pairing = args.pairing or ZipConfig.pairing
    if pairing in PAIRINGS and PAIRINGS.get(pairing).needs_calibration and len(args.calib or []) != len(args.models):
        problems.append(
            f"{pairing} pairing needs calibration data for each model: got "
            f"{len(args.calib or [])} --calib for {len(args.models)} models "
            "(pass one --calib per model, in model order: --calib A.npz --calib B.npz …)"
        )
    problems += _file_problems(args, train, evaluation)
    raise_all(problems)
    return configs, train, evaluation


def task_names(text: str | None) -> list[str] | None:
    """``--names a,b`` → ``["a", "b"]`` (``None``: the defaults)."""
    return [n.strip() for n in text.split(",")] if text else None


def run(args: argparse.Namespace) -> int:
    from onnx_zip.pipeline import zip_models  # noqa: PLC0415 - heavy imports after parsing

    configs, train, evaluation = check(args)
    progress = not args.no_progress and not args.quiet and sys.stderr.isatty()
    settings = {
        "names": task_names(args.names),
        "config": configs["zip"],
        "calibration_config": configs["calibration"],
        "report_path": args.report,
        "progress": progress,
    }
    if train:
        from onnx_zip.pipeline.layerwise import zip_layerwise  # noqa: PLC0415 - needs the training runtime

        tuning = {"threads": configs["calibration"].threads, "progress": progress}
        result = zip_layerwise(
            args.models,
            args.calib,
            train,
            args.output,
            retrain=configs["retrain"],
            evaluation=evaluation or None,
            finetune_options=tuning,
            **settings,
        )
    else:
        result = zip_models(args.models, args.calib, args.output, stats=args.stats, **settings)
    _print_result(result.report, args)
    return 0


def _print_result(report: Any, args: argparse.Namespace) -> None:
    from onnx_zip.reporting import write_summary  # noqa: PLC0415 - matplotlib only when asked

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
