"""What a run holds at least, from the config alone.

So that a size that cannot fit is refused by key before anything is allocated (a tensor of 1e11
floats would fail in torch's allocator, or be granted by the kernel's overcommit and then get the
process killed). Lower bounds: sizes known only from the data (a CSV's rows, a model's inputs
from them) count as 1 here; build.py catches an allocation that fails all the same.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path

from gradtrain.config import (
    AdamConfig,
    AdamWConfig,
    ClassificationDatasetConfig,
    DatasetConfig,
    LBFGSConfig,
    LinearModelConfig,
    LogisticModelConfig,
    ManualSGDConfig,
    MLPModelConfig,
    ModelConfig,
    OptimizerConfig,
    RegressionDatasetConfig,
    RMSpropConfig,
    SGDConfig,
    VectorModelConfig,
)

FLOAT_BYTES = 4  # float32 weights, gradients, optimizer state and features


def _optimizer_copies(optimizer: OptimizerConfig) -> int:
    """Float32 copies of the weights a run holds: the weights, their gradients and the
    optimizer's per-weight state."""
    state = 0
    if isinstance(optimizer, AdamConfig | AdamWConfig):
        state = 2  # the two moments
    elif isinstance(optimizer, ManualSGDConfig | SGDConfig):
        state = int(optimizer.momentum > 0)  # the velocity
    elif isinstance(optimizer, RMSpropConfig):
        state = 1 + (optimizer.momentum > 0) + optimizer.centered  # square avg, buffer, mean
    elif isinstance(optimizer, LBFGSConfig):
        state = 2 * optimizer.history_size + 2  # past steps and gradient changes, d, last grad
    return 2 + state


def parameter_count(model: ModelConfig, dataset: DatasetConfig) -> int:
    """The model's weights, as far as the config tells (a size taken from a CSV counts as 1)."""
    if isinstance(model, VectorModelConfig):
        return len(model.init) if model.init is not None else model.size or 1
    if not isinstance(model, LinearModelConfig | LogisticModelConfig | MLPModelConfig):
        return 0  # an installed plugin's model (gradtrain.plugins): its size is its own
    features = getattr(dataset, "n_features", 1)
    classes = getattr(dataset, "n_classes", 1)
    inputs = model.in_features or features
    outputs = model.out_features or (classes if model.name == "logistic" else 1)
    widths = [inputs, *(model.hidden_sizes if isinstance(model, MLPModelConfig) else []), outputs]
    bias = not isinstance(model, LinearModelConfig) or model.bias
    return sum(a * b + (b if bias else 0) for a, b in itertools.pairwise(widths))


def memory_needed(
    model: ModelConfig, dataset: DatasetConfig, optimizer: OptimizerConfig
) -> dict[str, int]:
    """Bytes the run holds at least, by section: the model's weights, gradients and optimizer
    state; a generated data set's rows (features and target), once, then once more split into
    training and validation rows (build.py keeps both while it splits)."""
    needed = {"model": parameter_count(model, dataset) * FLOAT_BYTES * _optimizer_copies(optimizer)}
    if isinstance(dataset, RegressionDatasetConfig | ClassificationDatasetConfig):
        target_bytes = 8 if isinstance(dataset, ClassificationDatasetConfig) else FLOAT_BYTES
        row = dataset.n_features * FLOAT_BYTES + target_bytes  # class indices are int64
        needed["dataset"] = 2 * dataset.n_samples * row
    return needed


def available_memory() -> int | None:
    """Bytes of memory one process of this run may use: the machine's physical memory, or its
    container's limit (cgroup v2) when lower, shared by the processes torchrun started on this
    machine. None where neither can be read."""
    limits = []
    with contextlib.suppress(AttributeError, ValueError, OSError):  # not a POSIX system
        limits.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    with contextlib.suppress(OSError):  # no cgroup v2 limit ("max" has no digits)
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if text.isdigit():
            limits.append(int(text))
    if not limits:
        return None
    return min(limits) // processes_on_this_machine()


def processes_on_this_machine() -> int:
    """torchrun's processes on this machine (each holds its own model and data), else 1."""
    try:
        return max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def _sizes(model: ModelConfig, dataset: DatasetConfig) -> dict[str, str]:
    """The keys that set each section's size, as the user would write them."""
    if isinstance(model, VectorModelConfig):
        model_keys = (
            f"model.init ({len(model.init)} values)"
            if model.init is not None
            else f"model.size={model.size}"
        )
    elif isinstance(model, MLPModelConfig):
        model_keys = f"model.hidden_sizes={model.hidden_sizes}"
    else:
        model_keys = f"model={model.name}"
    if isinstance(model, LinearModelConfig | LogisticModelConfig | MLPModelConfig):
        features = model.in_features or getattr(dataset, "n_features", None)
        model_keys += f" on {features} features" if features is not None else ""
    data_keys = (
        f"dataset.n_samples={dataset.n_samples} x dataset.n_features={dataset.n_features}"
        if isinstance(dataset, RegressionDatasetConfig | ClassificationDatasetConfig)
        else f"dataset={dataset.name}"
    )
    return {"model": model_keys, "dataset": data_keys}


def memory_report(model: ModelConfig, dataset: DatasetConfig, optimizer: OptimizerConfig) -> str:
    """'model.size=... needs at least 745 GiB of memory (...)': the keys whose sizes take the
    memory (a section under 1% of it is left out), and what they hold."""
    needed, keys = memory_needed(model, dataset, optimizer), _sizes(model, dataset)
    copies = _optimizer_copies(optimizer)
    state = f" and optimizer={optimizer.name}'s state" if copies > 2 else ""
    what = {
        "model": f"{parameter_count(model, dataset):,} float32 weights, with their "
        f"gradients{state}: {copies} copies",
        "dataset": "float32 rows of features and a target, twice while they are split",
    }
    total = sum(needed.values())
    parts = [
        (keys[section], size, what[section])
        for section, size in sorted(needed.items(), key=lambda item: -item[1])
        if size >= total / 100
    ]
    if len(parts) == 1:
        ((key, _, held),) = parts
        return f"{key} needs at least {format_bytes(total)} of memory ({held})"
    listed = " and ".join(f"{key} ({format_bytes(size)}: {held})" for key, size, held in parts)
    return f"{listed} need at least {format_bytes(total)} of memory"


def format_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.3g} {unit}"
        size /= 1024
    return f"{size:,.0f} TiB"
