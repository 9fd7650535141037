#!/usr/bin/env python
"""Benchmarks against the paper and against what users would pick instead (issue 8).

Sections (``--sections``, in the order run):
  speed      time and memory per stage of zip_models on the zoo pairs (share 1.0), calibration against a
             plain forward pass, the released per-pair loop extrapolated (tools/bench_math.py);
  inference  latency of the zipped model against the two originals in turn (interleaved medians),
             shared/separate inputs, batch 1/64, shares 0.5/0.75/1.0; extracted task against its original;
  grid       accuracy against parameters shared: 4 pairs × methods × readings × shares × budgets × seeds,
             one cached JSON file per cell (benchmarks/cache/grid/), in priority order (budget 0, 100, 600);
  vgg        two synthetic VGG-16s (138 M parameters each), per-channel reading, fc6 not zipped by default.

Then benchmarks/RESULTS.md and benchmarks/results.json are regenerated from the cache.

Examples:
  python tools/benchmark.py --quick --out /tmp/bench              # smoke test (< 1 min)
  python tools/benchmark.py --sections speed,inference,grid --jobs 2
  python tools/benchmark.py --only 'lenet5-mnist-fashion/mtz-onepass/patch/1/100/*' --rerun
  python tools/benchmark.py --sections grid --pairs lenet300-s0-s1 --budgets 0,100
  python tools/benchmark.py --sections vgg                          # long: run alone
  python tools/benchmark.py --report-only
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.bench.common import PAIRS, fmt_s, is_conv, write_json  # noqa: E402
from tools.bench.grid import (  # noqa: E402
    METHODS,
    N_SEEDS,
    all_cells,
    cache_path,
    estimate_seconds,
    run_cell,
    select,
)

DEFAULT_COMMAND = "python tools/benchmark.py --sections speed,inference,grid,vgg --jobs 2"


def _csv(kind):
    return lambda s: [kind(x) for x in s.split(",") if x]


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "benchmarks")
    ap.add_argument("--cache", type=Path, default=None, help="default OUT/cache")
    ap.add_argument("--sections", type=_csv(str), default=["speed", "inference", "grid"])
    ap.add_argument("--quick", action="store_true", help="one pair, share 1.0, budgets 0/10, one seed, small data")
    ap.add_argument("--pairs", type=_csv(str))
    ap.add_argument("--methods", type=_csv(str))
    ap.add_argument("--shares", type=_csv(float))
    ap.add_argument("--budgets", type=_csv(int))
    ap.add_argument("--seeds", type=_csv(int))
    ap.add_argument("--n-seeds", type=int, default=N_SEEDS)
    ap.add_argument("--only", action="append",
                    help="PAIR/METHOD/READING/SHARE/BUDGET/SEED glob (repeatable; implies --sections grid)")
    ap.add_argument("--rerun", action="store_true", help="recompute selected cells/measurements even if cached")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--jobs", type=int, default=1, help="grid cells in parallel (each cell uses one thread)")
    ap.add_argument("--calib-limit", type=int, default=4096)
    ap.add_argument("--eval-limit", type=int, default=None, help="test samples per task (default: full splits)")
    ap.add_argument("--max-cells", type=int, default=None, help="stop after this many new grid cells")
    ap.add_argument("--vgg-dir", default="/tmp/onnx_zip_bench_vgg",
                    help="where the synthetic VGG-16s are written (not committed)")
    ap.add_argument("--vgg-batch", type=int, default=8)
    ap.add_argument("--vgg-calib", type=int, default=256)
    ap.add_argument("--vgg-fc6-share", type=float, default=0.0, help="0 skips fc6's 25089² Hessian")
    ap.add_argument("--vgg-size", type=int, default=224)
    ap.add_argument("--vgg-width", type=float, default=1.0, help="channel multiplier (smoke tests only)")
    args = ap.parse_args(argv)
    for m in args.methods or []:
        if m not in METHODS:
            ap.error(f"unknown method {m}; use {', '.join(METHODS)}")
    if args.only:
        args.sections = ["grid"]
    if args.quick:
        args.pairs = args.pairs or ["lenet300-s0-s1"]
        args.shares = args.shares or [1.0]
        args.budgets = args.budgets or [0, 10]
        args.n_seeds = 1
        args.methods = args.methods or ["mtz-onepass", "mtz-layerwise", "random", "no-sharing"]
        args.calib_limit = min(args.calib_limit, 256)
        args.eval_limit = args.eval_limit or 500
    args.cache = args.cache or args.out / "cache"
    return args


def expected_cells(args):
    cells = all_cells(args.pairs, args.methods, args.shares, args.budgets, args.seeds, args.n_seeds)
    if args.quick:
        cells = [c for c in cells if c.reading in (None, "channel")]
    return select(cells, args.only)


def _pool(workers, fresh=False):
    kw = {"max_tasks_per_child": 1} if fresh else {}
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), **kw)


def run_grid(args, command):
    cells = expected_cells(args)
    todo = [c for c in cells if args.rerun or not cache_path(args.cache, c).exists()]
    if args.max_cells is not None:
        todo = todo[: args.max_cells]
    print(f"grid: {len(cells)} cells selected, {len(cells) - len(todo)} cached, {len(todo)} to run with "
          f"{args.jobs} job(s)", flush=True)
    if not todo:
        return
    prior_total = sum(estimate_seconds(c) for c in todo)
    prior_done, spent, done = 0.0, 0.0, 0
    t0 = time.perf_counter()
    last_report = time.perf_counter()
    with _pool(args.jobs) as pool:
        pending = {}
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < args.jobs:
                c = queue.pop(0)
                pending[pool.submit(run_cell, c, calibration_limit=args.calib_limit, eval_limit=args.eval_limit)] = c
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in finished:
                c = pending.pop(fut)
                done += 1
                prior_done += estimate_seconds(c)
                try:
                    rec = fut.result()
                except Exception as exc:  # noqa: BLE001 - report and go on
                    print(f"[{done}/{len(todo)}] {c.key}: FAILED {type(exc).__name__}: {exc}", flush=True)
                    continue
                write_json(cache_path(args.cache, c), rec)
                spent += rec["seconds"]["total"]
                elapsed = time.perf_counter() - t0
                ratio = elapsed / prior_done if prior_done else 1.0
                eta = (prior_total - prior_done) * ratio
                acc = " / ".join(f"{100 * v:.2f}" for v in rec["accuracy"].values())
                print(f"[{done}/{len(todo)}] {c.key}: {acc} shared {100 * rec['params_shared_fraction']:.1f}% "
                      f"({rec['seconds']['total']:.0f}s) elapsed {fmt_s(elapsed)}, left ~{fmt_s(eta)}", flush=True)
            if time.perf_counter() - last_report > 300:
                report(args, command)
                last_report = time.perf_counter()


def run_speed(args):
    from tools.bench.speed import zoo_speed

    out_dir = args.cache / "speed" / "zoo"
    pairs = [p for p in PAIRS if not args.pairs or p.key in args.pairs]
    jobs = []
    for p in pairs:
        for reading in (["patch", "channel"] if is_conv(p.a) else [None]):
            if args.quick and reading == "patch":
                continue
            jobs.append((p.key, reading))
    for i, (key, reading) in enumerate(jobs):
        path = out_dir / f"{key}__{reading or 'na'}.json"
        if path.exists() and not args.rerun:
            continue
        t = time.perf_counter()
        if args.quick:  # in-process: no fresh-process start-up cost in the smoke test
            rec = zoo_speed(key, reading, calibration_limit=args.calib_limit, loop_budget=0.05)
        else:
            with _pool(1, fresh=True) as pool:
                rec = pool.submit(zoo_speed, key, reading, calibration_limit=args.calib_limit).result()
        write_json(path, rec)
        print(f"speed [{i + 1}/{len(jobs)}] {key}/{reading}: calibrate {rec['stages']['calibrate']['seconds']:.1f}s "
              f"(forward {rec['forward_seconds']:.1f}s, {rec['calibration_over_forward']:.1f}×), "
              f"plan {rec['stages']['plan']['seconds']:.1f}s, "
              f"peak RSS {rec['rss_peak_mib']:.0f} MiB ({time.perf_counter() - t:.0f}s)", flush=True)


def collect_speed(args):
    out_dir = args.cache / "speed" / "zoo"
    ms = [json.loads(f.read_text()) for f in sorted(out_dir.glob("*.json"))] if out_dir.exists() else []
    order = {p.key: i for i, p in enumerate(PAIRS)}
    ms.sort(key=lambda m: (order.get(m["pair_key"], 99), str(m["reading"])))
    if ms:
        write_json(args.cache / "speed" / "zoo.json", {"calibration_limit": ms[0]["calibration_samples"][0],
                                                       "batch": ms[0]["batch_size"], "measurements": ms})


def run_inference(args):
    from tools.bench.inference import pair_latency

    path = args.cache / "inference.json"
    if path.exists() and not args.rerun:
        return
    keys = (args.pairs or ["lenet300-s0-s1"])[:1] if args.quick else ["lenet5-mnist-fashion", "lenet300-s0-s1"]
    shares = (1.0,) if args.quick else (0.5, 0.75, 1.0)
    rounds = {1: 20, 64: 5} if args.quick else {1: 400, 64: 80}
    results = []
    for key in keys:
        if args.quick:
            results.append(pair_latency(key, shares=shares, rounds=rounds,
                                        calibration_limit=min(args.calib_limit, 1024)))
            continue
        with _pool(1, fresh=True) as pool:
            results.append(pool.submit(pair_latency, key, shares=shares, rounds=rounds,
                                       calibration_limit=min(args.calib_limit, 1024)).result())
    write_json(path, {"pairs": results})


def run_vgg(args):
    from tools.bench.speed import vgg_speed

    path = args.cache / "speed" / "vgg.json"
    if path.exists() and not args.rerun:
        return
    print(f"vgg: building/zipping two VGG-16s in {args.vgg_dir} (long)", flush=True)
    t = time.perf_counter()
    try:
        with _pool(1, fresh=True) as pool:
            rec = pool.submit(vgg_speed, args.vgg_dir, calibration=args.vgg_calib, batch=args.vgg_batch,
                              fc6_share=args.vgg_fc6_share, size=args.vgg_size, width=args.vgg_width).result()
    except Exception as exc:  # noqa: BLE001 - record what failed
        rec = {"error": f"{type(exc).__name__}: {exc}", "seconds_until_failure": time.perf_counter() - t}
    write_json(path, rec)
    what = rec.get("error") or "zip {:.0f}s, peak {:.0f} MiB".format(rec["total_seconds"], rec["rss_peak_mib"])
    print(f"vgg: done in {fmt_s(time.perf_counter() - t)}: {what}", flush=True)


def report(args, command):
    from tools.bench.report import write_report

    collect_speed(args)
    args.out.mkdir(parents=True, exist_ok=True)
    selected = args.quick or args.pairs or args.methods or args.shares or args.budgets or args.seeds
    expected = expected_cells(args) if selected else all_cells()
    res = write_report(args.out, args.cache, command, expected)
    c = res["cells"]
    print(f"report: {args.out / 'RESULTS.md'} ({c['finished']}/{c['expected']} cells, {c['missing']} missing)",
          flush=True)


def main(argv=None):
    args = parse(argv)
    command = DEFAULT_COMMAND if not args.quick else "python tools/benchmark.py --quick --out " + str(args.out)
    if not args.report_only:
        t = time.perf_counter()
        for section in ("speed", "inference", "grid", "vgg"):
            if section not in args.sections:
                continue
            print(f"== {section} ==", flush=True)
            runners = {"speed": run_speed, "inference": run_inference, "grid": lambda a: run_grid(a, command),
                       "vgg": run_vgg}
            runners[section](args)
        print(f"sections done in {fmt_s(time.perf_counter() - t)}", flush=True)
    report(args, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
