"""Checkpoint files: written atomically, read back with `weights_only=True` only.

A checkpoint is a plain dict of tensors, numbers, strings and containers (see
`Trainer.state_dict`); anything else in a file is refused before it can run.
"""

from __future__ import annotations

import pickle
import random
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch

from gradtrain.errors import CheckpointError
from gradtrain.files import write_atomic

FORMAT_VERSION = 1
LAST = "last.pt"
_STEP_FILE = re.compile(r"step_(\d+)\.pt")


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` to `path` via a temp file, fsync and rename: a crash mid-write leaves the
    previous file intact."""
    write_atomic(path, lambda file: torch.save({"format_version": FORMAT_VERSION, **payload}, file))


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path} (trainer.resume)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any global outside torch's allow-list: nothing was executed.
        first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise CheckpointError(
            f"refusing to load {path}: it holds objects other than tensors and plain data, "
            f"which could run code when unpickled. Only gradtrain checkpoints can be "
            f"resumed. ({first_line})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is truncated or corrupt and cannot be resumed from ({exc}). Resume from "
            f"an earlier step_<N>.pt in the same folder, or start afresh."
        ) from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a gradtrain checkpoint of format {FORMAT_VERSION}")
    return payload


class CheckpointWriter:
    """Keeps `<dir>/last.pt` current and the newest `keep` `step_<N>.pt` files."""

    def __init__(self, directory: Path, keep: int) -> None:
        self.directory = directory
        self.keep = keep

    def save(self, payload: dict[str, Any], step: int) -> Path:
        step_path = self.directory / f"step_{step}.pt"
        if self.keep > 0:
            save_checkpoint(step_path, payload)
        save_checkpoint(self.directory / LAST, payload)
        self._prune()
        return step_path

    def _prune(self) -> None:
        numbered = sorted(
            (int(match.group(1)), path)
            for path in self.directory.glob("step_*.pt")
            if (match := _STEP_FILE.fullmatch(path.name))
        )
        for _, path in numbered[: max(len(numbered) - self.keep, 0)]:
            path.unlink(missing_ok=True)


class NullCheckpointWriter:
    """The checkpoint writer of ranks other than 0 under torchrun: writes nothing (rank 0 does).

    They still take their checkpoints at the same steps as rank 0, checking the weights first
    (`Trainer._checkpoint`), so every rank sees the same values and stops at the same step."""

    def save(self, payload: dict[str, Any], step: int) -> None:
        return None


# ------------------------------------------------------------------- random number generators
def capture_rng_state(device: torch.device) -> dict[str, Any]:
    """Every random number generator a run draws from (torch, CUDA, Python, NumPy when loaded),
    as tensors and plain data that `weights_only` loading accepts."""
    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state_all()
    if "numpy" in sys.modules:
        kind, keys, position, has_gauss, cached = sys.modules["numpy"].random.get_state()
        rng["numpy"] = [kind, torch.from_numpy(keys.copy()), position, has_gauss, cached]
    return rng


def restore_rng_state(rng: dict[str, Any]) -> None:
    """Put every generator back where `capture_rng_state` found it."""
    torch.set_rng_state(rng["torch"])
    # `random.getstate()` is (version, tuple of ints, gauss); a checkpoint may hold lists.
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if "numpy" in rng:
        import numpy

        kind, keys, position, has_gauss, cached = rng["numpy"]
        numpy.random.set_state((kind, keys.numpy(), position, has_gauss, cached))
