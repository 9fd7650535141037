"""Every kind of model the tool writes loads and runs in the other onnxruntime too.

The suite runs on one runtime (the ``train`` extra: onnxruntime-training 1.19.2). When
``ONNX_ZIP_OTHER_PYTHON`` names an interpreter that has the newest ``onnxruntime`` (``.ci/run``
makes one), the models written here are run there and compared with this runtime's outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

import builders
from onnx_zip import model_io, runtime
from onnx_zip.pipeline import zip_models
from onnx_zip.zipper.extract import extract_task

OTHER = os.environ.get("ONNX_ZIP_OTHER_PYTHON")

RUNNER = """
import json, sys
import numpy as np
import onnxruntime as ort
out = {"version": ort.__version__}
for path in sys.argv[1:]:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = dict(np.load(path + ".in.npz"))
    out[path] = [o.tolist() for o in session.run(None, feeds)]
print(json.dumps(out))
"""


@pytest.mark.skipif(not OTHER, reason="set ONNX_ZIP_OTHER_PYTHON to a Python with the other onnxruntime (.ci/run does)")
@pytest.mark.slow
def test_written_models_run_in_the_other_runtime(tmp_path: Path):
    a, b = builders.cnn(seed=1), builders.cnn(seed=2)
    calib = [builders.random_inputs(a, 64, seed=1), builders.random_inputs(b, 64, seed=2)]
    zipped = zip_models([a, b], calib, tmp_path / "zipped.onnx", share=0.5).model
    model_io.save_model(extract_task(zipped, "a"), tmp_path / "extracted.onnx")
    model_io.save_model(builders.mlp([4, 5, 3], opset=13), tmp_path / "converted.onnx")
    r = [builders.residual(seed=s) for s in (1, 2, 3)]
    zip_models(r, [builders.random_inputs(r[0], 32, seed=s) for s in (1, 2, 3)], tmp_path / "residual3.onnx", share=0.5)
    paths = [tmp_path / name for name in ("zipped.onnx", "extracted.onnx", "converted.onnx", "residual3.onnx")]
    expected = {}
    for path in paths:
        model = onnx.load(str(path))
        assert model.ir_version <= model_io.MAX_IR_VERSION
        feeds = builders.random_inputs(model, 3, seed=4)
        np.savez(str(path) + ".in.npz", **feeds)
        expected[str(path)] = runtime.make_session(path).run(None, feeds)
    result = subprocess.run([OTHER, "-c", RUNNER, *map(str, paths)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["version"] != runtime.runtime_version()
    for path in paths:
        for mine, theirs in zip(expected[str(path)], got[str(path)]):
            np.testing.assert_allclose(np.asarray(theirs, dtype=np.float32), mine, rtol=1e-5, atol=1e-5)
