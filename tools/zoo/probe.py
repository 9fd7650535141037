#!/usr/bin/env python3
"""Run today's onnx_zip (`align`, `inspect`, and `zip --share 0.5` where `align` passes) on every zoo pair
and write tools/zoo/PROBE.md: command, exit code, first error line (issue 13's blockers).

Run with the project venv from the repository root (the tool under test is this checkout's onnx_zip):

    PYTHONPATH=$PWD python tools/zoo/probe.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo_common as zc

# (A, B, what the pair varies)
PAIRS = [
    ("mbv3_mnist_s0", "mbv3_fashion", "MobileNetV3: MNIST vs Fashion"),
    ("mbv3_mnist_s0", "mbv3_mnist_s1", "MobileNetV3: two seeds of MNIST"),
    ("dbnet_mnist_stroke", "dbnet_fashion_silhouette", "DBNet-like maps: MNIST stroke vs Fashion silhouette"),
    ("csp_fashion", "csp_fashion_super4", "YOLO/CSP: Fashion-10 vs Fashion-super4"),
    ("keras_mlp_mnist_s0", "keras_mlp_fashion", "Keras LayerNorm MLP: MNIST vs Fashion"),
    ("keras_mlp_mnist_s0", "keras_mlp_mnist_s1_b1", "Keras LayerNorm MLP: dynamic batch vs fixed batch 1"),
    ("paddle_lcnet_mnist", "paddle_lcnet_fashion", "paddle2onnx (Constant-node weights): MNIST vs Fashion"),
    ("crnn_mnist", "crnn_fashion", "CRNN (CNN + LSTM): MNIST vs Fashion"),
    ("digitcnn28_mnist", "digitcnn16_mnist", "digit CNN: 28x28 vs 16x16 input"),
]
TIMEOUT = 600


def calib_file(name: str, tmp: Path) -> Path:
    """An .npz with the model's input ``image`` (512 training samples of its task)."""
    task = {"digitcnn16_mnist": "mnist16"}.get(name, "fashion" if "fashion" in name else "mnist")
    x, _ = zc.load_split(task, "train")
    path = tmp / f"{name}.calib.npz"
    np.savez(path, image=x[:512])
    return path


def constructs(path: Path) -> str:
    """The graph's constructs beyond dense Conv/Gemm/MatMul chains, as a short list (what issue 13 must handle)."""
    import onnx
    m = onnx.load(str(path))
    found: dict[str, int] = {}
    for n in m.graph.node:
        key = n.op_type
        if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute):
            key = "depthwise/grouped Conv"
        elif n.op_type in ("Conv", "Gemm", "MatMul", "Relu", "Add", "Flatten", "MaxPool", "Identity"):
            continue
        found[key] = found.get(key, 0) + 1
    batch = m.graph.input[0].type.tensor_type.shape.dim[0]
    if batch.HasField("dim_value"):
        found[f"fixed batch {batch.dim_value}"] = 1
    return ", ".join(f"{k} x{v}" if v > 1 else k for k, v in sorted(found.items())) or "(none)"


FULL_OUTPUTS: list[tuple[str, str]] = []  # (command, stdout) of the commands that exited 0


def run(args: list[str]) -> tuple[int, str, float]:
    env = dict(os.environ, PYTHONPATH=str(zc.REPO), OMP_NUM_THREADS="1")
    t0 = time.time()
    try:
        res = subprocess.run([sys.executable, "-m", "onnx_zip", *args], capture_output=True, text=True, check=False,
                             env=env, cwd=zc.REPO, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return -1, f"(timed out after {TIMEOUT} s)", time.time() - t0
    err = [ln for ln in res.stderr.splitlines() if ln.strip() and "Warning" not in ln]
    out = [ln for ln in res.stdout.splitlines() if ln.strip()]
    if res.returncode != 0:
        first = next((ln for ln in err if "Error" in ln or "error" in ln), err[0] if err else (out[0] if out else ""))
    else:
        first = " / ".join(out[:2]) if out else (err[0] if err else "")
        FULL_OUTPUTS.append((" ".join(args[:3]), res.stdout.rstrip()))
    return res.returncode, first.strip(), time.time() - t0


def probe_zip(a: str, b: str, tmp: Path) -> list[str]:
    """`zip --share 0.5` of the pair (again with --separate-inputs when the tool asks for it): table rows."""
    rows = []
    base = ["zip", f"models/zoo/{a}.onnx", f"models/zoo/{b}.onnx", "--share", "0.5", "--calib",
            str(calib_file(a, tmp)), "--calib", str(calib_file(b, tmp)), "--calib-limit", "512",
            "-o", str(tmp / "z.onnx")]
    for extra in ([], ["--separate-inputs"]):
        rc, first, secs = run(base + extra)
        zc.log(f"zip {a} {b} {' '.join(extra)} -> {rc}: {first[:150]}")
        shown = (f"zip {a}.onnx {b}.onnx --share 0.5 --calib A.npz --calib B.npz --calib-limit 512 -o z.onnx"
                 + "".join(" " + e for e in extra))
        rows.append(f"| `{shown}` | {rc} | {secs:.0f} | {first.replace('|', '/')[:400]} |")
        if rc == 0 or "--separate-inputs" not in first:
            break
    return rows


def main() -> int:
    lines = ["# Probe: today's onnx_zip on the exporter zoo (issue 13)", "",
             ("Written by `PYTHONPATH=$PWD python tools/zoo/probe.py` (project venv, onnxruntime 1.19.2) on the "
             "models of `models/zoo/`. `zip` (at `--share 0.5`, 512 calibration samples of each model's "
             "training split) is only tried when `align` exits 0. Paths below are relative to `models/zoo/`; "
             "the commands ran as `python -m onnx_zip ...` from the repository root. \"first line\" is the "
             "first error line on stderr (exit != 0) or the first output lines (exit 0). \"contains\" lists each "
             "model's ops other than dense Conv/Gemm/MatMul, Relu, Add, Flatten, MaxPool and Identity (the "
             "constructs issue 13 has to handle, beyond the first one the tool reports)."), ""]
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        for a, b, what in PAIRS:
            pa, pb = (f"models/zoo/{n}.onnx" for n in (a, b))
            if not all((zc.REPO / p).is_file() for p in (pa, pb)):
                zc.log(f"skip {a} / {b}: not built")
                continue
            lines += [f"## {what}", ""]
            lines += [f"- `{n}` contains: {constructs(zc.REPO / p)}" for n, p in ((a, pa), (b, pb))]
            lines += ["", "| command | exit | s | first line |", "|---|---|---|---|"]
            cmds = [["inspect", pa], ["inspect", pb], ["align", pa, pb]]
            for cmd in cmds:
                rc, first, secs = run(cmd)
                zc.log(f"{' '.join(cmd)} -> {rc}: {first[:150]}")
                lines.append(f"| `{' '.join(cmd).replace('models/zoo/', '')}` | {rc} | {secs:.0f} | "
                             f"{first.replace('|', '/')[:400]} |")
                if cmd[0] == "align" and rc == 0:
                    lines += probe_zip(a, b, tmp)
            lines.append("")
            for cmd_text, out in FULL_OUTPUTS:
                lines += [f"Output of `{cmd_text.replace('models/zoo/', '')}` (exit 0):", "", "```", out, "```", ""]
            FULL_OUTPUTS.clear()
    (Path(__file__).resolve().parent / "PROBE.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
