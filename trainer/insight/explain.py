"""`explain=true`: the lecture's ideas, shown on the configured model, loss and one batch.

`explain` runs one forward and backward pass and reports which tensors are leaves, the backward
graph from `loss.grad_fn` down to the leaves, the vector-Jacobian product of a non-scalar loss,
a gradient check, and what `torch.no_grad()`, `.grad` accumulation and `detach()` do to the
actual parameters. It leaves the model as it found it: the same values, the same `.grad`, the
same random number generator state, so training goes exactly as it would have without it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from gradtrain.insight.autograd_graph import ACCUMULATE_GRAD, BackwardGraph, walk_backward_graph
from gradtrain.insight.gradient_check import (
    AnalyticGradient,
    GradientCheck,
    check_gradients,
)
from gradtrain.losses import ParameterLoss
from gradtrain.models import VectorModel
from gradtrain.step import backward, forward, summed

# A Jacobian is printed when it has at most this many entries.
MAX_JACOBIAN_ENTRIES = 100
SHOWN_VALUES = 6  # of a vector printed in the report


@dataclass(frozen=True)
class TensorFacts:
    """What autograd knows about one tensor."""

    expression: str
    shape: tuple[int, ...]
    requires_grad: bool
    is_leaf: bool
    grad_fn: str | None
    shares_storage: bool | None = None  # with the parameter it was made from; None: n/a

    @classmethod
    def of(cls, expression: str, tensor: Tensor, parameter: Tensor | None = None) -> TensorFacts:
        return cls(
            expression=expression,
            shape=tuple(tensor.shape),
            requires_grad=tensor.requires_grad,
            is_leaf=tensor.is_leaf,
            grad_fn=_name(tensor.grad_fn),
            shares_storage=None
            if parameter is None or tensor is parameter
            else tensor.data_ptr() == parameter.data_ptr(),
        )


@dataclass(frozen=True)
class VectorJacobianProduct:
    """backward(gradient=v) on a vector loss computes v^T J, J = d loss / d parameters."""

    loss_shape: tuple[int, ...]
    jacobian: list[list[float]] | None  # rows: loss elements, columns: parameter coordinates
    product: list[float]  # v^T J with v = ones: what lands in .grad (its first values)
    size: int  # of the whole product
    max_diff_from_sum: float  # against the gradient of loss.sum()


@dataclass(frozen=True)
class NoGradUpdate:
    """One gradient-descent step taken the lecture's way, then undone."""

    lr: float
    after: list[TensorFacts]  # each parameter after `p -= lr * p.grad` under no_grad
    changed: bool  # whether the values moved (they do: the update is real)
    in_place_error: str  # the same update with grad enabled
    out_of_place: TensorFacts  # `p - lr * p.grad` with grad enabled: a graph node, not a leaf


@dataclass(frozen=True)
class Accumulation:
    """Two backward passes without zeroing in between: `.grad` holds their sum."""

    parameter: str
    size: int  # of the parameter; the lists hold its first values
    after_one: list[float]
    after_two: list[float]
    max_error: float  # max |grad after two passes - 2 * grad after one|


@dataclass(frozen=True)
class ExplainReport:
    loss: TensorFacts
    loss_value: float  # the loss, or its sum when it is a vector
    leaves: list[TensorFacts]  # the trainable parameters
    data: list[TensorFacts]  # the batch's tensors (none for a loss of the parameters alone)
    graph: BackwardGraph
    vjp: VectorJacobianProduct | None  # for a non-scalar loss
    gradient_check: GradientCheck
    analytic_note: str | None  # the formula the analytic gradient implements
    update: NoGradUpdate
    accumulation: Accumulation
    detach_vs_no_grad: list[TensorFacts]

    def to_markdown(self) -> str:
        return _markdown(self)


def explain(model: nn.Module, loss_fn: nn.Module, batch: Any, lr: float = 0.1) -> ExplainReport:
    """One forward and backward pass of `loss_fn` on `model` and `batch`, explained.

    Args:
        model: the model to be trained (left unchanged).
        loss_fn: the loss; an `ParameterLoss` of a `VectorModel` also supplies the analytic
            gradient the check compares autograd with.
        batch: `(inputs, targets)` on the model's device, or None for a loss of the
            parameters alone.
        lr: the step size of the demonstrated update.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no parameter that requires grad: nothing to explain")
    saved_grads = [p.grad for _, p in named]
    devices = [p.device.index or 0 for _, p in named if p.device.type == "cuda"][:1]
    try:
        # Dropout in the forward pass would draw random numbers: give them back afterwards.
        # Grad mode is on even if the caller turned it off: the graph is what is shown.
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            return _explain(model, loss_fn, batch, named, lr)
    finally:
        for (_, p), grad in zip(named, saved_grads, strict=True):
            p.grad = grad


def explain_batch(train_loader: Iterable[Any] | None, device: torch.device) -> Any:
    """The batch `explain` uses, on `device`: the first `batch_size` samples of the training set.

    Built from the dataset directly, because drawing a batch from the loader would advance its
    shuffling generator and change the order training sees.
    """
    if train_loader is None:
        return None
    # (A loader given a batch_sampler has no batch_size of its own; its batch sampler has.)
    batch_size = getattr(getattr(train_loader, "batch_sampler", None), "batch_size", None)
    if isinstance(train_loader, DataLoader) and batch_size is not None:
        dataset: Any = train_loader.dataset
        indices = list(range(min(batch_size, len(dataset))))
        getitems = getattr(dataset, "__getitems__", None)
        samples = getitems(indices) if getitems is not None else [dataset[i] for i in indices]
        inputs, targets = train_loader.collate_fn(samples)
    else:
        inputs, targets = next(iter(train_loader))
    return inputs.to(device), targets.to(device)


# -------------------------------------------------------------------------------- the pieces
def _explain(
    model: nn.Module,
    loss_fn: nn.Module,
    batch: Any,
    named: Sequence[tuple[str, Tensor]],
    lr: float,
) -> ExplainReport:
    params = [p for _, p in named]
    analytic = _analytic_gradient(model, loss_fn, batch)
    analytic_name = f"{type(loss_fn).__name__}.analytic_gradient"
    check = check_gradients(model, loss_fn, batch, analytic, analytic_name=analytic_name)

    # Forward: every operation on a tensor that requires grad records a node of the graph.
    loss = forward(model, loss_fn, batch)[0]
    leaves = [TensorFacts.of(name, p) for name, p in named]
    graph = walk_backward_graph(loss, dict(named))
    vjp = _vector_jacobian_product(model, loss_fn, batch, loss, params) if loss.dim() else None

    # Backward, as the training loop does it; then once more without zeroing in between. A
    # parameter the loss does not use gets no gradient at all (.grad stays None).
    backward(loss)
    after_one = {i: p.grad.detach().clone() for i, p in enumerate(params) if p.grad is not None}
    backward(forward(model, loss_fn, batch)[0])
    after_two = {i: p.grad.detach().clone() for i, p in enumerate(params) if p.grad is not None}
    if not after_one:
        raise ValueError("backward reached none of the model's parameters")
    shown = min(after_one)
    accumulation = Accumulation(
        parameter=named[shown][0],
        size=params[shown].numel(),
        after_one=_shown(after_one[shown]),
        after_two=_shown(after_two[shown]),
        max_error=max((after_two[i] - 2 * one).abs().max().item() for i, one in after_one.items()),
    )
    for i, p in enumerate(params):
        p.grad = after_one.get(i)  # what zero_grad() and one backward() leave, for the update

    return ExplainReport(
        loss=TensorFacts.of("loss", loss),
        loss_value=summed(loss).item(),
        leaves=leaves,
        data=_data_facts(batch),
        graph=graph,
        vjp=vjp,
        gradient_check=check,
        analytic_note=_first_line(analytic.__doc__) if analytic is not None else None,
        update=_no_grad_update(named, named[shown], lr),
        accumulation=accumulation,
        detach_vs_no_grad=_detach_vs_no_grad(model, loss_fn, batch, named[shown]),
    )


def _analytic_gradient(model: nn.Module, loss_fn: nn.Module, batch: Any) -> AnalyticGradient | None:
    # A loss of the parameters alone knows its derivative with respect to its input, which is
    # the parameter itself only for a vector model (the model is its own prediction).
    if batch is None and isinstance(loss_fn, ParameterLoss) and isinstance(model, VectorModel):
        return loss_fn.analytic_gradient
    return None


def _vector_jacobian_product(
    model: nn.Module, loss_fn: nn.Module, batch: Any, loss: Tensor, params: list[Tensor]
) -> VectorJacobianProduct:
    flat_loss = loss.reshape(-1)
    n_params = sum(p.numel() for p in params)
    jacobian = None
    if flat_loss.numel() * n_params <= MAX_JACOBIAN_ENTRIES:
        rows = []
        for element in flat_loss:  # one backward per loss element: row i is d loss_i / d θ
            grads = torch.autograd.grad(element, params, retain_graph=True, allow_unused=True)
            rows.append(_flat(grads, params).tolist())
        jacobian = rows
    ones = torch.ones_like(loss)
    product = _flat(torch.autograd.grad(loss, params, grad_outputs=ones, retain_graph=True), params)
    of_sum = _flat(torch.autograd.grad(forward(model, loss_fn, batch)[0].sum(), params), params)
    return VectorJacobianProduct(
        loss_shape=tuple(loss.shape),
        jacobian=jacobian,
        product=_shown(product),
        size=product.numel(),
        max_diff_from_sum=(product - of_sum).abs().max().item(),
    )


def _no_grad_update(
    named: Sequence[tuple[str, Tensor]], shown: tuple[str, Tensor], lr: float
) -> NoGradUpdate:
    saved = [p.detach().clone() for _, p in named]
    name, parameter = shown
    grad = parameter.grad
    assert grad is not None
    x = _symbol(name)
    try:
        parameter.sub_(lr * grad)  # `x -= lr * x.grad` with grad enabled: refused, nothing written
        in_place_error = "(no error)"
    except RuntimeError as error:
        in_place_error = str(error).splitlines()[0].rstrip(".")
    out_of_place = TensorFacts.of(f"{x} - lr * {x}.grad", parameter - lr * grad)

    with torch.no_grad():
        for _, p in named:
            if p.grad is not None:
                p -= lr * p.grad
    after = [TensorFacts.of(name, p) for name, p in named]
    changed = any(not torch.equal(p, before) for (_, p), before in zip(named, saved, strict=True))
    with torch.no_grad():  # undo: training starts from the configured point
        for (_, p), before in zip(named, saved, strict=True):
            p.copy_(before)
    return NoGradUpdate(lr, after, changed, in_place_error, out_of_place)


def _detach_vs_no_grad(
    model: nn.Module, loss_fn: nn.Module, batch: Any, parameter: tuple[str, Tensor]
) -> list[TensorFacts]:
    name, p = parameter
    x = _symbol(name)
    facts = [TensorFacts.of(x, p, p), TensorFacts.of(f"{x} ** 2", p**2, p)]
    detached = p.detach()
    facts += [
        TensorFacts.of(f"{x}.detach()", detached, p),
        TensorFacts.of(f"{x}.detach() ** 2", detached**2, p),
    ]
    with torch.no_grad():
        squared = p**2
        loss = forward(model, loss_fn, batch)[0]
    facts += [
        TensorFacts.of(f"with torch.no_grad(): {x} ** 2", squared, p),
        TensorFacts.of("with torch.no_grad(): loss", loss),
    ]
    return facts


def _data_facts(batch: Any) -> list[TensorFacts]:
    if batch is None:
        return []
    return [
        TensorFacts.of(label, tensor)
        for label, tensor in zip(("inputs", "targets"), batch, strict=False)
        if isinstance(tensor, Tensor)
    ]


def _flat(grads: Iterable[Tensor | None], params: list[Tensor]) -> Tensor:
    parts = [
        (g if g is not None else torch.zeros_like(p)).reshape(-1)
        for g, p in zip(grads, params, strict=True)
    ]
    return torch.cat(parts).detach().cpu()


def _shown(values: Tensor) -> list[float]:
    return values.reshape(-1)[:SHOWN_VALUES].tolist()


def _name(function: Any) -> str | None:
    return None if function is None else type(function).__name__


def _symbol(name: str) -> str:
    """The parameter as code: `x` for the vector model, `p` for a name that is no identifier."""
    return name if name.isidentifier() else "p"


def _first_line(text: str | None) -> str | None:
    return text.strip().splitlines()[0] if text else None


# ---------------------------------------------------------------------------------- markdown
def _markdown(report: ExplainReport) -> str:
    sections = [
        "# What autograd does on this run",
        "One forward and backward pass on the configured problem, before training starts; the "
        "model is left exactly as it was.",
        _leaves_section(report),
        _graph_section(report),
        _backward_section(report),
        _gradient_check_section(report),
        _update_section(report),
        _accumulation_section(report),
        _detach_section(report),
    ]
    return "\n\n".join(sections) + "\n"


def _leaves_section(report: ExplainReport) -> str:
    lines = [
        "## Leaves: the tensors gradients flow back to",
        "",
        "Created by the user (here: the model's parameters), not by an operation, with "
        "`requires_grad=True`: autograd records every operation on them.",
        "",
        _facts_table(report.leaves, shares=False),
    ]
    if report.data:
        lines += [
            "",
            "The batch's tensors are leaves too, but need no gradient, so no graph is recorded "
            "for them:",
            "",
            _facts_table(report.data, shares=False),
        ]
    else:
        lines += ["", "No data: the loss is a function of the parameters alone."]
    return "\n".join(lines)


def _graph_section(report: ExplainReport) -> str:
    counts = report.graph.node_counts()
    operations = ", ".join(
        f"{count} {name}" for name, count in counts.most_common() if name != ACCUMULATE_GRAD
    )
    leaves = ", ".join(f"`{leaf}`" for leaf in report.graph.leaves())
    lines = [
        "## The backward graph",
        "",
        f"The forward pass gave `loss` (shape {_shape(report.loss.shape)}, "
        f"{'sum' if report.loss.shape else 'value'} {report.loss_value:.6g}) with "
        f"`grad_fn={report.loss.grad_fn}`. Walking `grad_fn` through `next_functions`:",
        "",
        "```",
        report.graph.render(),
        "```",
        "",
        f"Read `A <- B` as: backward passes A's gradient on to B (B made A's input). "
        f"{operations}; the leaves ({leaves}) stand for their `AccumulateGrad` nodes, which "
        "add the gradient into `.grad`.",
    ]
    if report.graph.truncated:
        lines.append("The graph is cut off here: it has more nodes than are walked.")
    return "\n".join(lines)


def _backward_section(report: ExplainReport) -> str:
    vjp = report.vjp
    if vjp is None:
        return (
            "## Backward\n\n"
            "The loss is a scalar: `loss.backward()` starts the chain rule from "
            "d loss / d loss = 1 and fills `.grad` of every leaf."
        )
    lines = [
        "## Backward of a vector loss: a vector-Jacobian product",
        "",
        f"The loss has shape {_shape(vjp.loss_shape)}, not a scalar, so `backward` needs the "
        "vector v of the product vᵀJ, with J = d loss / d parameters: "
        "`loss.backward(gradient=torch.ones_like(loss))`.",
    ]
    if vjp.jacobian is not None:
        lines += ["", "J (one row per loss element):", "", "```"]
        lines += ["[" + ", ".join(f"{v:9.4g}" for v in row) + "]" for row in vjp.jacobian]
        lines += ["```"]
    lines += [
        "",
        f"vᵀJ with v = ones: {_vector(vjp.product, vjp.size)}; it equals the gradient of "
        f"`loss.sum()` (max difference {vjp.max_diff_from_sum:.3g}).",
    ]
    return "\n".join(lines)


def _gradient_check_section(report: ExplainReport) -> str:
    check = report.gradient_check
    rows = [
        "| autograd against | coordinates | max abs error | max rel error | worst coordinate: "
        "autograd / reference | result |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for comparison in check.comparisons:
        worst = comparison.worst[0]
        rows.append(
            f"| {comparison.reference} | {comparison.checked} of {check.total_coordinates} | "
            f"{comparison.max_abs_error:.3g} | {comparison.max_rel_error:.3g} | "
            f"{worst.name}: {worst.autograd:.10g} / {worst.reference:.10g} | "
            f"{'PASS' if comparison.passed else 'FAIL'} |"
        )
    lines = [
        "## Gradient check",
        "",
        "Autograd's gradient against references computed another way, all in float64 on a copy "
        "of the model (finite differences on a seeded sample of coordinates for a big model).",
        "",
        *rows,
        "",
        f"Tolerance: a coordinate passes when |autograd - reference| <= {check.atol:g} + "
        f"{check.rtol:g} * |reference| (`torch.autograd.gradcheck`'s defaults); the relative "
        f"error is taken against max(|reference|, {check.atol:g}).",
    ]
    if report.analytic_note:
        lines.append(f"The analytic gradient: {report.analytic_note}")
    lines += ["", f"**Gradient check: {'PASS' if check.passed else 'FAIL'}**"]
    return "\n".join(lines)


def _update_section(report: ExplainReport) -> str:
    update = report.update
    lines = [
        "## The update under `torch.no_grad()` builds no graph",
        "",
        f"`with torch.no_grad(): p -= lr * p.grad` (lr {update.lr:g}) on every parameter, then "
        f"undone. The values {'moved' if update.changed else 'did not move'}; each parameter "
        "is still a leaf with no `grad_fn`:",
        "",
        _facts_table(update.after, shares=False),
        "",
        "With grad enabled the same in-place update is refused: "
        f"`RuntimeError: {update.in_place_error}`. Written out of place, "
        f"`{update.out_of_place.expression}` would be a graph node "
        f"(`grad_fn={update.out_of_place.grad_fn}`, `is_leaf={update.out_of_place.is_leaf}`), "
        "and every step's graph would reach back through all earlier updates.",
    ]
    return "\n".join(lines)


def _accumulation_section(report: ExplainReport) -> str:
    accumulation = report.accumulation
    return "\n".join(
        [
            "## `.grad` accumulates",
            "",
            "`backward()` adds into `.grad`; it does not overwrite it. Two forward/backward "
            f"passes without zeroing in between, on `{accumulation.parameter}`:",
            "",
            f"- after one: {_vector(accumulation.after_one, accumulation.size)}",
            f"- after two: {_vector(accumulation.after_two, accumulation.size)}: twice the "
            f"first (max error {accumulation.max_error:.3g})",
            "",
            "That is why the loop calls `optimizer.zero_grad()` after every update.",
        ]
    )


def _detach_section(report: ExplainReport) -> str:
    return "\n".join(
        [
            "## `detach()` and `torch.no_grad()` side by side",
            "",
            "Both give tensors outside the graph: `detach()` a new tensor sharing the "
            "parameter's storage, `no_grad` a whole block of operations recorded nowhere (how "
            "evaluation runs).",
            "",
            _facts_table(report.detach_vs_no_grad, shares=True),
        ]
    )


def _facts_table(facts: list[TensorFacts], shares: bool) -> str:
    header = "| tensor | shape | requires_grad | is_leaf | grad_fn |"
    rule = "| --- | --- | --- | --- | --- |"
    if shares:
        header, rule = header + " shares storage |", rule + " --- |"
    rows = [header, rule]
    for f in facts:
        row = f"| `{f.expression}` | {_shape(f.shape)} | {f.requires_grad} | {f.is_leaf} | "
        row += f"{f.grad_fn} |"
        if shares:
            row += (
                " - |" if f.shares_storage is None else f" {'yes' if f.shares_storage else 'no'} |"
            )
        rows.append(row)
    return "\n".join(rows)


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _vector(values: list[float], size: int) -> str:
    more = ", ..." if size > len(values) else ""
    return "[" + ", ".join(f"{v:.6g}" for v in values) + more + "]"
