"""Is autograd's gradient right? Compared with an analytic derivative and with finite differences.

Everything runs in float64 on a CPU copy of the model, as `torch.autograd.gradcheck` does: in
float32 the rounding error of a finite difference would swamp the comparison. The copy is in eval
mode so that dropout (if any) gives the same function at every evaluation.
"""

from __future__ import annotations

import bisect
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gradtrain.step import forward, summed

AnalyticGradient = Callable[[Tensor], Tensor]

# torch.autograd.gradcheck's defaults: central differences with step 1e-6 in float64, and a
# coordinate passes when |autograd - reference| <= ATOL + RTOL * |reference|.
EPS = 1e-6
ATOL = 1e-5
RTOL = 1e-3
# Each checked coordinate costs two forward passes; a big model is checked on a seeded sample.
MAX_COORDINATES = 64


@dataclass(frozen=True)
class Coordinate:
    name: str  # e.g. "x[3]", "weight[0, 2]"
    autograd: float
    reference: float


@dataclass(frozen=True)
class Comparison:
    """Autograd against one reference gradient over `checked` coordinates.

    The relative error is taken against max(|reference|, atol), so that a reference of ~0 does
    not blow the ratio up; `passed` applies the tolerance to every coordinate.
    """

    reference: str  # what autograd was compared with, e.g. "central differences"
    checked: int
    max_abs_error: float
    max_rel_error: float
    passed: bool
    worst: list[Coordinate]  # the coordinates with the largest errors, largest first


@dataclass(frozen=True)
class GradientCheck:
    comparisons: list[Comparison]
    total_coordinates: int  # how many numbers the trainable parameters hold
    eps: float = EPS
    atol: float = ATOL
    rtol: float = RTOL

    @property
    def passed(self) -> bool:
        return all(comparison.passed for comparison in self.comparisons)

    @property
    def max_abs_error(self) -> float:
        return max(comparison.max_abs_error for comparison in self.comparisons)

    @property
    def max_rel_error(self) -> float:
        return max(comparison.max_rel_error for comparison in self.comparisons)

    def summary(self) -> dict[str, Any]:
        """What `summary.json` keeps under `gradient_check`."""
        return {
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "passed": self.passed,
        }


def check_gradients(
    model: nn.Module,
    loss_fn: nn.Module,
    batch: Any,
    analytic_gradient: AnalyticGradient | None = None,
    *,
    analytic_name: str = "analytic gradient",
    max_coordinates: int = MAX_COORDINATES,
    seed: int = 0,
) -> GradientCheck:
    """Autograd's gradient of the loss on `batch`, checked against central differences and, when
    given, `analytic_gradient` (a function of the model's single parameter tensor).

    The model, loss and batch are left untouched: all work happens on float64 copies.
    """
    model64 = copy.deepcopy(model).to("cpu", torch.float64).eval()
    loss64 = copy.deepcopy(loss_fn).to("cpu", torch.float64)
    batch64 = _to_float64(batch)
    named = [(name, p) for name, p in model64.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no parameter that requires grad")
    params = [p for _, p in named]

    def evaluate() -> Tensor:
        # The training step's own forward (step.forward), in float64.
        return summed(forward(model64, loss64, batch64)[0])

    # A parameter the loss does not use has gradient 0 (as finite differences will agree).
    gradients = torch.autograd.grad(evaluate(), params, materialize_grads=True)
    autograd = torch.cat([g.reshape(-1) for g in gradients])
    names = _CoordinateNames(named)

    comparisons = []
    if analytic_gradient is not None:
        if len(params) != 1:
            raise ValueError("an analytic gradient is a function of one parameter tensor")
        with torch.no_grad():
            analytic = analytic_gradient(params[0].detach()).reshape(-1)
        everything = range(autograd.numel())
        comparisons.append(_compare(analytic_name, everything, autograd, analytic, names))

    indices = _sample(autograd.numel(), max_coordinates, seed)
    differences = _central_differences(evaluate, params, indices)
    reference = f"central differences (eps {EPS:g}, float64)"
    comparisons.append(_compare(reference, indices, autograd, differences, names))
    return GradientCheck(comparisons, total_coordinates=autograd.numel())


def _central_differences(
    evaluate: Callable[[], Tensor], params: Sequence[Tensor], indices: Sequence[int]
) -> Tensor:
    """(f(θ + eps e_i) - f(θ - eps e_i)) / 2 eps for each flat coordinate i; result indexed by
    position in the full flat gradient (unchecked coordinates stay 0)."""
    flat = [p.detach().view(-1) for p in params]  # views: writing them moves the parameter
    starts = [0]
    for values in flat:
        starts.append(starts[-1] + values.numel())
    result = torch.zeros(starts[-1], dtype=torch.float64)
    with torch.no_grad():
        for index in indices:
            which = bisect.bisect_right(starts, index) - 1
            values, local = flat[which], index - starts[which]
            original = values[local].item()
            values[local] = original + EPS
            above = evaluate().item()
            values[local] = original - EPS
            below = evaluate().item()
            values[local] = original
            result[index] = (above - below) / (2 * EPS)
    return result


def _compare(
    reference: str,
    indices: Sequence[int],
    autograd: Tensor,
    expected: Tensor,
    names: _CoordinateNames,
    shown: int = 5,
) -> Comparison:
    index = torch.tensor(list(indices), dtype=torch.long)
    got, want = autograd[index], expected[index]
    errors = (got - want).abs()
    worst = errors.argsort(descending=True)[:shown].tolist()
    return Comparison(
        reference=reference,
        checked=len(index),
        max_abs_error=errors.max().item(),
        max_rel_error=(errors / want.abs().clamp(min=ATOL)).max().item(),
        passed=bool((errors <= ATOL + RTOL * want.abs()).all()),
        worst=[Coordinate(names(int(index[i])), got[i].item(), want[i].item()) for i in worst],
    )


def _sample(total: int, limit: int, seed: int) -> list[int]:
    if total <= limit:
        return list(range(total))
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(total, generator=generator)[:limit].tolist())


class _CoordinateNames:
    """Flat index into all parameters -> "name[i, j]", computed only for the coordinates shown."""

    def __init__(self, named: Sequence[tuple[str, Tensor]]) -> None:
        self.named = named
        self.starts = [0]
        for _, p in named:
            self.starts.append(self.starts[-1] + p.numel())

    def __call__(self, flat_index: int) -> str:
        which = bisect.bisect_right(self.starts, flat_index) - 1
        name, p = self.named[which]
        if p.dim() == 0:
            return name
        index = torch.unravel_index(torch.tensor(flat_index - self.starts[which]), p.shape)
        return f"{name}[{', '.join(str(int(i)) for i in index)}]"


def _to_float64(batch: Any) -> Any:
    """The batch on the CPU with floating tensors in float64 (integer labels stay integers)."""
    if isinstance(batch, Tensor):
        batch = batch.detach().cpu()
        return batch.double() if batch.is_floating_point() else batch
    if isinstance(batch, tuple | list):
        return type(batch)(_to_float64(item) for item in batch)
    return batch
