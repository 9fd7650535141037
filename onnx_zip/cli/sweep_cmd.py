"""``onnx-zip sweep A.onnx B.onnx --calib .. --calib .. --eval a=.. --eval b=.. --shares 0,0.5,1 --out DIR``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from onnx_zip.cli.inputs import data_problems, model_problems, raise_all, task_files
from onnx_zip.cli.options import add_config_arguments, configs_from_args
from onnx_zip.cli.zip_cmd import zip_options
from onnx_zip.model_io import atomic_write_bytes

NAME = "sweep"
HELP = "zip two or more models at several sharing levels, evaluate each, and draw accuracy against sharing"


#: A sweep sets the sharing itself (``--shares``); the rest of the zip settings apply to every level.
SHARING_FLAGS = ("--share", "--share-per-layer", "--max-cost", "--map")
#: The fine-tuning's --seed/--threads are the zip's and calibration's.
FINETUNE_OWNED = ("--seed", "--threads", "--eval-every")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL", help="two or more .onnx models")
    parser.add_argument("--calib", action="append", metavar="NPZ", help="calibration data, once per model, in order")
    parser.add_argument("--eval", action="append", metavar="TASK=NPZ", required=True, help="labelled test data of each task")
    parser.add_argument("--names", help="task names, comma separated (default a,b)")
    parser.add_argument("--shares", default="0,0.25,0.5,0.75,1", help="sharing levels (default 0,0.25,0.5,0.75,1)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for sweep.json, sweep.md and the plot (created)")
    parser.add_argument("--eval-limit", type=int, metavar="N", help="evaluate on at most N samples per task")
    parser.add_argument("--save-models", action="store_true", help="also write each level's model to DIR/share_<level>.onnx")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(parser, ("zip", "calibration", "finetune"), skip=SHARING_FLAGS)
    tune = parser.add_argument_group("data of the fine-tuning at each level (with --steps N)")
    tune.add_argument("--train", action="append", metavar="TASK=NPZ", help="training data of each task")
    tune.add_argument("--finetune-steps", dest="steps", type=int, help=argparse.SUPPRESS)  # the earlier spelling


def check(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """Every problem of the command line at once: ``(configs, train, evaluation)``.

    Raises:
        InputError: all the problems found.
    """
    problems: list[str] = []
    train = task_files(args.train, "--train", problems)
    evaluation = task_files(args.eval, "--eval", problems)
    tuned = bool(args.steps)
    sections = ("zip", "calibration", "finetune") if tuned else ("zip", "calibration")
    configs, found = configs_from_args(args, sections, skip=SHARING_FLAGS + FINETUNE_OWNED)
    problems += found
    if args.eval_limit is not None and args.eval_limit < 1:
        problems.append(f"--eval-limit must be positive, got {args.eval_limit}")
    if tuned and not train:
        problems.append("--steps needs --train TASK=NPZ for every task")
    if train and not tuned:
        problems.append("--train is only used with --steps N (fine-tuning at each level)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        problems.append(f"--out {out}: is a file, not a folder")
    elif not out.exists() and not out.parent.is_dir():
        problems.append(f"--out {out}: its folder {out.parent} does not exist (create it first)")
    problems += model_problems(args.models, refuse_zipped=True) + data_problems(args.calib or [], "--calib")
    problems += data_problems(train.values(), "--train") + data_problems(evaluation.values(), "--eval")
    raise_all(problems)
    return configs, train, evaluation


def run(args: argparse.Namespace) -> int:
    from onnx_zip.reporting import write_summary  # noqa: PLC0415
    from onnx_zip.sweep import parse_shares, sweep  # noqa: PLC0415

    configs, train, evaluation = check(args)
    shares = parse_shares(args.shares)
    out = Path(args.out)
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    progress = not args.no_progress and not args.quiet and sys.stderr.isatty()
    options = {k: v for k, v in zip_options(configs).items() if k not in ("share", "share_per_layer", "max_cost", "mapping")}
    finetune_options: dict[str, Any] = {"progress": progress}
    if configs.get("finetune") is not None:
        tuning = configs["finetune"].to_dict()
        finetune_options.update({k: v for k, v in tuning.items() if k not in ("steps", "seed", "threads", "eval_every")})
        finetune_options["seed"] = options["seed"]
    steps = args.steps or 0
    created = not out.exists()
    out.mkdir(exist_ok=True)
    try:
        report = sweep(
            args.models, args.calib, shares, evaluation, train=train or None,
            finetune_steps=steps, finetune_options=finetune_options, eval_limit=args.eval_limit,
            save_models=out if args.save_models else None, names=names, progress=progress, **options,
        )
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()  # no partial outputs: leave no empty folder behind
        raise
    atomic_write_bytes(out / "sweep.json", (json.dumps(report, indent=2) + "\n").encode())
    summary = write_summary(report, out / "sweep.md", title=f"Sharing sweep: {' + '.join(report['tasks'])}")
    tasks = report["tasks"]
    tuned = steps > 0
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
