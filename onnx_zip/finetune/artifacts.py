"""Before training: which parameters train (freeze rules, the no-gradient preflight), and the
onnxruntime-training artifacts (training model and checkpoint) in a temporary folder.

Preflight. onnxruntime-training 1.19.2 has no gradient for some ops (:data:`NO_GRADIENT`) and no
CPU kernel for the gradients of others (:data:`NO_CPU_GRADIENT`); LayerNormalization trains
only when it declares all three outputs. Such a node is a problem only when the gradient must
flow through it: some input depends on a trainable parameter and its output reaches a loss.
Then either the parameters upstream of the node are frozen (``no_grad="freeze"``, logged) or
the run is refused (``no_grad="error"``, a :class:`ModelError` naming the nodes).

BatchNormalization: the zipper folds it into the preceding layer by default, so zipped models
carry none. If one is present it trains in training mode: batch statistics of the joint batch
(every task's rows together) and its running mean/variance updated from them, even when frozen
(onnxruntime behaviour); the exported model carries the updated running statistics.

The optimiser is not an onnxruntime artifact (see :mod:`onnx_zip.finetune.optim`), so the
optimizer model (which ``generate_artifacts`` would write with IR 14) is not generated; any
artifact written with an IR version above the base model's is re-stamped anyway.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnx_zip import runtime
from onnx_zip.errors import InputError, ModelError
from onnx_zip.finetune.losses import joint_loss_block
from onnx_zip.finetune.tasks import TaskSpec

logger = logging.getLogger(__name__)

#: Ops without a gradient builder in onnxruntime-training 1.19.2.
NO_GRADIENT = frozenset(
    "PRelu HardSigmoid HardSwish Elu Selu Celu Softplus Mish Sum Mean Einsum GlobalMaxPool LRN "
    "InstanceNormalization ReduceMax ReduceSumSquare DepthToSpace SpaceToDepth CumSum Round Floor "
    "Sign Hardmax Shrink ThresholdedRelu".split()
)
#: Ops whose gradient has no CPU kernel in onnxruntime-training 1.19.2.
NO_CPU_GRADIENT = frozenset({"ConvTranspose", "Resize"})


def float_initializers(model: onnx.ModelProto) -> list[str]:
    """Names of the floating-point initializers (the parameters), in graph order."""
    out = []
    for tensor in model.graph.initializer:
        if np.issubdtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type), np.floating):
            out.append(tensor.name)
    return out


def resolve_freeze(model: onnx.ModelProto, tasks: Sequence[str], freeze: Sequence[str]) -> set[str]:
    """The parameters named by ``freeze`` rules.

    Rules: ``shared`` (every ``shared/...`` initializer), ``heads`` (every ``<task>/head/...``),
    or any initializer-name prefix.

    Raises:
        InputError: a rule matches no parameter.
    """
    params = float_initializers(model)
    frozen: set[str] = set()
    for rule in freeze:
        if rule == "shared":
            prefixes = ["shared/"]
        elif rule == "heads":
            prefixes = [f"{t}/head/" for t in tasks]
        else:
            prefixes = [rule]
        matched = {p for p in params if any(p.startswith(x) for x in prefixes)}
        if not matched:
            raise InputError(
                f"--freeze {rule!r} matches no parameter of the model",
                hint="use shared, heads, or a prefix of an initializer name such as "
                f"{params[0].rsplit('/', 1)[0] + '/' if params else 'shared/'}",
            )
        frozen |= matched
    return frozen


def _lacks_gradient(node: onnx.NodeProto) -> str | None:
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type in NO_GRADIENT:
        return "has no gradient in onnxruntime-training 1.19.2"
    if node.op_type in NO_CPU_GRADIENT:
        return "has no CPU gradient kernel in onnxruntime-training 1.19.2"
    if node.op_type == "LayerNormalization" and len([o for o in node.output if o]) < 3:
        return "trains only when it declares all three outputs (Y, Mean, InvStdDev)"
    return None


def _trainable_upstream(model: onnx.ModelProto, trainable: set[str]) -> dict[str, set[str]]:
    """Per node (by name, else first output): the trainable parameters its inputs depend on
    (a forward walk; graph order is topological)."""
    live: dict[str, set[str]] = {p: {p} for p in trainable}
    upstream: dict[str, set[str]] = {}
    for node in model.graph.node:
        deps: set[str] = set()
        for name in node.input:
            deps |= live.get(name, set())
        upstream[node.name or node.output[0]] = deps
        if deps:
            for out in node.output:
                live[out] = deps
    return upstream


def _reaching_outputs(model: onnx.ModelProto, outputs: Sequence[str]) -> set[int]:
    """``id()`` of every node a path leads from to one of ``outputs`` (a backward walk)."""
    producers = {o: n for n in model.graph.node for o in n.output if o}
    reaching: set[int] = set()
    stack = [producers[o] for o in outputs if o in producers]
    seen: set[str] = set()
    while stack:
        n = stack.pop()
        if id(n) in reaching:
            continue
        reaching.add(id(n))
        for name in n.input:
            if name in producers and name not in seen:
                seen.add(name)
                stack.append(producers[name])
    return reaching


def preflight(
    model: onnx.ModelProto,
    trainable: set[str],
    loss_outputs: Sequence[str],
    *,
    no_grad: str = "freeze",
    label: str = "model",
) -> set[str]:
    """Find the nodes without a gradient on a path that must train; return the parameters to freeze.

    Args:
        model: The forward model.
        trainable: The parameters meant to train.
        loss_outputs: The graph outputs the losses read.
        no_grad: ``freeze`` (freeze every trainable parameter upstream of such a node, logged)
            or ``error``.

    Returns:
        The parameters to freeze in addition (empty when every path can train).

    Raises:
        ModelError: ``no_grad="error"`` and such nodes exist (the message names them).
    """
    upstream = _trainable_upstream(model, trainable)
    reaching = _reaching_outputs(model, loss_outputs)
    blocked: list[tuple[onnx.NodeProto, str, set[str]]] = []
    for node in model.graph.node:
        reason = _lacks_gradient(node)
        deps = upstream[node.name or node.output[0]]
        if reason and deps and id(node) in reaching:
            blocked.append((node, reason, deps))
    if not blocked:
        return set()
    described = "; ".join(f"{n.name or n.output[0]} ({n.op_type}) {why}" for n, why, _ in blocked)
    if no_grad == "error":
        raise ModelError(
            f"{label}: gradients must flow through nodes that cannot train: {described}",
            hint="freeze the parameters before them (--freeze PREFIX), or rerun with --no-grad-ops freeze",
        )
    to_freeze = set().union(*(deps for _, _, deps in blocked))
    logger.warning(
        "%s: %s; freezing the %d parameter(s) upstream of them: %s",
        label, described, len(to_freeze), ", ".join(sorted(to_freeze)),
    )
    return to_freeze


@dataclass(frozen=True)
class Artifacts:
    """Paths of the generated training artifacts (inside a temporary folder)."""

    training_model: Path
    checkpoint: Path
    trainable: tuple[str, ...]
    frozen: tuple[str, ...]


def _restamp(path: Path, ir_version: int) -> None:
    model = onnx.load(str(path), load_external_data=False)
    if model.ir_version > ir_version:
        logger.debug("re-stamping %s: IR %d -> %d", path.name, model.ir_version, ir_version)
        model.ir_version = ir_version
        onnx.save(model, str(path))


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to a temporary file while native code runs.

    onnxruntime-training's gradient builder logs every graph transformer at INFO level straight
    to the process's stderr, whatever the logger severity says. What it wrote is logged at DEBUG.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace")
            if text:
                logger.debug("onnxruntime-training wrote while building the gradient graph:\n%s", text[-4000:])


@contextmanager
def training_artifacts(
    model: onnx.ModelProto,
    specs: Sequence[TaskSpec],
    shapes: Sequence[tuple[int, ...]],
    trainable: Sequence[str],
    frozen: Sequence[str],
) -> Iterator[Artifacts]:
    """Generate the training model and checkpoint in a temporary folder, removed on exit.

    Args:
        model: The forward model (not modified).
        specs: The tasks (output, loss, weight).
        shapes: Each task's loss tensor shape for one sample ``(1, ...)``.
        trainable: Parameters that train.
        frozen: Parameters that do not (they still live in the checkpoint).

    Raises:
        ModelError: onnxruntime cannot build the gradient graph.
    """
    rt = runtime.training_modules()
    base = onnx.ModelProto()
    base.CopyFrom(model)
    ort = runtime.ort()
    with tempfile.TemporaryDirectory(prefix="onnx_zip_finetune_") as folder:
        root = Path(folder)
        # the gradient builder's sessions log every graph transformer at INFO level otherwise
        ort.set_default_logger_severity(3)
        try:
            with _native_stderr_silenced():
                rt.artifacts.generate_artifacts(
                    base,
                    requires_grad=list(trainable),
                    frozen_params=list(frozen) or None,
                    loss=joint_loss_block(specs, shapes),
                    optimizer=None,
                    artifact_directory=root,
                )
        except Exception as exc:  # onnxruntime raises RuntimeError, onnx ValidationError, ...
            raise ModelError(
                f"onnxruntime-training cannot build the training graph ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''})",
                hint="freeze the part of the model that cannot train with --freeze PREFIX",
            ) from exc
        finally:
            ort.set_default_logger_severity(2)  # onnxruntime's default (warnings)
        for name in ("training_model.onnx", "eval_model.onnx"):
            if (root / name).exists():
                _restamp(root / name, model.ir_version)
        yield Artifacts(root / "training_model.onnx", root / "checkpoint", tuple(trainable), tuple(frozen))
