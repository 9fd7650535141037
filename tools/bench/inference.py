"""Section 4: latency of the zipped model serving both tasks against the two originals in turn.

Candidates are timed interleaved (one call of each per round, the order rotating every round) and
compared by the medians of the same run; one intra-op thread (as the demo).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from tools.bench.common import PAIR_BY_KEY, TASKS, data_path, load_split, model_path, quiet_ort


def _runner(session: Any, feeds: dict[str, np.ndarray]):
    return lambda: session.run(None, feeds)


def interleaved(candidates: dict[str, list], rounds: int, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds of each candidate (a list of callables run one after the other)."""
    names = list(candidates)
    for _ in range(warmup):
        for n in names:
            for f in candidates[n]:
                f()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            t = time.perf_counter()
            for f in candidates[n]:
                f()
            times[n].append(time.perf_counter() - t)
    return {n: float(np.median(v) * 1e3) for n, v in times.items()}


def pair_latency(pair_key: str, shares=(0.5, 0.75, 1.0), batches=(1, 64), rounds: dict[int, int] | None = None,
                 threads: int = 1, calibration_limit: int = 1024) -> dict[str, Any]:
    from onnx_zip import runtime
    from onnx_zip.pipeline import zip_models
    from onnx_zip.zipper.extract import extract_task
    from tools.bench.grid import no_sharing_model

    quiet_ort()
    rounds = rounds or {1: 300, 64: 60}
    pair = PAIR_BY_KEY[pair_key]
    models = [str(model_path(pair.a)), str(model_path(pair.b))]
    calib = [str(data_path(pair.a, "train")), str(data_path(pair.b, "train"))]
    images = load_split(pair.a, "test", max(batches))["image"]
    originals = [runtime.make_session(m, threads=threads) for m in models]
    in_names = [s.get_inputs()[0].name for s in originals]
    merged = runtime.make_session(no_sharing_model(pair).SerializeToString(), threads=threads)
    out: dict[str, Any] = {"pair": pair.name, "threads": threads, "rounds": {str(k): v for k, v in rounds.items()},
                           "zipped_with": f"mtz, conv_hessian=channel, calibration_limit={calibration_limit}",
                           "cases": []}
    for share in shares:
        for separate in (False, True):
            zipped = zip_models(models, calib, names=list(TASKS), share=share, conv_hessian="channel",
                                calibration_limit=calibration_limit, separate_inputs=separate).model
            zs = runtime.make_session(zipped.SerializeToString(), threads=threads)
            z_inputs = [i.name for i in zs.get_inputs()]
            extracted = {}
            if not separate:
                for t in TASKS:
                    extracted[t] = runtime.make_session(extract_task(zipped, t).SerializeToString(), threads=threads)
            for batch in batches:
                x = np.ascontiguousarray(images[:batch])
                cands = {
                    "originals": [_runner(s, {n: x}) for s, n in zip(originals, in_names)],
                    "zipped": [_runner(zs, {n: x for n in z_inputs})],
                    "no_sharing_merged": [_runner(merged, {i.name: x for i in merged.get_inputs()})],
                }
                for t in extracted:
                    sess = extracted[t]
                    cands[f"extracted_{t}"] = [_runner(sess, {i.name: x for i in sess.get_inputs()})]
                    idx = TASKS.index(t)
                    cands[f"original_{t}"] = [_runner(originals[idx], {in_names[idx]: x})]
                ms = interleaved(cands, rounds.get(batch, 50))
                case = {"share": share, "separate_inputs": separate, "batch": batch, "median_ms": ms,
                        "zipped_over_originals": ms["zipped"] / ms["originals"],
                        "no_sharing_over_originals": ms["no_sharing_merged"] / ms["originals"]}
                for t in extracted:
                    case[f"extracted_{t}_over_original"] = ms[f"extracted_{t}"] / ms[f"original_{t}"]
                out["cases"].append(case)
                inputs = "separate" if separate else "shared"
                print(f"  inference {pair.key} share {share} {inputs} inputs batch {batch}: "
                      f"zipped/originals {case['zipped_over_originals']:.2f}", flush=True)
    return out
