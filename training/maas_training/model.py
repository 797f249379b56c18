"""The tabular MLP. Standardisation lives inside the module, so the ONNX graph takes raw values."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

MIN_STD = 1e-6


class Standardize(nn.Module):
    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))

    @torch.no_grad()
    def fit(self, x: np.ndarray) -> None:
        x64 = np.asarray(x, dtype=np.float64)
        mean = x64.mean(axis=0)
        std = x64.std(axis=0)
        # A constant column would divide by ~0; leave it unscaled instead (it carries no signal).
        std = np.where(std < MIN_STD, 1.0, std)
        self.mean.copy_(torch.from_numpy(mean.astype(np.float32)))
        self.std.copy_(torch.from_numpy(std.astype(np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class TabularMLP(nn.Module):
    """Raw features -> logits: standardise, then hidden_layers x (Linear, ReLU, Dropout)."""

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        hidden_units: int = 128,
        hidden_layers: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.scaler = Standardize(n_features)
        layers: list[nn.Module] = []
        width = n_features
        for _ in range(hidden_layers):
            layers += [nn.Linear(width, hidden_units), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden_units
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.scaler(x))


class Probabilities(nn.Module):
    """What gets exported: raw features -> softmax probabilities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


class Prediction(nn.Module):
    """What a regressor exports: raw features -> the target in its own units.

    The network fits the standardised target; undoing that lives in the graph too."""

    def __init__(self, model: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).reshape(-1) * self.std + self.mean


class FoldMean(nn.Module):
    """The k fold models of a small table's cross-validation, served as one: the mean of their
    outputs (logits, or the standardised prediction). Bagging a few hundred rows' models varies
    far less than one refit whose epoch count the folds could only guess."""

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        self.folds = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.folds]).mean(dim=0)
