"""The recipe schema: every key a recipe may hold, its type, range, default and meaning.

A recipe is a YAML mapping::

    seed: 0                     # pairing seed and fine-tuning batch order
    threads: 1                  # onnxruntime intra-op threads (1: bit-reproducible fine-tuning)
    models:                     # two or more, in order
      - task: mnist             # task name: outputs become mnist/<output>
        model: ../models/lenet5_mnist_s0.onnx
        calibration: ../models/data/mnist_train.npz   # for pairing mtz / correlation
        train: ../models/data/mnist_train.npz         # for retrain / finetune
        eval: ../models/data/mnist_test.npz           # accuracy: original, zipped, fine-tuned
      - task: fashion
        ...
    zip:                        # Multi-Task Zipping (see zip_models)
      share: 0.5                # or share_per_layer: [0.5, 0.5, 0.25] or max_cost: 0.01
      match: greedy
      conv_hessian: auto
      calibration_limit: 4096
    retrain:                    # optional: the layer-wise zip-and-retrain loop (Algorithm 1)
      steps: 100                # per hidden layer (or a list)
    finetune:                   # optional: a final joint fine-tuning
      steps: 300
      lr: 0.02
    evaluation:
      limit: 2000               # evaluate on at most this many samples per task
    output:
      model: zipped.onnx        # required
      report: zipped.json
      summary: zipped.md

Relative paths are relative to the recipe file. :func:`normalize` checks a parsed recipe against
:data:`SCHEMA` (unknown keys get a "did you mean" from :mod:`difflib`) and fills in the defaults;
it touches no file.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from onnx_zip.errors import InputError

#: Input-file keys (must exist) and output-file keys (folder must be writable), for the loader.
INPUT_FILE = "input file"
OUTPUT_FILE = "output file"


@dataclass(frozen=True)
class Key:
    """One recipe key.

    Attributes:
        kind: ``int``, ``number``, ``str``, ``bool``, ``fractions`` (list of fractions or counts),
            ``steps`` (int or list of ints), ``mapping`` (str → str), ``weights`` (str → number),
            ``strings`` (list of str).
        help: What it means (shown in messages).
        default: Value when absent.
        required: Must be given.
        choices: Allowed values.
        low, high: Inclusive range for numbers.
        file: ``INPUT_FILE`` or ``OUTPUT_FILE`` for paths.
        nullable: ``null`` is allowed (means the default behaviour).
    """

    kind: str
    help: str
    default: Any = None
    required: bool = False
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    file: str | None = None
    nullable: bool = True


MODEL_KEYS: dict[str, Key] = {
    "task": Key("str", "task name (outputs become <task>/<output>)", required=True, nullable=False),
    "model": Key("str", "the .onnx model", required=True, file=INPUT_FILE, nullable=False),
    "calibration": Key("str", ".npz calibration data (inputs by name)", file=INPUT_FILE),
    "train": Key("str", ".npz training data with 'label' (retrain / finetune)", file=INPUT_FILE),
    "eval": Key("str", ".npz test data with 'label' (accuracy)", file=INPUT_FILE),
}

SECTIONS: dict[str, dict[str, Key]] = {
    "zip": {
        "share": Key("number", "fraction of each hidden layer's neurons to share", low=0.0, high=1.0),
        "share_per_layer": Key("fractions", "per hidden layer: a fraction (float) or a count (int)"),
        "max_cost": Key("number", "share every pair whose merge cost is at most this", low=0.0),
        "match": Key("str", "pair selection", default="greedy", choices=("greedy", "optimal"), nullable=False),
        "conv_hessian": Key("str", "convolution Hessian reading", default="auto", choices=("patch", "channel", "auto"), nullable=False),
        "pairing": Key("str", "MTZ or a baseline", default="mtz", choices=("mtz", "l2", "random", "correlation"), nullable=False),
        "damping": Key("number", "relative Hessian damping", default=0.0, low=0.0, nullable=False),
        "separate_inputs": Key("bool", "give each task its own graph input", default=False, nullable=False),
        "fold_batchnorm": Key("bool", "fold BatchNormalization into the layers", default=True, nullable=False),
        "calibration_limit": Key("int", "calibration samples per model (null: all)", default=4096, low=1),
        "calibration_batch": Key("int", "calibration batch size", default=256, low=1, nullable=False),
        "mapping": Key("mapping", "explicit alignment {node of model 1: node of model 2}"),
    },
    "retrain": {
        "steps": Key("steps", "joint fine-tuning steps after each hidden layer (one count or one per layer)", default=100, nullable=False),
        "lr": Key("number", "peak learning rate (null: the optimizer's default)", low=0.0),
        "optimizer": Key("str", "optimizer", default="sgd", choices=("sgd", "adamw"), nullable=False),
        "batch_size": Key("int", "samples per task and step", default=64, low=1, nullable=False),
    },
    "finetune": {
        "steps": Key("int", "optimiser steps (each takes one batch of every task)", required=True, low=1, nullable=False),
        "lr": Key("number", "peak learning rate (null: the optimizer's default)", low=0.0),
        "optimizer": Key("str", "optimizer", default="sgd", choices=("sgd", "adamw"), nullable=False),
        "batch_size": Key("int", "samples per task and step", default=64, low=1, nullable=False),
        "schedule": Key("str", "learning-rate schedule", default="cosine", choices=("cosine", "constant"), nullable=False),
        "weight_decay": Key("number", "weight decay", default=0.0, low=0.0, nullable=False),
        "freeze": Key("strings", "'shared', 'heads' or initializer-name prefixes to keep fixed", default=[], nullable=False),
        "task_weights": Key("weights", "{task: weight} in the summed loss"),
    },
    "evaluation": {
        "limit": Key("int", "evaluate on at most this many samples per task (null: all)", low=1),
    },
    "output": {
        "model": Key("str", "the zipped .onnx model to write", required=True, file=OUTPUT_FILE, nullable=False),
        "report": Key("str", "the JSON report to write", file=OUTPUT_FILE),
        "summary": Key("str", "the Markdown summary to write (PNG plots beside it)", file=OUTPUT_FILE),
    },
}

TOP_KEYS: dict[str, Key] = {
    "version": Key("int", "recipe format version", default=1, choices=(1,), nullable=False),
    "description": Key("str", "free text, kept in the stored recipe"),
    "seed": Key("int", "pairing seed and fine-tuning batch order", default=0, low=0, nullable=False),
    "threads": Key("int", "onnxruntime intra-op threads (1: bit-reproducible fine-tuning; null: all cores)", default=1, low=1),
}

#: Sections that are optional as a whole (absent: that stage does not run).
OPTIONAL_SECTIONS = ("retrain", "finetune")


def _unknown(key: str, known: list[str], where: str, label: str) -> InputError:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
    return InputError(f"{label}: {where}{key}: unknown key", hint=hint)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "int": ("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "number": ("a number", _is_number),
    "str": ("a string", lambda v: isinstance(v, str) and v != ""),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "fractions": ("a list of fractions (floats) or counts (ints)",
                  lambda v: isinstance(v, list) and len(v) > 0 and all(_is_number(x) and x >= 0 for x in v)),
    "steps": ("a whole number or a list of them",
              lambda v: (isinstance(v, int) and not isinstance(v, bool) and v >= 0)
              or (isinstance(v, list) and len(v) > 0 and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v))),
    "mapping": ("a mapping of node names to node names",
                lambda v: isinstance(v, dict) and all(isinstance(a, str) and isinstance(b, str) for a, b in v.items())),
    "weights": ("a mapping of task names to numbers ≥ 0",
                lambda v: isinstance(v, dict) and all(isinstance(a, str) and _is_number(b) and b >= 0 for a, b in v.items())),
    "strings": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) and x for x in v)),
}


def _check_value(name: str, key: Key, value: Any, label: str) -> Any:
    if value is None:
        if key.required or not key.nullable:
            raise InputError(f"{label}: {name} must not be empty", hint=key.help)
        return None
    description, accepts = _KINDS[key.kind]
    if not accepts(value):
        raise InputError(f"{label}: {name} is {value!r}, expected {description}", hint=key.help)
    if key.choices is not None and value not in key.choices:
        raise InputError(f"{label}: {name} is {value!r}", hint=f"use one of {', '.join(map(str, key.choices))}")
    if key.kind in ("int", "number"):
        if key.low is not None and value < key.low:
            raise InputError(f"{label}: {name} is {value!r}, must be ≥ {key.low:g}", hint=key.help)
        if key.high is not None and value > key.high:
            raise InputError(f"{label}: {name} is {value!r}, must be ≤ {key.high:g}", hint=key.help)
        if key.kind == "number":
            value = float(value)
    return value


def _section(data: Any, keys: Mapping[str, Key], where: str, label: str) -> dict[str, Any]:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{label}: {where.rstrip('.')} must be a mapping of keys to values, got {type(data).__name__}")
    for name in data:
        if not isinstance(name, str) or name not in keys:
            raise _unknown(str(name), list(keys), where, label)
    out = {}
    for name, key in keys.items():
        if name not in data:
            if key.required:
                raise InputError(f"{label}: {where}{name} is missing", hint=key.help)
            out[name] = key.default
        else:
            out[name] = _check_value(f"{where}{name}", key, data[name], label)
    return out


def normalize(data: Any, label: str = "recipe") -> dict[str, Any]:
    """Check a parsed recipe and fill in its defaults.

    Args:
        data: The parsed YAML.
        label: How to name the recipe in messages (``recipe <path>``).

    Returns:
        The canonical recipe: every section and key present (defaults filled in); ``retrain`` and
        ``finetune`` are ``None`` when absent. Paths are kept as written.

    Raises:
        InputError: an unknown key (with the closest known one), a missing or mistyped value, a value
            out of range, two sharing policies, repeated task names.
    """
    if not isinstance(data, dict):
        raise InputError(f"{label}: expected a mapping at the top level, got {type(data).__name__}",
                         hint="see recipes/*.yaml for examples")
    known = [*TOP_KEYS, "models", *SECTIONS]
    for name in data:
        if not isinstance(name, str) or name not in known:
            raise _unknown(str(name), known, "", label)
    recipe: dict[str, Any] = _section({k: v for k, v in data.items() if k in TOP_KEYS}, TOP_KEYS, "", label)
    models = data.get("models")
    if not isinstance(models, list) or len(models) < 2:
        count = len(models) if isinstance(models, list) else "no list"
        raise InputError(f"{label}: models must list two or more models, got {count}",
                         hint="- {task: a, model: a.onnx, calibration: a.npz} for each")
    recipe["models"] = [_section(m, MODEL_KEYS, f"models[{i}].", label) for i, m in enumerate(models)]
    tasks = [m["task"] for m in recipe["models"]]
    if len(set(tasks)) != len(tasks):
        raise InputError(f"{label}: models name task {tasks[0]!r} twice", hint="give each model its own task name")
    for section, keys in SECTIONS.items():
        if section in OPTIONAL_SECTIONS and data.get(section) is None:
            recipe[section] = None
            continue
        if section == "output" and section not in data:
            raise InputError(f"{label}: output is missing", hint="output: {model: zipped.onnx}")
        recipe[section] = _section(data.get(section), keys, f"{section}.", label)
    policies = [k for k in ("share", "share_per_layer", "max_cost") if recipe["zip"][k] is not None]
    if len(policies) > 1:
        raise InputError(f"{label}: zip gives {' and '.join(policies)}", hint="give only one sharing policy")
    if not policies:
        recipe["zip"]["share"] = 0.5
    for i, entry in enumerate(recipe["zip"]["share_per_layer"] or []):
        if isinstance(entry, float) and entry > 1:
            raise InputError(f"{label}: zip.share_per_layer[{i}] is {entry}, a fraction must be ≤ 1", hint="use an int for a count")
    pairing = recipe["zip"]["pairing"]
    for i, m in enumerate(recipe["models"]):
        if pairing in ("mtz", "correlation") and m["calibration"] is None:
            raise InputError(f"{label}: models[{i}].calibration is missing", hint=f"{pairing} pairing needs calibration data for every model")
        if (recipe["retrain"] or recipe["finetune"]) and m["train"] is None:
            raise InputError(f"{label}: models[{i}].train is missing", hint="retrain and finetune need training data for every model")
    weights = (recipe["finetune"] or {}).get("task_weights") or {}
    for task in weights:
        if task not in tasks:
            raise InputError(f"{label}: finetune.task_weights names task {task!r}", hint=f"tasks are {tasks}")
    return recipe
