"""The prepare stage: load, canonicalise, discover and align the models, bind the calibration data,
and check every setting against them, before any long work starts.

The result, :class:`ZipJob`, is what the later stages (:mod:`onnx_zip.pipeline.statistics`,
:mod:`onnx_zip.pipeline.stages`) read; it is never modified by them (a sweep makes a new job per
sharing level with :meth:`ZipJob.with_zip_config`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnx_zip import mtz
from onnx_zip.config import CalibrationConfig, ZipConfig
from onnx_zip.data import Dataset, bind_arrays, load_dataset, model_inputs
from onnx_zip.errors import InputError
from onnx_zip.graph.align import align_chains, match_depths
from onnx_zip.graph.blockers import Blocker, nothing_zippable
from onnx_zip.graph.canonicalize import canonicalize
from onnx_zip.graph.layers import Layer, LayerChain
from onnx_zip.graph.partial import PartialChain, discover_partial
from onnx_zip.model_io import convert_opset, default_opset, load_model, sha256_file
from onnx_zip.zipper.pairing import group_share_count
from onnx_zip.zipper.rewrite import check_task_names, inputs_match
from onnx_zip.zipper.settings import PlanSettings
from onnx_zip.zipper.structure import channel_group_positions

ModelSource = str | os.PathLike[str] | onnx.ModelProto
CalibrationSource = Dataset | str | os.PathLike[str] | Mapping[str, np.ndarray]


@dataclass(frozen=True)
class PreparedModel:
    """One input model after loading, canonicalisation and discovery.

    Attributes:
        task: Its task name.
        source: Its file name (``<in memory>`` for a ModelProto).
        sha256: The SHA-256 of the file (of the deterministic serialisation for a ModelProto).
        original: The model as loaded.
        canonical: The canonical model (BatchNorm folded, constants as initializers, common opset).
        chain: Its discovered layers (cut after the last supported one: partial zipping).
        blockers: What stops zipping in this model (empty when all of it is supported).
    """

    task: str
    source: str
    sha256: str
    original: onnx.ModelProto = field(repr=False)
    canonical: onnx.ModelProto = field(repr=False)
    chain: LayerChain = field(repr=False)
    blockers: tuple[Blocker, ...] = ()


def default_task_names(count: int) -> list[str]:
    """``a``, ``b``, ``c``, … (``t<i>`` beyond 26 models)."""
    return [chr(ord("a") + i) if i < 26 else f"t{i}" for i in range(count)]


def _discovered(
    source: ModelSource, task: str, *, fold_batchnorm: bool = True, until: str | None = None
) -> tuple[tuple[str, str, onnx.ModelProto, onnx.ModelProto], PartialChain]:
    """Load, canonicalise and discover one model: ``(name, sha256, original, canonical)`` and what
    of it can be zipped."""
    if isinstance(source, onnx.ModelProto):
        original, label, name = source, f"model {task}", "<in memory>"
        digest = hashlib.sha256(source.SerializeToString(deterministic=True)).hexdigest()
    else:
        original, label, name = load_model(source), f"model {task} ({source})", Path(source).name
        digest = sha256_file(source)
    canonical = canonicalize(original, fold_batchnorm=fold_batchnorm, label=label)
    partial = discover_partial(canonical, label=label, until=until)
    # with a cut layer inserted (partial zipping up to a blocked layer), the zipper rebuilds that graph
    return (name, digest, original, partial.canonical or canonical), partial


def _prepared(
    task: str, loaded: tuple[str, str, onnx.ModelProto, onnx.ModelProto], partial: PartialChain
) -> PreparedModel:
    if partial.chain is None:
        raise nothing_zippable(partial.blockers, [partial.model])
    return PreparedModel(task, *loaded, chain=partial.chain, blockers=partial.blockers)


def prepare_model(source: ModelSource, task: str, *, fold_batchnorm: bool = True) -> PreparedModel:
    """Load, canonicalise and discover one model (fast: no data); a model with a construct the op
    table does not support is cut after its last supported layer (partial zipping).

    Raises:
        ModelError: nothing of the model can be zipped (every blocker listed).
    """
    return _prepared(task, *_discovered(source, task, fold_batchnorm=fold_batchnorm))


def prepare_models(
    sources: Sequence[ModelSource], tasks: Sequence[str], *, fold_batchnorm: bool = True, until: str | None = None
) -> list[PreparedModel]:
    """:func:`prepare_model` of every model (``until``: zip at most up to that hidden layer); when
    any has nothing to zip, one error listing the blockers of every model (sorted by model file,
    so independent of their order)."""
    found = [_discovered(s, t, fold_batchnorm=fold_batchnorm, until=until) for s, t in zip(sources, tasks)]
    if any(partial.chain is None for _, partial in found):
        raise nothing_zippable([b for _, p in found for b in p.blockers], [p.model for _, p in found])
    return [_prepared(t, loaded, partial) for t, (loaded, partial) in zip(tasks, found)]


@dataclass(frozen=True)
class ZipJob:
    """A validated zip request: everything checked before any long work starts.

    Attributes:
        tasks: Task names, in model order.
        prepared: The prepared models (canonical models at the common opset, aligned chains).
        aligned: One tuple per aligned position, one layer per task (hidden layers first, heads last).
        config: The zip settings.
        calibration_config: The calibration settings.
        settings: The planner's settings resolved for these layers.
        shared_input: One graph input for every task.
        opset: The zipped model's ai.onnx opset.
        calibration: One bound calibration data set per model, or ``None`` (methods without data).
    """

    tasks: list[str]
    prepared: list[PreparedModel] = field(repr=False)
    aligned: list[tuple[Layer, ...]] = field(repr=False)
    config: ZipConfig
    calibration_config: CalibrationConfig
    settings: PlanSettings
    shared_input: bool
    opset: int
    calibration: list[Dataset] | None = field(default=None, repr=False)

    @property
    def hidden(self) -> list[tuple[Layer, ...]]:
        """The aligned hidden layers (heads excluded)."""
        return [group for group in self.aligned if not group[0].is_head]

    @property
    def chains(self) -> list[LayerChain]:
        return [p.chain for p in self.prepared]

    @property
    def canonical(self) -> list[onnx.ModelProto]:
        return [p.canonical for p in self.prepared]

    @property
    def sources(self) -> list[dict[str, str]]:
        return [{"file": p.source, "sha256": p.sha256} for p in self.prepared]

    def record(self) -> dict[str, Any]:
        """The settings as stored in the model's metadata and the report (JSON, flat): the zip
        settings by name, the calibration settings as ``calibration_<name>`` (``conv_hessian`` as is)."""
        return settings_record(self.config, self.calibration_config)

    def with_zip_config(self, config: ZipConfig) -> ZipJob:
        """The same models and data with other zip settings (checked against the layers)."""
        if config.needs_calibration and self.calibration is None:
            needs = config.pairing_method.needs_calibration
            what = f"{config.pairing} pairing" if needs else f"--method {config.method}"
            raise InputError(f"{what} needs calibration data")
        settings = PlanSettings.from_config(config, self.calibration_config, len(self.hidden))
        _check_policies(settings, self.hidden)
        return dataclasses.replace(self, config=config, settings=settings)


def settings_record(config: ZipConfig, calibration: CalibrationConfig) -> dict[str, Any]:
    """The zip and calibration settings as one flat JSON mapping (see :meth:`ZipJob.record`)."""
    record = config.to_dict()
    for key, value in calibration.to_dict().items():
        record[key if key == "conv_hessian" else f"calibration_{key}"] = value
    return record


def _common_opset(prepared: list[PreparedModel]) -> int:
    opset = max(default_opset(p.canonical) for p in prepared)
    for i, p in enumerate(prepared):
        if default_opset(p.canonical) != opset:
            converted = convert_opset(p.canonical, opset, label=f"model {p.task}")
            prepared[i] = dataclasses.replace(p, canonical=converted)
    return opset


def _check_policies(settings: PlanSettings, hidden: Sequence[tuple[Layer, ...]]) -> None:
    for i, group in enumerate(hidden):
        policy = settings.policy_for(i)
        if not isinstance(policy, mtz.ShareThreshold):
            group_share_count(policy, group, layer=f"layer{i + 1} ({group[0].node})")


def _bind_calibration(item: CalibrationSource, prepared: PreparedModel) -> Dataset:
    if isinstance(item, Dataset):
        return bind_arrays({**item.inputs}, model_inputs(prepared.canonical), source=item.source)
    if isinstance(item, Mapping):
        return bind_arrays(item, model_inputs(prepared.canonical), source=f"calibration arrays of {prepared.task}")
    return load_dataset(item, prepared.canonical)


_WORDS = {2: "two", 3: "three"}


def _check_request(models: Sequence[Any], calibration: Sequence[Any] | None, config: ZipConfig) -> None:
    if len(models) < 2:
        raise InputError(f"zip takes two or more models, got {len(models)}", hint="pass every model to zip")
    method = config.pairing_method
    if method.max_tasks is not None and len(models) > method.max_tasks:
        raise InputError(
            f"{method.name} pairing zips {_WORDS.get(method.max_tasks, method.max_tasks)} models, got {len(models)}",
            hint="use mtz, l2 or random pairing for more",
        )
    if config.needs_calibration and (calibration is None or len(calibration) != len(models)):
        count = 0 if calibration is None else len(calibration)
        what = f"{method.name} pairing" if method.needs_calibration else f"--method {config.method}"
        raise InputError(
            f"{what} needs one calibration data set per model ({len(models)}), got {count}",
            hint="pass one --calib per model, in model order",
        )


def _align(
    prepared: list[PreparedModel], mapping: Mapping[str, str] | Sequence[Sequence[str]] | None
) -> list[tuple[Layer, ...]]:
    if mapping is None:
        for i, chain in enumerate(match_depths([p.chain for p in prepared])):
            prepared[i] = dataclasses.replace(prepared[i], chain=chain)
    alignment = align_chains([p.chain for p in prepared], mapping=mapping)
    aligned = [tuple(p.chain.by_node(node) for p, node in zip(prepared, row.nodes)) for row in alignment.layers]
    channel_group_positions([p.chain for p in prepared], aligned)  # the residual structure must agree
    return aligned


def prepare(
    models: Sequence[ModelSource],
    calibration: Sequence[CalibrationSource] | None = None,
    *,
    names: Sequence[str] | None = None,
    config: ZipConfig | None = None,
    calibration_config: CalibrationConfig | None = None,
) -> ZipJob:
    """The prepare stage: validate a zip request; reads no data but the models' and the calibration's.

    Args:
        models: Two or more ``.onnx`` paths (or ModelProtos) with the same input domain.
        calibration: One calibration data set per model (``.npz`` path, Dataset or arrays by input
            name), in model order; may be ``None`` for methods that need no data (``l2``, ``random``).
        names: Task names (default ``a``, ``b``, …).
        config: Zip settings (default :class:`ZipConfig()`).
        calibration_config: Calibration settings (default :class:`CalibrationConfig()`).

    Raises:
        InputError: bad names, settings, models, alignment or data.
    """
    config = config if config is not None else ZipConfig()
    calibration_config = calibration_config if calibration_config is not None else CalibrationConfig()
    _check_request(models, calibration, config)
    tasks = check_task_names(names if names is not None else default_task_names(len(models)), len(models))
    prepared = prepare_models(models, tasks, fold_batchnorm=config.fold_batchnorm, until=config.until)
    opset = _common_opset(prepared)
    aligned = _align(prepared, config.mapping)
    hidden = [g for g in aligned if not g[0].is_head]
    settings = PlanSettings.from_config(config, calibration_config, len(hidden))
    _check_policies(settings, hidden)
    shared_input = not config.separate_inputs
    if shared_input and not inputs_match([p.canonical for p in prepared]):
        raise InputError(
            "the models' inputs differ in number, dtype or shape",
            hint="pass --separate-inputs (separate_inputs=True) to give each task its own input",
        )
    datasets = None
    if config.needs_calibration and calibration is not None:
        datasets = [_bind_calibration(c, p) for c, p in zip(calibration, prepared)]
    return ZipJob(tasks, prepared, aligned, config, calibration_config, settings, shared_input, opset, datasets)
