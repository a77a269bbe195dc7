"""A gradtrain plugin: `model=polynomial`, a polynomial of each feature up to `degree`.

    pip install ./examples/plugin
    python train.py experiment=linear_regression model=polynomial model.degree=3

gradtrain finds it through the entry point `model.polynomial` (pyproject.toml), validates the
keys of `model` with `PolynomialConfig`, and builds the model with `build_polynomial`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import PositiveInt
from torch import Tensor, nn

from gradtrain.config import StrictModel
from gradtrain.plugins import Component


class PolynomialConfig(StrictModel):
    """The keys of `model=polynomial` (strict like gradtrain's own: unknown keys, wrong types
    and out-of-range values are refused by key, e.g. `model.degree`)."""

    name: Literal["polynomial"]
    degree: PositiveInt = 2  # 1 is a linear model
    in_features: PositiveInt | None = None  # null: from the data
    out_features: PositiveInt | None = None  # null: from the loss and the data


class PolynomialModel(nn.Module):
    """`y = b + sum_i sum_k w_ik x_i**k / s_k` for k = 1..degree: a linear layer on the powers
    of each feature. With one output it returns shape (batch,), like gradtrain's linear model.

    `s_k` is the root of E[x**(2k)] for a standard normal x, (2k-1)!! (1, 3, 15, 105, ...): on
    standardised features every power then has a spread near 1, so a learning rate that suits
    a linear model suits this one (unscaled, x**3 makes SGD at lr=0.1 diverge)."""

    powers: Tensor  # (degree,): 1, 2, ..., degree (buffers: saved with the weights)
    scales: Tensor  # (degree,): s_1, ..., s_degree

    def __init__(self, in_features: int, out_features: int, degree: int = 2) -> None:
        super().__init__()
        self.degree = degree
        moments = [math.prod(range(1, 2 * k, 2)) for k in range(1, degree + 1)]
        self.register_buffer("powers", torch.arange(1, degree + 1, dtype=torch.float32))
        self.register_buffer("scales", torch.tensor(moments, dtype=torch.float32).sqrt())
        self.linear = nn.Linear(in_features * degree, out_features)

    def forward(self, inputs: Tensor) -> Tensor:
        # (batch, features, 1) ** (degree,) -> (batch, features, degree) -> (batch, features*degree)
        expanded = (inputs.unsqueeze(-1) ** self.powers / self.scales).flatten(1)
        outputs = self.linear(expanded)
        return outputs.squeeze(-1) if outputs.shape[-1] == 1 else outputs


def build_polynomial(in_features: int, out_features: int, degree: int) -> PolynomialModel:
    return PolynomialModel(in_features, out_features, degree=degree)


polynomial = Component(config=PolynomialConfig, build=build_polynomial)
