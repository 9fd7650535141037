"""The settings of zipping, calibration, fine-tuning and the layer-wise retraining loop, declared once.

Each setting is a field of a frozen dataclass whose metadata holds one :class:`Option`: its kind,
default, range, choices, help text and command-line spelling. Everything else is derived from that
declaration: validation (every problem at once, in one :class:`~onnx_zip.errors.InputError`),
:meth:`from_mapping` (recipes and the CLI), :meth:`to_dict` (JSON, stored in the zipped model's
metadata) and :func:`iter_options` (the CLI's argument groups and the recipe schema).

The groups:

* :class:`ZipConfig` (``zip``): the sharing policy, pairing and fitting methods, matching, ridge, damping,
  inputs, seed;
* :class:`CalibrationConfig` (``calibration``): samples, batch, convolution reading, threads;
* :class:`FinetuneConfig` (``finetune``): a joint fine-tuning run;
* :class:`RetrainConfig` (``retrain``): the layer-wise zip-and-retrain loop (Algorithm 1).

A flag declared in several groups (``--seed``, ``--threads``, ``--lr``, ``--optimizer``, ``--batch``)
is one command-line option feeding each group that declares it (same kind, checked by the tests).

Choices that name methods come from the registries :data:`READINGS`, :data:`PAIRINGS`,
:data:`METHODS` and :data:`MATCHINGS`, so a method registered later (``PAIRINGS.register(...)``) is accepted everywhere.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from onnx_zip import mtz
from onnx_zip.errors import InputError, raise_all

__all__ = [
    "AUTO_READING",
    "DEFAULT_CALIBRATION_BATCH",
    "DEFAULT_CALIBRATION_LIMIT",
    "GROUPS",
    "LOSSES",
    "MATCHINGS",
    "METHODS",
    "OPTIMIZERS",
    "OPTIONAL_SECTIONS",
    "PAIRINGS",
    "READINGS",
    "SCHEDULES",
    "CalibrationConfig",
    "ConfigGroup",
    "FinetuneConfig",
    "FitMethod",
    "Matching",
    "Option",
    "PairingMethod",
    "Reading",
    "Registry",
    "RetrainConfig",
    "ZipConfig",
    "conv_readings",
    "iter_options",
    "option_groups",
    "sections_from_mapping",
]

# ---------------------------------------------------------------------------------------------
# Registries of named methods


class _Named:
    name: str
    help: str


E = TypeVar("E", bound=_Named)


class Registry(Generic[E]):
    """Named entries (readings, pairing methods, matchings) in registration order.

    Args:
        what: What an entry is, for messages (``"pairing"``).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, E] = {}

    def register(self, entry: E) -> E:
        """Add an entry (a name may be registered once)."""
        if entry.name in self._entries:
            raise ValueError(f"{self.what} {entry.name!r} is already registered")
        self._entries[entry.name] = entry
        return entry

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[E]:
        return iter(self._entries.values())

    def get(self, name: str) -> E:
        """The entry called ``name``.

        Raises:
            InputError: no such entry (with the closest name, if any).
        """
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), self.names(), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(self.names())}"
            raise InputError(f"unknown {self.what} {name!r}", hint=hint)
        return self._entries[name]


@dataclass(frozen=True)
class Reading(_Named):
    """How a layer's input statistics and neuron vectors are read (mtz-method §2).

    Attributes:
        name: ``dense``, ``patch`` or ``channel``.
        help: One line for users.
        layer_kind: The layer kind it applies to (``dense`` or ``conv``).
    """

    name: str
    help: str
    layer_kind: str


@dataclass(frozen=True)
class PairingMethod(_Named):
    """A way to choose and merge the shared neurons.

    Attributes:
        name: The name users give (``mtz``).
        help: One line for users.
        statistic: What calibration gathers for it: ``hessian`` (layer-input Hessians),
            ``correlation`` (activation correlations across the models) or ``none`` (no data).
        costs: How the pair costs are made: ``hessian`` (Hessian-weighted distance), ``l2``
            (identity Hessians), ``random`` or ``correlation`` (``1 − corr``).
        hessian_merge: Merge with the Hessians (``True``) or by plain averaging.
        max_tasks: Most models it can zip (``None``: any number).
    """

    name: str
    help: str
    statistic: str
    costs: str
    hessian_merge: bool
    max_tasks: int | None = None

    @property
    def needs_calibration(self) -> bool:
        return self.statistic != "none"


@dataclass(frozen=True)
class Matching(_Named):
    """A pair-selection rule (mtz-method §4): ``greedy`` (the released code's) or ``optimal``."""

    name: str
    help: str


@dataclass(frozen=True)
class FitMethod(_Named):
    """How the zipped layers' weights are obtained (``--method``).

    Attributes:
        name: ``paper`` or ``compensated``.
        help: One line for users.
        per_layer: Each layer is calibrated on the model zipped so far and fitted (needs calibration
            data whatever the pairing).
    """

    name: str
    help: str
    per_layer: bool


#: Statistic/vector readings of layers.
READINGS: Registry[Reading] = Registry("reading")
READINGS.register(Reading("dense", "a dense layer's input vector (Gemm, MatMul)", "dense"))
READINGS.register(Reading("patch", "im2col patches of a conv's kernel (the paper's)", "conv"))
READINGS.register(Reading("channel", "a conv's input channels per pixel (the released code's)", "conv"))

#: The choice "auto" of :attr:`CalibrationConfig.conv_hessian`: patch while ``C·KH·KW + 1`` is small.
AUTO_READING = "auto"


def conv_readings() -> tuple[str, ...]:
    """The registered convolution readings (``patch``, ``channel``, …)."""
    return tuple(r.name for r in READINGS if r.layer_kind == "conv")


#: Pairing methods.
PAIRINGS: Registry[PairingMethod] = Registry("pairing")
PAIRINGS.register(PairingMethod("mtz", "Hessian-weighted costs and merge (the paper's)", "hessian", "hessian", True))
PAIRINGS.register(PairingMethod("l2", "baseline: weight distance, plain average", "none", "l2", False))
PAIRINGS.register(PairingMethod("random", "baseline: random pairs, plain average", "none", "random", False))
PAIRINGS.register(
    PairingMethod(
        "correlation", "baseline: activation correlation, plain average", "correlation", "correlation", False, 2
    )
)

#: Fitting methods (mtz-method §2–§5: ``paper``; §10: ``compensated``).
METHODS: Registry[FitMethod] = Registry("method")
METHODS.register(
    FitMethod("paper", "the paper's one-pass MTZ: Hessians of the original models, one merge per layer", False)
)
METHODS.register(
    FitMethod(
        "compensated", "layer by layer, every neuron fitted to the original outputs on the zipped model's inputs", True
    )
)

#: Fine-tuning optimisers and learning-rate schedules (:mod:`onnx_zip.finetune.optim` implements them).
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")
#: Fine-tuning losses (:mod:`onnx_zip.finetune.losses`).
LOSSES = ("ce", "bce", "mse")

#: Matchings.
MATCHINGS: Registry[Matching] = Registry("matching")
MATCHINGS.register(Matching("greedy", "cheapest pair first (the released code's rule)"))
MATCHINGS.register(Matching("optimal", "minimum total cost (Hungarian)"))

# ---------------------------------------------------------------------------------------------
# Options

#: Calibration samples used per model by default. The released VGG code used 6,400 per layer; on
#: the bundled LeNets the zipped accuracy is the same from about 2,000 samples on (785-wide
#: Hessians), while the patch Hessians' cost grows linearly with the samples.
DEFAULT_CALIBRATION_LIMIT = 4096
#: Calibration samples per session run.
DEFAULT_CALIBRATION_BATCH = 256

_OPTION = "onnx_zip.option"
KINDS = ("int", "number", "str", "bool", "fractions", "steps", "mapping", "weights", "strings", "alignment")


@dataclass(frozen=True)
class Option:
    """The declaration of one setting.

    Attributes:
        name: The field name, which is also the recipe key within its section.
        section: The group's section (``zip``, ``calibration``, ``finetune``, ``retrain``).
        kind: ``int``, ``number``, ``str``, ``bool``, ``fractions`` (list of fractions (float) or
            counts (int)), ``steps`` (an int or a list of ints), ``mapping`` (str → str),
            ``weights`` (str → number), ``strings`` (list of str) or ``alignment`` (node names: str → str
            for two models, or a list of rows with one name per model).
        default: The value when not given.
        help: One line for users.
        flag: The command-line spelling (``--share``), ``None`` when not on the command line. For a
            ``bool`` the flag sets the opposite of the default (``--no-fold-batchnorm``).
        aliases: Older spellings the CLI still accepts.
        low, high: Inclusive range (numbers, and the entries of ``steps``/``weights``).
        choices: Allowed values, the registry that lists them, or a function giving them.
        extra_choices: Allowed besides the registry's names (``auto``).
        nullable: ``None`` is allowed (it means the documented default behaviour).
        required: Must be given (no usable default).
        metavar: The CLI placeholder.
        cli_file: On the command line the flag names a JSON file holding the value.
        zero_means_none: On the command line 0 means ``None`` (``--calib-limit 0``: all samples).
    """

    name: str
    section: str
    kind: str
    default: Any
    help: str
    flag: str | None = None
    aliases: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | Registry[Any] | Callable[[], tuple[Any, ...]] | None = None
    extra_choices: tuple[str, ...] = ()
    nullable: bool = False
    required: bool = False
    metavar: str | None = None
    cli_file: bool = False
    zero_means_none: bool = False

    @property
    def key(self) -> str:
        """``section.name``, as messages spell it."""
        return f"{self.section}.{self.name}"

    def allowed(self) -> tuple[Any, ...] | None:
        """The allowed values (registries read now, so later registrations count)."""
        if self.choices is None:
            return None
        if isinstance(self.choices, Registry):
            names = self.choices.names()
        elif callable(self.choices):
            names = tuple(self.choices())
        else:
            names = tuple(self.choices)
        return names + self.extra_choices

    def problems(self, value: Any) -> list[str]:
        """What is wrong with ``value`` for this option (empty: nothing)."""
        if value is None:
            if self.required:
                return [f"{self.key} is missing ({self.help})"]
            return [] if self.nullable else [f"{self.key} must not be empty ({self.help})"]
        if not _ACCEPTS[self.kind](value):
            return [f"{self.key} is {value!r}, expected {_DESCRIBE[self.kind]}"]
        allowed = self.allowed()
        if allowed is not None and value not in allowed:
            return [f"{self.key} is {value!r}, use one of {', '.join(map(str, allowed))}"]
        return [f"{self.key} {m}" for m in self._range_problems(value)]

    def _range_problems(self, value: Any) -> list[str]:
        if self.kind in ("int", "number"):
            numbers = [value]
        elif self.kind == "steps":
            numbers = list(value) if isinstance(value, (list, tuple)) else [value]
        elif self.kind == "weights":
            numbers = list(value.values())
        else:
            return []
        out = []
        for x in numbers:
            if self.low is not None and self.high is not None and not self.low <= x <= self.high:
                out.append(f"is {value!r}, must be within [{self.low:g}, {self.high:g}]")
            elif self.low is not None and x < self.low:
                out.append(f"is {value!r}, must be ≥ {self.low:g}")
            elif self.high is not None and x > self.high:
                out.append(f"is {value!r}, must be ≤ {self.high:g}")
        return out[:1]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0


def _is_alignment(v: Any) -> bool:
    """``{node of model 1: node of model 2}``, or rows of node names, one per model (two or more),
    every row as long."""
    if isinstance(v, Mapping):
        return all(isinstance(a, str) and a and isinstance(b, str) and b for a, b in v.items())
    if not _is_list(v) or not all(isinstance(row, (list, tuple)) for row in v):
        return False
    return (
        len({len(row) for row in v}) == 1 and len(v[0]) >= 2 and all(isinstance(n, str) and n for row in v for n in row)
    )


_ACCEPTS = {
    "int": _is_int,
    "number": _is_number,
    "str": lambda v: isinstance(v, str) and v != "",
    "bool": lambda v: isinstance(v, bool),
    "fractions": lambda v: _is_list(v) and all(_is_number(x) and x >= 0 for x in v),
    "steps": lambda v: (_is_int(v) and v >= 0) or (_is_list(v) and all(_is_int(x) and x >= 0 for x in v)),
    "mapping": lambda v: (
        isinstance(v, Mapping) and all(isinstance(a, str) and isinstance(b, str) for a, b in v.items())
    ),
    "weights": lambda v: isinstance(v, Mapping) and all(isinstance(a, str) and _is_number(b) for a, b in v.items()),
    "strings": lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) and x for x in v),
    "alignment": _is_alignment,
}
_DESCRIBE = {
    "int": "a whole number",
    "number": "a number",
    "str": "a string",
    "bool": "true or false",
    "fractions": "a list of fractions (floats) or counts (ints)",
    "steps": "a whole number or a list of them",
    "mapping": "a mapping of names to names",
    "weights": "a mapping of task names to numbers",
    "strings": "a list of strings",
    "alignment": '{"node of model 1": "node of model 2"} or a list of rows of node names, one per model',
}


def _meta(help: str, kind: str, **declared: Any) -> dict[str, Option]:
    """A field's metadata carrying its :class:`Option` (name, section and default are filled in by
    :func:`iter_options` from the field)."""
    return {_OPTION: Option(name="", section="", kind=kind, default=None, help=help, **declared)}


def _normalise(kind: str, value: Any) -> Any:
    """Plain immutable values: lists become tuples, ints given for numbers become floats."""
    if value is None:
        return None
    if kind == "number" and _is_number(value):
        return float(value)
    if kind in ("fractions", "strings") and isinstance(value, list):
        return tuple(value)
    if kind == "steps" and isinstance(value, list):
        return tuple(value)
    if kind in ("mapping", "weights", "alignment") and isinstance(value, Mapping):
        return dict(value)
    if kind == "alignment" and isinstance(value, (list, tuple)):
        return tuple(tuple(row) if isinstance(row, (list, tuple)) else row for row in value)
    return value


class ConfigGroup:
    """Shared behaviour of the setting groups (frozen dataclasses of options)."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for opt in iter_options(type(self)):
            object.__setattr__(self, opt.name, _normalise(opt.kind, getattr(self, opt.name)))
        raise_all(self.problems())

    def problems(self) -> list[str]:
        """Every problem of the values (types, choices, ranges, then the group's own rules)."""
        out: list[str] = []
        for opt in iter_options(type(self)):
            out += opt.problems(getattr(self, opt.name))
        try:
            out += self._rules()
        except (TypeError, ValueError, AttributeError):  # values of the wrong type, already reported
            pass
        return out

    def _rules(self) -> list[str]:
        return []

    @classmethod
    def collect(cls: type[G], data: Mapping[str, Any] | None) -> tuple[G | None, list[str]]:
        """Build from a mapping, returning the problems instead of raising (``None`` when any)."""
        data = dict(data or {})
        options = {opt.name: opt for opt in iter_options(cls)}
        problems = []
        for key in data:
            if key not in options:
                close = difflib.get_close_matches(str(key), list(options), n=1, cutoff=0.6)
                tip = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(options)})"
                problems.append(f"{cls.SECTION}.{key}: unknown key{tip}")
        values = {name: _normalise(opt.kind, data.get(name, opt.default)) for name, opt in options.items()}
        for name, opt in options.items():
            problems += opt.problems(values[name])
        if problems:
            bare = object.__new__(cls)  # unvalidated: only to check the group's own rules too
            for name, value in values.items():
                object.__setattr__(bare, name, value)
            try:
                problems += bare._rules()
            except (TypeError, ValueError, AttributeError):  # values of the wrong type, already reported
                pass
            return None, problems
        try:
            return cls(**values), []
        except InputError as exc:
            return None, [exc.message]

    @classmethod
    def from_mapping(cls: type[G], data: Mapping[str, Any] | None) -> G:
        """Build from ``{option name: value}`` (absent keys: defaults).

        Raises:
            InputError: unknown keys, wrong types, values out of range or choices, broken rules,
                every one listed.
        """
        built, problems = cls.collect(data)
        raise_all(problems)
        assert built is not None
        return built

    def to_dict(self) -> dict[str, Any]:
        """``{option name: value}``, JSON-serialisable (tuples become lists)."""
        out = {}
        for opt in iter_options(type(self)):
            value = getattr(self, opt.name)
            out[opt.name] = _plain(value)
        return out

    def replace(self: G, **changes: Any) -> G:
        """A copy with ``changes`` (validated)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def _plain(value: Any) -> Any:
    """A JSON-serialisable copy: tuples (also nested ones) become lists, mappings dicts."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return dict(value) if isinstance(value, Mapping) else value


# The group a method is called on (``typing.Self`` is Python 3.11+).
G = TypeVar("G", bound="ConfigGroup")


def iter_options(cls: type[ConfigGroup] | ConfigGroup) -> list[Option]:
    """The :class:`Option` records of a group, in declaration order."""
    group = cls if isinstance(cls, type) else type(cls)
    out = []
    for f in dataclasses.fields(group):  # type: ignore[arg-type]
        spec = f.metadata.get(_OPTION)
        if spec is not None:
            out.append(dataclasses.replace(spec, name=f.name, section=group.SECTION, default=f.default))
    return out


# ---------------------------------------------------------------------------------------------
# The groups


@dataclass(frozen=True)
class ZipConfig(ConfigGroup):
    """How to choose and merge the shared neurons.

    One sharing policy at most: ``share`` (a fraction of each hidden layer), ``share_per_layer`` or
    ``max_cost``; none given means ``share = 0.5`` (:meth:`share_policies`).
    """

    SECTION: ClassVar[str] = "zip"

    share: float | None = field(
        default=None,
        metadata=_meta(
            "fraction of each hidden layer's neurons to share (default 0.5)",
            "number",
            flag="--share",
            low=0.0,
            high=1.0,
            nullable=True,
            metavar="FRACTION",
        ),
    )
    share_per_layer: tuple[float | int, ...] | None = field(
        default=None,
        metadata=_meta(
            "per hidden layer: a fraction (float) or a count (int)",
            "fractions",
            flag="--share-per-layer",
            nullable=True,
            metavar="FILE",
            cli_file=True,
        ),
    )
    max_cost: float | None = field(
        default=None,
        metadata=_meta(
            "share every pair whose merge cost is at most this",
            "number",
            flag="--max-cost",
            low=0.0,
            nullable=True,
            metavar="EPS",
        ),
    )
    pairing: str = field(
        default="mtz",
        metadata=_meta(
            "mtz, or a baseline that averages: l2, random, correlation", "str", flag="--pairing", choices=PAIRINGS
        ),
    )
    match: str = field(
        default="greedy",
        metadata=_meta(
            "pair selection: greedy (the released code's) or optimal", "str", flag="--match", choices=MATCHINGS
        ),
    )
    method: str = field(
        default="paper",
        metadata=_meta(
            "paper (one-pass MTZ) or compensated (least-squares fit to the original outputs, layer by layer)",
            "str",
            flag="--method",
            choices=METHODS,
        ),
    )
    rho: float = field(
        default=1e-2,
        metadata=_meta(
            "ridge of the compensated fit, relative to mean(diag G), toward the paper's merge / original weights",
            "number",
            flag="--rho",
            low=0.0,
        ),
    )
    damping: float = field(
        default=0.0,
        metadata=_meta("relative Hessian damping λ (λ·mean(diag H)·I)", "number", flag="--damping", low=0.0),
    )
    separate_inputs: bool = field(
        default=False, metadata=_meta("give each task its own graph input", "bool", flag="--separate-inputs")
    )
    fold_batchnorm: bool = field(
        default=True, metadata=_meta("fold BatchNormalization into the layers", "bool", flag="--no-fold-batchnorm")
    )
    seed: int = field(
        default=0,
        metadata=_meta("seed (random pairing); same inputs and seed give the same bytes", "int", flag="--seed", low=0),
    )
    mapping: dict[str, str] | tuple[tuple[str, ...], ...] | None = field(
        default=None,
        metadata=_meta(
            "explicit alignment: {node of model 1: node of model 2}, or rows of node names, one per model",
            "alignment",
            flag="--map",
            nullable=True,
            metavar="FILE",
            cli_file=True,
        ),
    )
    until: str | None = field(
        default=None,
        metadata=_meta(
            "zip at most up to this hidden layer (node name); it is the last zipped, the rest stays task-specific",
            "str",
            flag="--until",
            nullable=True,
            metavar="NODE",
        ),
    )

    def _rules(self) -> list[str]:
        given = [k for k in ("share", "share_per_layer", "max_cost") if getattr(self, k) is not None]
        out = [f"zip gives {' and '.join(given)}: give only one sharing policy"] if len(given) > 1 else []
        for i, entry in enumerate(self.share_per_layer or ()):
            if isinstance(entry, float) and entry > 1:
                out.append(f"zip.share_per_layer[{i}] is {entry}, a fraction must be ≤ 1 (use an int for a count)")
        return out

    @property
    def pairing_method(self) -> PairingMethod:
        """The pairing method's registry entry."""
        return PAIRINGS.get(self.pairing)

    @property
    def fit_method(self) -> FitMethod:
        """The fitting method's registry entry."""
        return METHODS.get(self.method)

    @property
    def needs_calibration(self) -> bool:
        """The pairing or the fitting method reads calibration data."""
        return self.pairing_method.needs_calibration or self.fit_method.per_layer

    def share_policies(self, hidden_count: int) -> tuple[mtz.SharePolicy, ...]:
        """One share policy per hidden layer.

        Raises:
            InputError: ``share_per_layer`` has another length than ``hidden_count``.
        """
        if self.max_cost is not None:
            return (mtz.ShareThreshold(float(self.max_cost)),) * hidden_count
        if self.share_per_layer is not None:
            if len(self.share_per_layer) != hidden_count:
                raise InputError(
                    f"{len(self.share_per_layer)} per-layer share settings for {hidden_count} hidden layers",
                    hint="give one entry per hidden layer (see `onnx-zip align`)",
                )
            return tuple(
                mtz.ShareCount(int(e)) if isinstance(e, int) else mtz.ShareFraction(float(e))
                for e in self.share_per_layer
            )
        share = 0.5 if self.share is None else float(self.share)
        return (mtz.ShareFraction(share),) * hidden_count


@dataclass(frozen=True)
class CalibrationConfig(ConfigGroup):
    """How the statistics are gathered (one onnxruntime session per model, streaming)."""

    SECTION: ClassVar[str] = "calibration"

    limit: int | None = field(
        default=DEFAULT_CALIBRATION_LIMIT,
        metadata=_meta(
            "calibration samples per model (null, or 0 on the command line: all)",
            "int",
            flag="--calib-limit",
            low=1,
            nullable=True,
            metavar="N",
            zero_means_none=True,
        ),
    )
    batch_size: int = field(
        default=DEFAULT_CALIBRATION_BATCH,
        metadata=_meta(
            "calibration samples per session run",
            "int",
            flag="--calib-batch",
            aliases=("--batch-size",),
            low=1,
            metavar="N",
        ),
    )
    conv_hessian: str = field(
        default=AUTO_READING,
        metadata=_meta(
            "convolution reading: patch (paper), channel (released code) or auto (patch while C·KH·KW+1 ≤ 1024)",
            "str",
            flag="--conv-hessian",
            choices=conv_readings,
            extra_choices=(AUTO_READING,),
        ),
    )
    threads: int | None = field(
        default=None,
        metadata=_meta(
            "onnxruntime intra-op threads (null: its default)",
            "int",
            flag="--threads",
            low=1,
            nullable=True,
            metavar="N",
        ),
    )


@dataclass(frozen=True)
class FinetuneConfig(ConfigGroup):
    """A joint fine-tuning run (:func:`onnx_zip.finetune.finetune`)."""

    SECTION: ClassVar[str] = "finetune"

    steps: int | None = field(
        default=None,
        metadata=_meta(
            "optimiser steps (each takes one batch of every task)",
            "int",
            flag="--steps",
            low=1,
            required=True,
            metavar="N",
        ),
    )
    lr: float | None = field(
        default=None,
        metadata=_meta(
            "peak learning rate (null: chosen by a short learning-rate range test)",
            "number",
            flag="--lr",
            low=0.0,
            nullable=True,
        ),
    )
    batch_size: int = field(
        default=64, metadata=_meta("samples per task and step", "int", flag="--batch", low=1, metavar="N")
    )
    optimizer: str = field(
        default="sgd", metadata=_meta("sgd (Nesterov momentum) or adamw", "str", flag="--optimizer", choices=OPTIMIZERS)
    )
    schedule: str = field(
        default="cosine",
        metadata=_meta("cosine (5% warm-up, cosine decay) or constant", "str", flag="--schedule", choices=SCHEDULES),
    )
    momentum: float = field(
        default=0.9, metadata=_meta("SGD momentum (0: plain SGD)", "number", flag="--momentum", low=0.0)
    )
    nesterov: bool = field(default=True, metadata=_meta("Nesterov momentum (SGD)", "bool", flag="--no-nesterov"))
    weight_decay: float = field(default=0.0, metadata=_meta("weight decay", "number", flag="--weight-decay", low=0.0))
    losses: dict[str, str] | None = field(
        default=None,
        metadata=_meta(
            "{task: ce | bce | mse} (default ce)",
            "mapping",
            flag="--loss",
            nullable=True,
            metavar="TASK=LOSS[,TASK=LOSS]",
        ),
    )
    task_weights: dict[str, float] | None = field(
        default=None,
        metadata=_meta(
            "{task: weight ≥ 0} in the summed loss (default 1)",
            "weights",
            flag="--task-weight",
            low=0.0,
            nullable=True,
            metavar="TASK=W[,TASK=W]",
        ),
    )
    freeze: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            "keep fixed: shared, heads or initializer-name prefixes", "strings", flag="--freeze", metavar="WHAT"
        ),
    )
    no_grad: str = field(
        default="freeze",
        metadata=_meta(
            "parameters behind ops without a gradient: freeze them or stop",
            "str",
            flag="--no-grad-ops",
            choices=("freeze", "error"),
        ),
    )
    eval_every: int | None = field(
        default=None,
        metadata=_meta("evaluate every N steps", "int", flag="--eval-every", low=1, nullable=True, metavar="N"),
    )
    seed: int = field(default=0, metadata=_meta("seed of the batch order", "int", flag="--seed", low=0))
    threads: int | None = field(
        default=None,
        metadata=_meta(
            "onnxruntime intra-op threads (1: bit-reproducible)",
            "int",
            flag="--threads",
            low=1,
            nullable=True,
            metavar="N",
        ),
    )
    # distillation and safe defaults (issue 15)
    teachers: dict[str, str] | None = field(
        default=None,
        metadata=_meta(
            "{task: original .onnx} teaching that task (default: the recorded source model, when a task has no labels)",
            "mapping",
            nullable=True,
        ),
    )
    alpha: float | None = field(
        default=None,
        metadata=_meta(
            "weight of the label loss against distillation, in [0, 1] (null: 1 without a teacher, 0 without "
            "labels, else 0.5)",
            "number",
            flag="--alpha",
            low=0.0,
            high=1.0,
            nullable=True,
        ),
    )
    temperature: float = field(
        default=2.0, metadata=_meta("temperature of the kd distillation loss", "number", flag="--temperature", low=1e-3)
    )
    distill_losses: dict[str, str] | None = field(
        default=None,
        metadata=_meta(
            "{task: kd | mse} distillation loss (default kd for class scores, mse for maps/scores/embeddings)",
            "mapping",
            flag="--distill-loss",
            nullable=True,
            metavar="TASK=LOSS[,TASK=LOSS]",
        ),
    )
    allow_worse: bool = field(
        default=False,
        metadata=_meta(
            "write the best checkpoint even when the run diverged or made the loss worse", "bool", flag="--allow-worse"
        ),
    )
    batchnorm: str = field(
        default="eval",
        metadata=_meta(
            "BatchNormalization while training: eval (running statistics used and kept, scale/bias train) or train "
            "(batch statistics, running ones re-estimated from the batches)",
            "str",
            flag="--batchnorm",
            choices=("eval", "train"),
        ),
    )

    def _rules(self) -> list[str]:
        out = [
            f"finetune.losses: loss {loss!r} for task {task!r} is unknown, use one of {', '.join(LOSSES)}"
            for task, loss in (self.losses or {}).items()
            if loss not in LOSSES
        ]
        return out + [
            f"finetune.distill_losses: loss {loss!r} for task {task!r} is unknown, use kd or mse"
            for task, loss in (self.distill_losses or {}).items()
            if loss not in ("kd", "mse")
        ]


@dataclass(frozen=True)
class RetrainConfig(ConfigGroup):
    """The layer-wise zip-and-retrain loop: joint fine-tuning after each hidden layer."""

    SECTION: ClassVar[str] = "retrain"

    steps: int | tuple[int, ...] = field(
        default=100,
        metadata=_meta(
            "joint fine-tuning steps after each hidden layer (one count or one per layer)",
            "steps",
            flag="--retrain-steps",
            metavar="K[,K...]",
        ),
    )
    lr: float | None = field(
        default=None,
        metadata=_meta(
            "peak learning rate (null: the optimizer's default)", "number", flag="--lr", low=0.0, nullable=True
        ),
    )
    optimizer: str = field(
        default="sgd", metadata=_meta("sgd (Nesterov momentum) or adamw", "str", flag="--optimizer", choices=OPTIMIZERS)
    )
    batch_size: int = field(
        default=64, metadata=_meta("samples per task and step", "int", flag="--batch", low=1, metavar="N")
    )

    def steps_per_layer(self, hidden_count: int) -> list[int]:
        """One step count per hidden layer.

        Raises:
            InputError: a list of another length than ``hidden_count``.
        """
        if isinstance(self.steps, int):
            return [self.steps] * hidden_count
        if len(self.steps) != hidden_count:
            raise InputError(
                f"retrain.steps lists {len(self.steps)} counts for {hidden_count} hidden layers",
                hint="give one count per hidden layer, or a single count",
            )
        return list(self.steps)

    def finetune_config(self, steps: int, *, seed: int = 0, threads: int | None = None) -> FinetuneConfig:
        """The fine-tuning of one layer's retraining (``steps`` ≥ 1)."""
        return FinetuneConfig(
            steps=steps, lr=self.lr, optimizer=self.optimizer, batch_size=self.batch_size, seed=seed, threads=threads
        )


#: Every group, by section.
GROUPS: dict[str, type[ConfigGroup]] = {
    g.SECTION: g for g in (ZipConfig, CalibrationConfig, FinetuneConfig, RetrainConfig)
}


def option_groups() -> dict[str, list[Option]]:
    """``{section: [Option, …]}`` for every group (the CLI's argument groups, the recipe schema)."""
    return {section: iter_options(group) for section, group in GROUPS.items()}


def sections_from_mapping(
    data: Mapping[str, Any], sections: Sequence[str] = ("zip", "calibration")
) -> dict[str, ConfigGroup | None]:
    """Build several groups at once from ``{section: {option: value}}``, every problem reported together.

    A section in ``sections`` that is absent from ``data`` gets its defaults, except the optional
    ``finetune`` and ``retrain`` sections, which are then ``None`` (that stage does not run).

    Raises:
        InputError: every problem of every section, and unknown sections.
    """
    problems = [f"{key}: unknown section (known: {', '.join(sections)})" for key in data if key not in sections]
    out: dict[str, ConfigGroup | None] = {}
    for section in sections:
        if section in OPTIONAL_SECTIONS and data.get(section) is None:
            out[section] = None
            continue
        built, found = GROUPS[section].collect(data.get(section))
        out[section] = built
        problems += found
    raise_all(problems)
    return out


#: Sections that are optional as a whole (absent: that stage does not run).
OPTIONAL_SECTIONS = ("finetune", "retrain")
