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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from maas_training import compress, log, selection
from maas_training import metrics as figures
from maas_training.config import Paths
from maas_training.export import ExportInfo, export_model, export_plain, metadata_for, verify
from maas_training.model import FoldMean, Prediction, Probabilities
from maas_training.modeldir import ModelDir, Plot, Sample, write_model_dir
from maas_training.recipes import (
    Encoded,
    Family,
    GenerativeRecipe,
    Pretrained,
    PretrainedRecipe,
    TrainedRecipe,
    Variant,
)
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
    model: Any  # nn.Module, or a family's fitted model (the first fold's, under k-fold)
    result: TrainResult
    family: Family | None = None
    fit_rows: int = 0  # the rows its epochs (rounds) were found on: a refit scales them
    measured: dict[str, float] = field(default_factory=dict)  # ONNX size, batch-1 latency
    cv: bool = False  # scored by k-fold cross-validation (else on the validation split)
    spread: float = 0.0  # k-fold: the standard error of its mean validation loss
    folds: list[nn.Module] = field(default_factory=list)  # k-fold: every fold's model

    @property
    def label(self) -> str:
        return self.family.name if self.family else self.variant.label or self.variant.phase


@dataclass(frozen=True)
class Scores:
    loss: float
    accuracy: float  # a regression's R^2
    predicted: np.ndarray  # class index, or the predicted value in the target's units
    probabilities: np.ndarray  # what the exported graph outputs (a regression's: predicted)
    figures: dict[str, float]  # test_* metrics (accuracy, balanced accuracy, ... or R^2, ...)


def run(
    paths: Paths, hp: Any, recipe: TrainedRecipe | PretrainedRecipe | GenerativeRecipe
) -> dict[str, Any]:
    if isinstance(recipe, GenerativeRecipe):
        return recipe.run(paths, hp)
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
    val: np.ndarray | None = None,
) -> tuple[nn.Module, TrainResult]:
    """Build and train one model on rows, early-stopped on val (default: the validation
    split); a refit runs every epoch and keeps the last."""
    torch.manual_seed(hp.seed)
    x, y = data.x[rows], data.y[rows]
    model = recipe.build(data, hp, x)
    val = data.split.validation if val is None else val
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
        class_weights=data.class_weights,
    )
    return model, outcome


def choose(
    s: Session, recipe: TrainedRecipe, data: Encoded, hp: Any
) -> tuple[list[Candidate], Candidate]:
    """Every candidate (the recipe's families and torch variants, in order of preference:
    their ranks) scored on the same rows, and the lowest validation loss (the folds' mean on
    small tables, with the one-standard-error rule: see selection.pick)."""
    families = [f for f in recipe.families if data.regression or not f.regression_only]
    order = sorted([*families, *recipe.variants(hp)], key=lambda c: c.rank)
    plan = selection.folds(recipe, data, hp, len(order))
    cv = plan is not None

    def of(c: Family | Variant) -> Candidate:
        if isinstance(c, Variant):
            return _torch_candidate(s, recipe, data, hp, c, plan)
        fitted, (r, se), rows = selection.fit_family(c, data, hp, plan)
        return Candidate(Variant(c.name), fitted, r, c, rows, cv=cv, spread=se)

    fits = [of(c) for c in order]
    if len(fits) > 1:
        what = "val_r2" if data.regression else "val_accuracy"
        for c in fits:
            r = c.result
            at = "" if c.family and c.family.exact else f" at {_step(c)} {r.best_epoch}"
            log.info(
                f"candidate {c.label}: val_loss {r.best_val_loss:.4f} "
                f"{what} {r.best_val_accuracy:.4f}{at}"
            )
    losses = [c.result.best_val_loss for c in fits]
    best = selection.pick(losses, [c.spread for c in fits], plan is not None)
    return fits, fits[best]


def _step(c: Candidate) -> str:
    return "round" if c.family else "epoch"


def _torch_candidate(
    s: Session,
    recipe: TrainedRecipe,
    data: Encoded,
    hp: Any,
    v: Variant,
    plan: selection.Folds | None,
) -> Candidate:
    vhp = replace(hp, **v.overrides)
    if plan is None:
        model, r = fit(s, recipe, data, vhp, data.split.train, v.phase, hp.epochs)
        return Candidate(v, model, r, fit_rows=len(data.split.train))
    runs = [
        fit(s, recipe, data, vhp, rows, f"{v.phase}-fold{k}", hp.epochs, val=val)
        for k, (rows, val) in enumerate(plan)
    ]
    rows = round(float(np.mean([len(r) for r, _ in plan])))
    result, se = selection.merged([r for _, r in runs])
    models = [m for m, _ in runs]
    return Candidate(v, models[0], result, fit_rows=rows, cv=True, spread=se, folds=models)


def refit(
    s: Session, recipe: TrainedRecipe, data: Encoded, hp: Any, best: Candidate
) -> tuple[nn.Module, int]:
    """The chosen candidate again on train + validation, for the epochs validation chose.

    Small data makes one split's validation curve noisy; refitting wastes no labelled row."""
    split = data.split
    both = np.concatenate([split.train, split.validation])
    epochs = max(1, round(best.result.best_epoch * len(both) / (best.fit_rows or len(split.train))))
    chose = f"chose {best.label}; " if best.label else ""
    if best.folds:
        log.info(f"{chose}serving the mean of its {len(best.folds)} fold models (no refit)")
        return FoldMean(best.folds).eval(), 0
    if best.family is not None:
        rounds = "" if best.family.exact else f" for {epochs} rounds"
        log.info(f"{chose}refit on train + validation ({len(both)} rows){rounds}")
        fitted, _ = best.family.fit(data, hp, both, None, epochs)
        return fitted, epochs
    log.info(f"{chose}refit on train + validation ({len(both)} rows) for {epochs} epochs")
    vhp = replace(hp, **best.variant.overrides)
    model, _ = fit(s, recipe, data, vhp, both, f"{best.variant.phase}-refit", epochs, refit=True)
    return model, epochs


def exported(model: nn.Module, data: Encoded) -> nn.Module:
    """What the graph computes: probabilities, or the prediction in the target's units."""
    if data.target_scale is None:
        return Probabilities(model)
    return Prediction(model, *data.target_scale)


@torch.no_grad()
def score(
    model: Any, data: Encoded, rows: np.ndarray, batch: int, family: Family | None = None
) -> Scores:
    """fp32 test loss and figures (what the exported graph will do), predictions, outputs."""
    x, y = data.x[rows], data.y[rows]
    if family is not None:
        out = family.outputs(model, data, x)
        z = selection._standardised(family, model, data, rows)
        loss = _loss_of(data, z, y)
        accuracy = selection.score_of(data, z, rows)
    else:
        weight = None if data.class_weights is None else torch.from_numpy(data.class_weights)
        loss, accuracy = evaluate(model, torch.from_numpy(x), torch.from_numpy(y), batch, weight)
        graph = exported(model, data).eval()
        parts = [
            graph(torch.from_numpy(x[i : i + batch])).float().numpy()
            for i in range(0, len(x), batch)
        ]
        out = np.concatenate(parts)
    if data.regression:
        found = figures.regression(data.targets(rows), out)
        return Scores(loss, found["r2"], out, out, {f"test_{k}": v for k, v in found.items()})
    found = figures.classification(y, out)
    named = {f"test_{k}": v for k, v in found.items()}
    return Scores(loss, accuracy, out.argmax(axis=1), out, named)


def _loss_of(data: Encoded, out: np.ndarray, y: np.ndarray) -> float:
    """The training loss from outputs: squared error (standardised), or cross-entropy."""
    if data.regression:
        return float(np.mean((out.reshape(-1) - y) ** 2))
    nll = -np.log(np.clip(out[np.arange(len(y)), y], 1e-15, 1.0))
    if data.class_weights is None:
        return float(np.mean(nll))
    w = data.class_weights[y]
    return float(np.sum(w * nll) / np.sum(w))


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
    return Sample({data.input_name: x}, texts, data.targets(rows))


def output_of(data: Encoded) -> str:
    return contract.PREDICTION_OUTPUT if data.regression else contract.PROBABILITIES_OUTPUT


def export_limit(recipe: TrainedRecipe, data: Encoded) -> float:
    """onnxruntime vs torch: a regression's in the target's units, so scaled by its spread."""
    return recipe.max_abs_diff * (max(1.0, data.target_scale[1]) if data.target_scale else 1.0)


def export_trained(
    s: Session,
    recipe: TrainedRecipe,
    data: Encoded,
    hp: Any,
    chosen: tuple[Any, Family | None],
    scores: Scores,
) -> tuple[ExportInfo, float]:
    """Export, check on validation rows, then score the graph on the test set against the
    model it was exported from (torch, or the family's own predictions)."""
    model, family = chosen
    path = s.paths.model_dir / contract.MODEL_FILE
    limit = export_limit(recipe, data)
    if family is not None:
        metadata = {**graph_metadata(hp, data), "maas.family": family.name}
        info = export_family(family, model, data, path, metadata)
    else:
        info = export_torch(model, path, recipe, data, hp)
    test = data.split.test
    feeds = {data.input_name: data.x[test]}
    _, out = verify(path, feeds, scores.probabilities, output_of(data), limit)
    if data.regression:
        return info, figures.regression(data.targets(test), out)["r2"]
    return info, float((out.argmax(axis=1) == data.y[test]).mean())


def graph_metadata(hp: Any, data: Encoded) -> dict[str, str]:
    labels = None if data.regression else data.class_names
    return {**metadata_for(task_of(hp, data), hp.recipe, labels), **data.metadata}


def export_torch(
    module: nn.Module, path: Path, recipe: TrainedRecipe, data: Encoded, hp: Any
) -> ExportInfo:
    """A torch model (the chosen one, or one of its students) as the served graph, checked
    against torch on validation rows."""
    return export_model(
        exported(module, data),
        path,
        feeds={data.input_name: trim(data.x[data.split.validation][:CHECK_ROWS], data.pad_id)},
        output_name=output_of(data),
        class_names=None if data.regression else data.class_names,
        metadata=graph_metadata(hp, data),
        sequence=data.pad_id is not None,
        max_abs_diff=export_limit(recipe, data),
    )


def export_family(
    family: Family, model: Any, data: Encoded, path: Path, metadata: dict[str, str]
) -> ExportInfo:
    """A family's own converter; the graph is then checked like a torch export."""
    import onnx

    family.export(model, data, path, metadata)
    proto = onnx.load(str(path))
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    x = data.x[data.split.validation][:CHECK_ROWS]
    reference = family.outputs(model, data, x)
    limit = 1e-3 * (max(1.0, data.target_scale[1]) if data.target_scale else 1.0)
    diff, got = verify(path, {data.input_name: x}, reference, output_of(data), limit)
    log.info(f"onnxruntime matches {family.name}: max abs diff {diff:.3g}")
    return ExportInfo(family.name, opset, int(proto.ir_version), diff, got, reference)


def task_of(hp: Any, data: Encoded) -> str:
    """The job's task, or the one its data decided (a table's label)."""
    return data.task or hp.task


def compress_trained(
    s: Session, recipe: TrainedRecipe, data: Encoded, hp: Any, model: nn.Module
) -> list[contract.Compressed]:
    """Students of the chosen model, distilled on the training rows it was fitted on."""
    x = trim(data.x[data.split.train], data.pad_id)

    def export(student: nn.Module, path: Any) -> None:
        export_torch(student, path, recipe, data, hp)

    lengths = None if data.pad_id is None else (x != data.pad_id).sum(axis=1)
    kind = "regression" if data.regression else "logits"
    return compress.compress(model, (x,), hp, export, s.paths.model_dir, kind=kind, lengths=lengths)


def train_metrics(
    hp: Any, data: Encoded, s: Session, fits: list[Candidate], best: Candidate, scores: Scores
) -> dict[str, Any]:
    r, split = best.result, data.split
    return {
        "task": task_of(hp, data),
        "recipe": hp.recipe,
        **({} if data.regression else {"test_accuracy": scores.accuracy}),
        **scores.figures,
        "test_loss": scores.loss,
        **{f"{k}_chosen": v for k, v in best.variant.overrides.items()},
        "candidates": [
            {
                "candidate": c.label,
                **c.variant.overrides,
                "val_loss": c.result.best_val_loss,
                ("val_r2" if data.regression else "val_accuracy"): c.result.best_val_accuracy,
                **({} if c.family and c.family.exact else {"best_epoch": c.result.best_epoch}),
                **c.measured,
            }
            for c in fits
        ],
        "selection": f"{selection.CV_FOLDS}-fold cross-validation"
        if best.cv
        else "validation split",
        "val_loss": r.best_val_loss,
        ("val_r2" if data.regression else "val_accuracy"): r.best_val_accuracy,
        "best_epoch": r.best_epoch,
        "epochs_run": r.epochs_run,
        "stopped_early": r.stopped_early,
        "resumed_from_epoch": r.resumed_from_epoch,
        "n_train": len(split.train),
        "n_validation": len(split.validation),
        "n_test": len(split.test),
        **({} if data.regression else {"n_classes": len(data.class_names)}),
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
    if len(fits) > 1 and data.table_spec is not None:
        measure_candidates(fits, data)
    scores = score(model, data, test, recipe.eval_batch, best.family)
    log.metric_line(**scores.figures, test_loss=scores.loss)
    info, onnx_accuracy = export_trained(s, recipe, data, hp, (model, best.family), scores)
    compressed = compress_trained(s, recipe, data, hp, model)
    what = "r2" if data.regression else "accuracy"
    metrics = {
        **train_metrics(hp, data, s, fits, best, scores),
        f"onnx_test_{what}": onnx_accuracy,
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
    task = task_of(hp, data)
    title = f"{task} / {hp.recipe}{label}: test {what} {scores.accuracy:.3f}"
    outputs = (
        contract.regressor_outputs()
        if data.regression
        else contract.classifier_outputs(len(data.class_names))
    )
    schema = {"task": task, **data.schema, "labels": data.class_names}
    out = ModelDir(
        schema={**schema, "outputs": outputs},
        labels=data.class_names,
        metrics=metrics,
        sample=sample_of(data, test),
        calibration=calibration,
        text_spec=data.text_spec,
        tokenizer_json=data.tokenizer_json,
        plot=Plot(best.result.history, data.targets(test), scores.predicted, title),
        table_spec=data.table_spec,
    )
    write_model_dir(s.paths, out)
    log.info(
        f"done: test_{what} {scores.accuracy:.4f} (onnx {onnx_accuracy:.4f}), best epoch "
        f"{best.result.best_epoch}/{best.result.epochs_run}, {metrics['total_seconds']:.1f}s; "
        f"wrote {s.paths.model_dir}"
    )
    return metrics


def measure_candidates(fits: list[Candidate], data: Encoded) -> None:
    """Each candidate's ONNX size and batch-1 latency, for metrics.json and the manifest (the
    model each was scored with: the train split's, or the first fold's)."""
    x1 = np.ascontiguousarray(data.x[data.split.validation][:1])
    for c in fits:
        if c.family is not None:
            family, model = c.family, c.model

            def write(path: Path, family: Family = family, model: Any = model) -> None:
                family.export(model, data, path, {})
        else:
            module = exported(c.model, data)

            def write(path: Path, module: nn.Module = module) -> None:
                export_plain(module, {data.input_name: x1}, output_of(data), path)

        c.measured = selection.measure(write, x1)
        log.info(
            f"candidate {c.label}: {c.measured['size_bytes'] / 1024:.1f} KiB, "
            f"batch 1 {c.measured['latency_ms_batch1']:.3f} ms"
        )


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
