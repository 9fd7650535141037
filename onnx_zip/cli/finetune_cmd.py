"""``onnx-zip finetune zipped.onnx --train a=A.npz --train b=B.npz --steps N -o tuned.onnx``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from onnx_zip.cli.inputs import collect, data_problems, model_problems, raise_all, task_files
from onnx_zip.cli.options import add_config_arguments, configs_from_args
from onnx_zip.model_io import check_writable

NAME = "finetune"
HELP = "lightly retrain a zipped model on every task jointly (onnxruntime-training, no torch)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the zipped .onnx model (or a single-task model)")
    parser.add_argument("--train", action="append", required=True, metavar="TASK=NPZ",
                        help="training data of a task (inputs by name + 'label'); once per task")
    parser.add_argument("--eval", action="append", metavar="TASK=NPZ", help="labelled test data of a task (accuracy before/after)")
    parser.add_argument("-o", "--output", required=True, help="the fine-tuned .onnx model to write")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(parser, ("finetune",))


def check(args: argparse.Namespace) -> tuple[Any, dict[str, str], dict[str, str]]:
    """Every problem of the command line at once: ``(config, train, evaluation)``.

    Raises:
        InputError: all the problems found.
    """
    problems: list[str] = []
    train = task_files(args.train, "--train", problems)
    evaluation = task_files(args.eval, "--eval", problems)
    configs, found = configs_from_args(args, ("finetune",))
    problems += found
    if args.eval_every is not None and not evaluation:
        problems.append("--eval-every needs --eval data (add --eval TASK=NPZ for every task)")
    problems += model_problems([args.model])
    problems += data_problems(train.values(), "--train") + data_problems(evaluation.values(), "--eval")
    collect(problems, check_writable, args.output)
    raise_all(problems)
    return configs["finetune"], train, evaluation


def run(args: argparse.Namespace) -> int:
    from onnx_zip.finetune import evaluate_tasks, finetune  # noqa: PLC0415 - heavy imports after parsing
    from onnx_zip.model_io import load_model  # noqa: PLC0415

    config, train, evaluation = check(args)
    model = load_model(args.model)
    before = evaluate_tasks(model, evaluation, threads=config.threads) if evaluation else None
    progress = not args.no_progress and not args.quiet and sys.stderr.isatty()
    result = finetune(model, train, eval=evaluation or None, output=args.output, progress=progress, **config.to_dict())
    final = result.record["final_losses"]
    print(f"{'task':<12}{'loss':>10}{'acc before':>12}{'acc after':>11}")
    for task, loss in final.items():
        b = f"{100 * before[task]:.2f}%" if before and task in before else "-"
        a = f"{100 * result.accuracy[task]:.2f}%" if result.accuracy and task in result.accuracy else "-"
        print(f"{task:<12}{loss:>10.4f}{b:>12}{a:>11}")
    print(f"{config.steps} steps in {result.seconds:.1f} s; wrote {args.output}")
    return 0
