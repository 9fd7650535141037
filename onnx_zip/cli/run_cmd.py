"""``onnx-zip run recipe.yaml``: validate a whole recipe, then zip, retrain, fine-tune and write."""

from __future__ import annotations

import argparse
import sys

from onnx_zip.cli._output import print_zip_summary
from onnx_zip.recipes import execute, load_recipe, prepare_run

NAME = "run"
HELP = "run a YAML recipe (models, data, sharing, retraining, outputs), validated in full before it starts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="the recipe .yaml (see recipes/ for examples)")
    parser.add_argument(
        "--check", action="store_true", help="only validate (recipe, files, models, alignment, data shapes) and exit"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def run(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe)
    progress = not args.no_progress and not args.quiet and sys.stderr.isatty()
    plan = prepare_run(recipe, progress=progress)
    if args.check:
        stages = ["zip"] + [s for s in ("retrain", "finetune") if recipe.data[s]]
        print(
            f"{args.recipe}: valid ({' + '.join(recipe.tasks)}; {', '.join(stages)}; "
            f"{len(plan.job.hidden)} hidden layers)"
        )
        return 0
    result = execute(plan)
    report = result.report
    print_zip_summary(report)
    evaluation = report.get("evaluation") or {}
    if evaluation:
        print(f"{'task':<16}{'original':>10}{'zipped':>10}{'fine-tuned':>12}")
        for task, values in evaluation.items():
            print(
                f"{task:<16}{_percent(values.get('original')):>10}{_percent(values.get('zipped')):>10}"
                f"{_percent(values.get('finetuned')):>12}"
            )
    print("wrote " + ", ".join(map(str, result.outputs)) + f" in {result.seconds:.1f} s")
    return 0
