"""The autograd lecture's claims, checked on gradtrain's own loss, model and optimizer."""

from __future__ import annotations

import torch

from gradtrain.losses import QuadraticLoss
from gradtrain.models import VectorModel
from gradtrain.optim import ManualSGD

LECTURE_X = [1.0, 2.0, 3.0, 4.0, 5.0]


def test_requires_grad_records_the_subtraction_as_grad_fn() -> None:
    x = VectorModel(LECTURE_X)()
    assert x.requires_grad and x.is_leaf and x.grad_fn is None
    loss = QuadraticLoss(reduction="none")(x)
    assert type(loss.grad_fn).__name__ == "SubBackward0"
    # The DAG: the subtraction's input is the power, whose input is the leaf x.
    (pow_node, _), *_ = loss.grad_fn.next_functions
    assert type(pow_node).__name__ == "PowBackward0"
    (leaf_node, _), *_ = pow_node.next_functions
    assert type(leaf_node).__name__ == "AccumulateGrad" and leaf_node.variable is x


def test_vector_loss_backward_with_ones_is_the_analytic_two_x() -> None:
    x = VectorModel(LECTURE_X).x
    loss = QuadraticLoss(reduction="none")(x)
    assert loss.shape == (5,)
    loss.backward(gradient=torch.ones_like(loss))  # the vector-Jacobian product
    assert torch.equal(x.grad, 2 * x.detach())


def test_vector_jacobian_product_equals_gradient_of_the_sum() -> None:
    x_vjp = VectorModel(LECTURE_X).x
    loss = QuadraticLoss(reduction="none")(x_vjp)
    loss.backward(gradient=torch.ones_like(loss))
    x_sum = VectorModel(LECTURE_X).x
    QuadraticLoss(reduction="sum")(x_sum).backward()
    assert torch.equal(x_vjp.grad, x_sum.grad)


def test_vector_jacobian_product_weights_each_element_by_the_vector() -> None:
    x = VectorModel(LECTURE_X).x
    v = torch.tensor([1.0, 0.0, 2.0, 0.0, -1.0])
    QuadraticLoss(reduction="none")(x).backward(gradient=v)
    assert torch.equal(x.grad, v * 2 * x.detach())  # J is diag(2x), so v^T J = v * 2x


def test_backward_accumulates_into_grad_until_it_is_zeroed() -> None:
    x = VectorModel(LECTURE_X).x
    loss_fn = QuadraticLoss()
    loss_fn(x).backward()
    loss_fn(x).backward()
    assert torch.equal(x.grad, 2 * (2 * x.detach()))
    optimizer = ManualSGD([x], lr=0.1)
    optimizer.zero_grad()
    assert torch.equal(x.grad, torch.zeros(5))


def test_manual_sgd_update_under_no_grad_leaves_x_a_leaf_without_history() -> None:
    x = VectorModel(LECTURE_X).x
    optimizer = ManualSGD([x], lr=0.1)
    QuadraticLoss()(x).backward()
    optimizer.step()
    assert x.is_leaf and x.grad_fn is None and x.requires_grad
    assert torch.allclose(x.detach(), torch.tensor(LECTURE_X) * 0.8)  # x - 0.1 * 2x
    # Had the update been recorded, the next loss's graph would reach back through it.
    loss = QuadraticLoss()(x)
    (pow_node, _), *_ = loss.grad_fn.next_functions[0][0].next_functions
    assert pow_node.next_functions[0][0].variable is x


def test_the_same_update_without_no_grad_would_enter_the_graph() -> None:
    x = VectorModel(LECTURE_X).x
    QuadraticLoss()(x).backward()
    updated = x - 0.1 * x.grad  # what p -= lr * p.grad records outside no_grad
    assert updated.grad_fn is not None and not updated.is_leaf


def test_detach_and_no_grad_both_keep_operations_out_of_the_graph() -> None:
    x = VectorModel(LECTURE_X).x
    detached = x.detach()
    assert not detached.requires_grad and detached.grad_fn is None
    assert detached.data_ptr() == x.data_ptr()  # same values, shared storage, no history
    assert (detached**2).grad_fn is None
    with torch.no_grad():
        squared = x**2
    assert not squared.requires_grad and squared.grad_fn is None
    assert (x**2).grad_fn is not None  # outside both, the operation is recorded
