"""``onnx-zip sweep A.onnx B.onnx --calib .. --calib .. --eval a=.. --eval b=.. --shares 0,0.5,1 --out DIR``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from onnx_zip.cli.zip_cmd import task_files
from onnx_zip.errors import InputError
from onnx_zip.model_io import atomic_write_bytes
from onnx_zip.zipper.api import DEFAULT_CALIBRATION_LIMIT

NAME = "sweep"
HELP = "zip two or more models at several sharing levels, evaluate each, and draw accuracy against sharing"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL", help="two or more .onnx models")
    parser.add_argument("--calib", action="append", metavar="NPZ", help="calibration data, once per model, in order")
    parser.add_argument("--eval", action="append", metavar="TASK=NPZ", required=True, help="labelled test data of each task")
    parser.add_argument("--names", help="task names, comma separated (default a,b)")
    parser.add_argument("--shares", default="0,0.25,0.5,0.75,1", help="sharing levels (default 0,0.25,0.5,0.75,1)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for sweep.json, sweep.md and the plot (created)")
    parser.add_argument("--match", choices=("greedy", "optimal"), default="greedy", help="pair selection (default greedy)")
    parser.add_argument("--conv-hessian", choices=("patch", "channel", "auto"), default="auto", help="convolution Hessian (default auto)")
    parser.add_argument("--calib-limit", type=int, metavar="N", default=DEFAULT_CALIBRATION_LIMIT,
                        help=f"calibration samples per model (default {DEFAULT_CALIBRATION_LIMIT}; 0: all)")
    parser.add_argument("--eval-limit", type=int, metavar="N", help="evaluate on at most N samples per task")
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads")
    parser.add_argument("--seed", type=int, default=0, help="seed")
    parser.add_argument("--save-models", action="store_true", help="also write each level's model to DIR/share_<level>.onnx")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    tune = parser.add_argument_group("fine-tuning at each level")
    tune.add_argument("--finetune-steps", type=int, default=0, metavar="N", help="joint fine-tuning steps per level (default 0)")
    tune.add_argument("--train", action="append", metavar="TASK=NPZ", help="training data of each task (with --finetune-steps)")
    tune.add_argument("--lr", type=float, help="learning rate (default: the optimizer's)")
    tune.add_argument("--batch", type=int, default=64, help="batch size per task (default 64)")
    tune.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd", help="optimizer (default sgd)")


def run(args: argparse.Namespace) -> int:
    from onnx_zip.reporting import write_summary  # noqa: PLC0415
    from onnx_zip.sweep import parse_shares, sweep  # noqa: PLC0415

    shares = parse_shares(args.shares)
    if args.eval_limit is not None and args.eval_limit < 1:
        raise InputError(f"--eval-limit must be positive, got {args.eval_limit}")
    if args.finetune_steps < 0:
        raise InputError(f"--finetune-steps must be ≥ 0, got {args.finetune_steps}")
    train = task_files(args.train, "--train")
    if args.finetune_steps and not train:
        raise InputError("--finetune-steps needs --train TASK=NPZ for every task")
    if train and not args.finetune_steps:
        raise InputError("--train is only used with --finetune-steps N")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file, not a folder")
    if not out.exists() and not out.parent.is_dir():
        raise InputError(f"--out {out}: its folder {out.parent} does not exist", hint="create it first")
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    progress = not args.no_progress and not args.quiet and sys.stderr.isatty()
    finetune_options = {"batch_size": args.batch, "optimizer": args.optimizer, "seed": args.seed, "progress": progress}
    if args.lr is not None:
        finetune_options["lr"] = args.lr
    created = not out.exists()
    out.mkdir(exist_ok=True)
    try:
        report = sweep(
            args.models, args.calib, shares, task_files(args.eval, "--eval"), train=train or None,
            finetune_steps=args.finetune_steps, finetune_options=finetune_options, eval_limit=args.eval_limit,
            save_models=out if args.save_models else None, names=names, match=args.match,
            conv_hessian=args.conv_hessian, calibration_limit=args.calib_limit or None, threads=args.threads,
            seed=args.seed, progress=progress,
        )
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()  # no partial outputs: leave no empty folder behind
        raise
    atomic_write_bytes(out / "sweep.json", (json.dumps(report, indent=2) + "\n").encode())
    summary = write_summary(report, out / "sweep.md", title=f"Sharing sweep: {' + '.join(report['tasks'])}")
    tasks = report["tasks"]
    tuned = args.finetune_steps > 0
    header = f"{'share':>6}{'params':>11}{'shared':>9}" + "".join(f"{t:>12}" for t in tasks)
    header += "".join(f"{t + ' +ft':>14}" for t in tasks) if tuned else ""
    print(header)
    original = report["original_accuracy"]
    print(f"{'orig':>6}{sum(report['sweep'][0]['params'][t] for t in tasks):>11,}{0:>9,}"
          + "".join(f"{100 * original[t]:>11.2f}%" for t in tasks))
    for level in report["sweep"]:
        row = f"{level['share']:>6.2f}{level['params']['zipped']:>11,}{level['params']['shared']:>9,}"
        row += "".join(f"{100 * level['accuracy'][t]:>11.2f}%" for t in tasks)
        if tuned:
            row += "".join(f"{100 * level['accuracy_finetuned'][t]:>13.2f}%" for t in tasks)
        print(row)
    print(f"wrote {out / 'sweep.json'}, {summary.markdown}" + (f" and {len(summary.images)} plots" if summary.images else ""))
    return 0
