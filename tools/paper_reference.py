#!/usr/bin/env python3
"""Reference outputs of the paper's one-pass MTZ zip, to prove that refactoring leaves them unchanged.

Four settings (the spine issue's check): LeNet-5 MNIST + Fashion at share 0.5; LeNet-300 s0 + s1 at
share 1.0; the zoo ResNets at share 0.5; three LeNet-5s at share 0.75 with the channel reading. Each
is zipped with the command line of the tree this script lives in (512 calibration samples per model),
then every task output is computed on the first 256 samples of each task's test split.

    python tools/paper_reference.py --write tests/data/paper_reference.npz   # made at commit 6652cf6
    python tools/paper_reference.py --check tests/data/paper_reference.npz   # max |diff| per setting

The reference file holds, per setting, each task output (key ``<setting>|<task>|<output>``) and the
zipped model's parameter count (key ``<setting>|params``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = 256
CALIB_LIMIT = "512"

#: setting -> (models, calibration sets, test sets, extra zip options)
SETTINGS: dict[str, tuple[list[str], list[str], list[str], list[str]]] = {
    "lenet5_mnist_fashion_0.5": (
        ["lenet5_mnist_s0", "lenet5_fashion"], ["mnist_train", "fashion_train"], ["mnist_test", "fashion_test"],
        ["--share", "0.5"]),
    "lenet300_s0_s1_1.0": (
        ["lenet300_mnist_s0", "lenet300_mnist_s1"], ["mnist_train", "mnist_train"], ["mnist_test", "mnist_test"],
        ["--share", "1.0"]),
    "resnets_0.5": (
        ["resnet_mnist", "resnet_fashion"], ["mnist_train", "fashion_train"], ["mnist_test", "fashion_test"],
        ["--share", "0.5"]),
    "three_lenet5_0.75_channel": (
        ["lenet5_mnist_s0", "lenet5_fashion", "lenet5_fashion_super4"],
        ["mnist_train", "fashion_train", "fashion_super4_train"],
        ["mnist_test", "fashion_test", "fashion_super4_test"],
        ["--share", "0.75", "--conv-hessian", "channel"]),
}


def zip_setting(name: str, output: Path) -> None:
    """Zip one setting with ``python -m onnx_zip zip`` of this tree into ``output``."""
    models, calib, _, extra = SETTINGS[name]
    cmd = [sys.executable, "-m", "onnx_zip", "-q", "zip", *(str(ROOT / "models" / f"{m}.onnx") for m in models)]
    for c in calib:
        cmd += ["--calib", str(ROOT / "models" / "data" / f"{c}.npz")]
    tasks = ",".join(f"t{i}" for i in range(len(models)))
    cmd += ["--names", tasks, "--calib-limit", CALIB_LIMIT, "-o", str(output), *extra]
    cmd += ["--method", "paper"]  # the paper's one-pass MTZ, whatever the default (6652cf6 had only this one)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"zip of {name} failed (exit {done.returncode}): {done.stderr[-2000:]}")


def task_outputs(name: str, path: Path) -> dict[str, np.ndarray]:
    """Every task output of the zipped model at ``path`` on its task's test samples, plus ``params``."""
    import onnxruntime as ort

    _, _, tests, _ = SETTINGS[name]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    model = onnx.load(str(path))
    result = {f"{name}|params": np.array(sum(int(np.prod(t.dims)) for t in model.graph.initializer))}
    for index, test in enumerate(tests):
        data = np.load(ROOT / "models" / "data" / f"{test}.npz")
        images = next(v for k, v in data.items() if k != "label")[:SAMPLES]
        feeds = {i.name: images for i in session.get_inputs()}
        names = [o.name for o in session.get_outputs() if o.name.startswith(f"t{index}/")]
        for output, value in zip(names, session.run(names, feeds)):
            result[f"{name}|{output.replace('/', '|')}"] = value
    return result


def compute(only: str | None = None) -> dict[str, np.ndarray]:
    """All settings' outputs (or one setting's), zipped in a temporary folder."""
    result: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in SETTINGS:
            if only is None or name == only:
                path = Path(tmp) / f"{name}.onnx"
                zip_setting(name, path)
                result.update(task_outputs(name, path))
    return result


def differences(reference: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> dict[str, float]:
    """Max |difference| per reference key (inf where an output is missing or shaped otherwise)."""
    out = {}
    for key, ref in reference.items():
        got = actual.get(key)
        if got is None or got.shape != ref.shape:
            out[key] = float("inf")
        else:
            out[key] = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)), initial=0.0))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", metavar="NPZ")
    group.add_argument("--check", metavar="NPZ")
    parser.add_argument("--only", choices=sorted(SETTINGS))
    args = parser.parse_args()
    if args.write:
        np.savez_compressed(args.write, **compute(args.only))
        print(f"wrote {args.write}")
        return 0
    reference = dict(np.load(args.check))
    if args.only:
        reference = {k: v for k, v in reference.items() if k.startswith(args.only + "|")}
    diffs = differences(reference, compute(args.only))
    for key, value in sorted(diffs.items()):
        print(f"{key}: {value:.3g}")
    worst = max(diffs.values(), default=0.0)
    print(f"max |diff| {worst:.3g}: {'PASS' if worst <= 1e-6 else 'FAIL'}")
    return 0 if worst <= 1e-6 else 1


if __name__ == "__main__":
    raise SystemExit(main())
