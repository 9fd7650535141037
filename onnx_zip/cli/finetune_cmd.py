"""``onnx-zip finetune zipped.onnx --train a=A.npz --train b=B.npz --steps N -o tuned.onnx``."""

from __future__ import annotations

import argparse
import sys

from onnx_zip.errors import InputError

NAME = "finetune"
HELP = "lightly retrain a zipped model on every task jointly (onnxruntime-training, no torch)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the zipped .onnx model (or a single-task model)")
    parser.add_argument("--train", action="append", required=True, metavar="TASK=NPZ",
                        help="training data of a task (inputs by name + 'label'); once per task")
    parser.add_argument("--eval", action="append", metavar="TASK=NPZ", help="labelled test data of a task (accuracy before/after)")
    parser.add_argument("--steps", type=int, required=True, help="optimiser steps (one batch of every task each)")
    parser.add_argument("-o", "--output", required=True, help="the fine-tuned .onnx model to write")
    parser.add_argument("--lr", type=float, help="peak learning rate (default 0.01 for sgd, 0.001 for adamw)")
    parser.add_argument("--batch", type=int, default=64, help="samples per task and step (default 64)")
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd", help="sgd (Nesterov momentum 0.9, default) or adamw")
    parser.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                        help="cosine: 5%% linear warm-up then cosine decay (default); constant")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9; 0 for plain SGD)")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="weight decay (default 0)")
    parser.add_argument("--loss", metavar="TASK=LOSS[,TASK=LOSS]", help="per-task loss: ce (default), bce or mse")
    parser.add_argument("--task-weight", metavar="TASK=W[,TASK=W]", help="per-task weight in the summed loss (default 1)")
    parser.add_argument("--freeze", action="append", default=[], metavar="WHAT",
                        help="keep fixed: shared, heads, or an initializer-name prefix (repeatable)")
    parser.add_argument("--no-grad-ops", choices=("freeze", "error"), default="freeze",
                        help="parameters behind ops without a gradient: freeze them (default, logged) or stop")
    parser.add_argument("--eval-every", type=int, metavar="N", help="evaluate every N steps (needs --eval)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the batch order (default 0)")
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads (1: bit-reproducible)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_pairs(items: list[str] | None, what: str) -> dict[str, str]:
    """``["a=x", "b=y"]`` or ``["a=x,b=y"]`` → ``{"a": "x", "b": "y"}``.

    Raises:
        InputError: an item without ``=`` or a task given twice.
    """
    out: dict[str, str] = {}
    for item in items or []:
        for part in item.split(",") if what != "--train" and what != "--eval" else [item]:
            task, sep, value = part.partition("=")
            if not sep or not task.strip() or not value.strip():
                raise InputError(f"{what} {part!r}: expected TASK=VALUE", hint=f"for example {what} a=...")
            task = task.strip()
            if task in out:
                raise InputError(f"{what}: task {task!r} given twice")
            out[task] = value.strip()
    return out


def _weights(items: dict[str, str]) -> dict[str, float]:
    out = {}
    for task, value in items.items():
        try:
            out[task] = float(value)
        except ValueError:
            raise InputError(f"--task-weight {task}={value}: not a number") from None
    return out


def run(args: argparse.Namespace) -> int:
    from onnx_zip.finetune import evaluate_tasks, finetune  # noqa: PLC0415 - heavy imports after parsing
    from onnx_zip.model_io import load_model  # noqa: PLC0415

    train = parse_pairs(args.train, "--train")
    evaluation = parse_pairs(args.eval, "--eval") or None
    losses = parse_pairs([args.loss] if args.loss else None, "--loss")
    weights = _weights(parse_pairs([args.task_weight] if args.task_weight else None, "--task-weight"))
    if args.eval_every is not None and not evaluation:
        raise InputError("--eval-every needs --eval data", hint="add --eval TASK=NPZ for every task")
    if args.steps < 1:
        raise InputError(f"--steps must be at least 1, got {args.steps}")
    model = load_model(args.model)
    before = None
    if evaluation:
        before = evaluate_tasks(model, evaluation, threads=args.threads)
    result = finetune(
        model,
        train,
        steps=args.steps,
        eval=evaluation,
        lr=args.lr,
        batch_size=args.batch,
        optimizer=args.optimizer,
        losses=losses or None,
        task_weights=weights or None,
        freeze=args.freeze,
        seed=args.seed,
        schedule=args.schedule,
        eval_every=args.eval_every,
        output=args.output,
        progress=not args.no_progress and sys.stderr.isatty(),
        threads=args.threads,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        no_grad=args.no_grad_ops,
    )
    final = result.record["final_losses"]
    print(f"{'task':<12}{'loss':>10}{'acc before':>12}{'acc after':>11}")
    for task, loss in final.items():
        b = f"{100 * before[task]:.2f}%" if before and task in before else "-"
        a = f"{100 * result.accuracy[task]:.2f}%" if result.accuracy and task in result.accuracy else "-"
        print(f"{task:<12}{loss:>10.4f}{b:>12}{a:>11}")
    print(f"{args.steps} steps in {result.seconds:.1f} s; wrote {args.output}")
    return 0
