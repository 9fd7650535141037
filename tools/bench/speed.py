"""Section 3: time and memory per stage of ``zip_models``, calibration against a plain forward pass,
and the released code's per-pair loop extrapolated to the whole model (``tools/bench_math.py``).

Each measurement runs in a fresh process (the caller's pool), so RSS high-water marks are its own.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from tools.bench.common import (
    PAIR_BY_KEY,
    TASKS,
    RssSampler,
    load_split,
    maxrss_bytes,
    model_path,
    quiet_ort,
    rss_bytes,
)

STAGES = ("validate", "calibrate", "plan", "rewrite", "save")


def forward_seconds(models: list[str], datas: list[np.ndarray], batch: int, threads: int | None) -> float:
    """A plain forward pass of each original over its calibration data, same batch size (sessions excluded)."""
    from onnx_zip import runtime

    total = 0.0
    for path, x in zip(models, datas):
        session = runtime.make_session(path, threads=threads)
        name = session.get_inputs()[0].name
        t = time.perf_counter()
        for s in range(0, len(x), batch):
            session.run(None, {name: x[s : s + batch]})
        total += time.perf_counter() - t
        del session
    return total


def loop_extrapolation(
    layers: list[Any], reading_of: dict[str, str], budget_s: float = 0.5, seed: int = 0
) -> dict[str, Any]:
    """The released code's per-pair Python loop (``bench_math.loop_costs``) timed on a slice of each
    hidden layer's pairs and extrapolated to all N_A·N_B pairs; Hessian side above 4,609 is timed at
    4,097 and scaled by (d/4097)² (the loop is one d×d mat-vec per pair and kernel position)."""
    from tools.bench_math import loop_costs

    rng = np.random.default_rng(seed)
    out = []
    for z in layers:
        la, lb = z.layers[0], z.layers[1]
        if la.kind == "conv":
            k = int(np.prod(la.kernel_shape))
            if reading_of.get(la.node, "patch") == "channel":
                positions, dim = k, la.inputs + 1
            else:
                positions, dim = 1, la.inputs * k + 1
        else:
            positions, dim = 1, la.inputs + 1
        run_dim = dim if dim <= 4609 else 4097
        m = rng.standard_normal((run_dim, run_dim)) / run_dim
        m = m @ m.T
        a = rng.standard_normal((min(la.neurons, 64), positions, run_dim))
        b = rng.standard_normal((min(lb.neurons, 64), positions, run_dim))
        secs, done = loop_costs(a, b, m, budget_s)
        per_pair = secs / done * (dim / run_dim) ** 2
        out.append({"layer": z.tag, "n_a": la.neurons, "n_b": lb.neurons, "positions": positions, "dim": dim,
                    "pairs_timed": done, "timed_dim": run_dim, "seconds": per_pair * la.neurons * lb.neurons})
    return {"layers": out, "seconds": float(sum(x["seconds"] for x in out))}


def measure_zip(models: list[str], calib: list[np.ndarray], *, label: str, threads: int | None, batch: int,
                loop_budget: float = 0.5, **zip_options: Any) -> dict[str, Any]:
    """Zip once with an RSS sampler running; per-stage time and RSS high-water; forward pass; loop estimate."""
    import gc
    import os

    from onnx_zip.pipeline import zip_models

    quiet_ort()
    limit = zip_options.get("calibration_limit")
    datas = [c[:limit] if limit else c for c in calib]
    forward = forward_seconds(models, datas, batch, threads)
    gc.collect()
    baseline = rss_bytes()
    with RssSampler(0.005) as sampler:
        t_start = time.perf_counter()
        result = zip_models(models, [{"image": d} for d in datas], names=list(TASKS), threads=threads,
                            batch_size=batch, **zip_options)
        t_end = time.perf_counter()
    timings = result.report["timings"]
    stages, t = {}, t_start
    for stage in STAGES:
        dt = float(timings.get(stage, 0.0))
        stages[stage] = {"seconds": dt, "peak_rss_mib": sampler.peak(t, t + dt + 0.01) / 2**20}
        t += dt
    hidden = [z for z in result.layers if not z.is_head]
    readings = {z.layers[0].node: str(getattr(z.reading, "value", z.reading)) for z in hidden if z.reading}
    loop = loop_extrapolation(hidden, readings, loop_budget)
    model_bytes = sum(os.path.getsize(m) for m in models)
    peak = sampler.peak()
    rec = {
        "label": label, "threads": threads, "batch_size": batch, "calibration_samples": [int(len(d)) for d in datas],
        "options": {k: v for k, v in zip_options.items()},
        "stages": stages, "total_seconds": t_end - t_start,
        "forward_seconds": forward,
        "calibration_over_forward": float(timings["calibrate"]) / forward if forward else None,
        "cost_and_matching_seconds": float(timings["plan"]),
        "rss_baseline_mib": baseline / 2**20, "rss_peak_mib": peak / 2**20, "maxrss_mib": maxrss_bytes() / 2**20,
        "models_mib": model_bytes / 2**20, "peak_over_models": peak / model_bytes,
        "peak_above_baseline_over_models": (peak - baseline) / model_bytes,
        "params": result.report["params"],
        "per_pair_loop_seconds": loop["seconds"], "per_pair_loop_layers": loop["layers"],
        "loop_over_plan": loop["seconds"] / max(float(timings["plan"]), 1e-9),
        "hessian_layers": result.report.get("calibrated_layers", "all hidden layers"),
        "layers": [{k: r.get(k) for k in ("layer", "kind", "conv_hessian", "neurons", "shared")}
                   for r in result.report["layers"]],
    }
    return rec


def zoo_speed(pair_key: str, reading: str | None, *, calibration_limit: int = 4096, batch: int = 256,
              threads: int | None = None, share: float = 1.0, loop_budget: float = 0.5) -> dict[str, Any]:
    pair = PAIR_BY_KEY[pair_key]
    calib = [load_split(pair.a, "train", calibration_limit)["image"],
             load_split(pair.b, "train", calibration_limit)["image"]]
    models = [str(model_path(pair.a)), str(model_path(pair.b))]
    rec = measure_zip(models, calib, label=f"{pair.key}/{reading or 'na'}", threads=threads, batch=batch,
                      loop_budget=loop_budget, share=share, conv_hessian=reading or "auto",
                      calibration_limit=calibration_limit)
    rec.update(pair=pair.name, pair_key=pair.key, reading=reading, share=share)
    return rec


def vgg_speed(directory: str, *, calibration: int = 256, batch: int = 8, threads: int | None = None,
              fc6_share: float = 0.0, size: int = 224, width: float = 1.0, loop_budget: float = 1.0) -> dict[str, Any]:
    """The VGG-16 pair, per-channel reading, every hidden layer shared but fc6 (share 0: no Hessian)."""
    from pathlib import Path

    from tools.bench.vgg import ensure_models, synthetic_images

    t = time.perf_counter()
    paths = ensure_models(Path(directory), size=size, width=width)
    build_s = time.perf_counter() - t
    calib = [synthetic_images(calibration, size, 0), synthetic_images(calibration, size, 1)]
    share_per_layer = [1.0] * 13 + [float(fc6_share), 1.0]
    rec = measure_zip([str(p) for p in paths], calib, label="vgg16-synthetic", threads=threads, batch=batch,
                      loop_budget=loop_budget, share_per_layer=share_per_layer, conv_hessian="channel",
                      calibration_limit=calibration)
    rec.update(pair="vgg16_synthetic_a+vgg16_synthetic_b", build_seconds=build_s, fc6_share=fc6_share,
               share_per_layer=share_per_layer, image_size=size, width=width)
    return rec
