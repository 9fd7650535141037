#!/usr/bin/env python3
"""Measure every zoo model with onnxruntime and complete models/zoo/manifest.json (run with /work/venv:
onnxruntime 1.19.2 from onnxruntime-training-cpu, onnx).

For each manifest entry written by a train_*.py script: check IR <= 10 and opset <= 21, run the whole
test split through onnxruntime, record the metric, the graph's input/output names and shapes, op counts,
parameter count (float values in initializers and in Constant nodes), file size and sha256, and compare
onnxruntime with the framework's own output on 64 test samples (.cache/zoo_ref/<name>.npz, when present).
Also writes models/zoo/maps_test.npz (the test target maps of the map tasks, bit-packed).

    python tools/zoo/record.py               # every model in the manifest
    python tools/zoo/record.py --only crnn_mnist
    python tools/zoo/record.py --check       # re-measure, compare with the manifest, write nothing
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo_common as zc  # noqa: E402

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}


def value_info(v: onnx.ValueInfoProto) -> dict:
    t = v.type.tensor_type
    dims = [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None)
            for d in t.shape.dim]
    return {"name": v.name, "shape": dims, "dtype": onnx.TensorProto.DataType.Name(t.elem_type).lower()}


def graph_facts(path: Path) -> dict:
    m = onnx.load(str(path))
    opset = {o.domain or "ai.onnx": o.version for o in m.opset_import}
    if m.ir_version > zc.MAX_IR or opset.get("ai.onnx", 0) > zc.MAX_OPSET:
        raise RuntimeError(f"{path.name}: IR {m.ir_version} / opset {opset} too new for onnxruntime 1.19.2")
    ops: dict[str, int] = {}
    const_vals = 0
    for n in m.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type in FLOAT_TYPES:
                    const_vals += int(np.prod(a.t.dims))
    init_vals = sum(int(np.prod(t.dims)) for t in m.graph.initializer if t.data_type in FLOAT_TYPES)
    init_names = {t.name for t in m.graph.initializer}
    return {"ir_version": m.ir_version, "opset": opset, "ops": dict(sorted(ops.items())),
            "inputs": [value_info(v) for v in m.graph.input if v.name not in init_names],
            "outputs": [value_info(v) for v in m.graph.output],
            "parameters": init_vals + const_vals, "weights_in_constant_nodes": const_vals,
            "weights_in_initializers": init_vals}


def run_split(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    inp = sess.get_inputs()[0]
    bs = 1 if inp.shape[0] == 1 else 500
    out_name = sess.get_outputs()[0].name
    return np.concatenate([sess.run([out_name], {inp.name: x[i:i + bs]})[0] for i in range(0, len(x), bs)])


def measure(entry: dict) -> dict:
    path = zc.REPO / "models" / entry["file"]
    facts = graph_facts(path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    xt, yt = zc.load_split(entry["task"], "test")
    out = run_split(sess, xt)
    metric = zc.task_metric(entry["task"], out, yt)
    rec = dict(facts, metric=metric, bytes=path.stat().st_size, sha256=zc.sha256(path),
               metric_measured_with=f"onnxruntime {ort.__version__}, CPU, the whole test split "
                                    f"({len(yt)} samples), output '{sess.get_outputs()[0].name}'")
    ref = zc.REPO / ".cache" / "zoo_ref" / f"{entry['name']}.npz"
    if ref.is_file():
        with np.load(ref) as z:
            got = run_split(sess, z["x"])
            diff = float(np.abs(got - z["y"]).max())
        if diff > 1e-3:
            raise RuntimeError(f"{entry['name']}: onnxruntime differs from the framework by {diff:.2e}")
        rec["ort_vs_framework_max_abs_diff"] = diff
    return rec


def write_maps() -> None:
    """models/zoo/maps_test.npz: bit-packed (np.packbits over the flattened (N, 1, 28, 28) bool map) test maps."""
    arrays = {}
    for task in ("mnist_stroke", "fashion_silhouette"):
        _, y = zc.load_split(task, "test")
        arrays[task] = np.packbits(y.astype(bool).reshape(len(y), -1), axis=1)
        arrays[task + "_shape"] = np.array(y.shape, dtype=np.int64)
    np.savez_compressed(zc.MAPS_FILE, **arrays)


def table(entries: list[dict]) -> str:
    rows = ["| model | family | exporter | task | input → output | params | test metric |", "|---|---|---|---|---|---|---|"]
    for e in entries:
        m = e.get("metric", {})
        met = (f"IoU {m['iou']:.3f}, pixels {100 * m['pixel_agreement']:.2f}%" if "iou" in m
               else f"{100 * m['accuracy']:.2f}%" if m else "?")
        io = " → ".join(f"`{v['name']}` {tuple(v['shape'])}".replace("'", "") for v in
                        (e["inputs"][0], e["outputs"][0])) if "inputs" in e else "?"
        params = f"{e['parameters']:,}" if "parameters" in e else "?"
        rows.append(f"| `{e['name']}` | {e['family']} | {e['exporter'].split(' (')[0]} | {e['task']} | {io} | "
                    f"{params} | {met} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    doc = json.loads(zc.MANIFEST.read_text())
    bad = 0
    for entry in doc["models"]:
        if args.only and entry["name"] not in args.only:
            continue
        rec = measure(entry)
        if args.check:
            same = rec["sha256"] == entry.get("sha256") and rec["metric"] == entry.get("metric")
            bad += not same
            zc.log(f"{entry['name']}: {rec['metric']} {'ok' if same else 'MISMATCH'}")
            continue
        zc.update_manifest(entry["name"], rec)
        zc.log(f"{entry['name']}: {rec['metric']}, {rec['parameters']} params, {rec['bytes']} bytes")
    if not args.check:
        write_maps()
    print(table(json.loads(zc.MANIFEST.read_text())["models"]))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
