"""The default thread count of a fine-tuning run, by model size.

On small models onnxruntime's thread pool costs more than it gains: each op is too small to
split, and on a shared machine the extra threads wait on each other. Measured on 2 cores:
LeNet-5 MNIST+Fashion zipped at share 1.0 (436k parameters), 200 steps took 137 s with
onnxruntime's default threads and 45 s with 1 thread (the issue's demo figures); 40 steps at lr
0.01, batch 64 per task, on a loaded machine: 14.2 and 19.2 s wall (3.3 and 4.0 s CPU) with 1
thread, 26.6 and 22.5 s (6.8 and 6.4 s CPU) with 2. Models of :data:`LARGE_PARAMETERS`
parameters or more use every core; that threshold is not measured (no zoo model is that large).
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
