"""Checkpoint files: written atomically, read back with `weights_only=True` only.

A checkpoint is a plain dict of tensors, numbers, strings and containers (see
`Trainer.state_dict`); anything else in a file is refused before it can run.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gradtrain.errors import CheckpointError
from gradtrain.files import os_error_text, write_atomic

FORMAT_VERSION = 1
LAST = "last.pt"
BEST = "best.pt"  # the weights of the best evaluation of the monitored metric (not resumed from)
_STEP_FILE = re.compile(r"step_(\d+)\.pt")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive, which opens with this


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` to `path` via a temp file, fsync and rename: a crash mid-write leaves the
    previous file intact."""
    write_atomic(path, lambda file: torch.save({"format_version": FORMAT_VERSION, **payload}, file))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The payload of a gradtrain checkpoint file, or a CheckpointError that names the file and
    says what is wrong with it. Nothing in the file runs: `weights_only=True` only."""
    if path.is_symlink() and not path.exists():
        raise CheckpointError(f"{path} is a broken symlink (to {os.readlink(path)})")
    if not path.is_file():
        what = "a folder" if path.is_dir() else "no such file"
        raise CheckpointError(f"no checkpoint at {path} ({what}; trainer.resume)")
    corrupt = (
        f"{path} is truncated or corrupt and cannot be resumed from ({{}}). Resume from an "
        "earlier step_<N>.pt in the same folder, or start afresh."
    )
    try:
        damaged = _damaged_member(path)
    except zipfile.BadZipFile as exc:
        head = _head(path)
        if head.startswith(_ZIP_MAGIC):  # a zip archive cut short
            raise CheckpointError(corrupt.format(exc)) from None
        shown = f"starts with {head!r}..." if head else "is empty"
        raise CheckpointError(
            f"{path} is not a gradtrain checkpoint: not a PyTorch zip archive at all (it {shown})"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {os_error_text(exc)}") from None
    if damaged is not None:
        raise CheckpointError(corrupt.format(f"its part {damaged} fails its checksum"))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _last_line(exc)
        if not _FOREIGN_OBJECT.search(str(exc)):  # e.g. "Unsupported operand 149": damage
            raise CheckpointError(corrupt.format(reason)) from None
        # weights_only refuses any global outside torch's allow-list: nothing was executed.
        raise CheckpointError(
            f"refusing to load {path}: it holds objects other than tensors and plain data, "
            f"which could run code when unpickled. Only gradtrain checkpoints can be "
            f"resumed. ({reason})"
        ) from None
    except Exception as exc:  # a damaged file can fail anywhere in the reader: all say "corrupt"
        raise CheckpointError(corrupt.format(f"{type(exc).__name__}: {_last_line(exc)}")) from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a gradtrain checkpoint of format {FORMAT_VERSION}")
    return payload


# What weights_only says when a pickle names a function or class outside its allow-list (code
# that unpickling would run); any other UnpicklingError is a damaged byte stream.
_FOREIGN_OBJECT = re.compile(
    r"GLOBAL |unrecognized function|Can only (create new object|build)|persistent_load"
)


def _damaged_member(path: Path) -> str | None:
    """The first part of the zip archive whose CRC-32 does not match its data (torch.load does
    not check them: a flipped byte in a tensor would load as a different number), or None."""
    with zipfile.ZipFile(path) as archive:
        try:
            return archive.testzip()
        except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError) as exc:
            return f"({exc})"


def _head(path: Path) -> bytes:
    with path.open("rb") as file:
        return file.read(24)


def _last_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith("Check the documentation")]
    return (useful or lines or [""])[-1].strip()


def resume_problems(payload: Mapping[str, Any]) -> list[str]:
    """What keeps a loaded checkpoint from being resumed: missing or mistyped entries (a
    checkpoint edited by hand, or another program's file with a `format_version`)."""
    problems = []

    def expect(where: Mapping[str, Any], key: str, kinds: tuple[type, ...], name: str) -> Any:
        if key not in where:
            problems.append(f"{name} is missing")
            return None
        value = where[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            kind_names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            problems.append(f"{name} is {type(value).__name__}, not {kind_names}")
            return None
        return value

    for key in ("step", "epoch", "batch_in_epoch"):
        number = expect(payload, key, (int,), key)
        if number is not None and number < 0:
            problems.append(f"{key} is {number}, below 0")
    model = expect(payload, "model", (dict,), "model")
    if model is not None and not all(isinstance(v, torch.Tensor) for v in model.values()):
        problems.append("model holds entries that are not tensors")
    optimizer = expect(payload, "optimizer", (dict,), "optimizer")
    if optimizer is not None:
        expect(optimizer, "state", (dict,), "optimizer.state")
        expect(optimizer, "param_groups", (list,), "optimizer.param_groups")
    expect(payload, "scheduler", (dict, type(None)), "scheduler")
    rng = expect(payload, "rng", (dict,), "rng")
    if rng is not None:
        problems += _rng_problems(rng)
    running = expect(payload, "running", (dict,), "running")
    if running is not None:
        for key in ("best_loss", "correct", "grad_norm"):
            expect(running, key, (torch.Tensor,), f"running.{key}")
        if "last_loss" not in running and "objective" not in running:
            problems.append("running.last_loss is missing")
        expect(running, "seen", (int,), "running.seen")
        expect(running, "elapsed_s", (int, float), "running.elapsed_s")
        expect(running, "val_metrics", (dict,), "running.val_metrics")
        expect(running, "train_accuracy", (float, type(None)), "running.train_accuracy")
        expect(running, "last_logged_loss", (float, type(None)), "running.last_logged_loss")
    if "config" in payload:
        expect(payload, "config", (dict,), "config")
    return problems


def _rng_problems(rng: Mapping[str, Any]) -> list[str]:
    """A random-number state that `restore_rng_state` would choke on."""
    problems = []
    state = rng.get("torch")
    if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8:
        problems.append("rng.torch is not the byte tensor torch.get_rng_state() returns")
    python = rng.get("python")
    if not (
        isinstance(python, list | tuple)
        and len(python) == 3
        and isinstance(python[1], list | tuple)
        and len(python[1]) == _PYTHON_RNG_WORDS
    ):
        problems.append("rng.python is not a state random.getstate() returns")
    return problems


_PYTHON_RNG_WORDS = len(random.getstate()[1])  # 625: Mersenne Twister's words and position


def resume_checkpoint_in(directory: Path) -> Path | None:
    """The checkpoint `trainer.resume=auto` continues from: `last.pt`, or, when a kill landed
    between a run's first `step_<N>.pt` and its `last.pt`, the newest `step_<N>.pt`; None when
    the folder holds neither. A broken `last.pt` (a dangling symlink too) is returned, so that
    loading it names the problem instead of silently starting afresh."""
    last = directory / LAST
    if last.exists() or last.is_symlink():
        return last
    numbered = _numbered(directory)
    return numbered[-1][1] if numbered else None


class CheckpointWriter:
    """Keeps `<dir>/last.pt` current and the newest `keep` `step_<N>.pt` files.

    `config`: the run's validated config as plain data, stored in every checkpoint so that a
    resumed run can tell whether it is continuing the same training (`trainer.run`). `data`:
    what predictions need besides the weights (`build.Data.inference_facts`: feature and class
    names, standardisation statistics), stored as "data" (`gradtrain.inference`)."""

    def __init__(
        self,
        directory: Path,
        keep: int,
        config: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        self.directory = directory
        self.keep = keep
        self.config = dict(config) if config is not None else None
        self.data = dict(data) if data is not None else None

    def save(self, payload: dict[str, Any], step: int) -> Path:
        if self.config is not None:
            payload = {**payload, "config": self.config}
        if self.data is not None:
            payload = {**payload, "data": self.data}
        step_path = self.directory / f"step_{step}.pt"
        for path in ([step_path] if self.keep > 0 else []) + [self.directory / LAST]:
            try:
                save_checkpoint(path, payload)
            except OSError as exc:
                # write_atomic removed its temp file and never touched the file it replaces.
                raise CheckpointError(
                    f"could not write the checkpoint of step {step} to {path}: "
                    f"{os_error_text(exc)}. Nothing was replaced: the checkpoints already in "
                    f"{self.directory} are intact; free space (or fix the folder), then "
                    "continue with trainer.resume=auto."
                ) from exc
        self._prune()
        return step_path

    def save_best(self, payload: dict[str, Any], step: int) -> Path:
        """`<dir>/best.pt`, replaced atomically whenever the monitored metric improves."""
        if self.config is not None:
            payload = {**payload, "config": self.config}
        path = self.directory / BEST
        try:
            save_checkpoint(path, payload)
        except OSError as exc:
            raise CheckpointError(
                f"could not write the best checkpoint (step {step}) to {path}: "
                f"{os_error_text(exc)}; the previous {BEST} is intact"
            ) from exc
        return path

    def _prune(self) -> None:
        numbered = _numbered(self.directory)
        for _, path in numbered[: max(len(numbered) - self.keep, 0)]:
            path.unlink(missing_ok=True)


def _numbered(directory: Path) -> list[tuple[int, Path]]:
    """The `step_<N>.pt` files in `directory`, oldest first."""
    return sorted(
        (int(match.group(1)), path)
        for path in directory.glob("step_*.pt")
        if (match := _STEP_FILE.fullmatch(path.name))
    )


class NullCheckpointWriter:
    """The checkpoint writer of ranks other than 0 under torchrun: writes nothing (rank 0 does).

    They still take their checkpoints at the same steps as rank 0, checking the weights first
    (`Trainer._checkpoint`), so every rank sees the same values and stops at the same step."""

    def save(self, payload: dict[str, Any], step: int) -> None:
        return None

    def save_best(self, payload: dict[str, Any], step: int) -> None:
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
