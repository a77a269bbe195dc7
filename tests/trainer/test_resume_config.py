"""What a resume accepts: the same training (the config stored in the checkpoint), and a
checkpoint file that is whole and fits; everything else is a message naming what differs or
what is wrong, before anything is written."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import QuickRun

from gradtrain.checkpoint import LAST, load_checkpoint, save_checkpoint
from gradtrain.errors import CheckpointError, ConfigError

Quick = Callable[..., QuickRun]

WRITES = [
    "logger=tensorboard",
    "trainer.save_checkpoints=true",
    "trainer.checkpoint_every_n_steps=5",
]


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def stopped(quick_run: Quick, tmp_path: Path) -> QuickRun:
    """A finished 20-step run with checkpoints, to resume with more steps."""
    return quick_run(*WRITES, "experiment=linear_regression", run_dir=tmp_path / "run")


def resume(quick_run: Quick, stopped: QuickRun, *overrides: str) -> QuickRun:
    return quick_run(
        *WRITES,
        "experiment=linear_regression",
        "trainer.resume=auto",
        "trainer.max_steps=30",
        *overrides,
        run_dir=stopped.run_dir,
    )


# ------------------------------------------------------------------------------- the same run
def test_a_resume_with_a_changed_config_is_refused_naming_every_key_and_both_values(
    quick_run: Quick, stopped: QuickRun
) -> None:
    before = snapshot(stopped.run_dir)
    with pytest.raises(ConfigError) as refused:
        resume(quick_run, stopped, "optimizer.lr=0.001", "seed=3", "model.bias=false")
    message = str(refused.value)
    assert refused.value.exit_code == 2
    assert "optimizer.lr: 0.1 in the checkpoint, 0.001 now" in message
    assert "seed: 0 in the checkpoint, 3 now" in message
    assert "model.bias: true in the checkpoint, false now" in message
    assert len(refused.value.problems) == 3  # trainer.max_steps and resume may change
    assert str(stopped.run_dir / "checkpoints" / LAST) in message
    assert snapshot(stopped.run_dir) == before


def test_a_changed_optimizer_or_model_is_a_message_not_a_traceback(
    quick_run: Quick, stopped: QuickRun
) -> None:
    with pytest.raises(ConfigError, match=r"optimizer\.name: sgd in the checkpoint, adam now"):
        resume(quick_run, stopped, "optimizer=adam")
    with pytest.raises(ConfigError, match=r"model\.name: linear in the checkpoint, mlp now"):
        resume(quick_run, stopped, "model=mlp")


def test_how_long_and_how_often_may_change_on_resume(quick_run: Quick, stopped: QuickRun) -> None:
    resumed = resume(
        quick_run,
        stopped,
        "trainer.log_every_n_steps=3",
        "trainer.checkpoint_every_n_steps=7",
        "trainer.keep_checkpoints=1",
        "trainer.progress_bar=true",
        "logger.flush_secs=5",
        "dataset.num_workers=1",
    )
    assert resumed.summary["steps"] == 30


def test_a_checkpoint_without_a_stored_config_resumes_with_a_warning(
    quick_run: Quick, stopped: QuickRun, caplog: pytest.LogCaptureFixture
) -> None:
    path = stopped.run_dir / "checkpoints" / LAST
    old = load_checkpoint(path)
    del old["config"]
    save_checkpoint(path, old)
    with caplog.at_level(logging.WARNING, logger="gradtrain"):
        assert resume(quick_run, stopped).summary["steps"] == 30
    assert "stores no config" in caplog.text


# ------------------------------------------------------------------------ the checkpoint file
def damage(path: Path, how: str) -> str:
    """Spoil a good checkpoint at `path` as `how` says; returns what the message must say."""
    payload = load_checkpoint(path)
    if how == "a text file":
        path.write_text("step: 20\n")
        return "not a PyTorch zip archive at all"
    if how == "a symlink to a text file":
        target = path.parent / "notes.txt"
        target.write_text("hello")
        path.unlink()
        path.symlink_to(target)
        return "not a PyTorch zip archive at all"
    if how == "a dangling symlink":
        path.unlink()
        path.symlink_to(path.parent / "gone.pt")
        return "broken symlink"
    if how == "a flipped byte in a tensor":
        data = bytearray(path.read_bytes())
        weights = next(iter(payload["model"].values())).numpy().tobytes()
        data[data.index(weights) + 1] ^= 0x01  # a float's low bits: a slightly other number
        path.write_bytes(bytes(data))
        return "fails its checksum"
    if how == "a flipped opcode in the pickle":
        data = bytearray(path.read_bytes())
        start = data.index(b"\x80\x02}")  # the pickle: PROTO 2, then EMPTY_DICT
        data[start + 2] = 0xF0  # no such opcode; the zip checksum is fixed up below
        path.write_bytes(bytes(data))
        _fix_crcs(path)
        return "truncated or corrupt and cannot be resumed from (Unsupported operand 240)"
    if how == "a dict missing keys":
        del payload["rng"], payload["batch_in_epoch"]
        save_checkpoint(path, payload)
        return "batch_in_epoch is missing; rng is missing"
    if how == "a bad RNG state":
        payload["rng"]["torch"] = torch.zeros(7)
        payload["rng"]["python"] = [3, [1, 2], None]
        save_checkpoint(path, payload)
        return "rng.torch is not the byte tensor"
    if how == "a batch_in_epoch beyond the epoch":
        payload["batch_in_epoch"] = 999
        save_checkpoint(path, payload)
        return "batch_in_epoch=999, but an epoch of this run has 16 batches"
    if how == "a model of other shapes":
        payload["model"] = {k: torch.zeros(3, 3) for k in payload["model"]}
        save_checkpoint(path, payload)
        return "does not fit this run"
    raise AssertionError(how)


def _fix_crcs(path: Path) -> None:
    """Rewrite the archive with correct checksums (as if the damage happened before the
    write), so that only the pickle itself is wrong."""
    import zipfile

    members = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            with archive.open(info) as member:
                member._expected_crc = None  # type: ignore[attr-defined]  # read it as it is
                members[info.filename] = member.read()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


DAMAGE = [
    "a text file",
    "a symlink to a text file",
    "a dangling symlink",
    "a flipped byte in a tensor",
    "a flipped opcode in the pickle",
    "a dict missing keys",
    "a bad RNG state",
    "a batch_in_epoch beyond the epoch",
    "a model of other shapes",
]


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_last_checkpoint_is_a_message_naming_it(
    quick_run: Quick, stopped: QuickRun, how: str
) -> None:
    path = stopped.run_dir / "checkpoints" / LAST
    expected = damage(path, how)
    before = snapshot(stopped.run_dir) if path.exists() else None
    with pytest.raises(CheckpointError) as refused:
        resume(quick_run, stopped)
    message = str(refused.value)
    assert expected in message, message
    assert str(path) in message
    assert "could run code" not in message
    if before is not None:
        assert snapshot(stopped.run_dir) == before
    assert not list((stopped.run_dir / "checkpoints").glob(".*.tmp"))
    assert os.path.lexists(path)


def test_config_differences_name_the_section_not_its_options_and_skip_schema_changes() -> None:
    from gradtrain.run import config_differences

    saved = {
        "seed": 0,
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "trainer": {"max_steps": 20, "resume": None, "old_key": 1},
        "logger": {"name": "tensorboard", "flush_secs": 30},
    }
    now = {
        "seed": 0,
        "optimizer": {"name": "adam", "lr": 0.1, "betas": [0.9, 0.999]},
        "trainer": {"max_steps": 40, "resume": "auto", "new_key": True},
        "logger": {"name": "none"},
    }
    differences, unknown = config_differences(saved, now)
    assert differences == ["optimizer.name: sgd in the checkpoint, adam now"]
    assert unknown == ["trainer.new_key", "trainer.old_key"]
