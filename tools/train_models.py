#!/usr/bin/env python3
"""Train, export and record the onnx_zip model zoo (``models/*.onnx`` + ``models/manifest.json``).

Tools-only dependencies (never imported by the ``onnx_zip`` package): torch (CPU), onnxscript (dynamo
exporter), onnx, onnxruntime (1.19.2 from onnxruntime-training-cpu, or newer), scikit-learn, skl2onnx.

Data:
* MNIST models train on ``models/data/mnist_train.npz`` (the 7,000-digit train split) only, with random
  +-2 px shifts; ``models/data/mnist_test.npz`` (3,000 digits) is only used to measure accuracy.
* Fashion models train on the full official 60,000-image train set from the raw cache written by
  ``tools/fetch_data.py`` (``.cache/datasets/fashion_mnist.npz``); without the cache they fall back to
  the committed 12,000-image subset ``models/data/fashion_train.npz`` (recorded in the manifest).
  The official test set (``models/data/fashion*_test.npz``) is never used for training or selection.
* Epoch counts are fixed in ``SPECS``; ``--val N`` holds out N training samples and prints validation
  accuracy per epoch (that is how the epoch counts were chosen; the test splits are never used for it).

Usage::

    python tools/train_models.py                   # everything: ~15 min on 2 idle cores, ~45 min on
                                                   # 2 shared, busy cores (use --threads 1 then)
    python tools/train_models.py --only resnet_mnist
    python tools/train_models.py --only lenet5_mnist_s0 --val 1000 --no-save   # model selection run
    python tools/train_models.py --check-only      # re-measure accuracy/sha of the committed files
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
DATA = MODELS / "data"
CACHE = REPO / ".cache" / "datasets"
MANIFEST = MODELS / "manifest.json"
INFER_PYTHON = Path("/work/venv-infer/bin/python")  # optional: newest onnxruntime, checked if present

MAX_IR = 10  # onnxruntime 1.19.2 loads IR <= 10
MAX_OPSET = 21  # ... and ai.onnx opset <= 21
FASHION_SUPER4 = np.array([0, 1, 0, 1, 0, 2, 0, 2, 3, 2], dtype=np.int64)

# name: task, arch, framework/exporter, seed, training recipe, floor on the committed test split
SPECS: dict[str, dict] = {
    "lenet300_mnist_s0": dict(task="mnist-digit", arch="lenet300", exporter="torch.onnx legacy", opset=17,
                              seed=0, data="mnist", epochs=30, opt="adam", lr=1e-3, aug="shift2", floor=0.955),
    "lenet300_mnist_s1": dict(task="mnist-digit", arch="lenet300", exporter="torch.onnx legacy", opset=17,
                              seed=1, data="mnist", epochs=30, opt="adam", lr=1e-3, aug="shift2", floor=0.955,
                              permute=True),
    "lenet5_mnist_s0": dict(task="mnist-digit", arch="lenet5", exporter="torch.onnx dynamo", opset=18,
                            seed=0, data="mnist", epochs=20, opt="adam", lr=1e-3, aug="shift2", floor=0.98),
    "lenet5_mnist_s1": dict(task="mnist-digit", arch="lenet5", exporter="torch.onnx dynamo", opset=18,
                            seed=1, data="mnist", epochs=20, opt="adam", lr=1e-3, aug="shift2", floor=0.98,
                            permute=True),
    "lenet5_fashion": dict(task="fashion-item", arch="lenet5", exporter="torch.onnx dynamo", opset=20,
                           seed=0, data="fashion", epochs=12, opt="adam", lr=1e-3, aug="flip", floor=0.89),
    "lenet5_fashion_super4": dict(task="fashion-super4", arch="lenet5", exporter="torch.onnx dynamo", opset=20,
                                  seed=0, data="fashion_super4", epochs=3, opt="adam", lr=1e-3, aug="flip",
                                  floor=0.96),
    "resnet_mnist": dict(task="mnist-digit", arch="resnet8", exporter="torch.onnx legacy", opset=17,
                         seed=0, data="mnist", epochs=15, opt="sgd", lr=0.05, aug="shift2", floor=0.985),
    "resnet_fashion": dict(task="fashion-item", arch="resnet8", exporter="torch.onnx legacy", opset=17,
                           seed=0, data="fashion", epochs=6, opt="sgd", lr=0.05, aug="flip", floor=0.90),
    "mlp_mnist_sklearn_s0": dict(task="mnist-digit", arch="mlp300-100", exporter="skl2onnx", opset=17,
                                 seed=0, data="mnist_flat", epochs=40, floor=0.955),
    "mlp_mnist_sklearn_s1": dict(task="mnist-digit", arch="mlp300-100", exporter="skl2onnx", opset=17,
                                 seed=1, data="mnist_flat", epochs=40, floor=0.955),
}

SPLIT_FILES = {
    "mnist": ("data/mnist_train.npz", "data/mnist_test.npz"),
    "mnist_flat": ("data/mnist_flat_train.npz", "data/mnist_flat_test.npz"),
    "fashion": ("data/fashion_train.npz", "data/fashion_test.npz"),
    "fashion_super4": ("data/fashion_super4_train.npz", "data/fashion_super4_test.npz"),
}


def log(msg: str) -> None:
    print(f"[train_models {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def seed_everything(seed: int) -> None:
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_npz(rel: str) -> dict[str, np.ndarray]:
    with np.load(MODELS / rel) as z:
        return {k: z[k] for k in z.files}


# ----------------------------------------------------------------------------- training data
def training_arrays(data: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(images float32 (N,1,28,28) or (N,784), labels int64, description of the source)."""
    if data in ("fashion", "fashion_super4"):
        raw = CACHE / "fashion_mnist.npz"
        if raw.is_file():
            with np.load(raw) as z:
                x = (z["train_images"].astype(np.float32) / np.float32(255.0)).reshape(-1, 1, 28, 28)
                y = z["train_labels"].astype(np.int64)
            src = "Fashion-MNIST official train set, 60,000 images (tools/fetch_data.py raw cache)"
        else:
            log(f"WARNING: {raw} missing (run tools/fetch_data.py); training on the committed 12k subset")
            d = load_npz(SPLIT_FILES["fashion"][0])
            x, y = d["image"], d["label"]
            src = "committed subset models/" + SPLIT_FILES["fashion"][0]
        if data == "fashion_super4":
            y = FASHION_SUPER4[y]
        return x, y, src
    rel = SPLIT_FILES[data][0]
    d = load_npz(rel)
    key = "input" if data == "mnist_flat" else "image"
    return d[key], d["label"].astype(np.int64), "models/" + rel


def holdout(x: np.ndarray, y: np.ndarray, n_val: int, seed: int):
    if n_val <= 0:
        return x, y, None, None
    idx = np.random.default_rng(1000 + seed).permutation(len(y))
    va, tr = idx[:n_val], idx[n_val:]
    return x[tr], y[tr], x[va], y[va]


# ----------------------------------------------------------------------------- torch models
def build_torch_model(arch: str, n_classes: int):
    import torch.nn as nn

    if arch == "lenet300":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                             nn.Linear(100, n_classes))

    if arch == "lenet5":
        class LeNet5(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = nn.Conv2d(1, 20, 5)
                self.conv2 = nn.Conv2d(20, 50, 5)
                self.fc1 = nn.Linear(50 * 4 * 4, 500)
                self.fc2 = nn.Linear(500, n_classes)
                self.relu = nn.ReLU()
                self.pool = nn.MaxPool2d(2)
                self.flatten = nn.Flatten()

            def forward(self, x):
                x = self.pool(self.relu(self.conv1(x)))
                x = self.pool(self.relu(self.conv2(x)))
                x = self.relu(self.fc1(self.flatten(x)))
                return self.fc2(x)
        return LeNet5()

    if arch == "resnet8":
        class BasicBlock(nn.Module):
            def __init__(self, cin, cout, stride):
                super().__init__()
                self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
                self.bn1 = nn.BatchNorm2d(cout)
                self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
                self.bn2 = nn.BatchNorm2d(cout)
                self.relu = nn.ReLU()
                self.shortcut = None
                if stride != 1 or cin != cout:
                    self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

            def forward(self, x):
                out = self.relu(self.bn1(self.conv1(x)))
                out = self.bn2(self.conv2(out))
                identity = x if self.shortcut is None else self.shortcut(x)
                return self.relu(out + identity)

        class ResNet8(nn.Module):
            """stem conv3x3 16 + BN + ReLU + maxpool 2 (28->14), stages 16/32/64 (one basic block each,
            stride 1/2/2: 14x14, 7x7, 4x4; 1x1 conv + BN shortcuts when the shape changes), GAP, fc."""

            def __init__(self):
                super().__init__()
                self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                          nn.MaxPool2d(2))
                self.layer1 = BasicBlock(16, 16, 1)
                self.layer2 = BasicBlock(16, 32, 2)
                self.layer3 = BasicBlock(32, 64, 2)
                self.pool = nn.AdaptiveAvgPool2d(1)
                self.flatten = nn.Flatten()
                self.fc = nn.Linear(64, n_classes)

            def forward(self, x):
                x = self.layer3(self.layer2(self.layer1(self.stem(x))))
                return self.fc(self.flatten(self.pool(x)))
        return ResNet8()
    raise ValueError(arch)


def augment(xb, kind: str, gen):
    import torch
    if kind == "shift2":  # random integer shifts in [-2, 2] px, zero fill
        b = xb.shape[0]
        pad = torch.nn.functional.pad(xb, (2, 2, 2, 2))
        dy = torch.randint(0, 5, (b,), generator=gen)
        dx = torch.randint(0, 5, (b,), generator=gen)
        ar = torch.arange(28)
        rows = (dy[:, None] + ar)[:, :, None]
        cols = (dx[:, None] + ar)[:, None, :]
        bi = torch.arange(b)[:, None, None]
        return pad[bi, 0, rows, cols].unsqueeze(1)
    if kind == "flip":  # random horizontal flip (Fashion items are left/right symmetric enough)
        flip = torch.rand(xb.shape[0], generator=gen) < 0.5
        return torch.where(flip[:, None, None, None], xb.flip(3), xb)
    return xb


def evaluate_torch(model, x: np.ndarray, y: np.ndarray, bs: int = 512) -> float:
    import torch
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), bs):
            out = model(torch.from_numpy(x[i:i + bs]))
            correct += int((out.argmax(1).numpy() == y[i:i + bs]).sum())
    return correct / len(y)


def train_torch(spec: dict, x: np.ndarray, y: np.ndarray, xv, yv):
    import torch
    seed_everything(spec["seed"])
    n_classes = int(y.max()) + 1
    model = build_torch_model(spec["arch"], n_classes)
    steps_per_epoch = (len(y) + 127) // 128
    total = steps_per_epoch * spec["epochs"]
    if spec["opt"] == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=spec["lr"])
    else:
        opt = torch.optim.SGD(model.parameters(), lr=spec["lr"], momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec["lr"], total_steps=total, pct_start=0.15)
    gen = torch.Generator().manual_seed(spec["seed"])
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    lossf = torch.nn.CrossEntropyLoss()
    for ep in range(spec["epochs"]):
        model.train()
        t0 = time.time()
        perm = torch.randperm(len(yt), generator=gen)
        tot_loss, seen, correct = 0.0, 0, 0
        for s in range(steps_per_epoch):
            idx = perm[s * 128:(s + 1) * 128]
            xb = augment(xt[idx], spec.get("aug", ""), gen)
            yb = yt[idx]
            out = model(xb)
            loss = lossf(out, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += loss.item() * len(yb)
            seen += len(yb)
            correct += int((out.argmax(1) == yb).sum())
        msg = f"  epoch {ep + 1}/{spec['epochs']} loss {tot_loss / seen:.4f} train-acc {correct / seen:.4f}"
        if xv is not None:
            msg += f" val-acc {evaluate_torch(model, xv, yv):.4f}"
        log(msg + f" ({time.time() - t0:.1f}s)")
    model.eval()
    return model


# ----------------------------------------------------------------------------- permutation (s1 models)
def permute_hidden(model, arch: str, seed: int) -> dict[str, np.ndarray]:
    """Randomly permute every hidden layer's units in place (outputs unchanged)."""
    import torch
    rng = np.random.default_rng(10_000 + seed)
    perms = {}
    with torch.no_grad():
        if arch == "lenet300":
            l1, l2, l3 = model[1], model[3], model[5]
            for name, a, b in (("fc1", l1, l2), ("fc2", l2, l3)):
                p = rng.permutation(a.out_features)
                perms[name] = p
                pt = torch.from_numpy(p)
                a.weight.copy_(a.weight[pt])
                a.bias.copy_(a.bias[pt])
                b.weight.copy_(b.weight[:, pt])
        elif arch == "lenet5":
            p1 = rng.permutation(20)
            p2 = rng.permutation(50)
            p3 = rng.permutation(500)
            perms.update(conv1=p1, conv2=p2, fc1=p3)
            t1, t2, t3 = (torch.from_numpy(p) for p in (p1, p2, p3))
            m = model
            m.conv1.weight.copy_(m.conv1.weight[t1])
            m.conv1.bias.copy_(m.conv1.bias[t1])
            m.conv2.weight.copy_(m.conv2.weight[t2][:, t1])
            m.conv2.bias.copy_(m.conv2.bias[t2])
            # fc1 input is the flattened (50, 4, 4) map: permute whole 16-column channel blocks
            w = m.fc1.weight.reshape(500, 50, 16)[:, t2, :].reshape(500, 800)
            m.fc1.weight.copy_(w[t3])
            m.fc1.bias.copy_(m.fc1.bias[t3])
            m.fc2.weight.copy_(m.fc2.weight[:, t3])
        else:
            raise ValueError(arch)
    return perms


# ----------------------------------------------------------------------------- export
def export_torch(model, spec: dict, path: Path) -> None:
    import onnx
    import torch
    model.eval()
    dummy = torch.zeros(2, 1, 28, 28)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if spec["exporter"] == "torch.onnx legacy":
            # do_constant_folding=False keeps BatchNormalization as separate nodes (ResNets).
            torch.onnx.export(model, (dummy,), str(path), dynamo=False, opset_version=spec["opset"],
                              input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                              do_constant_folding=spec["arch"] != "resnet8")
        else:
            batch = torch.export.Dim("batch", min=1, max=1 << 20)
            torch.onnx.export(model, (dummy,), str(path), dynamo=True, opset_version=spec["opset"],
                              input_names=["image"], output_names=["logits"],
                              dynamic_shapes=({0: batch},), external_data=False,
                              optimize=spec["arch"] != "resnet8")
    m = onnx.load(str(path))
    changed = False
    if m.ir_version > MAX_IR:
        m.ir_version = MAX_IR
        changed = True
    if changed:
        onnx.save(m, str(path))
    for extra in path.parent.glob(path.name + ".data"):
        raise RuntimeError(f"external data written: {extra}")


def train_sklearn(spec: dict, x: np.ndarray, y: np.ndarray, xv, yv, path: Path):
    import torch
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.neural_network import MLPClassifier

    # Light augmentation for the shallow MLP too: the original 7,000 digits plus 2 shifted copies each.
    gen = torch.Generator().manual_seed(spec["seed"])
    xs = [x]
    for _ in range(2):
        xs.append(augment(torch.from_numpy(x.reshape(-1, 1, 28, 28)), "shift2", gen).reshape(-1, 784).numpy())
    xa = np.concatenate(xs)
    ya = np.concatenate([y] * 3)
    clf = MLPClassifier(hidden_layer_sizes=(300, 100), activation="relu", solver="adam", batch_size=128,
                        learning_rate_init=1e-3, max_iter=spec["epochs"], alpha=1e-4,
                        random_state=spec["seed"], shuffle=True, early_stopping=False, tol=0.0,
                        n_iter_no_change=10 ** 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter is expected
        clf.fit(xa, ya)
    if xv is not None:
        log(f"  sklearn val-acc {(clf.predict(xv) == yv).mean():.4f}")
    onx = convert_sklearn(clf, initial_types=[("input", FloatTensorType([None, 784]))], target_opset=17,
                          options={id(clf): {"zipmap": False}})
    if onx.ir_version > MAX_IR:
        onx.ir_version = MAX_IR
    path.write_bytes(onx.SerializeToString())
    return clf


# ----------------------------------------------------------------------------- checks
def ort_accuracy(path: Path, test_rel: str, out_name: str, bs: int = 256) -> tuple[float, str, str, int, int]:
    import onnxruntime as ort
    d = load_npz(test_rel)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    correct = 0
    for i in range(0, len(d["label"]), bs):
        out = sess.run([out_name], {in_name: d[in_name][i:i + bs]})[0]
        correct += int((out.argmax(1) == d["label"][i:i + bs]).sum())
    return correct / len(d["label"]), in_name, ort.__version__, correct, len(d["label"])


def graph_facts(path: Path) -> dict:
    import onnx
    m = onnx.load(str(path))
    opsets = {o.domain or "ai.onnx": o.version for o in m.opset_import}
    if m.ir_version > MAX_IR or opsets.get("ai.onnx", 0) > MAX_OPSET:
        raise RuntimeError(f"{path.name}: IR {m.ir_version} opset {opsets} too new for onnxruntime 1.19.2")
    ops: dict[str, int] = {}
    for n in m.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    n_params = int(sum(np.prod(t.dims) for t in m.graph.initializer))
    return {"ir_version": m.ir_version, "opset": opsets, "ops": ops, "n_initializer_values": n_params}


def check_newest_ort(paths: list[Path]) -> None:
    """Load every model in the newest onnxruntime too (separate venv) and compare outputs."""
    if not INFER_PYTHON.is_file():
        log(f"(skipping newest-onnxruntime check: {INFER_PYTHON} missing)")
        return
    import onnxruntime as ort
    code = (
        "import sys, numpy as np, onnxruntime as ort\n"
        "for p in sys.argv[1:]:\n"
        "    s = ort.InferenceSession(p, providers=['CPUExecutionProvider'])\n"
        "    i = s.get_inputs()[0]\n"
        "    x = np.random.default_rng(0).random((5, 784) if i.name == 'input' else (5, 1, 28, 28))"
        ".astype(np.float32)\n"
        "    np.save(p + '.chk.npy', s.run(None, {i.name: x})[-1])\n"
        "print(ort.__version__)\n")
    res = subprocess.run([str(INFER_PYTHON), "-c", code, *map(str, paths)], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError("newest onnxruntime failed:\n" + res.stderr)
    for p in paths:
        s = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        i = s.get_inputs()[0]
        x = np.random.default_rng(0).random((5, 784) if i.name == "input" else (5, 1, 28, 28)).astype(np.float32)
        ref = s.run(None, {i.name: x})[-1]
        chk = Path(str(p) + ".chk.npy")
        new = np.load(chk)
        chk.unlink()
        if not np.allclose(ref, new, atol=1e-4):
            raise RuntimeError(f"{p.name}: onnxruntime {res.stdout.strip()} disagrees: {np.abs(ref - new).max()}")
    log(f"all {len(paths)} models load and agree in onnxruntime {res.stdout.strip()} too")


# ----------------------------------------------------------------------------- main
def build(name: str, n_val: int, save: bool) -> dict | None:
    import torch
    spec = SPECS[name]
    train_rel, test_rel = SPLIT_FILES[spec["data"]]
    x, y, src = training_arrays(spec["data"])
    x, y, xv, yv = holdout(x, y, n_val, spec["seed"])
    log(f"{name}: training on {len(y)} samples ({src}){f', {n_val} held out' if n_val else ''}")
    path = MODELS / f"{name}.onnx"
    if not save:
        path = Path("/tmp") / f"zoo_{name}.onnx"
    t0 = time.time()
    entry = {"name": name, "file": path.name, "task": spec["task"], "arch": spec["arch"]}
    if spec["exporter"] == "skl2onnx":
        import skl2onnx
        import sklearn
        train_sklearn(spec, x, y, xv, yv, path)
        train_s = time.time() - t0
        entry.update(framework=f"scikit-learn {sklearn.__version__}",
                     exporter=f"skl2onnx {skl2onnx.__version__}", input="input", output="probabilities")
    else:
        model = train_torch(spec, x, y, xv, yv)
        train_s = time.time() - t0
        if spec.get("permute"):
            probe = torch.from_numpy(load_npz(test_rel)["image"][:256])
            with torch.no_grad():
                before = model(probe).numpy()
            perms = permute_hidden(model, spec["arch"], spec["seed"])
            with torch.no_grad():
                after = model(probe).numpy()
            diff = float(np.abs(before - after).max())
            log(f"  hidden units permuted ({', '.join(f'{k}:{len(v)}' for k, v in perms.items())}); "
                f"max |logit change| = {diff:.2e}")
            if diff > 1e-4 or not (before.argmax(1) == after.argmax(1)).all():
                raise RuntimeError("permutation changed the outputs")
            if save:
                np.savez_compressed(MODELS / f"{name}.perm.npz", **{k: v.astype(np.int64) for k, v in perms.items()})
            entry["hidden_permutation"] = {"file": f"{name}.perm.npz", "layers": list(perms),
                                           "max_abs_output_change": diff}
        export_torch(model, spec, path)
        # torch vs onnxruntime on real data
        import onnxruntime as ort
        probe = load_npz(test_rel)["image"][:256]
        with torch.no_grad():
            ref = model(torch.from_numpy(probe)).numpy()
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], {"image": probe})[0]
        log(f"  torch vs onnxruntime max |diff| = {np.abs(ref - got).max():.2e}")
        if np.abs(ref - got).max() > 1e-3:
            raise RuntimeError("exported model disagrees with torch")
        entry.update(framework=f"pytorch {torch.__version__.split('+')[0]}",
                     exporter=spec["exporter"] + (f" (dynamo=False, opset {spec['opset']})"
                                                  if "legacy" in spec["exporter"] else
                                                  f" (dynamo=True, opset {spec['opset']})"),
                     input="image", output="logits")
    acc, in_name, ort_v, correct, count = ort_accuracy(path, test_rel, entry["output"])
    assert in_name == entry["input"]
    facts = graph_facts(path)
    entry.update(seed=spec["seed"], data={"train": train_rel, "test": test_rel}, accuracy=acc, correct=correct,
                 count=count, floor=spec["floor"], floor_met=bool(acc >= spec["floor"]),
                 accuracy_measured_with=f"onnxruntime {ort_v}, committed test split, argmax of '{entry['output']}'",
                 trained_on=src + (f" minus {n_val} held out" if n_val else ""),
                 epochs=spec["epochs"], train_seconds=round(train_s, 1),
                 ir_version=facts["ir_version"], opset=facts["opset"], ops=facts["ops"],
                 n_initializer_values=facts["n_initializer_values"],
                 bytes=path.stat().st_size, sha256=sha256(path))
    if "BatchNormalization" not in facts["ops"] and spec["arch"] == "resnet8":
        raise RuntimeError(f"{name}: BatchNormalization nodes were folded away")
    log(f"{name}: test accuracy {acc:.4f} (floor {spec['floor']}, {'met' if acc >= spec['floor'] else 'NOT MET'}), "
        f"IR {facts['ir_version']} opset {facts['opset']}, {path.stat().st_size / 1e6:.2f} MB, train {train_s:.0f}s")
    return entry


def write_manifest(entries: dict[str, dict], built: list[str] | None = None) -> None:
    if built is not None and MANIFEST.is_file():  # merge: another run may have updated other entries
        current = {e["name"]: e for e in json.loads(MANIFEST.read_text())["models"]}
        current.update({n: entries[n] for n in built})
        entries.clear()
        entries.update(current)
    ordered = [entries[n] for n in SPECS if n in entries]
    doc = {"description": "onnx_zip model zoo; written by tools/train_models.py. Paths are relative to models/. "
                          "accuracy = top-1 on the committed test split, measured with onnxruntime.",
           "models": ordered}
    MANIFEST.write_text(json.dumps(doc, indent=1) + "\n")


def update_readme(entries: dict[str, dict]) -> None:
    readme = MODELS / "README.md"
    start, end = "<!-- models-table (written by tools/train_models.py) -->", "<!-- /models-table -->"
    if not readme.is_file():
        return
    text = readme.read_text()
    if start not in text or end not in text:
        return
    rows = ["| model | task | arch | framework / exporter | opset / IR | input → output | test accuracy | floor |",
            "|---|---|---|---|---|---|---|---|"]
    for n in SPECS:
        if n not in entries:
            continue
        e = entries[n]
        ops = ", ".join(f"{k} {v}" for k, v in e["opset"].items())
        rows.append(f"| `{n}` | {e['task']} | {e['arch']} | {e['framework']} / {e['exporter']} "
                    f"| {ops} / IR {e['ir_version']} "
                    f"| `{e['input']}` → `{e['output']}` | {100 * e['accuracy']:.2f}% | "
                    f"{100 * e['floor']:.1f}%{'' if e['floor_met'] else ' (NOT met)'} |")
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    readme.write_text(head + start + "\n" + "\n".join(rows) + "\n" + end + tail)


def print_table(entries: list[dict]) -> None:
    print(f"\n{'name':24s} {'exporter':40s} {'IR':>3s} {'opset':>5s} {'accuracy':>9s} {'floor':>6s} met  train_s")
    for e in entries:
        print(f"{e['name']:24s} {e['exporter'][:40]:40s} {e['ir_version']:3d} {e['opset'].get('ai.onnx', 0):5d} "
              f"{e['accuracy']:9.4f} {e['floor']:6.3f} {'yes' if e['floor_met'] else 'NO ':3s}"
              f"  {e['train_seconds']:7.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Train and export the onnx_zip model zoo.")
    ap.add_argument("--only", action="append", choices=sorted(SPECS), help="rebuild only this model (repeatable)")
    ap.add_argument("--val", type=int, default=0, help="hold out N training samples and print val accuracy")
    ap.add_argument("--no-save", action="store_true", help="write to /tmp, leave models/ untouched")
    ap.add_argument("--check-only", action="store_true", help="re-measure the committed models, no training")
    ap.add_argument("--epochs", type=int, default=0, help="override the epoch count (smoke tests only)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)  # 1 is faster than 2 when the 2 cores are shared with other jobs
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    entries: dict[str, dict] = {}
    if MANIFEST.is_file():
        entries = {e["name"]: e for e in json.loads(MANIFEST.read_text())["models"]}
    if args.check_only:
        for e in entries.values():
            p = MODELS / e["file"]
            acc, _, _, _, _ = ort_accuracy(p, e["data"]["test"], e["output"])
            ok = sha256(p) == e["sha256"] and abs(acc - e["accuracy"]) < 1e-6
            log(f"{e['name']}: accuracy {acc:.4f} sha256 {'ok' if ok else 'MISMATCH'}")
        check_newest_ort([MODELS / e["file"] for e in entries.values()])
        update_readme(entries)
        print_table(list(entries.values()))
        return 0

    names = args.only or list(SPECS)
    if args.epochs:
        for n in names:
            SPECS[n]["epochs"] = args.epochs
    t0 = time.time()
    built = []
    for name in names:
        e = build(name, args.val, save=not args.no_save)
        built.append(e)
        if not args.no_save:
            entries[name] = e
            write_manifest(entries, built=[x["name"] for x in built])
            update_readme(entries)
    log(f"total time {time.time() - t0:.0f}s")
    if not args.no_save:
        check_newest_ort([MODELS / entries[n]["file"] for n in names])
    print_table(built)
    return 0 if all(e["floor_met"] for e in built) else 1


if __name__ == "__main__":
    sys.exit(main())
