"""Canonicalisation: bring an ONNX model from any exporter into the one form the tool reads.

:func:`canonicalize` returns a new model (the input is never modified) that computes the same
outputs and guarantees:

* default-domain opset in 17..21 (11..16 are converted up to 17 with onnx's version converter);
  only the ``""``/``ai.onnx`` and ``ai.onnx.ml`` domains; no control flow (If/Loop/Scan), no
  quantized ops (QuantizeLinear, DequantizeLinear, QLinear*, ConvInteger, MatMulInteger);
* weights held in ``Constant`` nodes are initializers; initializers are not graph inputs;
* no Identity nodes, no inference-mode Dropout;
* every node has a unique, non-empty, deterministic name (existing names kept, duplicates
  suffixed ``_<k>``, missing ones filled as ``<op_type>_<n>``);
* every Gemm with a constant B has ``transA=0``, ``alpha=1``, ``beta=1`` (alpha folded into B, beta
  into C; ``transA=1`` becomes an explicit Transpose) and a bias C that is absent or a 1-D
  initializer ``(N_out,)``; ``transB`` is kept (the layout registry in ``layers.py`` reads it);
* ``MatMul(x, W) [+ Add(b)]`` with ``x`` of rank 2 and a constant 2-D ``W (N_in, N_out)`` is a
  ``Gemm(x, Wᵀ, b, transB=1)`` (weight ``(N_out, N_in)``, named after the MatMul); a MatMul with a
  rank > 2 input stays a MatMul and its bias stays a separate ``Add`` (its constant reshaped to 1-D
  ``(N_out,)``, which broadcasts identically): discovery reports that Add as the layer's
  ``bias_node``;
* every Conv has explicit ``kernel_shape``, ``strides``, ``dilations`` and ``pads`` (``auto_pad``
  resolved with the inferred input shape) and keeps its ``group`` (a depthwise Conv is a per-channel
  op of the op table; discovery lists other grouped convolutions as blockers);
* with ``fold_batchnorm``, a BatchNormalization (inference mode) that is the only consumer of a
  Conv/Gemm output is folded into that layer (σ = sqrt(var + eps)):

      W' = W · γ/σ   (per output neuron)      b' = (b − μ) · γ/σ + β

  which is the journal's ``bias + β − γμ/σ`` with the existing bias folded too;
* shape inference (with data propagation) has run, so intermediate tensors carry shapes;
* ``ir_version`` matches the opset (``model_io.stamp_versions``).

Weights that change are copied under a new name when another node still reads the original.

Every rewrite works on onnx-graphsurgeon graphs; the protobuf is only handed to onnx's own tools
(the support check, the version converter, shape inference) and to ``model_io``.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnx_zip import model_io
from onnx_zip.errors import ModelError

logger = logging.getLogger(__name__)

ALLOWED_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})
QUANTIZED_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"}
)
CANONICAL_OPSET = model_io.MIN_OPSET


# ------------------------------------------------------------------------------ validation


def _is_quantized(op_type: str) -> bool:
    return op_type in QUANTIZED_OPS or op_type.startswith("QLinear")


def check_supported(model: onnx.ModelProto, *, label: str = "model") -> int:
    """Refuse models the tool cannot read; return the default-domain opset.

    Raises:
        ModelError: opset outside 11..21, a node or opset import in an unknown domain, control
            flow, or a quantized op (the message names the node).
    """
    opset = model_io.default_opset(model)
    if opset > model_io.MAX_OPSET:
        raise ModelError(
            f"{label}: opset {opset} is newer than the {model_io.MAX_OPSET} onnx_zip supports",
            hint=f"re-export with an opset between {model_io.MIN_OPSET} and {model_io.MAX_OPSET}",
        )
    if opset < model_io.MIN_READ_OPSET:
        raise ModelError(
            f"{label}: opset {opset} is older than {model_io.MIN_READ_OPSET}, the oldest onnx_zip converts",
            hint=f"re-export with an opset between {model_io.MIN_OPSET} and {model_io.MAX_OPSET}",
        )
    if model.functions:
        names = ", ".join(sorted(f"{f.domain}:{f.name}" for f in model.functions))
        raise ModelError(
            f"{label}: the model holds local functions ({names}); onnx_zip reads flat graphs only",
            hint="inline them first: onnx.inliner.inline_local_functions(model)",
        )
    for node in model.graph.node:
        name = node.name or f"<unnamed {node.op_type}>"
        if node.domain not in ALLOWED_DOMAINS:
            raise ModelError(
                f"{label}: node {name!r} ({node.domain}:{node.op_type}) is in the unsupported domain "
                f"{node.domain!r}",
                hint="onnx_zip reads the standard ai.onnx ops (and ai.onnx.ml post-processing only); "
                "re-export without custom ops",
            )
        if node.op_type in CONTROL_FLOW_OPS:
            raise ModelError(
                f"{label}: node {name!r} is control flow ({node.op_type}); onnx_zip reads straight-line graphs",
                hint="re-export the model traced for a fixed path (no data-dependent branches or loops)",
            )
        if _is_quantized(node.op_type):
            raise ModelError(
                f"{label}: node {name!r} ({node.op_type}) is a quantized op; onnx_zip zips float models",
                hint="zip the float model, then quantize the result",
            )
    return opset


# ------------------------------------------------------------------------------ constants and shapes


def _constant_value(node: gs.Node) -> np.ndarray | None:
    """The tensor a ``Constant`` node holds, or None (sparse or string constants stay nodes)."""
    attrs = node.attrs
    if isinstance(attrs.get("value"), gs.Constant):
        return np.asarray(attrs["value"].values)
    if "value_float" in attrs:
        return np.array(attrs["value_float"], dtype=np.float32)
    if "value_floats" in attrs:
        return np.array(list(attrs["value_floats"]), dtype=np.float32)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], dtype=np.int64)
    if "value_ints" in attrs:
        return np.array(list(attrs["value_ints"]), dtype=np.int64)
    return None


def _lift_constants(graph: gs.Graph) -> bool:
    """``Constant`` nodes become initializers; initializers listed as graph inputs (old exporters)
    are constants only. Returns whether anything changed."""
    changed = False
    for node in graph.nodes:
        value = _constant_value(node) if node.op == "Constant" and node.domain in (None, "", "ai.onnx") else None
        if value is None:
            continue
        out = node.outputs[0]
        const = gs.Constant(out.name, value)
        for consumer in list(out.outputs):
            _replace(consumer.inputs, out, const)
        _replace(graph.outputs, out, const)
        node.outputs.clear()
        changed = True
    inputs = [t for t in graph.inputs if not isinstance(t, gs.Constant)]
    if len(inputs) != len(graph.inputs):
        graph.inputs = inputs
        changed = True
    if changed:
        graph.cleanup(remove_unused_graph_inputs=False)
    return changed


def _with_constants_lifted(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with :func:`_lift_constants` applied (the same object when nothing changes)."""
    if not any(n.op_type == "Constant" for n in model.graph.node) and not (
        {t.name for t in model.graph.initializer} & {v.name for v in model.graph.input}
    ):
        return model
    graph = gs.import_onnx(model)
    if not _lift_constants(graph):
        return model
    out = gs.export_onnx(graph, do_type_check=False)
    _copy_model_fields(model, out)
    return out


def infer_shapes(model: onnx.ModelProto, *, label: str = "model") -> onnx.ModelProto:
    """Shape inference with data propagation; stale ``value_info`` is dropped first.

    Declared graph-output shapes that contradict inference (some exporters write wrong ones)
    are dropped and inference is retried.
    """
    del model.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=True, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises InferenceError or RuntimeError
        logger.info("%s: shape inference failed (%s); retrying without declared output shapes", label, exc)
    for output in model.graph.output:
        if output.type.tensor_type.HasField("shape"):
            output.type.tensor_type.ClearField("shape")
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{label}: ONNX shape inference failed "
            f"({exc})", hint="check the model with onnx.checker") from exc


# ------------------------------------------------------------------------------ graph helpers


class _Names:
    """Allocates unique node and tensor names."""

    def __init__(self, graph: gs.Graph) -> None:
        self.nodes = {n.name for n in graph.nodes if n.name}
        self.tensors = set(graph.tensors().keys())

    def node(self, base: str) -> str:
        name, k = base, 0
        while name in self.nodes or not name:
            k += 1
            name = f"{base}_{k}"
        self.nodes.add(name)
        return name

    def tensor(self, base: str) -> str:
        name, k = base, 0
        while name in self.tensors:
            k += 1
            name = f"{base}_{k}"
        self.tensors.add(name)
        return name


def _name_nodes(graph: gs.Graph) -> None:
    counts = Counter(n.name for n in graph.nodes if n.name)
    taken = set(counts)
    seen: set[str] = set()
    per_op: Counter[str] = Counter()
    for node in graph.nodes:
        if node.name and node.name not in seen:
            seen.add(node.name)
            continue
        base = node.name or node.op
        k = 0 if node.name else per_op[node.op]
        while True:
            candidate = f"{base}_{k}"
            k += 1
            if candidate not in taken:
                break
        if not node.name:
            per_op[node.op] = k
        node.name = candidate
        taken.add(candidate)
        seen.add(candidate)


def _is_const(tensor: gs.Tensor | None) -> bool:
    return isinstance(tensor, gs.Constant)


def _consumers(graph: gs.Graph, tensor: gs.Tensor) -> int:
    """Readers of a tensor, counting a graph output as one."""
    return len(tensor.outputs) + int(tensor in graph.outputs)


def _writable_constant(graph: gs.Graph, names: _Names, node: gs.Node, index: int, values: np.ndarray) -> gs.Constant:
    """Give ``node.inputs[index]`` new values, copying the constant if anything else reads it."""
    old = node.inputs[index]
    if _consumers(graph, old) == 1:
        old.values = values
        return old
    new = gs.Constant(names.tensor(f"{old.name}_{node.name}"), values)
    node.inputs[index] = new
    return new


def _replace(tensors: list, old: gs.Tensor, new: gs.Tensor) -> None:
    """Replace ``old`` by ``new`` in a node's input/output list (gs lists refuse slice assignment)."""
    for i, tensor in enumerate(tensors):
        if tensor is old:
            tensors[i] = new


def _attr(node: gs.Node, name: str, default):
    return node.attrs.get(name, default)


# ------------------------------------------------------------------------------ rewrites


def _remove_identities(graph: gs.Graph) -> None:
    for node in list(graph.nodes):
        if node.op == "Dropout":
            training = node.inputs[2] if len(node.inputs) > 2 else None
            if training is not None and training.name and not (_is_const(training) and not bool(training.values)):
                continue  # training mode or unknown: leave it
            if len(node.outputs) > 1 and node.outputs[1].name and _consumers(graph, node.outputs[1]):
                continue  # the mask is read
        elif node.op != "Identity":
            continue
        src, dst = node.inputs[0], node.outputs[0]
        if dst in graph.outputs:
            producer_ok = isinstance(src, gs.Variable) and len(src.inputs) == 1 and src not in graph.outputs
            if not producer_ok:
                continue  # e.g. an input or initializer exposed as an output: keep the Identity
            producer = src.inputs[0]
            for consumer in list(src.outputs):
                if consumer is node:
                    continue
                _replace(consumer.inputs, src, dst)
            _replace(producer.outputs, src, dst)
            if dst.dtype is None:
                dst.dtype = src.dtype
        else:
            for consumer in list(dst.outputs):
                _replace(consumer.inputs, dst, src)
        node.inputs.clear()
        node.outputs.clear()
    graph.cleanup()


def _normalise_gemms(graph: gs.Graph, names: _Names, label: str) -> None:
    for node in list(graph.nodes):
        if node.op != "Gemm" or not _is_const(node.inputs[1]):
            continue
        alpha = float(_attr(node, "alpha", 1.0))
        beta = float(_attr(node, "beta", 1.0))
        trans_b = int(_attr(node, "transB", 0))
        weight = node.inputs[1].values
        n_out = weight.shape[0] if trans_b else weight.shape[1]
        if int(_attr(node, "transA", 0)):
            a = node.inputs[0]
            out = gs.Variable(names.tensor(f"{a.name}_T"), dtype=a.dtype)
            graph.nodes.append(gs.Node("Transpose", names.node(f"{node.name}_transA"), {"perm": [1, 0]}, [a], [out]))
            node.inputs[0] = out
        if alpha != 1.0:
            _writable_constant(graph, names, node, 1, (weight.astype(np.float64) * alpha).astype(weight.dtype))
        has_c = len(node.inputs) > 2 and node.inputs[2].name != ""
        if has_c:
            c = node.inputs[2]
            if not _is_const(c):
                raise ModelError(
                    f"{label}: Gemm {node.name!r} has a computed bias C ({c.name!r}); onnx_zip needs a constant bias",
                    hint="export the bias as an initializer",
                )
            values = c.values
            if values.size not in (1, n_out) or (values.ndim == 2 and values.shape[0] != 1):
                raise ModelError(
                    f"{label}: Gemm {node.name!r} has a bias C of shape {values.shape}, not one value per output "
                    f"neuron ({n_out},)",
                    hint="export the bias as a vector of length N_out",
                )
            bias = np.broadcast_to(values.reshape(-1), (n_out,)).astype(np.float64) * beta
            if not (values.shape == (n_out,) and beta == 1.0):
                _writable_constant(graph, names, node, 2, np.ascontiguousarray(bias.astype(values.dtype)))
        elif len(node.inputs) > 2:
            del node.inputs[2:]
        node.attrs = {"transB": 1} if trans_b else {}


def _rank(tensor: gs.Tensor) -> int | None:
    shape = getattr(tensor, "shape", None)
    return None if shape is None else len(shape)


def _bias_add(graph: gs.Graph, out: gs.Tensor, n_out: int) -> tuple[gs.Node, int] | None:
    """The ``Add(out, const)`` applying a per-neuron bias to ``out``, as (node, const index)."""
    if out in graph.outputs or len(out.outputs) != 1:
        return None
    add = out.outputs[0]
    if add.op != "Add" or len(add.inputs) != 2:
        return None
    index = 1 if add.inputs[0] is out else 0
    other = add.inputs[index]
    if not _is_const(other) or other.values.size != n_out or (other.values.ndim and other.values.shape[-1] != n_out):
        return None
    return add, index


def _matmuls_to_gemms(graph: gs.Graph, names: _Names) -> None:
    for node in list(graph.nodes):
        if node.op != "MatMul" or not _is_const(node.inputs[1]) or _is_const(node.inputs[0]):
            continue
        weight = node.inputs[1].values
        if weight.ndim != 2:
            continue
        n_out = weight.shape[1]
        found = _bias_add(graph, node.outputs[0], n_out)
        rank = _rank(node.inputs[0])
        if rank != 2:
            if found is not None and rank is not None:  # keep MatMul + Add; the bias becomes 1-D
                add, index = found
                b = add.inputs[index]
                if b.values.shape != (n_out,):
                    flat = np.ascontiguousarray(b.values.reshape(n_out))
                    if _consumers(graph, b) > 1:
                        add.inputs[index] = gs.Constant(names.tensor(f"{b.name}_1d"), flat)
                    else:
                        b.values = flat
            if rank is None:
                logger.info("MatMul %s: input rank unknown, kept as MatMul", node.name)
            continue
        w = node.inputs[1]
        transposed = np.ascontiguousarray(weight.T)
        if _consumers(graph, w) == 1:
            w.values = transposed
            new_w = w
        else:
            new_w = gs.Constant(names.tensor(f"{w.name}_T"), transposed)
        inputs = [node.inputs[0], new_w]
        output = node.outputs[0]
        if found is not None:
            add, index = found
            b = add.inputs[index]
            if b.values.shape == (n_out,) and _consumers(graph, b) == 1:
                inputs.append(b)
            else:
                inputs.append(gs.Constant(names.tensor(f"{b.name}_1d"), np.ascontiguousarray(b.values.reshape(n_out))))
            output = add.outputs[0]
            add.inputs.clear()
            add.outputs.clear()
        gemm = gs.Node("Gemm", node.name, {"transB": 1}, inputs, [output])
        node.inputs.clear()
        node.outputs.clear()
        graph.nodes.append(gemm)
    graph.cleanup().toposort()


def _same_pads(size: int, kernel: int, stride: int, dilation: int, upper: bool) -> tuple[int, int]:
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + (kernel - 1) * dilation + 1 - size)
    small, large = total // 2, total - total // 2
    return (small, large) if upper else (large, small)


def _normalise_convs(graph: gs.Graph, label: str) -> None:
    for node in graph.nodes:
        if node.op != "Conv":
            continue
        group = int(_attr(node, "group", 1))  # depthwise: the op table; grouped: a blocker (discovery)
        w = node.inputs[1]
        if isinstance(w, gs.Constant):
            kernel = tuple(int(k) for k in w.values.shape[2:])
        elif w.shape is not None and all(isinstance(d, int) for d in w.shape[2:]):
            kernel = tuple(int(k) for k in w.shape[2:])
        else:
            continue
        dims = len(kernel)
        strides = tuple(int(s) for s in _attr(node, "strides", [1] * dims))
        dilations = tuple(int(d) for d in _attr(node, "dilations", [1] * dims))
        auto_pad = _attr(node, "auto_pad", "NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        if auto_pad in ("NOTSET", ""):
            pads = tuple(int(p) for p in _attr(node, "pads", [0] * (2 * dims)))
        elif auto_pad == "VALID":
            pads = (0,) * (2 * dims)
        else:
            shape = node.inputs[0].shape
            spatial = None if shape is None else shape[2:]
            if spatial is None or len(spatial) != dims or not all(isinstance(s, int) for s in spatial):
                raise ModelError(
                    f"{label}: Conv {node.name!r} uses auto_pad={auto_pad} but its input {node.inputs[0].name!r} "
                    "has no known spatial size",
                    hint="re-export with explicit pads or fixed spatial input dimensions",
                )
            pairs = [
                _same_pads(s, k, st, d, auto_pad == "SAME_UPPER")
                for s, k, st, d in zip(spatial, kernel, strides, dilations)
            ]
            pads = tuple(p[0] for p in pairs) + tuple(p[1] for p in pairs)
        node.attrs = {
            "dilations": list(dilations),
            "group": group,
            "kernel_shape": list(kernel),
            "pads": list(pads),
            "strides": list(strides),
        }


def _fold_batchnorms(graph: gs.Graph, names: _Names) -> int:
    folded = 0
    for bn in list(graph.nodes):
        if bn.op != "BatchNormalization" or int(_attr(bn, "training_mode", 0)):
            continue
        if len([o for o in bn.outputs if o.name]) != 1 or not all(_is_const(t) for t in bn.inputs[1:5]):
            continue
        x = bn.inputs[0]
        if len(x.inputs) != 1 or _consumers(graph, x) != 1:
            continue
        layer = x.inputs[0]
        if layer.op not in ("Conv", "Gemm") or not _is_const(layer.inputs[1]):
            continue
        has_bias = len(layer.inputs) > 2 and layer.inputs[2].name != ""
        if has_bias and not _is_const(layer.inputs[2]):
            continue
        gamma, beta, mean, var = (t.values.astype(np.float64) for t in bn.inputs[1:5])
        eps = float(_attr(bn, "epsilon", 1e-5))
        scale = gamma / np.sqrt(var + eps)
        w = layer.inputs[1].values
        if layer.op == "Conv":
            new_w = w.astype(np.float64) * scale.reshape((-1,) + (1,) * (w.ndim - 1))
        elif int(_attr(layer, "transB", 0)):
            new_w = w.astype(np.float64) * scale[:, None]
        else:
            new_w = w.astype(np.float64) * scale[None, :]
        bias = layer.inputs[2].values.astype(np.float64) if has_bias else np.zeros_like(scale)
        new_b = (bias - mean) * scale + beta
        _writable_constant(graph, names, layer, 1, np.ascontiguousarray(new_w.astype(w.dtype)))
        if has_bias:
            _writable_constant(graph, names, layer, 2, new_b.astype(w.dtype))
        else:
            layer.inputs.append(gs.Constant(names.tensor(f"{layer.name}.bias"), new_b.astype(w.dtype)))
        layer.outputs[0] = bn.outputs[0]
        bn.inputs.clear()
        bn.outputs.clear()
        folded += 1
    graph.cleanup()
    return folded


# ------------------------------------------------------------------------------ the pass


def _copy_model_fields(source: onnx.ModelProto, out: onnx.ModelProto) -> None:
    """Give a model exported from graphsurgeon the source's versions, producer, names and metadata."""
    out.ir_version = source.ir_version
    out.producer_name = source.producer_name
    out.producer_version = source.producer_version
    out.domain = source.domain
    out.model_version = source.model_version
    out.doc_string = source.doc_string
    out.graph.name = source.graph.name
    del out.metadata_props[:]
    out.metadata_props.extend(source.metadata_props)
    del out.opset_import[:]
    out.opset_import.extend(source.opset_import)


def canonicalize(model: onnx.ModelProto, *, fold_batchnorm: bool = True, label: str = "model") -> onnx.ModelProto:
    """Return the canonical form of ``model`` (see the module docstring for the guarantees).

    Args:
        model: Any ONNX model (not modified).
        fold_batchnorm: Fold a BatchNormalization that directly follows a Conv/Gemm into it.
        label: How to name the model in messages.

    Returns:
        A new, shape-inferred model computing the same outputs.

    Raises:
        ModelError: the model is outside what onnx_zip reads (the message names the node).
    """
    work = onnx.ModelProto()
    work.CopyFrom(model)
    opset = check_supported(work, label=label)
    if opset < CANONICAL_OPSET:
        work = model_io.convert_opset(work, CANONICAL_OPSET, label=label)
    work = infer_shapes(_with_constants_lifted(work), label=label)
    graph = gs.import_onnx(work)
    _name_nodes(graph)
    names = _Names(graph)
    _remove_identities(graph)
    _normalise_gemms(graph, names, label)
    _matmuls_to_gemms(graph, names)
    _normalise_convs(graph, label)
    if fold_batchnorm:
        count = _fold_batchnorms(graph, names)
        if count:
            logger.info("%s: folded %d BatchNormalization node(s)", label, count)
    graph.cleanup().toposort()
    out = gs.export_onnx(graph, do_type_check=False)
    _copy_model_fields(work, out)
    out = infer_shapes(out, label=label)
    return model_io.stamp_versions(out, label=label)
