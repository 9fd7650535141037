"""The exporter zoo (models/zoo/, issue 13) is what its manifest says: files, hashes, and they run.

Each committed model loads in the installed onnxruntime and, on the first test samples of its data
set, reproduces its recorded accuracy's neighbourhood (the full-split figures are in the manifest;
``tools/zoo/record.py --check`` re-measures them exactly).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from onnx_zip.runtime import make_session

MODELS = Path(__file__).resolve().parent.parent / "models"
MANIFEST = json.loads((MODELS / "zoo" / "manifest.json").read_text())
ENTRIES = {entry["name"]: entry for entry in MANIFEST["models"]}


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_zoo_file_matches_its_manifest_entry(name: str) -> None:
    entry = ENTRIES[name]
    data = (MODELS / entry["file"]).read_bytes()
    assert len(data) == entry["bytes"]
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]


@pytest.mark.parametrize("name", sorted(n for n, e in ENTRIES.items() if "accuracy" in e["metric"]))
def test_zoo_classifier_runs_and_is_accurate(name: str) -> None:
    entry = ENTRIES[name]
    session = make_session(MODELS / entry["file"], threads=1)
    spec = session.get_inputs()[0]
    data = np.load(MODELS / entry["data"]["test"])
    images = next(v for k, v in data.items() if k != "label")[:200]
    if "input_transform" in entry["data"]:  # the 16x16 digit CNN: zero-pad to 32x32, 2x2 average pool
        padded = np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)))
        images = padded.reshape(len(images), 1, 16, 2, 16, 2).mean(axis=(3, 5)).astype(np.float32)
    shape = spec.shape
    if isinstance(shape[0], int):  # a fixed batch: one sample at a time
        logits = np.concatenate([session.run(None, {spec.name: images[i : i + 1]})[0] for i in range(50)])
        labels = data["label"][:50]
    else:
        logits = session.run(None, {spec.name: images})[0]
        labels = data["label"][:200]
    accuracy = float(np.mean(np.argmax(logits, axis=1) == labels))
    assert accuracy >= entry["metric"]["accuracy"] - 0.15, (name, accuracy)
