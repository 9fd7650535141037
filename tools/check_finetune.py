"""Zip zoo pairs, fine-tune them with onnx_zip.finetune, and print accuracy before/after and seconds.

Usage (from the repository root, in the training venv)::

    python tools/check_finetune.py                      # both default pairs, 600 steps, seed 0
    python tools/check_finetune.py --steps 600 --seeds 0 1 2 --lr 0.02 --pairs lenet5
    python tools/check_finetune.py --json results.json

Pairs: ``lenet5`` = LeNet-5 MNIST (s0) + LeNet-5 Fashion at share 0.5; ``lenet300`` = LeNet-300
MNIST s0 + s1 at share 1.0. "orig" is each original model's accuracy on its test split, "zipped"
the zipped model before fine-tuning, "tuned" after; "ok" says whether every task is within 1
point of its original. Seconds are the fine-tuning call alone (setup + steps + export), on
the threads onnxruntime chooses unless --threads is given.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnx_zip.evaluate import evaluate  # noqa: E402
from onnx_zip.finetune import evaluate_tasks, finetune  # noqa: E402
from onnx_zip.pipeline import zip_models  # noqa: E402

PAIRS = {
    "lenet5": (("lenet5_mnist_s0", "lenet5_fashion"), ("mnist", "fashion"), 0.5),
    "lenet300": (("lenet300_mnist_s0", "lenet300_mnist_s1"), ("s0", "s1"), 1.0),
}


def manifest() -> dict[str, dict]:
    data = json.loads((ROOT / "models" / "manifest.json").read_text())
    return {m["name"]: m for m in data["models"]}


def check(pair: str, steps: int, seeds: list[int], lr: float | None, optimizer: str, threads: int | None,
          calib_limit: int) -> list[dict]:
    (ma, mb), names, share = PAIRS[pair]
    zoo = manifest()
    entries = [zoo[ma], zoo[mb]]
    files = [str(ROOT / "models" / e["file"]) for e in entries]
    train = {t: str(ROOT / "models" / e["data"]["train"]) for t, e in zip(names, entries)}
    test = {t: str(ROOT / "models" / e["data"]["test"]) for t, e in zip(names, entries)}
    orig = {t: evaluate(f, test[t]).accuracy for t, f in zip(names, files)}
    start = time.perf_counter()
    zipped = zip_models(files, list(train.values()), names=list(names), share=share,
                        calibration_limit=calib_limit).model
    zip_seconds = time.perf_counter() - start
    before = evaluate_tasks(zipped, test)
    rows = []
    for seed in seeds:
        result = finetune(zipped, train, steps=steps, eval=test, lr=lr, optimizer=optimizer, seed=seed, threads=threads,
                          progress=True)
        rows.append({
            "pair": pair, "share": share, "seed": seed, "steps": steps, "lr": result.record["lr"],
            "optimizer": optimizer, "orig": orig, "zipped": before, "tuned": result.accuracy,
            "seconds": result.seconds, "zip_seconds": zip_seconds,
            "ok": all(result.accuracy[t] >= orig[t] - 0.01 for t in names),
        })
        print_row(rows[-1], names)
    return rows


def print_row(row: dict, names: tuple[str, str]) -> None:
    for t in names:
        print(f"{row['pair']:<9}{row['share']:>6.2f}{row['seed']:>5}{row['steps']:>6}  {t:<8}"
              f"{100 * row['orig'][t]:>7.2f}{100 * row['zipped'][t]:>8.2f}{100 * row['tuned'][t]:>8.2f}"
              f"{100 * (row['tuned'][t] - row['orig'][t]):>+8.2f}{row['seconds']:>8.1f}"
              f"  {'yes' if row['ok'] else 'NO'}",
              flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=["lenet5", "lenet300"])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--lr", type=float)
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--calib-limit", type=int, default=2000, help="calibration samples per model for zipping")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"{'pair':<9}{'share':>6}{'seed':>5}{'steps':>6}  {'task':<8}{'orig':>7}{'zipped':>8}{'tuned':>8}"
          f"{'delta':>8}{'sec':>8}  ok")
    rows = []
    for pair in args.pairs:
        rows += check(pair, args.steps, args.seeds, args.lr, args.optimizer, args.threads, args.calib_limit)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
