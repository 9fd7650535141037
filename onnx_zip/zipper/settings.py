"""The settings the planner works with, resolved from the configuration for one set of aligned layers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from onnx_zip import mtz
from onnx_zip.config import AUTO_READING, CalibrationConfig, PairingMethod, ZipConfig
from onnx_zip.errors import InputError
from onnx_zip.graph.layers import Layer
from onnx_zip.zipper.readings import reading_of


@dataclass(frozen=True)
class PlanSettings:
    """How to choose and merge the pairs of every hidden layer.

    Attributes:
        policies: One share policy per hidden layer.
        method: The pairing method (:data:`onnx_zip.config.PAIRINGS`).
        match: ``greedy`` or ``optimal`` (:data:`onnx_zip.config.MATCHINGS`).
        damping: Relative damping λ added to each Hessian (λ·mean(diag H)·I), Hessian methods only.
        seed: Seed of the random pairing.
        conv_hessian: ``patch``, ``channel`` or ``auto`` (:func:`~onnx_zip.zipper.readings.reading_of`).
    """

    policies: tuple[mtz.SharePolicy, ...]
    method: PairingMethod
    match: str = "greedy"
    damping: float = 0.0
    seed: int = 0
    conv_hessian: str = AUTO_READING

    @classmethod
    def from_config(cls, zip_config: ZipConfig, calibration: CalibrationConfig, hidden_count: int) -> PlanSettings:
        """The settings of a zip with ``hidden_count`` aligned hidden layers."""
        return cls(
            policies=zip_config.share_policies(hidden_count), method=zip_config.method, match=zip_config.match,
            damping=zip_config.damping, seed=zip_config.seed, conv_hessian=calibration.conv_hessian,
        )

    def policy_for(self, hidden_index: int) -> mtz.SharePolicy:
        """The share policy of hidden layer ``hidden_index``."""
        if not 0 <= hidden_index < len(self.policies):
            raise InputError(f"no share policy for hidden layer {hidden_index + 1} of {len(self.policies)}")
        return self.policies[hidden_index]

    def reading_for(self, layer: Layer) -> str:
        """``dense``, ``patch`` or ``channel``."""
        return reading_of(layer, self.conv_hessian)

    def with_policies(self, policies: Sequence[mtz.SharePolicy]) -> PlanSettings:
        """A copy with other share policies."""
        return PlanSettings(tuple(policies), self.method, self.match, self.damping, self.seed, self.conv_hessian)
