"""gradtrain's cost per step against hand-written PyTorch loops, and its start-up time.

    python benchmarks/overhead.py              # 5 rounds (about two minutes on two cores)
    python benchmarks/overhead.py --threads 1  # torch.set_num_threads(1) first
    python benchmarks/overhead.py --quick      # one short round: shows that it runs, not how fast

Every case runs in this one process, interleaved round by round (A B C ... A B C ...; odd rounds
in reverse order so that drift hits every case alike), and the table reports the median
microseconds per step over the rounds. Ratios compare with the hand-written baseline of the same
workload, measured in the same rounds. gradtrain is built through the real config path (Hydra
compose of `configs/`, pydantic validation, `build_trainer`) and logs to TensorBoard in a
temporary folder; its time covers `fit()` and closing the event file (all values written).
The progress bar is off: it only draws on a terminal.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from gradtrain.build import build_sink, build_trainer
from gradtrain.config import validate_config
from gradtrain.datasets import RegressionDataset, build_dataloader
from gradtrain.run import seed_everything

ROOT = Path(__file__).resolve().parents[1]

N_SAMPLES, N_FEATURES, BATCH_SIZE = 8192, 32, 64
QUADRATIC_LR = 1e-3  # small enough that x stays far from denormal floats for the whole run
DATA_LR = 0.01
HIDDEN = 256
LOG_INTERVALS = (1, 10, 50)

Timer = Callable[[int, Path], float]  # (steps, scratch folder) -> seconds for those steps


@dataclass
class Case:
    workload: str
    loop: str
    timer: Timer
    steps: int
    log_every: int | None = None  # None: logs nothing
    baseline: bool = False  # the workload's reference for the ratio column
    target: float | None = None  # the ratio it must not exceed
    seconds_per_step: list[float] = field(default_factory=list)


# --------------------------------------------------------------------- hand-written baselines
def handwritten_quadratic(size: int, add_scalar_every: int | None = None) -> Timer:
    """The lecture's loop: manual gradient descent on sum(x**2 - 5)."""

    def timed(steps: int, scratch: Path) -> float:
        x = quadratic_start(size).requires_grad_()
        writer = summary_writer(scratch) if add_scalar_every else None
        started = time.perf_counter()
        for step in range(1, steps + 1):
            loss = (x**2 - 5).sum()
            loss.backward()
            with torch.no_grad():
                x -= QUADRATIC_LR * x.grad
            x.grad.zero_()
            if writer is not None and add_scalar_every and step % add_scalar_every == 0:
                writer.add_scalar("train/loss", loss, step)
        if writer is not None:
            writer.close()
        return time.perf_counter() - started

    return timed


def handwritten_regression(
    data_path: str, model_kind: str = "linear", add_scalar_every: int | None = None
) -> Timer:
    """Minibatch SGD on MSE, as a user writes it. `data_path`: "per-sample" is the default
    DataLoader over a TensorDataset (one sample at a time, then collated); "sliced" indexes the
    tensors with a shuffled permutation; "gradtrain" is gradtrain's own batched DataLoader."""

    def timed(steps: int, scratch: Path) -> float:
        torch.manual_seed(0)
        dataset = RegressionDataset(N_SAMPLES, N_FEATURES, noise=0.1, seed=0)
        inputs, targets = dataset.inputs, dataset.targets
        model = regression_model(model_kind)
        optimizer = torch.optim.SGD(model.parameters(), lr=DATA_LR)
        writer = summary_writer(scratch) if add_scalar_every else None
        if data_path == "per-sample":
            loader: Any = DataLoader(
                TensorDataset(inputs, targets), batch_size=BATCH_SIZE, shuffle=True
            )
        elif data_path == "gradtrain":
            loader = build_dataloader(dataset, batch_size=BATCH_SIZE, shuffle=True)
        else:
            loader = None

        started = time.perf_counter()
        step = 0
        while step < steps:
            if loader is None:  # sliced
                order = torch.randperm(N_SAMPLES)
                batches: Any = (
                    (inputs[index], targets[index]) for index in order.split(BATCH_SIZE)
                )
            else:
                batches = loader
            for batch_inputs, batch_targets in batches:
                loss = F.mse_loss(model(batch_inputs).squeeze(-1), batch_targets)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                if writer is not None and add_scalar_every and step % add_scalar_every == 0:
                    writer.add_scalar("train/loss", loss, step)
                if step == steps:
                    break
        if writer is not None:
            writer.close()
        return time.perf_counter() - started

    return timed


def quadratic_start(size: int) -> torch.Tensor:
    if size == 5:
        return torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    return torch.randn(size, generator=torch.Generator().manual_seed(0))


def regression_model(kind: str) -> nn.Module:
    if kind == "linear":
        return nn.Linear(N_FEATURES, 1)
    return nn.Sequential(
        nn.Linear(N_FEATURES, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, 1),
    )


def summary_writer(scratch: Path) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(scratch / "handwritten"))


# ------------------------------------------------------------------------------------ gradtrain
def compose(overrides: list[str]) -> dict[str, Any]:
    """The config `python train.py <overrides>` would get."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("gradtrain.configs", version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return container  # type: ignore[return-value]


def gradtrain(overrides: list[str], log_every: int) -> Timer:
    base = compose(
        [
            *overrides,
            "logger=tensorboard",
            "trainer.device=cpu",
            "trainer.progress_bar=false",
            "trainer.max_epochs=null",
            f"trainer.log_every_n_steps={log_every}",
        ]
    )

    def timed(steps: int, scratch: Path) -> float:
        raw = copy.deepcopy(base)
        raw["trainer"]["max_steps"] = steps
        cfg = validate_config(raw)
        seed_everything(cfg.seed)
        sink = build_sink(cfg.logger, scratch / "gradtrain")
        trainer = build_trainer(cfg, sink)
        started = time.perf_counter()
        try:
            trainer.fit()
        finally:
            sink.close()  # writes whatever is still buffered: part of the cost of logging
        return time.perf_counter() - started

    return timed


QUADRATIC = [
    "loss=quadratic",
    "model=vector",
    "optimizer=manual_sgd",
    f"optimizer.lr={QUADRATIC_LR}",
]
REGRESSION = [
    "experiment=linear_regression",
    f"dataset.n_samples={N_SAMPLES}",
    f"dataset.n_features={N_FEATURES}",
    f"dataset.batch_size={BATCH_SIZE}",
    "optimizer=sgd",
    f"optimizer.lr={DATA_LR}",
]
MLP = [*REGRESSION, "model=mlp", f"model.hidden_sizes=[{HIDDEN},{HIDDEN}]", "model.activation=relu"]


def cases(quick: bool) -> list[Case]:
    """The table's rows; each workload's baseline comes first."""

    def steps(full: int) -> int:
        return max(full // 50, 5) if quick else full

    def gradtrain_rows(
        workload: str, overrides: list[str], n: int, targets: dict[int, float]
    ) -> list[Case]:
        return [
            Case(
                workload,
                "gradtrain",
                gradtrain(overrides, every),
                n,
                log_every=every,
                target=targets.get(every),
            )
            for every in LOG_INTERVALS
        ]

    small, n_small = "quadratic, 5 elements, manual SGD", steps(3000)
    large, n_large = "quadratic, 1e6 elements, manual SGD", steps(200)
    linear, n_linear = "linear regression 8192x32, batch 64, SGD", steps(1024)
    mlp, n_mlp = "MLP 32-256-256-1, batch 64, SGD", steps(512)
    return [
        Case(small, "hand-written", handwritten_quadratic(5), n_small, baseline=True),
        Case(
            small,
            "hand-written + add_scalar",
            handwritten_quadratic(5, add_scalar_every=1),
            n_small,
            log_every=1,
        ),
        *gradtrain_rows(small, [*QUADRATIC, "model.init=[1,2,3,4,5]"], n_small, {10: 1.3}),
        Case(large, "hand-written", handwritten_quadratic(1_000_000), n_large, baseline=True),
        *gradtrain_rows(large, [*QUADRATIC, "model.size=1000000"], n_large, {}),
        Case(
            linear,
            "hand-written, per-sample DataLoader",
            handwritten_regression("per-sample"),
            n_linear,
            baseline=True,
        ),
        Case(
            linear,
            "hand-written, per-sample DataLoader + add_scalar",
            handwritten_regression("per-sample", add_scalar_every=1),
            n_linear,
            log_every=1,
        ),
        Case(linear, "hand-written, sliced tensors", handwritten_regression("sliced"), n_linear),
        *gradtrain_rows(linear, REGRESSION, n_linear, {1: 0.6}),
        Case(
            mlp,
            "hand-written, gradtrain's DataLoader",
            handwritten_regression("gradtrain", "mlp"),
            n_mlp,
            baseline=True,
        ),
        *gradtrain_rows(mlp, MLP, n_mlp, {10: 1.05}),
    ]


# ------------------------------------------------------------------------------------- start-up
def startup_seconds(rounds: int, scratch: Path) -> tuple[float, float]:
    """Median wall time of `python -c "import torch"` and of a one-step `train.py`, interleaved."""
    torch_only, train = [], []
    for index in range(rounds):
        torch_only.append(wall([sys.executable, "-c", "import torch"], scratch))
        run_dir = scratch / f"startup{index}"
        command = [
            sys.executable,
            str(ROOT / "train.py"),
            "trainer.max_steps=1",
            "logger=none",
            f"hydra.run.dir={run_dir}",
        ]
        train.append(wall(command, scratch))
    return statistics.median(torch_only), statistics.median(train)


def wall(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------------- report
def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(
            line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    return (
        f"{model}, {os.cpu_count()} cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} intra-op threads, Python {platform.python_version()}"
    )


def report(table: list[Case], startup: tuple[float, float], rounds: int, quick: bool) -> str:
    lines = [f"{datetime.date.today().isoformat()}, {machine()}; median of {rounds} rounds"]
    if quick:
        lines.append("--quick: too few steps and rounds for these numbers to mean anything")
    lines += [
        "",
        "| workload | loop | logs every | µs/step | steps/s | ratio | target |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    baselines = {case.workload: case for case in table if case.baseline}
    for case in table:
        per_step = statistics.median(case.seconds_per_step)
        ratio = per_step / statistics.median(baselines[case.workload].seconds_per_step)
        target = ""
        if case.target is not None:
            verdict = "PASS" if ratio <= case.target else "FAIL"
            target = f"≤ {case.target:g}x: {verdict}"
        every = "-" if case.log_every is None else str(case.log_every)
        lines.append(
            f"| {case.workload} | {case.loop} | {every} | {per_step * 1e6:,.1f} | "
            f"{1 / per_step:,.0f} | {ratio:.2f}x | {target} |"
        )
    torch_s, train_s = startup
    ratio = train_s / torch_s
    verdict = "PASS" if ratio <= 1.3 else "FAIL"
    lines += [
        "",
        "| start-up | seconds | ratio | target |",
        "| --- | ---: | ---: | --- |",
        f'| `python -c "import torch"` | {torch_s:.2f} | 1.00x | |',
        f"| `python train.py trainer.max_steps=1 logger=none` | {train_s:.2f} | {ratio:.2f}x "
        f"| ≤ 1.3x: {verdict} |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round (a smoke test)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    if args.threads:
        torch.set_num_threads(args.threads)

    table = cases(args.quick)
    with tempfile.TemporaryDirectory(prefix="gradtrain-bench-") as tmp:
        scratch = Path(tmp)
        # Warm-up: first calls import lazily loaded modules (torch.optim's dynamo hooks,
        # TensorBoard) and fill allocator caches; none of it is counted.
        for index, case in enumerate(table):
            case.timer(min(case.steps, 10), scratch / f"warmup{index}")
        for round_index in range(rounds):
            order = table if round_index % 2 == 0 else table[::-1]
            for index, case in enumerate(order):
                seconds = case.timer(case.steps, scratch / f"round{round_index}-{index}")
                case.seconds_per_step.append(seconds / case.steps)
        startup = startup_seconds(1 if args.quick else max(rounds, 5), scratch)
    print(report(table, startup, rounds, args.quick))


if __name__ == "__main__":
    main()
