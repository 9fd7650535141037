"""Reading a recipe file: YAML → checked, canonical recipe with paths resolved against its folder.

This stage reads only the recipe itself and checks that input files exist and output folders are
writable; it loads no model and no data (that is :func:`onnx_zip.recipes.run.prepare_run`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnx_zip.errors import InputError, raise_all
from onnx_zip.input_checks import data_problems, model_problems
from onnx_zip.model_io import check_writable
from onnx_zip.recipes.schema import INPUT_FILE, MODEL_KEYS, OUTPUT_FILE, OWN_SECTIONS, normalize, recipe_configs
from onnx_zip.recipes.yaml_safe import load_yaml

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """A checked recipe.

    Attributes:
        path: The recipe file.
        data: The canonical recipe (:func:`~onnx_zip.recipes.schema.normalize`), paths as written.
    """

    path: Path
    data: dict[str, Any]

    @property
    def label(self) -> str:
        return f"recipe {self.path}"

    def resolve(self, value: str | None) -> Path | None:
        """A recipe path, relative to the recipe's folder unless absolute."""
        if value is None:
            return None
        path = Path(os.path.expanduser(value))
        return path if path.is_absolute() else Path(os.path.normpath(self.path.parent / path))

    @property
    def tasks(self) -> list[str]:
        return [m["task"] for m in self.data["models"]]

    def model_file(self, i: int, key: str) -> Path | None:
        """The resolved path of ``models[i].<key>``."""
        return self.resolve(self.data["models"][i][key])

    def output(self, key: str) -> Path | None:
        """The resolved path of ``output.<key>``."""
        return self.resolve(self.data["output"][key])

    def configs(self) -> dict[str, Any]:
        """The typed settings: ``{"zip": ZipConfig, "calibration": CalibrationConfig,
        "retrain": RetrainConfig | None, "finetune": FinetuneConfig | None}`` (:mod:`onnx_zip.config`),
        with the recipe's ``seed`` and ``threads`` in every group that declares them."""
        configs, problems = recipe_configs(self.data)
        raise_all(problems, label=self.label)
        return configs

    def canonical_json(self) -> str:
        """The recipe as stored in the model's ``onnx_zip.recipe`` metadata: sorted, compact JSON."""
        return json.dumps(self.data, sort_keys=True, separators=(",", ":"))


def parse_recipe(text: str, label: str) -> Any:
    """Parse YAML text with the guarded safe loader (:func:`~onnx_zip.recipes.yaml_safe.load_yaml`).

    Raises:
        InputError: not valid YAML, a python tag, nested too deep or an alias bomb.
    """
    return load_yaml(text, label)


def _check_output(path: Path) -> None:
    """Like :func:`~onnx_zip.model_io.check_writable`, but a missing folder is fine when it can be
    created (:func:`make_output_folders` creates it just before writing)."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if folder == path.parent:
        check_writable(path)
    elif not folder.is_dir() or not os.access(folder, os.W_OK):
        raise InputError(f"output {path}: cannot create its folder in {folder}")


def make_output_folders(recipe: Recipe) -> None:
    """Create the folders of the recipe's outputs (just before they are written)."""
    for key in OWN_SECTIONS["output"]:
        path = recipe.output(key)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)


def _input_problems(recipe: Recipe) -> list[str]:
    """Missing input files, data files that are models, models that are data or already zipped."""
    problems = []
    for i in range(len(recipe.tasks)):
        for key, spec in MODEL_KEYS.items():
            path = recipe.model_file(i, key)
            if spec.file != INPUT_FILE or path is None:
                continue
            where = f"models[{i}].{key}:"
            if not path.is_file():
                problems.append(f"{where} {path} not found (relative paths are relative to the recipe file's folder)")
            elif key == "model":
                problems += model_problems([path], where, refuse_zipped=True)
            else:
                problems += data_problems([path], where)
    return problems


def _output_problems(recipe: Recipe) -> list[str]:
    problems = []
    outputs: dict[Path, str] = {}
    inputs = {p.resolve() for i in range(len(recipe.tasks)) for k in MODEL_KEYS if (p := recipe.model_file(i, k))}
    for key, spec in OWN_SECTIONS["output"].items():
        path = recipe.output(key)
        if spec.file != OUTPUT_FILE or path is None:
            continue
        try:
            _check_output(path)
        except InputError as exc:
            problems.append(f"output.{key}: {exc}")
            continue
        resolved = path.resolve()
        if resolved in outputs:
            problems.append(f"output.{key} and output.{outputs[resolved]} are the same file {path}")
        elif resolved in inputs:
            problems.append(f"output.{key} {path} would overwrite an input file")
        outputs[resolved] = key
    return problems


def _check_files(recipe: Recipe) -> None:
    raise_all(_input_problems(recipe) + _output_problems(recipe), label=recipe.label)


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and check a recipe file (fast: reads no model and no data).

    Raises:
        InputError: the file is missing or not YAML, a key is unknown (with the closest known one),
            a value is mistyped or out of range, an input file is missing, an output cannot be written.
    """
    path = Path(path)
    label = f"recipe {path}"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{label}: file not found", hint="check the path") from None
    except IsADirectoryError:
        raise InputError(f"{label}: is a folder, not a YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{label}: cannot read ({exc})") from None
    recipe = Recipe(path=path, data=normalize(parse_recipe(text, label), label))
    _check_files(recipe)
    logger.info("%s: checked (%s)", label, ", ".join(recipe.tasks))
    return recipe
