"""The ngram recipe's model: a fastText-style embedding bag over hashed n-gram ids."""

from __future__ import annotations

import torch
from torch import nn


class NgramClassifier(nn.Module):
    """ids [batch, n] (padding = buckets) -> mean of their embeddings -> dropout -> linear."""

    def __init__(self, buckets: int, dim: int, n_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.pad_id = buckets
        self.embedding = nn.Embedding(buckets + 1, dim, padding_idx=buckets)
        nn.init.normal_(self.embedding.weight, std=0.1)
        with torch.no_grad():
            self.embedding.weight[buckets].zero_()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != self.pad_id).unsqueeze(-1).to(self.embedding.weight.dtype)
        summed = (self.embedding(ids) * mask).sum(dim=1)
        mean = summed / mask.sum(dim=1).clamp(min=1.0)
        return self.head(self.dropout(mean))
