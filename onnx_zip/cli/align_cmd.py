"""``onnx-zip align A.onnx B.onnx [C.onnx ...]``: which layers would be zipped together."""

from __future__ import annotations

import argparse
import json

from onnx_zip import model_io
from onnx_zip.cli.inputs import model_problems, raise_all, read_mapping
from onnx_zip.graph.align import Alignment, align_chains, match_depths
from onnx_zip.graph.canonicalize import canonicalize
from onnx_zip.graph.discover import discover_layers
from onnx_zip.graph.layers import LayerChain

NAME = "align"
HELP = "pair the zippable layers of two or more models (exit 2 with a diff when they do not align)"
NEEDS_RUNTIME = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL", help="two or more .onnx models")
    parser.add_argument("--map", metavar="FILE.json",
                        help='explicit pairing: {"a_node": "b_node"}, [[a, b, c], ...] or the output of align --json')
    parser.add_argument("--no-fold-batchnorm", action="store_true", help="keep BatchNormalization nodes separate")
    parser.add_argument("--json", action="store_true", help="print the alignment as JSON (zip --map FILE accepts it)")


def load_chain(path: str, *, fold_batchnorm: bool = True) -> LayerChain:
    """Load, canonicalise and discover one model, labelled by its path."""
    model = model_io.load_model(path)
    return discover_layers(canonicalize(model, fold_batchnorm=fold_batchnorm, label=path), label=path)


def format_alignment(alignment: Alignment) -> str:
    """A text table: index, role, kernel, then node and N_out<-N_in per model."""
    header = ["#", "role", "kind", "kernel"] + list(alignment.models)
    rows = []
    for a in alignment.layers:
        kernel = "x".join(map(str, a.kernel_shape)) or "-"
        cells = [f"{node} {n}<-{i}" for node, n, i in zip(a.nodes, a.neurons, a.inputs)]
        rows.append([str(a.index), "head" if a.is_head else "hidden", a.kind, kernel] + cells)
    widths = [max(len(r[c]) for r in [header] + rows) for c in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in [header] + rows)


def run(args: argparse.Namespace) -> int:
    problems = [] if len(args.models) >= 2 else [f"align needs at least two models, got {len(args.models)}"]
    raise_all(problems + model_problems(args.models))
    mapping = read_mapping(args.map) if args.map else None
    chains = [load_chain(path, fold_batchnorm=not args.no_fold_batchnorm) for path in args.models]
    if mapping is None:
        depths = [len(c.hidden) for c in chains]
        chains = match_depths(chains)
        if len(set(depths)) > 1 and not args.json:
            print(f"different depths ({', '.join(map(str, depths))} hidden layers): the first {min(depths)} are zipped; "
                  "a deeper model's next layer is its head here, and it and the layers after it stay task-specific")
    alignment = align_chains(chains, mapping=mapping)
    if args.json:
        print(json.dumps(alignment.to_dict(), indent=2))
    else:
        print(format_alignment(alignment))
        groups = [f"{c.model}: {', '.join('+'.join(g) for g in c.channel_groups)}" for c in chains if c.channel_groups]
        if groups:
            print("channel groups (residual Adds/Concats): " + "; ".join(groups))
    return 0
