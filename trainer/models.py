"""Models: plain `nn.Module`s that take plain arguments, usable without Hydra."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gradtrain.registry import Registry

MODELS: Registry[type[nn.Module]] = Registry("model")


@MODELS.register("vector")
class VectorModel(nn.Module):
    """A free parameter vector `x`: the model is its own prediction.

    This is the lecture's `torch.tensor([...], requires_grad=True)` wrapped as a module so that
    optimizers, gradient norms and checkpoints treat it like any other model.
    """

    def __init__(self, init: Sequence[float]) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.tensor(list(init), dtype=torch.float32))

    def forward(self) -> Tensor:
        return self.x

    @classmethod
    def random(cls, size: int, seed: int) -> VectorModel:
        generator = torch.Generator().manual_seed(seed)
        return cls(torch.randn(size, generator=generator).tolist())


@MODELS.register("linear")
class LinearModel(nn.Linear):
    """`torch.nn.Linear`; returns shape (batch,) when it has one output, matching 1-D targets."""

    def forward(self, inputs: Tensor) -> Tensor:
        outputs = super().forward(inputs)
        return outputs.squeeze(-1) if self.out_features == 1 else outputs


# Logistic regression is a linear layer whose outputs are read as class logits.
MODELS.register("logistic")(LinearModel)

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
}


@MODELS.register("mlp")
class MLP(nn.Module):
    """Linear -> activation -> dropout for each hidden size, then a linear head.

    Like `LinearModel`, a single output comes back as shape (batch,).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        self.hidden = nn.Sequential(*layers)
        self.head = LinearModel(width, out_features)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.head(self.hidden(inputs))
