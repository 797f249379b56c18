"""Training loop: AdamW + cross-entropy (classes) or squared error (a standardised target),
early stopping on validation loss, checkpoints, DDP."""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from maas_training import log

CHECKPOINT_FORMAT = 1
CHECKPOINT_FILE = "checkpoint.pt"


# --- distributed context ------------------------------------------------------------------


@dataclass(frozen=True)
class DistContext:
    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistContext:
    """Under torchrun (WORLD_SIZE > 1): join the process group; otherwise a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend)
    ctx = DistContext(True, dist.get_rank(), dist.get_world_size(), local_rank)
    log.info(f"distributed: rank {ctx.rank}/{ctx.world_size} (local {local_rank}, {backend})")
    return ctx


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def pick_device(ctx: DistContext) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", ctx.local_rank if ctx.enabled else torch.cuda.current_device())
    return torch.device("cpu")


def bf16_ok(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


# --- checkpoints --------------------------------------------------------------------------


class Checkpointer:
    """One file, rewritten atomically each epoch; resumes only for the same data + settings."""

    def __init__(
        self, directory: Path, fingerprint: str, enabled_write: bool, name: str = CHECKPOINT_FILE
    ) -> None:
        self.path = directory / name
        self.fingerprint = fingerprint
        self.enabled_write = enabled_write

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:
            log.warn(f"ignoring unreadable checkpoint {self.path}: {type(e).__name__}: {e}")
            return None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            log.info(f"ignoring checkpoint {self.path}: unknown format")
            return None
        if state.get("fingerprint") != self.fingerprint:
            log.info(f"ignoring checkpoint {self.path}: it is for other data or hyperparameters")
            return None
        return state

    def save(self, state: dict[str, Any]) -> None:
        if not self.enabled_write:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save({"format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint, **state}, tmp)
        os.replace(tmp, self.path)


# --- training -----------------------------------------------------------------------------


@dataclass
class TrainResult:
    best_epoch: int
    epochs_run: int
    best_val_loss: float
    best_val_accuracy: float
    stopped_early: bool
    resumed_from_epoch: int
    seconds: float
    # One entry per epoch run (resumed epochs included): epoch, train_loss, val_loss, val_accuracy.
    history: list[dict[str, float]] = field(default_factory=list)


def regression(y: torch.Tensor | np.ndarray) -> bool:
    """Float targets are a regression's (standardised values); int64 ones are class indices."""
    return bool(y.dtype in (torch.float32, torch.float64, np.float32, np.float64))


def loss_of(
    out: torch.Tensor, y: torch.Tensor, reduction: str = "mean", weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Squared error, or cross-entropy (weighted per class when `weight` is given)."""
    if regression(y):
        return F.mse_loss(out.reshape(-1), y.float(), reduction=reduction)
    return F.cross_entropy(out, y, weight=weight, reduction=reduction)


def score_name(y: torch.Tensor | np.ndarray) -> str:
    """What evaluate's second figure is: R^2 of a regression, accuracy of a classifier."""
    return "val_r2" if regression(y) else "val_accuracy"


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch: int = 8192,
    weight: torch.Tensor | None = None,
):
    """fp32 loss (class-weighted when `weight` is given) and accuracy, or R^2 for a regression
    (what the exported graph will do)."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), batch):
        out = model(x[start : start + batch]).float()
        yb = y[start : start + batch]
        total_loss += float(loss_of(out, yb, reduction="sum", weight=weight))
        if not regression(yb):
            correct += int((out.argmax(dim=1) == yb).sum())
    model.train(was_training)
    n = max(1, len(x))
    if weight is not None and not regression(y):
        total_loss *= n / max(float(weight[y].sum()), 1e-12)  # cross-entropy's weighted mean
    if regression(y):
        variance = float(torch.var(y.double(), correction=0)) if len(y) else 0.0
        return total_loss / n, 1.0 - (total_loss / n) / variance if variance > 0 else 0.0
    return total_loss / n, correct / n


def _state_to_cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _agree(ctx: DistContext, value: float, op: str) -> float:
    """Make every rank take the same decision (min/max over ranks)."""
    if not ctx.enabled:
        return value
    import torch.distributed as dist

    device = torch.device("cuda", ctx.local_rank) if torch.cuda.is_available() else None
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.MAX)
    return float(t.item())


def _adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    try:  # the fused kernel is several times faster for small models (CPU since torch 2.4)
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)


def set_cpu_threads(batch_size: int, width: int) -> int:
    """Tiny matmuls run fastest on one thread (OpenMP sync costs more than it saves, and far
    more on a busy host); give big batches more. OMP_NUM_THREADS, when set, wins."""
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cores = os.cpu_count() or 1
    threads = max(1, min(cores, (batch_size * width) // 32768))
    torch.set_num_threads(threads)
    return threads


@dataclass
class _Progress:
    """What the loop carries from epoch to epoch, and what a checkpoint restores."""

    best_state: dict[str, torch.Tensor]
    best_val_loss: float = math.inf
    best_val_accuracy: float = 0.0
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped: bool = False
    history: list[dict[str, float]] = field(default_factory=list)

    def checkpoint(self, epoch: int, model: nn.Module, optimizer) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "model": _state_to_cpu(model.state_dict()),
            "optimizer": optimizer.state_dict(),
            "best_model": self.best_state,
            "best_val_loss": self.best_val_loss,
            "best_val_accuracy": self.best_val_accuracy,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "stopped": self.stopped,
            "history": self.history,
        }


def _resume(
    checkpointer: Checkpointer | None, ctx: DistContext, model: nn.Module, optimizer, p: _Progress
) -> int:
    """Load the checkpoint into model, optimizer and p; the last epoch it holds (0: none).

    Managed spot: every rank must agree, or nobody resumes."""
    state = checkpointer.load() if checkpointer else None
    have = float(state["epoch"]) if state else -1.0
    if ctx.enabled and _agree(ctx, have, "min") != _agree(ctx, have, "max"):
        state = None
    if state is None:
        return 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    p.best_state = state["best_model"]
    p.best_val_loss = float(state["best_val_loss"])
    p.best_val_accuracy = float(state["best_val_accuracy"])
    p.best_epoch = int(state["best_epoch"])
    p.bad_epochs = int(state["bad_epochs"])
    p.stopped = bool(state["stopped"])
    p.history = [dict(h) for h in state.get("history", [])]
    log.info(f"resuming from checkpoint at epoch {state['epoch']} (best epoch {p.best_epoch})")
    return int(state["epoch"])


def _parallel(model: nn.Module, ctx: DistContext, device: torch.device, n: int, seed: int):
    """The module the optimizer steps through (DDP across ranks) and the rank's sampler."""
    if not ctx.enabled:
        return model, None
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data.distributed import DistributedSampler

    ddp = DistributedDataParallel(
        model, device_ids=[ctx.local_rank] if device.type == "cuda" else None
    )
    sampler = DistributedSampler(
        range(n), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed
    )
    return ddp, sampler


def _train_epoch(
    ddp_model, optimizer, xt, yt, order, batch_size: int, autocast, ctx, device, weight=None
):
    """One pass over order; the mean train loss over every rank's rows."""
    ddp_model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float32)
    seen = 0
    for idx in order.split(batch_size):
        xb, yb = xt[idx], yt[idx]
        with autocast():
            logits = ddp_model(xb)
        loss = loss_of(logits.float(), yb, weight=weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(idx)
        seen += len(idx)
    train_loss = float(loss_sum) / max(1, seen)
    if ctx.enabled:
        import torch.distributed as dist

        t = torch.tensor([train_loss * seen, float(seen)], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        train_loss = float(t[0] / t[1])
    return train_loss


def _record(
    p: _Progress, ctx, model, epoch: int, train_loss: float, val: tuple, patience: int, score: str
):
    """Early-stopping bookkeeping for one epoch (every rank takes the same decision)."""
    val_loss, val_acc = val
    if not math.isfinite(train_loss) or not math.isfinite(val_loss):
        from maas_training.errors import TrainingError

        raise TrainingError(
            f"training diverged at epoch {epoch} (loss is not finite); try a lower learning_rate"
        )
    improved = bool(_agree(ctx, 1.0 if val_loss < p.best_val_loss - 1e-7 else 0.0, "min"))
    if improved:
        p.best_val_loss, p.best_val_accuracy, p.best_epoch, p.bad_epochs = (
            val_loss,
            val_acc,
            epoch,
            0,
        )
        p.best_state = _state_to_cpu(model.state_dict())
    else:
        p.bad_epochs += 1
    p.stopped = p.bad_epochs >= patience
    p.history.append(
        {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, score: val_acc}
    )
    if ctx.is_main:
        log.metric_line(epoch=epoch, train_loss=train_loss, val_loss=val_loss, **{score: val_acc})


def train(
    model: nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    patience: int,
    seed: int,
    device: torch.device,
    use_bf16: bool,
    ctx: DistContext,
    checkpointer: Checkpointer | None,
    keep_last: bool = False,
    eval_batch: int = 8192,
    class_weights: np.ndarray | None = None,
) -> TrainResult:
    """Train with early stopping on validation loss; restores the best epoch's weights.

    keep_last: keep the final weights instead (a refit, whose "validation" is in-sample).
    class_weights: per class, in the training and the validation loss alike (imbalance).
    """
    t0 = time.perf_counter()
    model.to(device)
    xt, yt = torch.from_numpy(x_train).to(device), torch.from_numpy(y_train).to(device)
    xv, yv = torch.from_numpy(x_val).to(device), torch.from_numpy(y_val).to(device)
    optimizer = _adamw(model, learning_rate, weight_decay)
    weight = None
    if class_weights is not None:
        weight = torch.as_tensor(class_weights, dtype=torch.float32, device=device)
    p = _Progress(best_state=_state_to_cpu(model.state_dict()))
    resumed_from = _resume(checkpointer, ctx, model, optimizer, p)
    ddp_model, sampler = _parallel(model, ctx, device, len(xt), seed)
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if use_bf16
        else contextlib.nullcontext
    )
    epoch = resumed_from
    for epoch in range(resumed_from + 1, epochs + 1 if not p.stopped else resumed_from + 1):
        torch.manual_seed(seed * 100_003 + epoch)  # dropout/shuffle reproducible across resumes
        if sampler is not None:
            sampler.set_epoch(epoch)
            order = torch.tensor(list(iter(sampler)), dtype=torch.long, device=device)
        else:
            order = torch.randperm(len(xt), device="cpu").to(device)
        loss = _train_epoch(
            ddp_model, optimizer, xt, yt, order, batch_size, autocast, ctx, device, weight
        )
        val = evaluate(model, xv, yv, eval_batch, weight)
        _record(p, ctx, model, epoch, loss, val, patience, score_name(y_val))
        if checkpointer is not None:
            checkpointer.save(p.checkpoint(epoch, model, optimizer))
        if p.stopped:
            if ctx.is_main:
                log.info(f"early stopping at epoch {epoch}: no improvement for {patience} epochs")
            break
    if not keep_last:
        model.load_state_dict(p.best_state)
    model.to("cpu").float().eval()
    return TrainResult(
        best_epoch=p.best_epoch,
        epochs_run=epoch,
        best_val_loss=p.best_val_loss,
        best_val_accuracy=p.best_val_accuracy,
        stopped_early=p.stopped,
        resumed_from_epoch=resumed_from,
        seconds=time.perf_counter() - t0,
        history=p.history,
    )
