"""Recipes: one YAML file describing a whole zip run (models, data, sharing, retraining, outputs).

* :mod:`.schema` — every key, its type, range and default; :func:`normalize` (unknown keys get a
  "did you mean");
* :mod:`.load` — :func:`load_recipe`: YAML → checked recipe, paths relative to the recipe file,
  input files present, outputs writable (no model or data is read);
* :mod:`.run` — :func:`prepare_run` (the deep checks: models, alignment, data shapes, runtime) and
  :func:`execute` (zip / layer-wise loop, fine-tuning, evaluation, outputs with the recipe stored in
  the model's ``onnx_zip.recipe`` metadata).

Example recipes for the bundled model pairs are in the repository's ``recipes/`` folder.
"""

from onnx_zip.recipes.load import Recipe, load_recipe
from onnx_zip.recipes.run import RunPlan, RunResult, execute, prepare_run, run_recipe
from onnx_zip.recipes.schema import normalize

__all__ = ["Recipe", "RunPlan", "RunResult", "execute", "load_recipe", "normalize", "prepare_run", "run_recipe"]
