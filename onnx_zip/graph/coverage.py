"""How much of a model can be zipped: the zippable hidden layers and their share of the parameters,
for ``onnx-zip align`` and ``onnx-zip inspect`` (before any calibration)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnx_zip.graph.blockers import Blocker
from onnx_zip.graph.partial import PartialChain


@dataclass(frozen=True)
class Coverage:
    """The zippable part of one model.

    Attributes:
        model: The model's label.
        zippable: Node names of the hidden layers that will be zipped (input first).
        hidden_total: Hidden layers of the whole model.
        zippable_params: Weight and bias elements of the zippable layers.
        total_params: Float parameters of the (canonical) model.
        cut: The layer where zipping stops (it and everything after stay task-specific), or None.
        blockers: Every blocker (sorted).
    """

    model: str
    zippable: tuple[str, ...]
    hidden_total: int
    zippable_params: int
    total_params: int
    cut: str | None
    blockers: tuple[Blocker, ...]

    @property
    def fraction(self) -> float:
        """Zippable parameters / all parameters (0 for a model without parameters)."""
        return self.zippable_params / self.total_params if self.total_params else 0.0

    def summary(self) -> str:
        """``<model>: k of n hidden layers zippable (p% of the parameters)[, cut at <node>]``."""
        cut = f"; zipping stops at {self.cut!r} (it and everything after stay task-specific)" if self.cut else ""
        return (
            f"{self.model}: {len(self.zippable)} of {self.hidden_total} hidden layers zippable "
            f"({self.zippable_params:,} of {self.total_params:,} parameters, {100 * self.fraction:.1f}%){cut}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "zippable_layers": list(self.zippable),
            "hidden_layers": self.hidden_total,
            "zippable_params": self.zippable_params,
            "total_params": self.total_params,
            "fraction": round(self.fraction, 6),
            "cut": self.cut,
            "blockers": [b.to_dict() for b in self.blockers],
        }


def _float_sizes(model: onnx.ModelProto) -> dict[str, int]:
    """Initializer name → elements, for floating-point initializers."""
    sizes = {}
    for tensor in model.graph.initializer:
        if np.issubdtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type), np.floating):
            sizes[tensor.name] = int(np.prod(tensor.dims, dtype=np.int64))
    return sizes


def coverage(canonical: onnx.ModelProto, partial: PartialChain) -> Coverage:
    """The zippable part of a canonical model (constants lifted to initializers) as discovered."""
    sizes = _float_sizes(canonical)
    hidden = partial.chain.hidden if partial.chain is not None else ()
    zippable = sum(sizes.get(layer.weight, 0) + sizes.get(layer.bias or "", 0) for layer in hidden)
    return Coverage(
        partial.model, tuple(layer.node for layer in hidden), partial.hidden_total, zippable,
        sum(sizes.values()), partial.cut, partial.blockers,
    )
