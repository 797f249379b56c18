"""Compression candidates: smaller students of the model, healed by distillation against it.

Unstructured (magnitude) pruning does not make ONNX Runtime faster on a CPU: the matrices keep
their shapes. What does is removing whole structures, so each student here is a smaller dense
model initialised from the teacher's own weights:

- transformer encoders (maas_training.bert): fewer layers (evenly spaced, the last one kept:
  6 -> 4 -> 3), or half the FFN channels of every layer (those with the largest
  ||W_in row|| x ||W_out column||);
- MLPs (maas_training.model.TabularMLP): hidden layers half and a quarter as wide (the units
  with the largest in x out weight norms).

Each student is then distilled against the teacher on the run's own inputs (training rows, or
texts other than the quality gate's sample): the teacher's outputs are the targets (cosine for
embeddings, KL divergence for class probabilities). The job exports each beside model.onnx
(contract.COMPRESSED_DIR, listed in contract.COMPRESSED_FILE); the optimizer quantizes it like
model.onnx, gates it against the unpruned model, times it with the rest and serves it only if
it wins. hyperparameters compress_candidates (0: none) and compress_seconds bound the work.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from maas_training import log
from maas_training.shared import contract

HOLDOUT_FRACTION = 0.1  # of the distillation inputs, kept back to report how close it got
TRANSFORMER_LR = 1e-4
MLP_LR = 3e-3
MAX_EPOCHS = {"transformer": 10, "mlp": 200}  # passes over the distillation rows, at most


@dataclass(frozen=True)
class Student:
    name: str
    how: str
    module: nn.Module  # same inputs and outputs as the teacher


@dataclass(frozen=True)
class Distilled:
    student: Student
    stats: dict[str, Any]


def parameters(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


# --- transformer students -------------------------------------------------------------------


def kept_layers(n: int, keep: int) -> list[int]:
    """`keep` of n layers, evenly spaced, the first and the last among them."""
    if keep >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / (keep - 1)) for i in range(keep)}) if keep > 1 else [n - 1]


def drop_layers(encoder: Any, keep: list[int]) -> Any:
    """A copy of a BertEncoder with only the layers `keep` (in order)."""
    student = copy.deepcopy(encoder)
    student.layers = nn.ModuleList(student.layers[i] for i in keep)
    student.config = dataclasses.replace(encoder.config, num_hidden_layers=len(keep))
    return student


def prune_ffn(encoder: Any, fraction: float) -> Any:
    """A copy of a BertEncoder keeping `fraction` of every layer's FFN channels (the largest)."""
    student = copy.deepcopy(encoder)
    width = max(1, round(encoder.config.intermediate_size * fraction))
    with torch.no_grad():
        for layer in student.layers:
            w_in, w_out = layer.intermediate.weight, layer.output.weight  # [I, H], [H, I]
            score = w_in.norm(dim=1) * w_out.norm(dim=0)
            keep = torch.sort(torch.topk(score, width).indices).values
            inner = nn.Linear(w_in.shape[1], width)
            inner.weight.copy_(w_in[keep])
            inner.bias.copy_(layer.intermediate.bias[keep])
            outer = nn.Linear(width, w_out.shape[0])
            outer.weight.copy_(w_out[:, keep])
            outer.bias.copy_(layer.output.bias)
            layer.intermediate, layer.output = inner, outer
    student.config = dataclasses.replace(encoder.config, intermediate_size=width)
    return student


def encoder_plans(encoder: Any) -> list[tuple[str, str, Callable[[Any], Any]]]:
    """(name, how, encoder -> smaller encoder), most conservative first."""
    n = encoder.config.num_hidden_layers
    plans: list[tuple[str, str, Callable[[Any], Any]]] = []
    four, three = max(1, round(n * 2 / 3)), max(1, n // 2)
    if four < n:
        keep = kept_layers(n, four)
        plans.append((f"layers-{four}", f"{four} of {n} layers {keep}", _dropper(keep)))
    plans.append(
        ("ffn-50", "half the FFN channels of every layer (largest weight norms)", _ffn(0.5))
    )
    if three < four:
        keep = kept_layers(n, three)
        plans.append((f"layers-{three}", f"{three} of {n} layers {keep}", _dropper(keep)))
    return plans


def _dropper(keep: list[int]) -> Callable[[Any], Any]:
    return lambda encoder: drop_layers(encoder, keep)


def _ffn(fraction: float) -> Callable[[Any], Any]:
    return lambda encoder: prune_ffn(encoder, fraction)


def transformer_students(teacher: nn.Module, limit: int) -> list[Student]:
    """Copies of a module holding a BertEncoder as `.encoder`, each with a smaller encoder."""
    out = []
    for name, how, shrink in encoder_plans(teacher.encoder)[:limit]:
        student = copy.deepcopy(teacher)
        student.encoder = shrink(teacher.encoder)
        # The embedding tables are the teacher's and stay so: most of the parameters (MiniLM:
        # 12M of 23M), and their dense gradients were most of a CPU step's time.
        student.encoder.embeddings.requires_grad_(False)
        out.append(Student(name, how, student))
    return out


# --- MLP students -----------------------------------------------------------------------------


def narrow_mlp(teacher: nn.Module, width: int) -> nn.Module:
    """A TabularMLP copy whose hidden layers keep `width` units each (largest in x out norms)."""
    student = copy.deepcopy(teacher)
    linears = [m for m in student.net if isinstance(m, nn.Linear)]
    keep_prev: torch.Tensor | None = None
    with torch.no_grad():
        for i, lin in enumerate(linears):
            w, b = lin.weight, lin.bias
            if keep_prev is not None:
                w = w[:, keep_prev]
            if i < len(linears) - 1:  # a hidden layer: keep its strongest units
                nxt = linears[i + 1].weight
                score = w.norm(dim=1) * nxt.norm(dim=0)
                keep = torch.sort(torch.topk(score, min(width, len(score))).indices).values
                w, b = w[keep], b[keep]
                keep_prev = keep
            new = nn.Linear(w.shape[1], w.shape[0])
            new.weight.copy_(w)
            new.bias.copy_(b)
            _replace(student.net, lin, new)
    return student


def _replace(seq: nn.Sequential, old: nn.Module, new: nn.Module) -> None:
    for i, m in enumerate(seq):
        if m is old:
            seq[i] = new
            return


def mlp_students(teacher: nn.Module, limit: int) -> list[Student]:
    """Narrower copies of a TabularMLP with hidden layers (none for a linear model)."""
    hidden = [m.out_features for m in teacher.net if isinstance(m, nn.Linear)][:-1]
    if not hidden:
        return []
    width = max(hidden)
    out = []
    for divisor in (2, 4, 8):
        w = max(1, width // divisor)
        if w < width:
            how = f"hidden layers {hidden} -> {w} units each (largest weight norms)"
            out.append(Student(f"hidden-{w}", how, narrow_mlp(teacher, w)))
    return out[:limit]


# --- distillation -----------------------------------------------------------------------------


def _loss(kind: str, got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    if kind == "cosine":  # embeddings
        return (1.0 - F.cosine_similarity(got, want, dim=1)).mean()
    if kind == "logits":  # student and teacher both give logits
        return F.kl_div(F.log_softmax(got, 1), F.softmax(want, 1), reduction="batchmean")
    if kind == "regression":  # one standardised output each: the teacher's value is the target
        return F.mse_loss(got, want)
    # "probabilities": both give probabilities
    return F.kl_div(torch.log(got.clamp_min(1e-9)), want, reduction="batchmean")


def _agreement(kind: str, got: torch.Tensor, want: torch.Tensor) -> dict[str, float]:
    if kind == "cosine":
        cos = F.cosine_similarity(got, want, dim=1)
        return {"holdout_cosine_mean": float(cos.mean()), "holdout_cosine_min": float(cos.min())}
    if kind == "regression":
        residual = float(((got - want) ** 2).sum())
        spread = float(((want - want.mean()) ** 2).sum()) or 1.0
        return {"holdout_r2_to_teacher": 1.0 - residual / spread}
    return {"holdout_agreement": float((got.argmax(1) == want.argmax(1)).float().mean())}


class Rows:
    """The distillation inputs on the device, batched by length: a batch of token ids is cut to
    its longest row (a sorted order keeps batch-mates of similar length), so padding costs
    nothing. `lengths` is None for fixed-width inputs (tables)."""

    def __init__(
        self, inputs: tuple[np.ndarray, ...], lengths: np.ndarray | None, device: torch.device
    ) -> None:
        self.tensors = tuple(torch.from_numpy(np.ascontiguousarray(x)).to(device) for x in inputs)
        self.lengths = lengths
        self.device = device
        self.targets: torch.Tensor | None = None  # the teacher's outputs, once for all students

    def __len__(self) -> int:
        return len(self.tensors[0])

    def teach(self, teacher: nn.Module, size: int) -> None:
        self.targets = self.outputs(teacher.to(self.device), np.arange(len(self)), size)
        teacher.to("cpu")

    def batches(self, rows: np.ndarray, size: int, rng: np.random.Generator | None = None):
        """(row indices, inputs) per batch; shuffled batch order when `rng` is given."""
        if self.lengths is not None:
            rows = rows[np.argsort(self.lengths[rows], kind="stable")]
        chunks = [rows[i : i + size] for i in range(0, len(rows), size)]
        if rng is not None:
            chunks = [chunks[i] for i in rng.permutation(len(chunks))]
        for chunk in chunks:
            idx = torch.from_numpy(chunk).to(self.device)
            batch = tuple(t[idx] for t in self.tensors)
            if self.lengths is not None:
                width = max(1, int(self.lengths[chunk].max()))
                batch = tuple(b[:, :width] if b.dim() == 2 else b for b in batch)
            yield idx, batch

    @torch.no_grad()
    def outputs(self, module: nn.Module, rows: np.ndarray, size: int) -> torch.Tensor:
        """module's outputs for `rows`, in the order of `rows`."""
        module.eval()
        out: torch.Tensor | None = None
        position = {int(r): i for i, r in enumerate(rows)}
        for idx, batch in self.batches(rows, size):
            got = module(*batch).float()
            if out is None:
                out = torch.empty((len(rows), *got.shape[1:]), device=self.device)
            out[torch.tensor([position[int(r)] for r in idx.tolist()], device=self.device)] = got
        assert out is not None
        return out


def distill(
    student: Student,
    rows_in: Rows,
    *,
    kind: str,
    seconds: float,
    lr: float,
    batch_size: int,
    max_epochs: int,
    seed: int = 0,
) -> Distilled:
    """Train the student to give the teacher's outputs (rows_in.targets) for `seconds` at most."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    n = len(rows_in)
    order = rng.permutation(n)
    n_hold = max(1, int(n * HOLDOUT_FRACTION)) if n > 10 else 0
    hold, train = order[:n_hold], order[n_hold:] if n_hold else order
    targets = rows_in.targets
    assert targets is not None, "teach() first"
    model = student.module.to(rows_in.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    steps, epochs, last = 0, 0, float("nan")
    torch.manual_seed(seed)
    while epochs < max_epochs and time.perf_counter() - started < seconds:
        model.train()
        for idx, batch in rows_in.batches(train, batch_size, rng):
            loss = _loss(kind, model(*batch).float(), targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps, last = steps + 1, float(loss.detach())
            if time.perf_counter() - started >= seconds:
                break
        epochs += 1
    stats: dict[str, Any] = {
        "steps": steps,
        "epochs": epochs,
        "seconds": round(time.perf_counter() - started, 3),
        "loss": last,
        "loss_kind": kind,
        "rows": len(train),
        "device": str(rows_in.device),
    }
    if n_hold:
        got = rows_in.outputs(model, hold, batch_size)
        stats |= _agreement(kind, got, targets[torch.from_numpy(hold).to(rows_in.device)])
    model.eval().to("cpu")
    return Distilled(Student(student.name, student.how, model), stats)


def distill_all(
    students: list[Student], teacher: nn.Module, rows_in: Rows, hp: Any, **options: Any
) -> list[Distilled]:
    """The teacher's outputs once, then each student in turn, sharing what is left of
    hp.compress_seconds between them."""
    started = time.perf_counter()
    rows_in.teach(teacher, options["batch_size"])
    out: list[Distilled] = []
    for i, student in enumerate(students):
        t0 = time.perf_counter()
        left = hp.compress_seconds - (t0 - started)
        share = max(1.0, left / (len(students) - i))
        done = distill(student, rows_in, seconds=share, seed=hp.seed, **options)
        log.info(
            f"compression candidate {student.name} ({student.how}): "
            f"{parameters(student.module):,} parameters, distilled {done.stats['steps']} steps "
            f"in {time.perf_counter() - t0:.1f}s, {_said(done.stats)}"
        )
        out.append(done)
    return out


def _said(stats: dict[str, Any]) -> str:
    if "holdout_cosine_mean" in stats:
        return f"held-out cosine to the teacher {stats['holdout_cosine_mean']:.4f}"
    if "holdout_agreement" in stats:
        return f"held-out agreement with the teacher {stats['holdout_agreement']:.4f}"
    return f"loss {stats['loss']:.4g}"


def entry(done: Distilled, teacher: nn.Module) -> contract.Compressed:
    return {
        "name": done.student.name,
        "file": f"{contract.COMPRESSED_DIR}/{done.student.name}.onnx",
        "how": done.student.how + ", distilled against the full model",
        "parameters": parameters(done.student.module),
        "teacher_parameters": parameters(teacher),
        "distillation": done.stats,
    }


def write_index(model_dir: Path, entries: list[contract.Compressed]) -> None:
    import json

    (model_dir / contract.COMPRESSED_FILE).write_text(json.dumps(entries, indent=2) + "\n")


# --- what the training job calls --------------------------------------------------------------


def students_for(module: nn.Module, limit: int) -> list[Student]:
    """The students this kind of model gets: transformer encoders and MLPs; others none."""
    from maas_training.bert import BertEncoder
    from maas_training.model import TabularMLP

    if limit <= 0:
        return []
    if isinstance(getattr(module, "encoder", None), BertEncoder):
        return transformer_students(module, limit)
    if isinstance(module, TabularMLP):
        return mlp_students(module, limit)
    return []


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def compress(
    teacher: nn.Module,
    inputs: tuple[np.ndarray, ...],
    hp: Any,
    export: Callable[[nn.Module, Path], None],
    model_dir: Path,
    *,
    kind: str,
    lengths: np.ndarray | None = None,
) -> list[contract.Compressed]:
    """Students of `teacher`, distilled on `inputs` (token ids: `lengths` per row), exported by
    `export(student, path)` under model_dir/compressed/, listed in compressed.json. A student
    that fails to export is logged, not fatal: the fp32 model is the job's product; its
    students are only candidates."""
    students = students_for(teacher, hp.compress_candidates)
    entries: list[contract.Compressed] = []
    if not students:
        write_index(model_dir, entries)
        return entries
    transformer = lengths is not None
    options = {
        "kind": kind,
        "lr": TRANSFORMER_LR if transformer else MLP_LR,
        "batch_size": 16 if transformer else max(32, min(hp.batch_size, 512)),
        "max_epochs": MAX_EPOCHS["transformer" if transformer else "mlp"],
    }
    rows_in = Rows(inputs, lengths, device())
    for done in distill_all(students, teacher, rows_in, hp, **options):
        path = model_dir / contract.COMPRESSED_DIR / f"{done.student.name}.onnx"
        try:
            export(done.student.module, path)
        except Exception as e:  # an exporter failure costs this candidate only
            log.warn(f"compression candidate {done.student.name} not exported: {e}")
            path.unlink(missing_ok=True)
            continue
        entries.append(entry(done, teacher))
    write_index(model_dir, entries)
    return entries
