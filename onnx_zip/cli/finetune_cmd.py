"""``onnx-zip finetune zipped.onnx --train a=A.npz --train b=B.npz --steps N -o tuned.onnx``.

A ``--train`` file without ``label`` means distillation from the task's original model:
``--teacher TASK=ORIGINAL.onnx``, by default the source model recorded in the zipped model's
metadata when that file is still there (next to the zipped model or in the working folder).
"""

from __future__ import annotations

import argparse
import math
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
                        help="training data of a task (inputs by name, + 'label' if any: without it the task "
                             "distils from its teacher); once per task")
    parser.add_argument("--teacher", action="append", metavar="TASK=ORIGINAL.onnx",
                        help="the original model a task learns from (default: the recorded source model, for "
                             "tasks without labels); once per task")
    parser.add_argument("--eval", action="append", metavar="TASK=NPZ",
                        help="test data of a task: accuracy (with labels) and agreement with its teacher, before/after")
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
    teachers = task_files(args.teacher, "--teacher", problems)
    extra = {"finetune": {"teachers": teachers}} if teachers else None
    configs, found = configs_from_args(args, ("finetune",), extra=extra)
    problems += found
    if args.eval_every is not None and not evaluation:
        problems.append("--eval-every needs --eval data (add --eval TASK=NPZ for every task)")
    problems += model_problems([args.model, *teachers.values()])
    problems += data_problems(train.values(), "--train") + data_problems(evaluation.values(), "--eval")
    collect(problems, check_writable, args.output)
    raise_all(problems)
    return configs["finetune"], train, evaluation


def run(args: argparse.Namespace) -> int:
    from onnx_zip.finetune import finetune  # noqa: PLC0415 - heavy imports after parsing

    config, train, evaluation = check(args)
    progress = not args.no_progress and not args.quiet and sys.stderr.isatty()
    result = finetune(
        args.model, train, eval=evaluation or None, output=args.output, progress=progress, **config.to_dict()
    )
    final = {t: (math.nan if v is None else v) for t, v in result.record["final_losses"].items()}
    before, after = result.metrics_before or {}, result.metrics or {}
    print(f"{'task':<12}{'loss':>10}{'acc before':>12}{'acc after':>11}{'agree before':>14}{'agree after':>13}")
    for task, loss in final.items():
        cells = [
            _percent(before, task, "accuracy"),
            _percent(after, task, "accuracy"),
            _percent(before, task, "agreement"),
            _percent(after, task, "agreement"),
        ]
        print(f"{task:<12}{loss:>10.4f}{cells[0]:>12}{cells[1]:>11}{cells[2]:>14}{cells[3]:>13}")
    print(
        f"{result.record['steps_run']} steps at peak lr {result.record['lr']:.3g} in {result.seconds:.1f} s; "
        f"wrote {args.output}"
    )
    return 0


def _percent(metrics: dict[str, dict[str, Any]], task: str, key: str) -> str:
    value = metrics.get(task, {}).get(key)
    return "-" if value is None else f"{100 * float(value):.2f}%"
