"""gradtrain's optimizers stay full torch.optim.Optimizers while skipping what only costs time."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from gradtrain.optim import OPTIMIZERS, ManualSGD

ROOT = Path(__file__).resolve().parents[2]


def manual_sgd() -> tuple[torch.nn.Parameter, ManualSGD]:
    x = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    x.grad = torch.ones(2)
    return x, ManualSGD([x], lr=0.5)


def test_step_hooks_run_around_the_update() -> None:
    x, optimizer = manual_sgd()
    seen: list[tuple[str, list[float]]] = []

    def record(when: str) -> Any:
        return lambda *_: seen.append((when, x.detach().tolist()))

    optimizer.register_step_pre_hook(record("pre"))
    optimizer.register_step_post_hook(record("post"))
    global_hook = register_optimizer_step_post_hook(record("global"))
    try:
        optimizer.step()
    finally:
        global_hook.remove()
    assert seen == [("pre", [1.0, 2.0]), ("post", [0.5, 1.5]), ("global", [0.5, 1.5])]


@pytest.mark.parametrize("name", ["manual_sgd", "sgd", "adam"])
def test_step_and_zero_grad_show_in_the_profiler(name: str) -> None:
    x = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    x.grad = torch.ones(2)
    optimizer = OPTIMIZERS.get(name)([x], lr=0.5)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        optimizer.step()
        optimizer.zero_grad()
    names = {event.name for event in profile.events()}
    kind = type(optimizer).__name__
    assert f"Optimizer.step#{kind}.step" in names
    if name != "manual_sgd":  # (whose zero_grad is the lecture's own `grad.zero_()`)
        assert f"Optimizer.zero_grad#{kind}.zero_grad" in names


@pytest.mark.parametrize(
    ("name", "reference", "settings"),
    [
        ("sgd", torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
        ("adam", torch.optim.Adam, {"lr": 0.01}),
        ("adamw", torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
        ("rmsprop", torch.optim.RMSprop, {"lr": 0.01, "momentum": 0.5}),
    ],
)
def test_registered_optimizers_update_exactly_like_torch(
    name: str, reference: type[torch.optim.Optimizer], settings: dict[str, Any]
) -> None:
    # The torch optimizer is made first, so torch has already put its profiler wrapper on the
    # class whose step gradtrain's subclass reuses.
    weights: list[torch.Tensor] = []
    for optimizer_class in (reference, OPTIMIZERS.get(name)):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        optimizer = optimizer_class(model.parameters(), **settings)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
        for _ in range(5):
            model(torch.randn(8, 4)).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
        assert all(p.grad is None for p in model.parameters())
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_zero_grad_can_keep_the_tensors() -> None:
    x = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    optimizer = OPTIMIZERS.get("adam")([x])
    (x**2).sum().backward()
    grad = x.grad
    optimizer.zero_grad(set_to_none=False)
    assert x.grad is grad and torch.equal(grad, torch.zeros(2))


def test_state_dict_round_trips_with_momentum() -> None:
    x = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    optimizer = ManualSGD([x], lr=0.1, momentum=0.9)
    x.grad = torch.ones(2)
    optimizer.step()
    restored = ManualSGD([x], lr=0.3, momentum=0.0)
    restored.load_state_dict(optimizer.state_dict())
    assert restored.param_groups[0]["lr"] == 0.1 and restored.param_groups[0]["momentum"] == 0.9
    assert torch.equal(restored.state[x]["velocity"], torch.ones(2))


def test_manual_sgd_with_a_scheduler_never_imports_dynamo() -> None:
    # torch.optim wraps add_param_group and state_dict so that their first call imports
    # torch._dynamo (about a second); ManualSGD, the default optimizer, must not pay it.
    script = textwrap.dedent(
        """
        import sys
        import torch
        from gradtrain.optim import ManualSGD
        x = torch.nn.Parameter(torch.ones(3))
        optimizer = ManualSGD([x], lr=0.1, momentum=0.5)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
        (x**2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        optimizer.load_state_dict(optimizer.state_dict())
        assert "torch._dynamo" not in sys.modules, "torch._dynamo was imported"
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
