"""``onnx-zip align A.onnx B.onnx [C.onnx ...]``: which layers would be zipped together."""

from __future__ import annotations

import argparse
import json

from onnx_zip import model_io
from onnx_zip.cli.inputs import model_problems, raise_all, read_mapping
from onnx_zip.graph.align import Alignment, align_chains, match_depths
from onnx_zip.graph.blockers import format_blockers, nothing_zippable
from onnx_zip.graph.canonicalize import canonicalize
from onnx_zip.graph.coverage import Coverage, coverage
from onnx_zip.graph.layers import LayerChain
from onnx_zip.graph.partial import discover_partial

NAME = "align"
HELP = "pair the zippable layers of two or more models (exit 2 with a diff when they do not align)"
NEEDS_RUNTIME = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL", help="two or more .onnx models")
    parser.add_argument(
        "--map",
        metavar="FILE.json",
        help='explicit pairing: {"a_node": "b_node"}, [[a, b, c], ...] or the output of align --json',
    )
    parser.add_argument("--no-fold-batchnorm", action="store_true", help="keep BatchNormalization nodes separate")
    parser.add_argument("--json", action="store_true", help="print the alignment as JSON (zip --map FILE accepts it)")
    parser.add_argument(
        "--until", metavar="NODE", help="zip at most up to this hidden layer; the rest stays task-specific"
    )


def load_coverage(
    path: str, *, fold_batchnorm: bool = True, until: str | None = None
) -> tuple[LayerChain | None, Coverage]:
    """Load, canonicalise and discover one model, labelled by its path: the chain to zip (cut after
    its last supported layer; None when nothing is zippable) and its coverage."""
    canonical = canonicalize(model_io.load_model(path), fold_batchnorm=fold_batchnorm, label=path)
    partial = discover_partial(canonical, label=path, until=until)
    return partial.chain, coverage(canonical, partial)


def load_chain(path: str, *, fold_batchnorm: bool = True) -> LayerChain:
    """Load, canonicalise and discover one model, labelled by its path (cut after its last
    supported layer); refuses with its blockers when nothing is zippable."""
    chain, cover = load_coverage(path, fold_batchnorm=fold_batchnorm)
    if chain is None:
        raise nothing_zippable(cover.blockers, [path])
    return chain


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
    fold = not args.no_fold_batchnorm
    loaded = [load_coverage(path, fold_batchnorm=fold, until=args.until) for path in args.models]
    covers = [cover for _, cover in loaded]
    if any(chain is None for chain, _ in loaded):
        raise nothing_zippable([b for c in covers for b in c.blockers], [c.model for c in covers])
    chains = [chain for chain, _ in loaded if chain is not None]
    if mapping is None:
        depths = [len(c.hidden) for c in chains]
        chains = match_depths(chains)
        if len(set(depths)) > 1 and not args.json:
            print(
                f"different depths ({', '.join(map(str, depths))} hidden layers): the first {min(depths)} are zipped; "
                "a deeper model's next layer is its head here, and it and the layers after it stay task-specific"
            )
    alignment = align_chains(chains, mapping=mapping)
    if args.json:
        print(json.dumps({**alignment.to_dict(), "coverage": [c.to_dict() for c in covers]}, indent=2))
    else:
        print_coverage(covers)  # before the table, whose last line stays the last head
        print(format_alignment(alignment))
        groups = [f"{c.model}: {', '.join('+'.join(g) for g in c.channel_groups)}" for c in chains if c.channel_groups]
        if groups:
            print("channel groups (residual Adds/Concats): " + "; ".join(groups))
    return 0


def print_coverage(covers: list[Coverage]) -> None:
    """Per model: zippable layers and fraction of the parameters; then every blocker, one a line."""
    for cover in covers:
        print(cover.summary())
    listed = format_blockers([b for c in covers for b in c.blockers])
    if listed:
        print(f"blockers (zipping stops before them; the rest stays task-specific):\n{listed}")
