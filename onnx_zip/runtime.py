"""The one module that imports onnxruntime.

onnx_zip runs on either of two mutually exclusive runtimes:

* ``onnxruntime`` (the ``infer`` extra): inference only, the newest release;
* ``onnxruntime-training-cpu==1.19.2`` (the ``train`` extra): training and inference.

Both distributions own the same ``onnxruntime/`` directory, so an environment with both
is silently broken (the last one installed wins, file by file). pip cannot forbid that,
so :func:`check_installation` does, at the first use of the runtime, with the exact
command that repairs it.

``import onnxruntime.training`` needs torch only because its ``__init__`` imports the
``optim`` sub-package (onnxruntime issue 22070). :func:`training_modules` registers an
empty module under that name first, so fine-tuning works without torch.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnx_zip.errors import RuntimeSetupError

logger = logging.getLogger(__name__)

INFER_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino")
TRAIN_DISTRIBUTIONS = ("onnxruntime-training-cpu", "onnxruntime-training")
TRAINING_PIN = "onnxruntime-training-cpu==1.19.2"
#: The first Python version the training runtime has no wheels for.
TRAINING_MAX_PYTHON_EXCLUSIVE = (3, 13)


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


@functools.lru_cache(maxsize=None)
def installed_runtimes() -> tuple[str, ...]:
    """Names of the installed distributions that provide the ``onnxruntime`` package, sorted.

    Looks each known distribution up by name (a scan of every installed package with
    ``packages_distributions`` took seconds in large environments).
    """
    found = set()
    for name in (*INFER_DISTRIBUTIONS, *TRAIN_DISTRIBUTIONS):
        try:
            found.add(_normalise(importlib.metadata.distribution(name).metadata["Name"]))
        except importlib.metadata.PackageNotFoundError:
            continue
    return tuple(sorted(found))


def check_installation() -> str:
    """Check that exactly one onnxruntime distribution is installed and return its name.

    Raises:
        RuntimeSetupError: none is installed, or an inference and a training runtime are
            installed together; the message gives the command that repairs it.
    """
    found = installed_runtimes()
    infer = [d for d in found if d in INFER_DISTRIBUTIONS]
    train = [d for d in found if d in TRAIN_DISTRIBUTIONS]
    if infer and train:
        both = " ".join(sorted(set(found)))
        raise RuntimeSetupError(
            f"both an inference and a training onnxruntime are installed ({', '.join(found)}); "
            "they overwrite each other's files and the result is broken",
            hint=f"repair with: pip uninstall -y {both} && pip install {TRAINING_PIN}"
            f"   (or, for inference only: pip uninstall -y {both} && pip install onnxruntime)",
        )
    if len(found) > 1:
        raise RuntimeSetupError(
            f"several onnxruntime distributions are installed together ({', '.join(found)})",
            hint=f"repair with: pip uninstall -y {' '.join(found)} && pip install {found[0]}",
        )
    if not found:
        raise RuntimeSetupError(
            "no onnxruntime is installed",
            hint='install one: pip install "onnx-zip[infer]" (inference) or '
            'pip install "onnx-zip[train]" (fine-tuning and inference, Python <= 3.12: on newer Pythons '
            "the train extra installs nothing), never both",
        )
    return found[0]


@functools.lru_cache(maxsize=None)
def ort() -> types.ModuleType:
    """Return the ``onnxruntime`` module after checking the installation."""
    check_installation()
    import onnxruntime  # noqa: PLC0415 - the one place onnxruntime is imported

    return onnxruntime


def has_training() -> bool:
    """True when the installed runtime is a training build."""
    try:
        return check_installation() in TRAIN_DISTRIBUTIONS
    except RuntimeSetupError:
        return False


@dataclass(frozen=True)
class TrainingModules:
    """The parts of ``onnxruntime.training`` that onnx_zip uses."""

    artifacts: Any
    api: Any
    onnxblock: Any


@functools.lru_cache(maxsize=None)
def training_modules() -> TrainingModules:
    """Import ``onnxruntime.training`` without torch.

    Raises:
        RuntimeSetupError: the installed runtime is not a training build.
    """
    if sys.version_info >= TRAINING_MAX_PYTHON_EXCLUSIVE and not has_training():
        raise RuntimeSetupError(
            f"fine-tuning needs {TRAINING_PIN}, which has wheels for Python 3.10 to 3.12 only; this is Python "
            f"{sys.version_info[0]}.{sys.version_info[1]} (inference works here with the infer extra)",
            hint='fine-tune in a Python 3.12 environment: python3.12 -m venv .venv && . .venv/bin/activate && pip install -e ".[train]"',
        )
    name = check_installation()
    if name not in TRAIN_DISTRIBUTIONS:
        raise RuntimeSetupError(
            f"fine-tuning needs the training runtime, but {name} (inference only) is installed",
            hint=f"repair with: pip uninstall -y {name} && pip install {TRAINING_PIN}",
        )
    stub_name = "onnxruntime.training.optim"
    if stub_name not in sys.modules:
        try:
            import torch  # noqa: F401, PLC0415
        except ImportError:
            sys.modules[stub_name] = types.ModuleType(stub_name)
    ort()
    from onnxruntime.training import api, artifacts, onnxblock  # noqa: PLC0415

    return TrainingModules(artifacts=artifacts, api=api, onnxblock=onnxblock)


def runtime_version() -> str:
    """The version string of the imported onnxruntime."""
    return str(ort().__version__)


def make_session(
    model: Any,
    *,
    threads: int | None = None,
    optimize: bool = True,
) -> Any:
    """Create an onnxruntime ``InferenceSession`` on the CPU.

    Args:
        model: An ``onnx.ModelProto``, serialized bytes, or a path.
        threads: Intra-op thread count (``None``: onnxruntime's default).
        optimize: ``False`` disables graph optimisations (exact intermediate values).

    Returns:
        The session.
    """
    rt = ort()
    options = rt.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = rt.GraphOptimizationLevel.ORT_DISABLE_ALL
    if isinstance(model, (str, Path)):
        source: Any = str(model)
    elif isinstance(model, bytes):
        source = model
    else:
        source = model.SerializeToString()
    return rt.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
