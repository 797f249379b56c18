"""LoRA for the causal LMs of maas_training.decoder: low-rank adapters on the attention and MLP
projections, trained with the base weights frozen, then merged into them before export (the
served graph is the plain model: no adapter ops, no extra latency)."""

from __future__ import annotations

import math

import torch
from torch import nn

from maas_training.decoder import CausalLM, Conv1D

# The projections adapted: Llama-style attention and MLP, GPT-2's fused attention and MLP.
TARGETS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "c_attn",
    "c_proj",
    "c_fc",
)


class LoRA(nn.Module):
    """base(x) + (x @ A^T @ B^T) * alpha / rank, B starting at zero (the base model at step 0)."""

    def __init__(self, base: nn.Linear | Conv1D, rank: int, alpha: float) -> None:
        super().__init__()
        n_in, n_out = _dims(base)
        self.base = base
        self.rank = rank
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, n_in))
        self.lora_b = nn.Parameter(torch.zeros(n_out, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    @torch.no_grad()
    def merged(self) -> nn.Linear | Conv1D:
        delta = (self.lora_b @ self.lora_a) * self.scale  # [out, in]
        if isinstance(self.base, Conv1D):
            self.base.weight += delta.t().to(self.base.weight.dtype)
        else:
            self.base.weight += delta.to(self.base.weight.dtype)
        return self.base


def _dims(layer: nn.Linear | Conv1D) -> tuple[int, int]:
    if isinstance(layer, Conv1D):
        return int(layer.weight.shape[0]), int(layer.weight.shape[1])
    return int(layer.in_features), int(layer.out_features)


def add_adapters(model: CausalLM, rank: int, alpha: float | None = None) -> int:
    """Freeze model and wrap its target projections; returns the trainable parameter count."""
    for p in model.parameters():
        p.requires_grad_(False)
    alpha = float(alpha if alpha is not None else 2 * rank)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if name in TARGETS and isinstance(child, nn.Linear | Conv1D):
                setattr(module, name, LoRA(child, rank, alpha))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_adapters(model: CausalLM) -> CausalLM:
    """Fold every adapter into its base weight and put the plain layer back."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRA):
                setattr(module, name, child.merged())
    for p in model.parameters():
        p.requires_grad_(True)
    return model
