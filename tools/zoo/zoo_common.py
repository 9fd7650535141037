"""Shared helpers for the exporter zoo scripts (numpy + json only, so every exporter venv can import it).

Data come only from the committed splits in ``models/data/`` (no download, no raw cache):

* ``mnist``            models/data/mnist_{train,test}.npz            (7,000 / 3,000 digits, 10 classes)
* ``fashion``          models/data/fashion_{train,test}.npz          (12,000 / 10,000 items, 10 classes)
* ``fashion_super4``   models/data/fashion_super4_{train,test}.npz   (same images, 4 super-categories)
* ``mnist16``          the MNIST splits downsampled to 16x16 (see :func:`downsample16`)
* ``mnist_stroke``     map task: per-pixel stroke mask of the digit (see :func:`stroke_mask`)
* ``fashion_silhouette`` map task: filled silhouette of the garment (see :func:`silhouette_mask`)

Images are float32 (N, 1, 28, 28) in [0, 1]; maps are float32 (N, 1, 28, 28) in {0, 1}.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "models" / "data"
ZOO = REPO / "models" / "zoo"
MANIFEST = ZOO / "manifest.json"
MAPS_FILE = ZOO / "maps_test.npz"

MAX_IR = 10  # onnxruntime 1.19.2 loads IR <= 10
MAX_OPSET = 21  # ... and ai.onnx opset <= 21

SPLITS = {
    "mnist": ("mnist_train.npz", "mnist_test.npz"),
    "mnist16": ("mnist_train.npz", "mnist_test.npz"),
    "mnist_stroke": ("mnist_train.npz", "mnist_test.npz"),
    "fashion": ("fashion_train.npz", "fashion_test.npz"),
    "fashion_silhouette": ("fashion_train.npz", "fashion_test.npz"),
    "fashion_super4": ("fashion_super4_train.npz", "fashion_super4_test.npz"),
}


def log(msg: str) -> None:
    print(f"[zoo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def seed_python(seed: int) -> None:
    """Seed python's and numpy's global generators (the frameworks seed their own)."""
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def downsample16(x: np.ndarray) -> np.ndarray:
    """(N, 1, 28, 28) -> (N, 1, 16, 16): zero-pad 2 px on every side (32x32), then 2x2 average pooling."""
    p = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    n = p.shape[0]
    return p.reshape(n, 1, 16, 2, 16, 2).mean(axis=(3, 5)).astype(np.float32)


def stroke_mask(x: np.ndarray) -> np.ndarray:
    """(N, 1, 28, 28) -> float32 {0, 1}: pixels with intensity >= 0.5 (the digit's stroke)."""
    return (x >= 0.5).astype(np.float32)


def silhouette_mask(x: np.ndarray, thr: float = 0.1) -> np.ndarray:
    """(N, 1, 28, 28) -> float32 {0, 1}: the garment's silhouette with interior holes filled.

    Foreground = intensity > ``thr``; background = the non-foreground pixels 4-connected to the image
    border (iterative flood fill); silhouette = everything that is not background.
    """
    fg = x[:, 0] > thr
    free = ~fg
    reach = np.zeros_like(fg)
    reach[:, 0, :] = free[:, 0, :]
    reach[:, -1, :] = free[:, -1, :]
    reach[:, :, 0] = free[:, :, 0]
    reach[:, :, -1] = free[:, :, -1]
    while True:
        grown = reach.copy()
        grown[:, 1:, :] |= reach[:, :-1, :]
        grown[:, :-1, :] |= reach[:, 1:, :]
        grown[:, :, 1:] |= reach[:, :, :-1]
        grown[:, :, :-1] |= reach[:, :, 1:]
        grown &= free
        if np.array_equal(grown, reach):
            break
        reach = grown
    return (~reach)[:, None].astype(np.float32)


def load_split(data: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(inputs float32 (N, 1, H, W), targets) for ``data`` in SPLITS; split is "train" or "test".

    Targets are int64 labels (N,) for classification, float32 maps (N, 1, 28, 28) for map tasks.
    """
    fname = SPLITS[data][0 if split == "train" else 1]
    with np.load(DATA / fname) as z:
        x, y = z["image"].astype(np.float32), z["label"].astype(np.int64)
    if data == "mnist16":
        return downsample16(x), y
    if data == "mnist_stroke":
        return x, stroke_mask(x)
    if data == "fashion_silhouette":
        return x, silhouette_mask(x)
    return x, y


def split_record(data: str) -> dict:
    """How the train/test data of ``data`` are obtained (for the manifest)."""
    tr, te = SPLITS[data]
    rec = {"train": f"data/{tr}", "test": f"data/{te}"}
    if data == "mnist16":
        rec["input_transform"] = "zero-pad 2 px each side to 32x32, then 2x2 average pool -> (N,1,16,16)"
    if data == "mnist_stroke":
        rec["target"] = "stroke mask: image >= 0.5 (test maps committed in zoo/maps_test.npz, key mnist_stroke)"
    if data == "fashion_silhouette":
        rec["target"] = ("silhouette: image > 0.1 with holes filled (background = below-threshold pixels "
                         "4-connected to the border); test maps in zoo/maps_test.npz, key fashion_silhouette")
    return rec


def fix_ir(path: Path) -> None:
    """Lower the IR version to what onnxruntime 1.19.2 loads; refuse opsets it does not know."""
    import onnx
    m = onnx.load(str(path))
    opset = {o.domain or "ai.onnx": o.version for o in m.opset_import}
    if opset.get("ai.onnx", 0) > MAX_OPSET:
        raise RuntimeError(f"{path.name}: opset {opset} too new for onnxruntime 1.19.2")
    if m.ir_version > MAX_IR:
        m.ir_version = MAX_IR
        onnx.save(m, str(path))


def update_manifest(name: str, fields: dict) -> None:
    """Merge ``fields`` into the manifest entry ``name`` (created if missing); entries kept sorted by name."""
    import fcntl
    ZOO.mkdir(parents=True, exist_ok=True)
    (REPO / ".cache").mkdir(exist_ok=True)
    with open(REPO / ".cache" / "zoo_manifest.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the exporter scripts may run at the same time
        _merge_entry(name, fields)


def _merge_entry(name: str, fields: dict) -> None:
    doc = {"description": "", "models": []}
    if MANIFEST.is_file():
        doc = json.loads(MANIFEST.read_text())
    entries = {e["name"]: e for e in doc["models"]}
    entry = entries.setdefault(name, {"name": name})
    entry.update(fields)
    doc["description"] = (
        "onnx_zip zoo of real architectures from several exporters (issue 13); written by tools/zoo/*.py. "
        "Paths are relative to models/. metric measured with onnxruntime on the committed test split "
        "(tools/zoo/record.py).")
    doc["models"] = [entries[k] for k in sorted(entries)]
    tmp = MANIFEST.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(MANIFEST)


def is_map_task(data: str) -> bool:
    return data in ("mnist_stroke", "fashion_silhouette")


def task_metric(data: str, out: np.ndarray, y: np.ndarray) -> dict:
    """Test metric: {"accuracy"} (argmax of logits (N, C) vs labels (N,)) for classifiers;
    {"iou", "pixel_agreement"} of the map (N, 1, 28, 28) thresholded at 0.5 vs the target map for map tasks
    (IoU pooled over all pixels of the split)."""
    if is_map_task(data):
        pred, tgt = out > 0.5, y > 0.5
        return {"iou": float((pred & tgt).sum() / (pred | tgt).sum()), "pixel_agreement": float((pred == tgt).mean())}
    return {"accuracy": float((out.argmax(1) == y).mean())}
