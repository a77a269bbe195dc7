"""The README's quoted outputs stay what the current code prints: the same lines, in the same
order, with the same words; only numbers (times, rates, losses) and paths may differ."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

from gradtrain.run import format_summary, run

README = ROOT / "README.md"
NUMBER = re.compile(r"-?\b\d+(\.\d+)?(e[-+]?\d+)?\b")
PATH = re.compile(r"\S*/\S*/\S+")  # (two slashes at least: steps/s is no path)


def readme_block(first_line_start: str) -> list[str]:
    """The lines of the README's fenced block whose first line starts with `first_line_start`."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", README.read_text(), flags=re.DOTALL)
    found = [block for block in blocks if block.startswith(first_line_start)]
    assert len(found) == 1, f"the README quotes one block starting {first_line_start!r}"
    return found[0].rstrip("\n").splitlines()


def shape(line: str) -> str:
    """A line with its paths and numbers blanked out."""
    return NUMBER.sub("#", PATH.sub("<path>", line)).rstrip()


def test_quickstart_output_is_what_the_quickstart_command_prints(
    composed: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    # `python train.py loss=quadratic`, in this process: the summary is printed by the same
    # format_summary, from the summary.json it writes.
    printed = format_summary(run(composed("loss=quadratic"), tmp_path)).splitlines()
    quoted = readme_block("Completed after")
    assert [shape(line) for line in quoted] == [shape(line) for line in printed]


def test_shape_blanks_numbers_and_paths_only() -> None:
    assert shape("Completed after 0.07 s: 200 steps (3009 steps/s)") == (
        "Completed after # s: # steps (# steps/s)"
    )
    assert shape("  grad norm   7.69e-19") == "  grad norm   #"
    assert shape("  logs        outputs/2026-11-25/18-23-06-123456/tensorboard") == (
        "  logs        <path>"
    )


@pytest.mark.slow  # a real three-job sweep in a subprocess
def test_sweep_example_output_is_what_the_sweep_prints(tmp_path: Path) -> None:
    import subprocess
    import sys

    quoted = readme_block("$ python train.py -m optimizer.lr=0.01,0.1,1.5")
    command = quoted[0].removeprefix("$ python train.py ").split()
    completed = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *command],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 1, completed.stderr  # a job diverged
    # The quoted block skips the jobs' own output ("..."); then the table (on stdout) and the
    # line that names the jobs that did not complete (on stderr).
    *table, last = quoted[quoted.index("...") + 1 :]
    while not table[-1]:
        table.pop()
    assert last in completed.stderr.splitlines()
    printed = completed.stdout.splitlines()
    start = next(i for i, line in enumerate(printed) if line.startswith("Sweep summary:"))
    got = printed[start : start + len(table)]
    wall_s = table[2].split(" | ").index("wall_s")  # (seconds differ by machine)
    assert [shape(line) for line in got] == [shape(line) for line in table]
    # The rows hold the numbers of the run: losses, steps and reasons do not depend on the machine.
    assert [_without(line, wall_s) for line in got[4:]] == [
        _without(line, wall_s) for line in table[4:]
    ]


def _without(line: str, index: int) -> str:
    """A markdown table row without its `index`-th cell."""
    cells = line.split(" | ")
    return " | ".join(cells[:index] + cells[index + 1 :])


def documented_tags() -> list[re.Pattern[str]]:
    """The README's tag list (its Tags table), as patterns: `<parameter>` stands for a name."""
    section = README.read_text().split("### Tags\n", 1)[1].strip().split("\n\n", 1)[0]
    patterns = []
    for row in section.splitlines()[2:]:
        for tag in re.findall(r"`([^`]+)`", row.split(" | ")[0]):
            patterns.append(re.compile(re.escape(tag).replace("<parameter>", "[^/]+") + "$"))
    return patterns


def test_every_tag_a_run_logs_is_in_the_readmes_tag_list(
    quick_run: Callable[..., Any],
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = quick_run(
        "experiment=mlp_classification",
        "logger=tensorboard",
        "logger.update_ratio=true",
        "logger.histogram_every_n_steps=10",
        "trainer.max_steps=20",
    )
    accumulator = EventAccumulator(str(result.run_dir / "tensorboard"))
    accumulator.Reload()
    tags = accumulator.Tags()
    logged = set(tags["scalars"]) | set(tags["histograms"]) | set(tags["images"])
    logged |= {tag.removesuffix("/text_summary") for tag in tags["tensors"] if "text" in tag}
    assert {"train/loss", "val/loss", "watch/grads/head.weight"} <= logged
    patterns = documented_tags()
    assert [tag for tag in sorted(logged) if not any(p.match(tag) for p in patterns)] == []
