"""Several processes, one run: `torchrun` launches them, `torch.distributed` connects them.

gradtrain never launches processes or averages gradients itself. Under `torchrun` every process
runs the same `train.py`; torchrun tells each one who it is through the environment (`RANK`,
`LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`). A plain `python train.py` sets none
of them and stays a single process: every helper here is then a no-op.

Rank 0 is the one that writes (TensorBoard, checkpoints, `summary.json`); the others train in
lockstep and write nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger("gradtrain")


def launched_by_torchrun() -> bool:
    """Whether this process is one of several that torchrun (or a compatible launcher) started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


@contextmanager
def process_group(device: torch.device, timeout_s: int) -> Iterator[None]:
    """Join torchrun's process group for the duration of the block (nothing without torchrun).

    gloo on the CPU, nccl on CUDA. `timeout_s` bounds every collective, so a rank that died or
    hangs turns into an error on the others instead of a job that waits forever.
    """
    if not launched_by_torchrun() or is_distributed():
        yield
        return
    if device.type == "cuda":
        # One GPU per process: LOCAL_RANK is this process's index on its node.
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    try:
        yield
    finally:
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """`cuda` becomes this process's own GPU under torchrun (`cuda:<LOCAL_RANK>`)."""
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` (already on `device`) when distributed, else
    `model` itself. DDP averages the gradients over ranks during backward."""
    if not is_distributed():
        return model
    # DDP broadcasts rank 0's weights now, so every rank starts from the same model. gradtrain's
    # models have no buffers, so its forward pass never communicates: validation, whose shards
    # may differ by a batch, cannot leave a rank waiting.
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a DDP wrapper: its parameter names and state_dict keys have no
    `module.` prefix, so tags and checkpoints match single-process runs."""
    return model.module if isinstance(model, DistributedDataParallel) else model


_NO_CONTEXT = nullcontext()  # reusable: called every step, it need not be made every step


def sync_gradients(model: nn.Module, sync: bool) -> AbstractContextManager[Any]:
    """Around a forward and backward pass: with `sync` false, a DDP model keeps this batch's
    gradients local (`no_sync`), to be averaged with the next synchronised batch's."""
    if sync or not isinstance(model, DistributedDataParallel):
        return _NO_CONTEXT
    return model.no_sync()


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """The mean of `tensor` over ranks (a new tensor); `tensor` itself when single-process."""
    if not is_distributed():
        return tensor
    total = tensor.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / world_size()


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum of `tensor` over ranks (a new tensor); `tensor` itself when single-process."""
    if not is_distributed():
        return tensor
    total = tensor.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on at least one."""
    if not is_distributed():
        return flag
    value = torch.tensor(int(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's `value` on every rank (any picklable value; ranks trust each other)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class CollectiveStop:
    """A stop request (a signal) that all ranks act on at the same step.

    torchrun forwards SIGTERM to every worker, but each sees it at its own moment; a rank that
    stopped alone would leave the others waiting in their next all-reduce. So the local flag is
    OR-ed over ranks, and only every `every`-th poll (the trainer polls once per update, in
    lockstep on all ranks): a host round trip at logging cadence rather than every step.
    """

    def __init__(self, local: Any, device: torch.device, every: int) -> None:
        self.local = local
        self.device = device
        self.every = every
        self._polls = 0
        self._agreed = False

    @property
    def requested(self) -> bool:
        self._polls += 1
        if not self._agreed and self._polls % self.every == 0:
            self._agreed = any_rank(self.local.requested, self.device)
        return self._agreed
