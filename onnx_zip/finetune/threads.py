"""The default thread count of a fine-tuning run, by model size.

On small models onnxruntime's thread pool costs more than it gains: each op is too small to
split, and on a shared machine the extra threads wait on each other. Measured on 2 cores
(``tools``-free, see the README's fine-tuning section): LeNet-5 MNIST+Fashion zipped (436k
parameters, ~2.3 MFLOPs per sample), 200 steps took 137 s with onnxruntime's default threads
and 45 s with 1 thread. Models above :data:`LARGE_PARAMETERS` parameters use every core.
"""

from __future__ import annotations

import os

import numpy as np
import onnx

#: Parameter count from which a model trains on every core.
LARGE_PARAMETERS = 5_000_000


def parameter_count(model: onnx.ModelProto) -> int:
    """Elements of the model's floating-point initializers."""
    total = 0
    for tensor in model.graph.initializer:
        if np.issubdtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type), np.floating):
            total += int(np.prod(tensor.dims, dtype=np.int64))
    return total


def choose_threads(model: onnx.ModelProto) -> int:
    """1 thread below :data:`LARGE_PARAMETERS` parameters, else the machine's core count."""
    if parameter_count(model) < LARGE_PARAMETERS:
        return 1
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
