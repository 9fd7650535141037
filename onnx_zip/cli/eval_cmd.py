"""``onnx-zip eval MODEL --data [TASK=]NPZ``: accuracy and agreement with the original models.

A single model: top-1 accuracy on labelled data (``--teacher ORIGINAL.onnx`` adds the agreement
with another model). A zipped model: every task by default, each on its own data
(``--data TASK=NPZ``, once per task); one untagged ``--data`` file is scored by the task named
with ``--task``, else by every task (the data does not say which task it belongs to). Each task
is compared with its original model (``--teacher TASK=ORIGINAL.onnx``, default: the source model
recorded in the zipped model's metadata, when that file is still there): top-1 agreement,
max/mean absolute difference, cosine, IoU of thresholded maps.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from onnx_zip.cli.inputs import data_problems, model_problems, raise_all
from onnx_zip.evaluate import evaluate

NAME = "eval"
HELP = "accuracy of a model (every task of a zipped one) and its agreement with the original models"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the .onnx model (single or zipped)")
    parser.add_argument("--data", required=True, action="append", metavar="[TASK=]NPZ",
                        help=".npz with the model's inputs (and 'label' for accuracy); TASK= names the task of a "
                             "zipped model (repeat per task)")
    parser.add_argument(
        "--task", help="the task an untagged --data file belongs to (zipped models; default: every task)"
    )
    parser.add_argument(
        "--teacher",
        action="append",
        metavar="[TASK=]ORIGINAL.onnx",
        help="the original model to compare with (default for zipped models: the recorded sources)",
    )
    parser.add_argument("--output", help="the output holding class scores (default: first float rank-2 output)")
    parser.add_argument("--batch-size", type=int, default=256, help="samples per run (default 256)")
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _split(items: list[str] | None, flag: str, problems: list[str]) -> tuple[dict[str, str], list[str]]:
    """``TASK=PATH`` items and bare ``PATH`` items (a path containing ``=`` must be tagged)."""
    tagged: dict[str, str] = {}
    bare: list[str] = []
    for item in items or []:
        task, sep, path = item.partition("=")
        if not sep:
            bare.append(item)
        elif not task.strip() or not path.strip():
            problems.append(f"{flag} {item!r}: expected [TASK=]FILE")
        elif task.strip() in tagged:
            problems.append(f"{flag} names task {task.strip()!r} twice")
        else:
            tagged[task.strip()] = path.strip()
    return tagged, bare


def _plan(args: argparse.Namespace, tasks: list[str]) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """``({task: data}, {task: original}, notes)`` of a zipped model's evaluation.

    Raises:
        InputError: every problem at once.
    """
    problems: list[str] = []
    data, bare = _split(args.data, "--data", problems)
    teachers, bare_teachers = _split(args.teacher, "--teacher", problems)
    notes: list[str] = []
    if bare_teachers:
        problems.append(f"--teacher {bare_teachers[0]}: a zipped model needs TASK=ORIGINAL.onnx")
    if args.output is not None and args.task is None and args.output.split("/", 1)[0] in tasks:
        args.task = args.output.split("/", 1)[0]  # --output fashion/logits names the task
    if args.task is not None and args.task not in tasks:
        problems.append(f"--task {args.task!r}: the model's tasks are {tasks}")
    unknown = [t for t in [*data, *teachers] if t not in tasks]
    if unknown:
        problems.append(f"task {unknown[0]!r} is not in the model (its tasks: {tasks})")
    if len(bare) > 1:
        problems.append(f"{len(bare)} untagged --data files: tag each with its task (--data TASK=FILE)")
    elif bare and args.task is not None:
        data[args.task] = bare[0]
    elif bare:
        data.update({t: bare[0] for t in tasks if t not in data})
        notes.append(
            f"{bare[0]} does not say which task it belongs to: every task is scored on it "
            "(name one with --task or --data TASK=FILE)"
        )
    problems += data_problems(data.values(), "--data") + model_problems(teachers.values(), "--teacher")
    raise_all(problems)
    return data, teachers, notes


def _zipped(args: argparse.Namespace, tasks: list[str]) -> int:
    from onnx_zip.finetune.distill import recorded_teachers  # noqa: PLC0415
    from onnx_zip.finetune.evaluation import evaluate_tasks_metrics  # noqa: PLC0415
    from onnx_zip.metrics import describe  # noqa: PLC0415
    from onnx_zip.model_io import load_model  # noqa: PLC0415

    data, teachers, notes = _plan(args, tasks)
    proto = load_model(args.model)
    references: dict[str, Any] = {t: p for t, p in recorded_teachers(proto, args.model).items() if t in data}
    references.update(teachers)
    outputs = {args.task: args.output} if args.output and args.task else None
    results = evaluate_tasks_metrics(
        proto,
        data,
        references=references,
        outputs=outputs,
        batch_size=args.batch_size,
        threads=args.threads,
        lenient_labels=bool(notes),
    )
    if args.json:
        print(
            json.dumps(
                {"model": args.model, "notes": notes, "tasks": {t: r.to_dict() for t, r in results.items()}}, indent=2
            )
        )
        return 0
    for note in notes:
        print(f"note: {note}")
    for task, r in results.items():
        against = f" (vs {r.reference})" if r.reference else ""
        print(
            f"{task}: {describe(r.metrics)}{against} on {data[task]} ({r.metrics['count']} samples), output "
            f"{r.output!r}"
        )
    return 0


def _single(args: argparse.Namespace) -> int:
    problems: list[str] = []
    data, bare = _split(args.data, "--data", problems)
    teachers, bare_teachers = _split(args.teacher, "--teacher", problems)
    files = [*bare, *data.values()]
    if len(files) != 1:
        problems.append(f"{args.model} is one model: give one --data file (got {len(files)})")
    if len(bare_teachers) + len(teachers) > 1:
        problems.append("a single model is compared with one --teacher")
    problems += data_problems(files, "--data") + model_problems([*bare_teachers, *teachers.values()], "--teacher")
    raise_all(problems)
    original = next(iter([*bare_teachers, *teachers.values()]), None)
    if original is None:
        result = evaluate(args.model, files[0], output=args.output, batch_size=args.batch_size, threads=args.threads)
        if args.json:
            print(json.dumps({"model": args.model, "data": files[0], **result.to_dict()}, indent=2))
        else:
            print(
                f"{args.model}: accuracy {100 * result.accuracy:.2f}% ({result.correct}/{result.count}) on "
                f"{files[0]}, output {result.output!r}"
            )
        return 0
    from onnx_zip.finetune.evaluation import evaluate_tasks_metrics  # noqa: PLC0415
    from onnx_zip.metrics import describe  # noqa: PLC0415

    outputs = {"model": args.output} if args.output else None
    r = evaluate_tasks_metrics(
        args.model,
        {"model": files[0]},
        references={"model": original},
        outputs=outputs,
        batch_size=args.batch_size,
        threads=args.threads,
    )["model"]
    if args.json:
        print(json.dumps({"model": args.model, "data": files[0], **r.to_dict()}, indent=2))
    else:
        print(f"{args.model}: {describe(r.metrics)} (vs {original}) on {files[0]}, output {r.output!r}")
    return 0


def run(args: argparse.Namespace) -> int:
    from onnx_zip.input_checks import zipped_tasks  # noqa: PLC0415

    raise_all(model_problems([args.model]))
    tasks = zipped_tasks(args.model)
    return _zipped(args, list(tasks)) if tasks else _single(args)
