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

Relative paths are relative to the recipe file. :func:`normalize` checks a parsed recipe and fills
in the defaults; it touches no file, and reports every mistake of the recipe at once (unknown keys
get a "did you mean" from :mod:`difflib`).

The ``zip``, ``retrain`` and ``finetune`` sections are the settings of :mod:`onnx_zip.config`, declared
there once (type, default, range, choices, help); this module only adds the recipe's own keys (models,
evaluation, output, version) and its spellings: ``seed`` and ``threads`` are given once at the top for
every group, and the calibration settings live in the ``zip`` section as ``calibration_limit``,
``calibration_batch`` and ``conv_hessian`` (:data:`ZIP_CALIBRATION_KEYS`). :func:`recipe_configs` turns
a canonical recipe into the typed configuration groups.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from onnx_zip.config import (
    PAIRINGS,
    CalibrationConfig,
    FinetuneConfig,
    RetrainConfig,
    ZipConfig,
    iter_options,
)
from onnx_zip.errors import InputError, raise_all

#: Input-file keys (must exist) and output-file keys (folder must be writable), for the loader.
INPUT_FILE = "input file"
OUTPUT_FILE = "output file"


@dataclass(frozen=True)
class Key:
    """One recipe key that is not a configuration setting (models, evaluation, output, top level).

    Attributes:
        kind: ``int``, ``number``, ``str`` or ``bool``.
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

#: Recipe keys of the ``zip`` section that are calibration settings: recipe spelling → field of
#: :class:`~onnx_zip.config.CalibrationConfig`.
ZIP_CALIBRATION_KEYS = {"calibration_limit": "limit", "calibration_batch": "batch_size", "conv_hessian": "conv_hessian"}
#: Settings given once at the top of a recipe, for every group that declares them.
SHARED_KEYS = ("seed", "threads")

#: The recipe's own sections.
OWN_SECTIONS: dict[str, dict[str, Key]] = {
    "evaluation": {
        "limit": Key("int", "evaluate on at most this many samples per task (null: all)", low=1),
    },
    "output": {
        "model": Key("str", "the zipped .onnx model to write", required=True, file=OUTPUT_FILE, nullable=False),
        "report": Key("str", "the JSON report to write", file=OUTPUT_FILE),
        "summary": Key("str", "the Markdown summary to write (PNG plots beside it)", file=OUTPUT_FILE),
    },
}

#: Sections holding configuration settings, by recipe section.
CONFIG_SECTIONS = ("zip", "retrain", "finetune")

TOP_KEYS: dict[str, Key] = {
    "version": Key("int", "recipe format version", default=1, choices=(1,), nullable=False),
    "description": Key("str", "free text, kept in the stored recipe"),
    "seed": Key("int", "pairing seed and fine-tuning batch order", default=0, low=0, nullable=False),
    "threads": Key("int", "onnxruntime intra-op threads (1: bit-reproducible fine-tuning; null: all cores)", default=1, low=1),
}

#: Sections that are optional as a whole (absent: that stage does not run).
OPTIONAL_SECTIONS = ("retrain", "finetune")


def section_keys(section: str) -> list[str]:
    """The keys a recipe section accepts (configuration sections: derived from the declarations)."""
    if section in OWN_SECTIONS:
        return list(OWN_SECTIONS[section])
    if section == "zip":
        return [o.name for o in iter_options(ZipConfig) if o.name not in SHARED_KEYS] + list(ZIP_CALIBRATION_KEYS)
    group = {"retrain": RetrainConfig, "finetune": FinetuneConfig}[section]
    return [o.name for o in iter_options(group) if o.name not in SHARED_KEYS]


def _unknown(key: str, known: list[str], where: str) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
    return f"{where}{key}: unknown key ({hint})"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "int": ("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "number": ("a number", _is_number),
    "str": ("a string", lambda v: isinstance(v, str) and v != ""),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
}


def _value_problem(name: str, key: Key, value: Any) -> str | None:
    if value is None:
        return f"{name} must not be empty ({key.help})" if key.required or not key.nullable else None
    description, accepts = _KINDS[key.kind]
    if not accepts(value):
        return f"{name} is {value!r}, expected {description} ({key.help})"
    if key.choices is not None and value not in key.choices:
        return f"{name} is {value!r}, use one of {', '.join(map(str, key.choices))}"
    if key.kind in ("int", "number") and key.low is not None and value < key.low:
        return f"{name} is {value!r}, must be ≥ {key.low:g} ({key.help})"
    if key.kind in ("int", "number") and key.high is not None and value > key.high:
        return f"{name} is {value!r}, must be ≤ {key.high:g} ({key.help})"
    return None


def _mapping(data: Any, where: str, problems: list[str]) -> dict[Any, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append(f"{where.rstrip('.')} must be a mapping of keys to values, got {type(data).__name__}")
        return {}
    return data


def _section(data: Any, keys: Mapping[str, Key], where: str, problems: list[str]) -> dict[str, Any]:
    """A section of :class:`Key` s, checked (problems appended) and completed with the defaults."""
    data = _mapping(data, where, problems)
    problems += [_unknown(str(name), list(keys), where) for name in data if name not in keys]
    out = {}
    for name, key in keys.items():
        if name not in data:
            if key.required:
                problems.append(f"{where}{name} is missing ({key.help})")
            out[name] = key.default
            continue
        problem = _value_problem(f"{where}{name}", key, data[name])
        if problem:
            problems.append(problem)
        out[name] = float(data[name]) if key.kind == "number" and _is_number(data[name]) else data[name]
    return out


def _renamed(problem: str) -> str:
    """Configuration messages name ``calibration.limit``; the recipe spells it ``zip.calibration_limit``."""
    for recipe_key, field in ZIP_CALIBRATION_KEYS.items():
        if problem.startswith(f"calibration.{field}"):
            return f"zip.{recipe_key}" + problem[len(f"calibration.{field}"):]
    return problem


def recipe_configs(data: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The configuration groups of a recipe, and every problem of their sections.

    Args:
        data: A recipe (raw or canonical): ``zip``, ``retrain``, ``finetune`` sections and the top-level
            ``seed`` and ``threads``.

    Returns:
        ``({"zip": ZipConfig, "calibration": CalibrationConfig, "retrain": RetrainConfig | None,
        "finetune": FinetuneConfig | None}, problems)``; a group is ``None`` also when it has problems.
    """
    problems: list[str] = []
    shared = {k: data.get(k, TOP_KEYS[k].default) for k in SHARED_KEYS}
    zip_part = dict(_mapping(data.get("zip"), "zip.", problems))
    calib_part = {field: zip_part.pop(key) for key, field in ZIP_CALIBRATION_KEYS.items() if key in zip_part}
    out: dict[str, Any] = {}
    for section, group, part, extra in (
        ("zip", ZipConfig, zip_part, {"seed": shared["seed"]}),
        ("calibration", CalibrationConfig, calib_part, {"threads": shared["threads"]}),
        ("retrain", RetrainConfig, None, {}),
        ("finetune", FinetuneConfig, None, shared),
    ):
        if part is None:
            if data.get(section) is None:
                out[section] = None
                continue
            part = dict(_mapping(data.get(section), f"{section}.", problems))
        problems += [f"{section}.{k}: give {k} once, at the top of the recipe" for k in SHARED_KEYS if k in part]
        part = {k: v for k, v in part.items() if k not in SHARED_KEYS}
        options = {o.name for o in iter_options(group)}
        built, found = group.collect({**{k: v for k, v in extra.items() if k in options}, **part})
        out[section] = built
        problems += [_renamed(p) for p in found]
    return out, problems


def _canonical_settings(configs: Mapping[str, Any]) -> dict[str, Any]:
    """The ``zip``, ``retrain`` and ``finetune`` sections of the canonical recipe (defaults filled in)."""
    zip_section = {k: v for k, v in configs["zip"].to_dict().items() if k not in SHARED_KEYS}
    calibration = configs["calibration"].to_dict()
    zip_section.update({key: calibration[field] for key, field in ZIP_CALIBRATION_KEYS.items()})
    if all(zip_section[k] is None for k in ("share", "share_per_layer", "max_cost")):
        zip_section["share"] = 0.5
    out: dict[str, Any] = {"zip": zip_section}
    for section in OPTIONAL_SECTIONS:
        group = configs[section]
        out[section] = None if group is None else {k: v for k, v in group.to_dict().items() if k not in SHARED_KEYS}
    return out


def _models(data: Any, problems: list[str]) -> list[dict[str, Any]]:
    models = data.get("models")
    if not isinstance(models, list) or len(models) < 2:
        count = len(models) if isinstance(models, list) else "no list"
        problems.append(f"models must list two or more models, got {count} "
                        "(- {task: a, model: a.onnx, calibration: a.npz} for each)")
        return []
    out = [_section(m, MODEL_KEYS, f"models[{i}].", problems) for i, m in enumerate(models)]
    tasks = [m["task"] for m in out]
    problems += [f"models name task {t!r} twice (give each model its own task name)"
                 for t in sorted({t for t in tasks if tasks.count(t) > 1}, key=str)]
    return out


def _needs(recipe: Mapping[str, Any], problems: list[str]) -> None:
    """What the stages need from every model, and task names that exist."""
    pairing = recipe["zip"]["pairing"] if recipe.get("zip") else None
    tasks = [m["task"] for m in recipe["models"]]
    for i, m in enumerate(recipe["models"]):
        if pairing in PAIRINGS and PAIRINGS.get(pairing).needs_calibration and m["calibration"] is None:
            problems.append(f"models[{i}].calibration is missing ({pairing} pairing needs calibration data for every model)")
        if (recipe.get("retrain") or recipe.get("finetune")) and m["train"] is None:
            problems.append(f"models[{i}].train is missing (retrain and finetune need training data for every model)")
    for task in ((recipe.get("finetune") or {}).get("task_weights") or {}):
        if task not in tasks:
            problems.append(f"finetune.task_weights names task {task!r} (tasks are {tasks})")


def normalize(data: Any, label: str = "recipe") -> dict[str, Any]:
    """Check a parsed recipe and fill in its defaults, reporting every problem at once.

    Args:
        data: The parsed YAML.
        label: How to name the recipe in messages (``recipe <path>``).

    Returns:
        The canonical recipe: every section and key present (defaults filled in); ``retrain`` and
        ``finetune`` are ``None`` when absent. Paths are kept as written.

    Raises:
        InputError: one error listing every unknown key (with the closest known one), missing or
            mistyped value, value out of range, second sharing policy, repeated task name.
    """
    if not isinstance(data, dict):
        raise InputError(f"{label}: expected a mapping at the top level, got {type(data).__name__}",
                         hint="see recipes/*.yaml for examples")
    problems: list[str] = []
    known = [*TOP_KEYS, "models", *CONFIG_SECTIONS, *OWN_SECTIONS]
    problems += [_unknown(str(name), known, "") for name in data if name not in known]
    recipe: dict[str, Any] = _section({k: v for k, v in data.items() if k in TOP_KEYS}, TOP_KEYS, "", problems)
    recipe["models"] = _models(data, problems)
    for section in ("zip", "retrain", "finetune"):
        if isinstance(data.get(section), dict):
            problems += [_unknown(str(k), section_keys(section), f"{section}.")
                         for k in data[section] if k not in section_keys(section) and k not in SHARED_KEYS]
    configs, found = recipe_configs(data)
    problems += [p for p in found if ": unknown key" not in p]
    if "output" not in data:
        problems.append("output is missing (output: {model: zipped.onnx})")
    for section, keys in OWN_SECTIONS.items():
        recipe[section] = _section(data.get(section), keys, f"{section}.", [] if section not in data else problems)
    if not problems:
        recipe.update(_canonical_settings(configs))
        _needs(recipe, problems)
    raise_all(problems, label=label)
    return recipe
