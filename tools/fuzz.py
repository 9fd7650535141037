"""Mutation fuzzer: broken copies of the bundled models through ``align`` and ``zip``.

Each case takes one bundled model (``models/manifest.json``), mutates it (byte flips,
truncation, or a protobuf field edit: dims, data types, raw data lengths, node inputs,
external data locations, attributes, opsets, NaN weights, ...) and runs
``onnx-zip align MUTANT PARTNER`` and ``onnx-zip zip MUTANT PARTNER --calib .. --calib .. -o ..``
(a small calibration set) in-process, in a forked child with a per-case timeout and a memory
cap. Outcomes per run:

* ``refused`` exit 2 (a clean InputError), ``success`` exit 0 (the zipped output must then pass
  ``onnx.checker``: else ``invalid_output``), ``unhandled`` exit 1 or an exception (its class
  and the innermost onnx_zip frame are recorded), ``hang`` (timeout), ``crash`` (the child died);
* ``input_modified``: the mutant or a data file changed; ``leftover``: a temporary file stayed.

Usage::

    python tools/fuzz.py --cases 300 --seed 0 --out fuzz.json
    python tools/fuzz.py --seconds 3600 --cases 100000      # as many as fit in an hour

Same ``--seed`` and ``--cases``, same mutants. The JSON summary holds the counts per command and
per mutation, and every unhandled failure grouped by (exception, where).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import multiprocessing
import os
import random
import resource
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from onnx_zip.cli.main import main as cli_main

#: Same-architecture partners (a mutant of the first is zipped with the second).
PARTNERS = {
    "lenet300_mnist_s0": "lenet300_mnist_s1", "lenet300_mnist_s1": "lenet300_mnist_s0",
    "lenet5_mnist_s0": "lenet5_mnist_s1", "lenet5_mnist_s1": "lenet5_mnist_s0",
    "lenet5_fashion": "lenet5_fashion_super4", "lenet5_fashion_super4": "lenet5_fashion",
    "resnet_mnist": "resnet_fashion", "resnet_fashion": "resnet_mnist",
    "mlp_mnist_sklearn_s0": "mlp_mnist_sklearn_s1", "mlp_mnist_sklearn_s1": "mlp_mnist_sklearn_s0",
}
OUTCOMES = ("refused", "success", "unhandled", "hang", "crash", "invalid_output", "input_modified", "leftover")
MEMORY_CAP = 6 * 2**30


@dataclass(frozen=True)
class Zoo:
    """The bundled models (bytes by name) and small calibration files (paths by name)."""

    models: dict[str, bytes]
    calib: dict[str, Path]


def load_zoo(workdir: Path, samples: int) -> Zoo:
    """Read the manifest's models and write ``samples``-sample calibration files into ``workdir``."""
    manifest = json.loads((REPO / "models" / "manifest.json").read_text())
    models, calib = {}, {}
    for entry in manifest["models"]:
        name = entry["name"]
        if name not in PARTNERS or not (REPO / "models" / entry["file"]).is_file():
            continue
        models[name] = (REPO / "models" / entry["file"]).read_bytes()
        with np.load(REPO / "models" / entry["data"]["train"]) as data:
            path = workdir / f"{name}_calib.npz"
            np.savez(path, **{k: data[k][:samples] for k in data.files})
            calib[name] = path
    return Zoo(models, calib)


# --- mutations -----------------------------------------------------------------------------

Side = dict[str, bytes]  # side files to write beside the mutant


def flip_bytes(data: bytes, rng: random.Random) -> tuple[bytes, Side]:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8) if rng.random() < 0.7 else rng.randrange(1, 256)
    return bytes(out), {}


def truncate(data: bytes, rng: random.Random) -> tuple[bytes, Side]:
    return data[: rng.randrange(len(data))], {}


def _pick_init(model: onnx.ModelProto, rng: random.Random) -> TensorProto | None:
    inits = list(model.graph.initializer)
    return rng.choice(inits) if inits else None


def edit_dims(model: onnx.ModelProto, rng: random.Random) -> Side:
    t = _pick_init(model, rng)
    if t is not None and len(t.dims):
        i = rng.randrange(len(t.dims))
        t.dims[i] = rng.choice([0, 1, -1, t.dims[i] + 1, max(t.dims[i] - 1, 0), 2**31, 2**62, t.dims[i] * 1000])
    elif t is not None:
        t.dims.append(rng.choice([0, 2, 2**40]))
    return {}


def edit_data_type(model: onnx.ModelProto, rng: random.Random) -> Side:
    t = _pick_init(model, rng)
    if t is not None:
        t.data_type = rng.choice([0, 2, 3, 6, 7, 8, 9, 10, 11, 16, 17, 21, 22, 99])
    return {}


def edit_raw_data(model: onnx.ModelProto, rng: random.Random) -> Side:
    t = _pick_init(model, rng)
    if t is not None and t.raw_data:
        cut = rng.choice([-1, -3, -4, 1, 4, -len(t.raw_data) // 2])
        t.raw_data = t.raw_data[:cut] if cut < 0 else t.raw_data + bytes(cut)
    return {}


def edit_node_input(model: onnx.ModelProto, rng: random.Random) -> Side:
    nodes = [n for n in model.graph.node if n.input]
    if nodes:
        node = rng.choice(nodes)
        names = [o for n in model.graph.node for o in n.output] + [t.name for t in model.graph.initializer]
        i = rng.randrange(len(node.input))
        node.input[i] = rng.choice([rng.choice(names), "", "no_such_tensor", node.output[0] if node.output else "x"])
    return {}


def edit_external(model: onnx.ModelProto, rng: random.Random) -> Side:
    t = _pick_init(model, rng)
    if t is None or not t.raw_data:
        return {}
    payload = t.raw_data
    location = rng.choice(["w.bin", "w.bin", "../w.bin", "/etc/hostname", "missing.bin", "sub/../w.bin", "", "w.bin\x00x"])
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value=location)
    if rng.random() < 0.5:
        t.external_data.add(key="offset", value=str(rng.choice([0, 0, 4, -1, 2**40])))
    if rng.random() < 0.5:
        t.external_data.add(key="length", value=str(rng.choice([len(payload), len(payload) - 1, 0, "x"])))
    return {"w.bin": payload if rng.random() < 0.8 else payload[: len(payload) // 2]}


def edit_attribute(model: onnx.ModelProto, rng: random.Random) -> Side:
    nodes = [n for n in model.graph.node if n.attribute]
    if nodes:
        attr = rng.choice(rng.choice(nodes).attribute)
        if attr.ints:
            attr.ints[rng.randrange(len(attr.ints))] = rng.choice([0, -1, 2**31, 99])
        elif attr.type == onnx.AttributeProto.INT:
            attr.i = rng.choice([0, -1, 2, 99, 2**40])
        elif attr.type == onnx.AttributeProto.FLOAT:
            attr.f = rng.choice([float("nan"), -1.0, 1e30])
    return {}


def edit_graph(model: onnx.ModelProto, rng: random.Random) -> Side:
    graph = model.graph
    choice = rng.randrange(7)
    if choice == 0 and len(graph.node) > 1:
        del graph.node[rng.randrange(len(graph.node))]
    elif choice == 1:
        graph.node.append(graph.node[rng.randrange(len(graph.node))])
    elif choice == 2:
        node = rng.choice(list(graph.node))
        node.op_type = rng.choice(["Relu", "Conv", "Gemm", "MatMul", "Add", "Unknown", "Loop", "Identity"])
    elif choice == 3 and graph.input:
        graph.input[0].type.tensor_type.elem_type = rng.choice([0, 7, 10, 11, 16])
    elif choice == 4:
        for entry in model.opset_import:
            entry.version = rng.choice([1, 7, 11, 16, 22, 99, 0])
    elif choice == 5 and graph.input:
        dims = graph.input[0].type.tensor_type.shape.dim
        if dims:
            dims[0].dim_value = rng.choice([1, 0, 3])
    else:
        graph.node.reverse()
    return {}


def inject_nan(model: onnx.ModelProto, rng: random.Random) -> Side:
    t = _pick_init(model, rng)
    if t is not None and t.data_type == TensorProto.FLOAT and len(t.raw_data) >= 4:
        i = rng.randrange(len(t.raw_data) // 4) * 4
        value = rng.choice([np.float32("nan"), np.float32("inf"), np.float32(3e38)]).tobytes()
        t.raw_data = t.raw_data[:i] + value + t.raw_data[i + 4 :]
    return {}


def to_sparse(model: onnx.ModelProto, rng: random.Random) -> Side:
    t = _pick_init(model, rng)
    if t is None:
        return {}
    array = onnx.numpy_helper.to_array(t)
    flat = np.flatnonzero(array)
    if rng.random() < 0.3 and flat.size:
        flat[rng.randrange(flat.size)] = array.size + rng.randrange(5)
    values = onnx.numpy_helper.from_array(array.reshape(-1)[np.clip(flat, 0, max(array.size - 1, 0))], t.name)
    sparse = onnx.helper.make_sparse_tensor(values, onnx.numpy_helper.from_array(flat.astype(np.int64), "i"), list(t.dims))
    keep = [x for x in model.graph.initializer if x.name != t.name]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    model.graph.sparse_initializer.append(sparse)
    return {}


FIELD_EDITS: dict[str, Callable[[onnx.ModelProto, random.Random], Side]] = {
    "dims": edit_dims, "data_type": edit_data_type, "raw_data": edit_raw_data, "node_input": edit_node_input,
    "external_data": edit_external, "attribute": edit_attribute, "graph": edit_graph, "nan": inject_nan,
    "sparse": to_sparse,
}
MUTATIONS = ["byte_flip", "truncate", *FIELD_EDITS]


def mutate(data: bytes, kind: str, rng: random.Random) -> tuple[bytes, Side]:
    """A mutant of ``data`` (model bytes) and the side files to write beside it."""
    if kind == "byte_flip":
        return flip_bytes(data, rng)
    if kind == "truncate":
        return truncate(data, rng)
    model = onnx.ModelProto()
    model.ParseFromString(data)
    side = FIELD_EDITS[kind](model, rng)
    return model.SerializeToString(), side


# --- running one case ----------------------------------------------------------------------


@dataclass
class Run:
    """One command on one mutant."""

    case: int
    mutation: str
    model: str
    command: str
    outcome: str
    exception: str | None = None
    message: str | None = None
    where: str | None = None
    seconds: float = 0.0
    flags: list[str] = field(default_factory=list)


def _where(exc: BaseException) -> str:
    """``file:function`` of the innermost onnx_zip frame (else the innermost frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "onnx_zip" in f.filename.replace(os.sep, "/") and "/cli/" not in f.filename]
    frame = (ours or frames or [None])[-1]
    if frame is None:
        return "?"
    path = Path(frame.filename)
    rel = path.relative_to(REPO) if path.is_relative_to(REPO) else Path(*path.parts[-3:])
    return f"{rel}:{frame.name}"


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _invoke(argv: list[str]) -> tuple[int, BaseException | None, str]:
    """Run the CLI with -v (unexpected exceptions propagate); stdout/stderr captured."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            return cli_main(["-v", *argv]), None, err.getvalue()
        except BaseException as exc:  # noqa: BLE001 - classifying is the point
            return 1, exc, err.getvalue()


def _child(conn: multiprocessing.connection.Connection, argv: list[str], folder: Path, output: Path | None) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    logging.disable(logging.CRITICAL)
    before = _digests(folder)
    start = time.perf_counter()
    code, exc, err = _invoke(argv)
    result: dict[str, object] = {"code": code, "seconds": time.perf_counter() - start, "flags": []}
    if exc is not None:
        result.update(exception=type(exc).__name__, message=str(exc)[:300], where=_where(exc))
    elif code == 1:
        last = [line for line in err.splitlines() if line.startswith("onnx-zip")]
        result.update(exception="OnnxZipError(exit 1)", message=(last or [err[-300:]])[-1][:300], where="?")
    after = _digests(folder)
    if output is not None:
        after.pop(output.name, None)
    flags: list[str] = result["flags"]  # type: ignore[assignment]
    if any(after.get(k) != v for k, v in before.items()):
        flags.append("input_modified")
    if set(after) - set(before):
        flags.append("leftover")
    if code == 0 and output is not None:
        try:
            onnx.checker.check_model(onnx.load(str(output)), full_check=True)
        except Exception:  # noqa: BLE001
            flags.append("invalid_output")
    conn.send(result)
    conn.close()


def run_one(argv: list[str], folder: Path, output: Path | None, timeout: float) -> dict[str, object]:
    """Run one command in a forked child; ``{"code": ..., ...}`` or ``{"outcome": "hang"/"crash"}``."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(child, argv, folder, output))
    process.start()
    child.close()
    if parent.poll(timeout):
        try:
            result = parent.recv()
        except EOFError:
            result = {"outcome": "crash"}
        process.join(10)
    else:
        process.kill()
        process.join()
        result = {"outcome": "hang"}
    if process.is_alive():
        process.kill()
        process.join()
    if "outcome" not in result and "code" not in result:
        result = {"outcome": "crash"}
    if process.exitcode not in (0, None) and "code" not in result:
        result.setdefault("outcome", "crash")
    return result


def run_case(index: int, seed: int, zoo: Zoo, workdir: Path, *, timeout: float, calib_limit: int,
             commands: list[str]) -> list[Run]:
    """Mutate one model (deterministic in ``seed`` and ``index``) and run each command on it."""
    rng = random.Random(seed * 1_000_003 + index)
    name = rng.choice(sorted(zoo.models))
    kind = rng.choice(MUTATIONS)
    try:
        data, side = mutate(zoo.models[name], kind, rng)
    except Exception as exc:  # noqa: BLE001 - a mutation that cannot be applied is a fuzzer limitation
        return [Run(index, kind, name, "mutate", "skipped", type(exc).__name__, str(exc)[:200])]
    folder = workdir / f"case{index}"
    folder.mkdir()
    mutant = folder / "mutant.onnx"
    mutant.write_bytes(data)
    for side_name, payload in side.items():
        (folder / side_name).write_bytes(payload)
    partner = REPO / "models" / f"{PARTNERS[name]}.onnx"
    runs = []
    for command in commands:
        output = folder / "zipped.onnx" if command == "zip" else None
        argv = ["align", str(mutant), str(partner)]
        if command == "zip":
            argv = ["zip", str(mutant), str(partner), "--calib", str(zoo.calib[name]), "--calib",
                    str(zoo.calib[PARTNERS[name]]), "-o", str(output), "--calib-limit", str(calib_limit),
                    "--no-progress", "--threads", "1"]
        result = run_one(argv, folder, output, timeout)
        outcome = str(result.get("outcome") or {0: "success", 2: "refused"}.get(int(result["code"]), "unhandled"))  # type: ignore[call-overload]
        runs.append(Run(index, kind, name, command, outcome, result.get("exception"), result.get("message"),  # type: ignore[arg-type]
                        result.get("where"), round(float(result.get("seconds", timeout)), 3), list(result.get("flags", []))))  # type: ignore[arg-type]
        if output is not None and output.exists():
            output.unlink()
    for path in sorted(folder.iterdir()):
        path.unlink()
    folder.rmdir()
    return runs


# --- summary -------------------------------------------------------------------------------


def summarize(runs: list[Run], *, cases: int, seed: int, seconds: float) -> dict[str, object]:
    """Counts per command and mutation; unhandled failures grouped by (exception, where)."""
    counts: dict[str, Counter[str]] = {}
    by_mutation: dict[str, Counter[str]] = {}
    for run in runs:
        for key, table in ((run.command, counts), (run.mutation, by_mutation)):
            table.setdefault(key, Counter())[run.outcome] += 1
            for flag in run.flags:
                table[key][flag] += 1
    groups: dict[str, dict[str, object]] = {}
    for run in runs:
        if run.outcome in ("unhandled", "hang", "crash"):
            key = f"{run.outcome}: {run.exception} at {run.where}"
            entry = groups.setdefault(key, {"count": 0, "example": asdict(run)})
            entry["count"] = int(entry["count"]) + 1  # type: ignore[call-overload]
    totals = Counter(run.outcome for run in runs)
    for run in runs:
        totals.update(run.flags)
    return {
        "seed": seed, "cases": cases, "runs": len(runs), "seconds": round(seconds, 1),
        "totals": {k: totals.get(k, 0) for k in (*OUTCOMES, "skipped")},
        "per_command": {k: dict(v) for k, v in counts.items()},
        "per_mutation": {k: dict(v) for k, v in sorted(by_mutation.items())},
        "failures": dict(sorted(groups.items(), key=lambda kv: -int(kv[1]["count"]))),  # type: ignore[call-overload]
    }


def fuzz(cases: int, seed: int, *, seconds: float | None = None, timeout: float = 60.0, calib_limit: int = 64,
         commands: tuple[str, ...] = ("align", "zip")) -> dict[str, object]:
    """Run up to ``cases`` cases (stopping after ``seconds`` if given) and return the summary."""
    start = time.perf_counter()
    runs: list[Run] = []
    done = 0
    with tempfile.TemporaryDirectory(prefix="onnx_zip_fuzz_") as tmp:
        workdir = Path(tmp)
        zoo = load_zoo(workdir, samples=max(calib_limit, 8))
        for index in range(cases):
            if seconds is not None and time.perf_counter() - start > seconds:
                break
            runs.extend(run_case(index, seed, zoo, workdir, timeout=timeout, calib_limit=calib_limit,
                                 commands=list(commands)))
            done += 1
    return summarize(runs, cases=done, seed=seed, seconds=time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=300, help="number of mutants (default 300)")
    parser.add_argument("--seconds", type=float, help="stop starting new cases after this many seconds")
    parser.add_argument("--seed", type=int, default=0, help="mutation seed (default 0)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-command timeout in seconds (default 60)")
    parser.add_argument("--calib-limit", type=int, default=64, help="calibration samples per model (default 64)")
    parser.add_argument("--commands", default="align,zip", help="comma-separated: align, zip (default both)")
    parser.add_argument("--out", default="fuzz_summary.json", help="JSON summary path (default fuzz_summary.json)")
    args = parser.parse_args(argv)
    summary = fuzz(args.cases, args.seed, seconds=args.seconds, timeout=args.timeout, calib_limit=args.calib_limit,
                   commands=tuple(c.strip() for c in args.commands.split(",") if c.strip()))
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    totals = summary["totals"]
    print(f"{summary['cases']} cases, {summary['runs']} runs in {summary['seconds']} s: "
          + ", ".join(f"{k} {v}" for k, v in totals.items() if v) + f" -> {args.out}")  # type: ignore[union-attr]
    return 0


if __name__ == "__main__":
    sys.exit(main())
