"""Training a causal LM: next-token cross-entropy over token windows, with the shared loop's
checkpoints, early stopping, DDP and bf16 autocast (maas_training.trainer).

Rows are token windows ``ids`` [n, L] with ``labels`` [n, L]: the token each position is
trained to follow with (labels[:, t] is predicted from ids[:, :t]), -100 where no loss is taken
(padding, and the prompt of an instruction pair: loss on completions only).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from maas_training import log
from maas_training.trainer import (
    Checkpointer,
    DistContext,
    _adamw,
    _agree,
    _parallel,
    _Progress,
    _record,
    _resume,
)

IGNORE = -100


@dataclass(frozen=True)
class Rows:
    ids: np.ndarray  # int64 [n, L]
    labels: np.ndarray  # int64 [n, L], IGNORE where no loss

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class LMResult:
    best_epoch: int
    epochs_run: int
    best_val_loss: float
    resumed_from_epoch: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def lm_loss(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions that have a label."""
    logits = model(ids[:, :-1])[0]
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE,
    )


@torch.no_grad()
def evaluate_lm(model: nn.Module, rows: Rows, batch: int, device: Any) -> tuple[float, float]:
    """(mean token loss, top-1 next-token accuracy) over rows' labelled positions."""
    model.eval()
    loss_sum, hits, count = 0.0, 0, 0
    for s in range(0, len(rows), batch):
        ids = torch.from_numpy(rows.ids[s : s + batch]).to(device)
        labels = torch.from_numpy(rows.labels[s : s + batch]).to(device)
        logits = model(ids[:, :-1])[0].float()
        target = labels[:, 1:]
        keep = target != IGNORE
        n = int(keep.sum())
        if n == 0:
            continue
        ce = F.cross_entropy(logits[keep], target[keep], reduction="sum")
        loss_sum += float(ce)
        hits += int((logits[keep].argmax(-1) == target[keep]).sum())
        count += n
    return (loss_sum / count if count else math.nan), (hits / count if count else 0.0)


def _schedule(optimizer: torch.optim.Optimizer, total: int) -> Any:
    """Linear warm-up over 5 % of the steps, then cosine to a tenth of the learning rate."""
    warm = max(1, total // 20)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total - warm))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _epoch(ddp_model, optimizer, scheduler, train: Rows, order, batch: int, autocast, device):
    ddp_model.train()
    loss_sum, seen = 0.0, 0
    for idx in np.array_split(order, max(1, math.ceil(len(order) / batch))):
        ids = torch.from_numpy(train.ids[idx]).to(device)
        labels = torch.from_numpy(train.labels[idx]).to(device)
        with autocast():
            loss = lm_loss(ddp_model, ids, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ddp_model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        loss_sum += float(loss.detach()) * len(idx)
        seen += len(idx)
    return loss_sum / max(1, seen)


def _order(n: int, epoch: int, seed: int, ctx: DistContext) -> np.ndarray:
    order = np.random.default_rng(seed + epoch).permutation(n)
    return order[ctx.rank :: ctx.world_size] if ctx.enabled else order


def train_lm(
    model: nn.Module,
    train: Rows,
    validation: Rows,
    *,
    hp: Any,
    device: torch.device,
    use_bf16: bool,
    ctx: DistContext,
    checkpointer: Checkpointer | None,
) -> LMResult:
    """Fit model (its trainable parameters) on train; keep the epoch of least validation loss."""
    t0 = time.perf_counter()
    model.to(device)
    optimizer = _adamw(model, hp.learning_rate, hp.weight_decay)
    per_rank = math.ceil(len(train) / max(1, ctx.world_size))
    scheduler = _schedule(optimizer, hp.epochs * max(1, math.ceil(per_rank / hp.batch_size)))
    p = _Progress(best_state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
    start = _resume(checkpointer, ctx, model, optimizer, p)
    for _ in range(start * max(1, math.ceil(per_rank / hp.batch_size))):
        scheduler.step()
    ddp_model, _ = _parallel(model, ctx, device, len(train), hp.seed)
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if use_bf16
        else contextlib.nullcontext
    )
    epoch = start
    while epoch < hp.epochs and not p.stopped:
        epoch += 1
        order = _order(len(train), epoch, hp.seed, ctx)
        loss = _epoch(
            ddp_model, optimizer, scheduler, train, order, hp.batch_size, autocast, device
        )
        loss = _agree(ctx, loss, "max")
        val = evaluate_lm(model, validation, hp.batch_size, device)
        _record(p, ctx, model, epoch, loss, val, hp.patience, "val_accuracy")
        if checkpointer is not None:
            checkpointer.save(p.checkpoint(epoch, model, optimizer))
    model.load_state_dict(p.best_state)
    model.to("cpu").float().eval()
    log.info(
        f"best epoch {p.best_epoch}/{epoch}: val_loss {p.best_val_loss:.4f} "
        f"(perplexity {math.exp(min(p.best_val_loss, 50)):.2f})"
    )
    return LMResult(
        p.best_epoch, epoch, p.best_val_loss, start, time.perf_counter() - t0, p.history
    )
