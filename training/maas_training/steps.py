"""The steps every recipe runs through (maas_training.recipes says what differs per recipe).

Trained recipes: load -> fit each candidate on train (early stopping on validation, with
checkpoints and DDP) -> choose by validation loss -> refit the winner on train + validation
(recipes that ask) -> evaluate on test -> export (one policy, maas_training.export) -> score the
ONNX graph on test -> write the model dir. Pretrained recipes: load -> export -> write the model
dir. Only rank 0 writes; every rank trains.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from maas_training import compress, log
from maas_training.config import Paths
from maas_training.export import ExportInfo, export_model, metadata_for, verify
from maas_training.model import Probabilities
from maas_training.modeldir import ModelDir, Plot, Sample, write_model_dir
from maas_training.recipes import Encoded, Pretrained, PretrainedRecipe, TrainedRecipe, Variant
from maas_training.shared import contract
from maas_training.trainer import (
    Checkpointer,
    DistContext,
    TrainResult,
    bf16_ok,
    evaluate,
    init_distributed,
    pick_device,
    set_cpu_threads,
    shutdown_distributed,
    train,
)

CALIBRATION_ROWS = 512
CHECK_ROWS = 64  # validation rows the export is checked on (the whole test set is scored too)


@dataclass(frozen=True)
class Session:
    """Where this rank trains, and the identity its checkpoints are kept under."""

    paths: Paths
    ctx: DistContext
    device: torch.device
    use_bf16: bool
    fingerprint: str


@dataclass
class Candidate:
    variant: Variant
    model: nn.Module
    result: TrainResult


@dataclass(frozen=True)
class Scores:
    loss: float
    accuracy: float
    predicted: np.ndarray
    probabilities: np.ndarray


def run(paths: Paths, hp: Any, recipe: TrainedRecipe | PretrainedRecipe) -> dict[str, Any]:
    if isinstance(recipe, PretrainedRecipe):
        return run_pretrained(paths, hp, recipe)
    return run_trained(paths, hp, recipe)


def fingerprint(data_fingerprint: str, hp: Any, world_size: int) -> str:
    doc = {"data": data_fingerprint, "hp": hp.as_dict(), "world": world_size}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def start_session(paths: Paths, hp: Any, data: Encoded, ctx: DistContext) -> Session:
    np.random.seed(hp.seed)
    torch.manual_seed(hp.seed)
    device = pick_device(ctx)
    use_bf16 = bf16_ok(device)
    where = f"{device}{' (bf16 autocast)' if use_bf16 else ''}"
    if device.type == "cpu" and data.threads_width is not None:
        where += f", {set_cpu_threads(hp.batch_size, data.threads_width)} thread(s)"
    log.info(f"device {where}; torch {torch.__version__}")
    return Session(paths, ctx, device, use_bf16, fingerprint(data.fingerprint, hp, ctx.world_size))


def fit(
    s: Session,
    recipe: TrainedRecipe,
    data: Encoded,
    hp: Any,
    rows: np.ndarray,
    phase: str,
    epochs: int,
    refit: bool = False,
) -> tuple[nn.Module, TrainResult]:
    """Build and train one model on rows; a refit runs every epoch and keeps the last."""
    torch.manual_seed(hp.seed)
    x, y = data.x[rows], data.y[rows]
    model = recipe.build(data, hp, x)
    val = data.split.validation
    outcome = train(
        model,
        x,
        y,
        data.x[val],
        data.y[val],
        epochs=epochs,
        batch_size=hp.batch_size,
        learning_rate=hp.learning_rate,
        weight_decay=hp.weight_decay,
        patience=epochs + 1 if refit else hp.patience,
        seed=hp.seed,
        device=s.device,
        use_bf16=s.use_bf16,
        ctx=s.ctx,
        checkpointer=Checkpointer(
            s.paths.checkpoint_dir, s.fingerprint, s.ctx.is_main, name=f"checkpoint-{phase}.pt"
        ),
        keep_last=refit,
        eval_batch=recipe.eval_batch,
    )
    return model, outcome


def choose(
    s: Session, recipe: TrainedRecipe, data: Encoded, hp: Any
) -> tuple[list[Candidate], Candidate]:
    """Every candidate fitted on train (in the recipe's order), and the lowest validation loss."""
    variants = recipe.variants(hp)
    fits = []
    for v in variants:
        vhp = replace(hp, **v.overrides)
        model, r = fit(s, recipe, data, vhp, data.split.train, v.phase, hp.epochs)
        if len(variants) > 1:
            log.info(
                f"candidate {v.label}: val_loss {r.best_val_loss:.4f} "
                f"val_accuracy {r.best_val_accuracy:.4f} at epoch {r.best_epoch}"
            )
        fits.append(Candidate(v, model, r))
    # Ties go to the earlier (simpler) candidate.
    best = min(range(len(fits)), key=lambda i: (fits[i].result.best_val_loss, i))
    return fits, fits[best]


def refit(
    s: Session, recipe: TrainedRecipe, data: Encoded, hp: Any, best: Candidate
) -> tuple[nn.Module, int]:
    """The chosen candidate again on train + validation, for the epochs validation chose.

    Small data makes one split's validation curve noisy; refitting wastes no labelled row."""
    split = data.split
    both = np.concatenate([split.train, split.validation])
    epochs = max(1, round(best.result.best_epoch * len(both) / len(split.train)))
    chose = f"chose {best.variant.label}; " if best.variant.label else ""
    log.info(f"{chose}refit on train + validation ({len(both)} rows) for {epochs} epochs")
    vhp = replace(hp, **best.variant.overrides)
    model, _ = fit(s, recipe, data, vhp, both, f"{best.variant.phase}-refit", epochs, refit=True)
    return model, epochs


@torch.no_grad()
def score(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int) -> Scores:
    """fp32 test loss and accuracy (what the exported graph will do), predictions, probabilities."""
    loss, accuracy = evaluate(model, torch.from_numpy(x), torch.from_numpy(y), batch)
    probs = np.concatenate(
        [
            torch.softmax(model(torch.from_numpy(x[i : i + batch])).float(), dim=1).numpy()
            for i in range(0, len(x), batch)
        ]
    )
    return Scores(loss, accuracy, probs.argmax(axis=1), probs)


def trim(ids: np.ndarray, pad_id: int | None) -> np.ndarray:
    """Drop all-padding columns on the right (a smaller export/check batch)."""
    if pad_id is None:
        return ids
    used = np.flatnonzero((ids != pad_id).any(axis=0))
    width = int(used[-1]) + 1 if len(used) else 1
    return np.ascontiguousarray(ids[:, :width])


def sample_of(data: Encoded, rows: np.ndarray, trimmed: bool = False) -> Sample:
    x = trim(data.x[rows], data.pad_id) if trimmed else data.x[rows]
    texts = None if data.texts is None else [str(t) for t in data.texts[rows]]
    return Sample({data.input_name: x}, texts, data.y[rows])


def export_trained(
    s: Session, recipe: TrainedRecipe, data: Encoded, hp: Any, model: nn.Module, scores: Scores
) -> tuple[ExportInfo, float]:
    """Export, check on validation rows, then score the graph on the test set against torch."""
    path = s.paths.model_dir / contract.MODEL_FILE
    check = trim(data.x[data.split.validation][:CHECK_ROWS], data.pad_id)
    info = export_model(
        Probabilities(model),
        path,
        feeds={data.input_name: check},
        output_name=contract.PROBABILITIES_OUTPUT,
        class_names=data.class_names,
        metadata={**metadata_for(hp.task, hp.recipe, data.class_names), **data.metadata},
        sequence=data.pad_id is not None,
        max_abs_diff=recipe.max_abs_diff,
    )
    test = data.split.test
    feeds = {data.input_name: data.x[test]}
    _, probs = verify(
        path, feeds, scores.probabilities, contract.PROBABILITIES_OUTPUT, recipe.max_abs_diff
    )
    return info, float((probs.argmax(axis=1) == data.y[test]).mean())


def compress_trained(
    s: Session, recipe: TrainedRecipe, data: Encoded, hp: Any, model: nn.Module
) -> list[contract.Compressed]:
    """Students of the chosen model, distilled on the training rows it was fitted on."""
    train_rows = data.split.train
    x = trim(data.x[train_rows], data.pad_id)
    check = trim(data.x[data.split.validation][:CHECK_ROWS], data.pad_id)
    metadata = {**metadata_for(hp.task, hp.recipe, data.class_names), **data.metadata}

    def export(student: nn.Module, path: Any) -> None:
        export_model(
            Probabilities(student),
            path,
            feeds={data.input_name: check},
            output_name=contract.PROBABILITIES_OUTPUT,
            class_names=data.class_names,
            metadata=metadata,
            sequence=data.pad_id is not None,
            max_abs_diff=recipe.max_abs_diff,
        )

    lengths = None if data.pad_id is None else (x != data.pad_id).sum(axis=1)
    return compress.compress(
        model, (x,), hp, export, s.paths.model_dir, kind="logits", lengths=lengths
    )


def train_metrics(
    hp: Any, data: Encoded, s: Session, fits: list[Candidate], best: Candidate, scores: Scores
) -> dict[str, Any]:
    r, split = best.result, data.split
    return {
        "task": hp.task,
        "recipe": hp.recipe,
        "test_accuracy": scores.accuracy,
        "test_loss": scores.loss,
        **{f"{k}_chosen": v for k, v in best.variant.overrides.items()},
        "candidates": [
            {
                **c.variant.overrides,
                "val_loss": c.result.best_val_loss,
                "best_epoch": c.result.best_epoch,
            }
            for c in fits
        ],
        "val_loss": r.best_val_loss,
        "val_accuracy": r.best_val_accuracy,
        "best_epoch": r.best_epoch,
        "epochs_run": r.epochs_run,
        "stopped_early": r.stopped_early,
        "resumed_from_epoch": r.resumed_from_epoch,
        "n_train": len(split.train),
        "n_validation": len(split.validation),
        "n_test": len(split.test),
        "n_classes": len(data.class_names),
        "stratified_split": split.stratified,
        "device": str(s.device),
        "bf16": s.use_bf16,
        "world_size": s.ctx.world_size,
        "train_seconds": round(sum(c.result.seconds for c in fits), 3),
        "data_files": data.files,
        **data.metrics,
        "hyperparameters": hp.as_dict(),
    }


def export_metrics(info: ExportInfo) -> dict[str, Any]:
    return {
        "exporter": info.exporter,
        "onnx_opset": info.opset,
        "onnx_ir_version": info.ir_version,
        "onnx_max_abs_diff": info.max_abs_diff,
        "torch_version": torch.__version__,
    }


def run_trained(paths: Paths, hp: Any, recipe: TrainedRecipe) -> dict[str, Any]:
    t_start = time.perf_counter()
    data = recipe.load(paths, hp)
    split = data.split
    log.info(
        f"split ({'stratified' if split.stratified else 'shuffled'}, seed {hp.seed}): "
        f"train {len(split.train)}, validation {len(split.validation)}, test {len(split.test)}"
    )
    ctx = init_distributed()
    try:
        s = start_session(paths, hp, data, ctx)
        fits, best = choose(s, recipe, data, hp)
        model, refit_epochs = refit(s, recipe, data, hp, best) if recipe.refit else (best.model, 0)
        metrics: dict[str, Any] = {}
        if ctx.is_main:  # only rank 0 writes; model is the chosen one, on CPU, fp32, eval mode
            metrics = finish_trained(
                s, recipe, data, hp, (fits, best), model, refit_epochs, t_start
            )
        _barrier(ctx)
        return metrics
    finally:
        shutdown_distributed(ctx)


def finish_trained(
    s: Session,
    recipe: TrainedRecipe,
    data: Encoded,
    hp: Any,
    chosen: tuple[list[Candidate], Candidate],
    model: nn.Module,
    refit_epochs: int,
    t_start: float,
) -> dict[str, Any]:
    """Evaluate, export, score the export and write the model dir (rank 0)."""
    fits, best = chosen
    test = data.split.test
    scores = score(model, data.x[test], data.y[test], recipe.eval_batch)
    log.metric_line(test_accuracy=scores.accuracy, test_loss=scores.loss)
    info, onnx_accuracy = export_trained(s, recipe, data, hp, model, scores)
    compressed = compress_trained(s, recipe, data, hp, model)
    metrics = {
        **train_metrics(hp, data, s, fits, best, scores),
        "onnx_test_accuracy": onnx_accuracy,
        "refit_epochs": refit_epochs,
        **export_metrics(info),
        "compression": compressed,
        "total_seconds": round(time.perf_counter() - t_start, 3),
        "history": best.result.history,
    }
    calibration = None
    if recipe.calibration:
        rng = np.random.default_rng(hp.seed)
        rows = np.sort(rng.permutation(data.split.train)[:CALIBRATION_ROWS])
        calibration = sample_of(data, rows, trimmed=True)
    label = f" ({best.variant.label})" if best.variant.label else ""
    title = f"{hp.task} / {hp.recipe}{label}: test accuracy {scores.accuracy:.3f}"
    n_classes = len(data.class_names)
    schema = {"task": hp.task, **data.schema, "labels": data.class_names}
    out = ModelDir(
        schema={**schema, "outputs": contract.classifier_outputs(n_classes)},
        labels=data.class_names,
        metrics=metrics,
        sample=sample_of(data, test),
        calibration=calibration,
        text_spec=data.text_spec,
        tokenizer_json=data.tokenizer_json,
        plot=Plot(best.result.history, data.y[test], scores.predicted, title),
    )
    write_model_dir(s.paths, out)
    log.info(
        f"done: test_accuracy {scores.accuracy:.4f} (onnx {onnx_accuracy:.4f}), best epoch "
        f"{best.result.best_epoch}/{best.result.epochs_run}, {metrics['total_seconds']:.1f}s; "
        f"wrote {s.paths.model_dir}"
    )
    return metrics


def _barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64 = a.reshape(len(a), -1).astype(np.float64)
    b64 = b.reshape(len(b), -1).astype(np.float64)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return np.asarray(np.sum(a64 * b64, axis=1) / np.where(den == 0, 1.0, den))


def compress_pretrained(
    paths: Paths, hp: Any, m: Pretrained, recipe: PretrainedRecipe
) -> list[contract.Compressed]:
    """Students of an imported encoder, distilled on texts other than the gate's sample."""
    if m.distill_feeds is None:
        compress.write_index(paths.model_dir, [])
        return []

    def export(student: nn.Module, path: Any) -> None:
        export_model(
            student,
            path,
            feeds=m.feeds,
            output_name=m.output_name,
            class_names=m.labels,
            metadata=metadata_for(hp.task, hp.recipe, m.labels),
            prefer=recipe.prefer,
            sequence=True,
        )

    kind = "cosine" if m.labels is None else "probabilities"
    inputs = tuple(m.distill_feeds.values())
    lengths = m.distill_feeds["attention_mask"].sum(axis=1)
    return compress.compress(
        m.module, inputs, hp, export, paths.model_dir, kind=kind, lengths=lengths
    )


def run_pretrained(paths: Paths, hp: Any, recipe: PretrainedRecipe) -> dict[str, Any]:
    """A pretrained model exported as it is: fp32 ONNX (ids in) + the tokenizer that serves it."""
    t_start = time.perf_counter()
    m: Pretrained = recipe.load(paths, hp)
    info = export_model(
        m.module,
        paths.model_dir / contract.MODEL_FILE,
        feeds=m.feeds,
        output_name=m.output_name,
        class_names=m.labels,
        metadata=metadata_for(hp.task, hp.recipe, m.labels),
        prefer=recipe.prefer,
        sequence=True,
    )
    cos = cosine_rows(info.outputs, info.reference)
    log.metric_line(onnx_cosine_mean=float(cos.mean()), onnx_cosine_min=float(cos.min()))
    compressed = compress_pretrained(paths, hp, m, recipe)
    dim = int(info.reference.shape[1])
    outputs = (
        [{"name": m.output_name, "datatype": "FP32", "shape": [-1, dim]}]
        if m.labels is None
        else contract.classifier_outputs(dim)
    )
    metrics = {
        "task": hp.task,
        "recipe": hp.recipe,
        **m.metrics,
        "output_dim": dim,
        "onnx_cosine_mean": float(cos.mean()),
        "onnx_cosine_min": float(cos.min()),
        **export_metrics(info),
        "compression": compressed,
        "total_seconds": round(time.perf_counter() - t_start, 3),
        "hyperparameters": hp.as_dict(),
    }
    labels = m.labels or []
    out = ModelDir(
        schema={"task": hp.task, **m.schema, "labels": labels, "outputs": outputs},
        labels=labels,
        metrics=metrics,
        sample=Sample(m.feeds, m.texts),
        text_spec=m.text_spec,
        tokenizer_json=m.tokenizer_json,
    )
    write_model_dir(paths, out)
    log.info(f"done: imported {m.kind} in {metrics['total_seconds']:.1f}s; wrote {paths.model_dir}")
    return metrics
