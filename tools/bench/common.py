"""Zoo, pairs, data and small utilities shared by the benchmark sections."""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: tools/train_models.py trains every zoo model with batches of 128 (steps_per_epoch = ceil(n / 128)).
ZOO_TRAIN_BATCH = 128
TASKS = ("a", "b")


@dataclass(frozen=True)
class Pair:
    key: str  # short id used in cache keys and --pairs
    a: str  # model names in models/manifest.json
    b: str
    title: str

    @property
    def name(self) -> str:
        return f"{self.a}+{self.b}"


#: In the brief's priority order.
PAIRS = (
    Pair("lenet5-mnist-fashion", "lenet5_mnist_s0", "lenet5_fashion", "LeNet-5 MNIST + Fashion"),
    Pair("lenet300-s0-s1", "lenet300_mnist_s0", "lenet300_mnist_s1", "LeNet-300-100 MNIST s0 + s1"),
    Pair("lenet5-s0-s1", "lenet5_mnist_s0", "lenet5_mnist_s1", "LeNet-5 MNIST s0 + s1"),
    Pair("fashion-super4", "lenet5_fashion", "lenet5_fashion_super4", "LeNet-5 Fashion 10-way + super-category"),
)
PAIR_BY_KEY = {p.key: p for p in PAIRS}


def manifest() -> dict[str, dict[str, Any]]:
    data = json.loads((MODELS / "manifest.json").read_text())
    return {m["name"]: m for m in data["models"]}


def model_path(name: str) -> Path:
    return MODELS / manifest()[name]["file"]


def data_path(name: str, split: str) -> Path:
    return MODELS / manifest()[name]["data"][split]


def is_conv(name: str) -> bool:
    return "Conv" in manifest()[name].get("ops", {})


def load_split(name: str, split: str, limit: int | None = None) -> dict[str, np.ndarray]:
    with np.load(data_path(name, split), allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    if limit:
        out = {k: v[:limit] for k, v in out.items()}
    return out


def train_steps(name: str) -> int:
    """Optimizer steps used to train one zoo model: epochs · ceil(train size / 128)."""
    m = manifest()[name]
    with np.load(MODELS / m["data"]["train"], allow_pickle=False) as z:
        n = int(z["label"].shape[0])
    return int(m["epochs"]) * math.ceil(n / ZOO_TRAIN_BATCH)


def quiet_ort() -> None:
    """Silence onnxruntime's C++ INFO logs (the training runtime prints graph transformer lines)."""
    from onnx_zip import runtime

    try:
        runtime.ort().set_default_logger_severity(3)
    except Exception:  # noqa: BLE001 - best effort
        pass


def rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssSampler:
    """Samples VmRSS every ``interval`` s in a thread: the high-water of any time window."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), rss_bytes()))
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.perf_counter(), rss_bytes()))

    def peak(self, start: float = -math.inf, end: float = math.inf) -> int:
        inside = [r for t, r in self.samples if start <= t <= end]
        return max(inside) if inside else 0


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def fmt_s(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"
