#!/usr/bin/env python3
"""The paper's MNIST experiment (Table 1 / §5.1) on the bundled zoo, with the paper's numbers beside ours.

Two LeNet-300-100s and two LeNet-5s trained for the same task with different seeds (the second
one's hidden units randomly permuted after training), all hidden neurons shared:

* error of A and of B (originals);
* error of the zipped model without retraining (MTZ one pass, greedy, conv patch reading);
* error after the layer-wise zip-and-retrain loop (Algorithm 1) and its total iterations;
* error after one-pass zipping plus joint fine-tuning of the same budget;
* at a small budget (100 steps): MTZ pairing against random pairing with the same fine-tuning;
* the first layer fully shared (the rest not), no retraining: MTZ, weight-distance (L2) and
  random pairing.

Fine-tuned rows are means (± standard deviation) over ``--seeds`` seeds. Writes the table to
``benchmarks/mnist_table.md`` (``--out``) and prints it.

    python tools/reproduce_mnist_table.py [--seeds 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnx_zip.finetune import evaluate_tasks, finetune  # noqa: E402
from onnx_zip.model_io import atomic_write_bytes  # noqa: E402
from onnx_zip.pipeline import zip_models  # noqa: E402
from onnx_zip.pipeline.layerwise import zip_layerwise  # noqa: E402

MODELS = ROOT / "models"
TRAIN = MODELS / "data" / "mnist_train.npz"
TEST = MODELS / "data" / "mnist_test.npz"

PAIRS = {
    "LeNet-300-100": {
        "models": ("lenet300_mnist_s0.onnx", "lenet300_mnist_s1.onnx"),
        "layer_steps": [50, 500],
        "paper": {"A": 1.57, "B": 1.60, "no_retrain_delta": 1.50, "retrained": 1.64, "iterations": 550,
                  "first_layer_delta": 0.95, "first_layer_random": 33.47},
    },
    "LeNet-5": {
        "models": ("lenet5_mnist_s0.onnx", "lenet5_mnist_s1.onnx"),
        "layer_steps": [100, 100, 400],
        "paper": {"A": 0.89, "B": 0.95, "retrained": 0.93, "iterations": 600},
    },
}


def errors(accuracy: dict[str, float]) -> dict[str, float]:
    return {task: 100.0 * (1.0 - acc) for task, acc in accuracy.items()}


def mean_error(accuracy: dict[str, float]) -> float:
    return statistics.fmean(errors(accuracy).values())


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def run_pair(name: str, spec: dict, seeds: int, quick: bool, limit: int) -> dict:
    files = [str(MODELS / f) for f in spec["models"]]
    train = {"a": str(TRAIN), "b": str(TRAIN)}
    test = {"a": str(TEST), "b": str(TEST)}
    calib = [str(TRAIN), str(TRAIN)]
    hidden = len(spec["layer_steps"])
    budget = sum(spec["layer_steps"])
    layer_steps = [max(1, s // 10) for s in spec["layer_steps"]] if quick else spec["layer_steps"]
    budget = sum(layer_steps)
    out: dict = {"pair": name, "iterations": budget}
    started = time.perf_counter()

    base = zip_models(files, calib, share=0.0, calibration_limit=limit)
    original = errors(evaluate_tasks(base.model, test))
    out["A"], out["B"] = original["a"], original["b"]
    zipped = zip_models(files, calib, share=1.0, calibration_limit=limit)
    out["no_retrain"] = mean_error(evaluate_tasks(zipped.model, test))

    first = [1.0] + [0.0] * (hidden - 1)
    for pairing in ("mtz", "l2", "random"):
        result = zip_models(files, calib, share_per_layer=first, pairing=pairing, calibration_limit=limit)
        out[f"first_layer_{pairing}"] = mean_error(evaluate_tasks(result.model, test))

    small = 10 if quick else 100
    layerwise, onepass, mtz_small, random_small = [], [], [], []
    for seed in range(seeds):
        options = {"seed": seed}
        result = zip_layerwise(files, calib, train, retrain_steps=layer_steps, share=1.0,
                               calibration_limit=limit, finetune_options=options)
        layerwise.append(mean_error(evaluate_tasks(result.model, test)))
        onepass.append(mean_error(evaluate_tasks(finetune(zipped.model, train, steps=budget, seed=seed).model, test)))
        mtz_small.append(mean_error(evaluate_tasks(finetune(zipped.model, train, steps=small, seed=seed).model, test)))
        random_zip = zip_models(files, None, share=1.0, pairing="random", seed=seed)
        random_small.append(mean_error(evaluate_tasks(finetune(random_zip.model, train, steps=small, seed=seed).model,
                                                      test)))
    out.update(layerwise=layerwise, onepass=onepass, small_steps=small, mtz_small=mtz_small, random_small=random_small)
    out["seconds"] = time.perf_counter() - started
    return out


def table(results: list[dict], seeds: int) -> str:
    lines = [
        "# The paper's MNIST experiment on the bundled zoo",
        "",
        "Two models trained for the same task with different seeds (the second one's hidden units",
        "permuted), all hidden neurons shared. Errors in % on the 3,000-image MNIST test split;",
        f"fine-tuned rows: mean ± std over {seeds} seed(s). Paper: He, Zhou & Thiele (NeurIPS 2018), §5.1.",
        "Command: `python tools/reproduce_mnist_table.py`" + (f" --seeds {seeds}" if seeds != 3 else ""),
        "",
        "| | " + " | ".join(f"{r['pair']} (ours)" for r in results) + " | "
        + " | ".join(f"{r['pair']} (paper)" for r in results) + " |",
        "|---|" + "---|" * (2 * len(results)),
    ]

    def row(label: str, ours, paper) -> str:
        return f"| {label} | " + " | ".join(ours) + " | " + " | ".join(paper) + " |"

    papers = [PAIRS[r["pair"]]["paper"] for r in results]
    orig_mean = [statistics.fmean([r["A"], r["B"]]) for r in results]
    lines.append(row("error A", [f"{r['A']:.2f}" for r in results], [f"{p['A']:.2f}" for p in papers]))
    lines.append(row("error B", [f"{r['B']:.2f}" for r in results], [f"{p['B']:.2f}" for p in papers]))
    lines.append(row(
        "all shared, no retraining (mean; Δ)",
        [f"{r['no_retrain']:.2f} (+{r['no_retrain'] - m:.2f})" for r, m in zip(results, orig_mean)],
        [f"+{p['no_retrain_delta']:.2f}" if "no_retrain_delta" in p else "–" for p in papers],
    ))
    lines.append(row(
        "all shared, layer-wise retraining (Algorithm 1)",
        [f"{fmt(r['layerwise'])} after {r['iterations']} it." for r in results],
        [f"{p['retrained']:.2f} after {p['iterations']} it." for p in papers],
    ))
    lines.append(row(
        "all shared, one pass + joint fine-tuning, same budget",
        [f"{fmt(r['onepass'])} after {r['iterations']} it." for r in results], ["–" for _ in papers],
    ))
    lines.append(row(
        "all shared, small budget: MTZ / random pairing",
        [f"{fmt(r['mtz_small'])} / {fmt(r['random_small'])} after {r['small_steps']} it." for r in results],
        ["–" for _ in papers],
    ))
    lines.append(row(
        "first layer shared, no retraining: MTZ / L2 / random",
        [f"{r['first_layer_mtz']:.2f} / {r['first_layer_l2']:.2f} / {r['first_layer_random']:.2f}" for r in results],
        [f"+{p['first_layer_delta']:.2f} (MTZ) / – / {p['first_layer_random']:.2f}" if "first_layer_delta" in p else "–"
         for p in papers],
    ))
    lines.append("")
    lines.append("Seconds per pair: " + ", ".join(f"{r['pair']} {r['seconds']:.0f}" for r in results))
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="seeds for the fine-tuned rows (default 3)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the retraining steps (smoke test)")
    parser.add_argument("--limit", type=int, default=4096, help="calibration samples per model")
    parser.add_argument("--pairs", default=",".join(PAIRS), help="comma-separated subset of " + ", ".join(PAIRS))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "mnist_table.md"))
    args = parser.parse_args()
    results = []
    for name in args.pairs.split(","):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results.append(run_pair(name, PAIRS[name], args.seeds, args.quick, args.limit))
    text = table(results, args.seeds)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, text.encode())
    atomic_write_bytes(out.with_suffix(".json"), (json.dumps(results, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
