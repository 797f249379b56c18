"""The training job: SM contract in, model dir out (maas/core/artifacts.py lists the files)."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from maas_training import log
from maas_training.config import Cluster, Hyperparameters, Paths, load_hyperparameters
from maas_training.errors import TrainingError

# Names from maas/core/artifacts.py (the training container does not ship the `maas` package).
MODEL_FILE = "model.onnx"
SAMPLE_FILE = "sample.npz"
CALIBRATION_FILE = "calibration.npz"
METRICS_FILE = "metrics.json"
LABELS_FILE = "labels.json"
SCHEMA_FILE = "schema.json"
INPUT_PREFIX = "input__"
TARGET_KEY = "target"

CALIBRATION_ROWS = 512
MAX_FAILURE_CHARS = 1000  # SageMaker's FailureReason holds 1024
MASTER_PORT = 29500


def write_failure(paths: Paths, reason: str) -> None:
    reason = " ".join(reason.split())[:MAX_FAILURE_CHARS] or "training failed"
    try:
        paths.output_dir.mkdir(parents=True, exist_ok=True)
        tmp = paths.failure_file.with_name(".failure.tmp")
        tmp.write_text(reason + "\n", encoding="utf-8")
        os.replace(tmp, paths.failure_file)
    except OSError as e:
        print(f"[maas] could not write {paths.failure_file}: {e}", file=sys.stderr, flush=True)


def _write_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _save_npz(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    with path.open("wb") as f:
        np.savez(
            f,
            **{
                f"{INPUT_PREFIX}input": np.ascontiguousarray(x, dtype=np.float32),
                TARGET_KEY: np.ascontiguousarray(y, dtype=np.int64),
            },
        )


# --- distributed launch -------------------------------------------------------------------


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ or "WORLD_SIZE" in os.environ


def needs_torchrun(cluster: Cluster) -> bool:
    return not under_torchrun() and (len(cluster.hosts) > 1 or cluster.num_gpus > 1)


def torchrun_command(cluster: Cluster, script: Path) -> list[str]:
    nproc = max(1, cluster.num_gpus)
    nnodes = len(cluster.hosts)
    master = cluster.hosts[0] if nnodes > 1 else "127.0.0.1"
    port = os.environ.get("MAAS_MASTER_PORT", str(MASTER_PORT))
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={nnodes}",
        f"--node_rank={cluster.node_rank}",
        f"--nproc_per_node={nproc}",
        f"--master_addr={master}",
        f"--master_port={port}",
        str(script),
    ]


def relaunch(cluster: Cluster, script: Path, paths: Paths) -> int:
    import subprocess

    cmd = torchrun_command(cluster, script)
    log.info(f"launching data-parallel training: {' '.join(cmd[1:])}")
    rc = subprocess.call(cmd, env=os.environ.copy())
    if rc != 0 and not paths.failure_file.exists():
        write_failure(paths, f"distributed training failed (torchrun exit code {rc})")
    return 0 if rc == 0 else 1


# --- the job ------------------------------------------------------------------------------


def run(paths: Paths, hp: Hyperparameters) -> dict[str, Any]:
    if hp.task != "classification":
        from maas_training.textjobs import run as run_text

        return run_text(paths, hp)
    t_start = time.perf_counter()
    from maas_training.data import load_dataset, split_indices

    dataset = load_dataset(paths.train_channel, hp.label)
    split = split_indices(dataset.targets, hp.validation_fraction, hp.test_fraction, hp.seed)
    x, y = dataset.features, dataset.targets
    x_tr, y_tr = x[split.train], y[split.train]
    x_va, y_va = x[split.validation], y[split.validation]
    x_te, y_te = x[split.test], y[split.test]
    log.info(
        f"split ({'stratified' if split.stratified else 'shuffled'}, seed {hp.seed}): "
        f"train {len(x_tr)}, validation {len(x_va)}, test {len(x_te)}"
    )

    import torch

    from maas_training.model import TabularMLP
    from maas_training.trainer import (
        Checkpointer,
        bf16_ok,
        evaluate,
        init_distributed,
        pick_device,
        set_cpu_threads,
        shutdown_distributed,
        train,
    )

    ctx = init_distributed()
    try:
        np.random.seed(hp.seed)
        torch.manual_seed(hp.seed)
        device = pick_device(ctx)
        use_bf16 = bf16_ok(device)
        where = f"{device}{' (bf16 autocast)' if use_bf16 else ''}"
        if device.type == "cpu":
            width = max(hp.hidden_units, x.shape[1])
            where += f", {set_cpu_threads(hp.batch_size, width)} thread(s)"
        log.info(f"device {where}; torch {torch.__version__}")
        fingerprint = _fingerprint(dataset.fingerprint(), hp, ctx.world_size)

        def fit(
            depth: int, xs: np.ndarray, ys: np.ndarray, phase: str, epochs: int, refit: bool
        ) -> tuple[TabularMLP, Any]:
            torch.manual_seed(hp.seed)
            candidate = TabularMLP(
                n_features=x.shape[1],
                n_classes=len(dataset.class_names),
                hidden_units=hp.hidden_units,
                hidden_layers=depth,
                dropout=hp.dropout,
            )
            candidate.scaler.fit(xs)
            ckpt = Checkpointer(
                paths.checkpoint_dir,
                fingerprint,
                enabled_write=ctx.is_main,
                name=f"checkpoint-{phase}.pt",
            )
            outcome = train(
                candidate,
                xs,
                ys,
                x_va,
                y_va,
                epochs=epochs,
                batch_size=hp.batch_size,
                learning_rate=hp.learning_rate,
                weight_decay=hp.weight_decay,
                patience=epochs + 1 if refit else hp.patience,
                seed=hp.seed,
                device=device,
                use_bf16=use_bf16,
                ctx=ctx,
                checkpointer=ckpt,
                keep_last=refit,
            )
            return candidate, outcome

        # Small tables make a single architecture's validation curve noisy: choose the depth by
        # validation loss, then refit on train + validation so no labelled row is wasted.
        depths = [hp.hidden_layers] if hp.recipe == "mlp" else sorted({0, 1, hp.hidden_layers})
        fits = []
        for depth in depths:
            candidate, outcome = fit(depth, x_tr, y_tr, f"h{depth}", hp.epochs, refit=False)
            if len(depths) > 1:
                log.info(
                    f"candidate hidden_layers={depth}: val_loss {outcome.best_val_loss:.4f} "
                    f"val_accuracy {outcome.best_val_accuracy:.4f} at epoch {outcome.best_epoch}"
                )
            fits.append((outcome.best_val_loss, depth, candidate, outcome))
        _, depth, model, result = min(fits, key=lambda f: (f[0], f[1]))
        refit_epochs = 0
        if hp.recipe == "auto":
            x_all = np.concatenate([x_tr, x_va])
            y_all = np.concatenate([y_tr, y_va])
            refit_epochs = max(1, round(result.best_epoch * len(x_all) / len(x_tr)))
            log.info(
                f"chose hidden_layers={depth}; refit on train + validation "
                f"({len(x_all)} rows) for {refit_epochs} epochs"
            )
            model, _ = fit(depth, x_all, y_all, f"refit-h{depth}", refit_epochs, refit=True)
        if not ctx.is_main:
            _barrier(ctx)
            return {}

        # Only rank 0 writes outputs; model is now the best epoch, on CPU, fp32, eval mode.
        test_loss, test_accuracy = evaluate(model, torch.from_numpy(x_te), torch.from_numpy(y_te))
        log.metric_line(test_accuracy=test_accuracy, test_loss=test_loss)

        from maas_training.export import (
            INPUT_NAME,
            LABEL_NAME,
            PROBABILITIES_NAME,
            export_classifier,
        )

        model_dir = paths.model_dir
        model_dir.mkdir(parents=True, exist_ok=True)
        info = export_classifier(
            model,
            model_dir / MODEL_FILE,
            n_features=x.shape[1],
            class_names=dataset.class_names,
            feature_names=dataset.feature_names,
            x_check=x_va,
            x_eval=x_te,
            y_eval=y_te,
        )
        rng = np.random.default_rng(hp.seed)
        calib = np.sort(rng.permutation(len(x_tr))[:CALIBRATION_ROWS])
        _save_npz(model_dir / SAMPLE_FILE, x_te, y_te)
        _save_npz(model_dir / CALIBRATION_FILE, x_tr[calib], y_tr[calib])
        _write_json(model_dir / LABELS_FILE, dataset.class_names)
        n_features, n_classes = x.shape[1], len(dataset.class_names)
        _write_json(
            model_dir / SCHEMA_FILE,
            {
                "task": hp.task,
                "label_column": dataset.label_column,
                "features": dataset.feature_names,
                "labels": dataset.class_names,
                "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, n_features]}],
                "outputs": [
                    {"name": PROBABILITIES_NAME, "datatype": "FP32", "shape": [-1, n_classes]},
                    {"name": LABEL_NAME, "datatype": "BYTES", "shape": [-1]},
                ],
            },
        )
        metrics = {
            "task": hp.task,
            "recipe": hp.recipe,
            "test_accuracy": test_accuracy,
            "test_loss": test_loss,
            "onnx_test_accuracy": info.onnx_accuracy,
            "hidden_layers_chosen": depth,
            "candidates": [
                {"hidden_layers": d, "val_loss": v, "best_epoch": o.best_epoch}
                for v, d, _, o in fits
            ],
            "refit_epochs": refit_epochs,
            "val_loss": result.best_val_loss,
            "val_accuracy": result.best_val_accuracy,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "stopped_early": result.stopped_early,
            "resumed_from_epoch": result.resumed_from_epoch,
            "n_train": len(x_tr),
            "n_validation": len(x_va),
            "n_test": len(x_te),
            "n_features": n_features,
            "n_classes": n_classes,
            "stratified_split": split.stratified,
            "device": str(device),
            "bf16": use_bf16,
            "world_size": ctx.world_size,
            "train_seconds": round(sum(o.seconds for *_, o in fits), 3),
            "total_seconds": round(time.perf_counter() - t_start, 3),
            "exporter": info.exporter,
            "onnx_opset": info.opset,
            "onnx_ir_version": info.ir_version,
            "onnx_max_abs_diff": info.max_abs_diff,
            "torch_version": torch.__version__,
            "data_files": dataset.files,
            "hyperparameters": hp.as_dict(),
        }
        from maas_training.plots import PLOT_FILE, write_training_plot

        with torch.no_grad():
            predicted = model(torch.from_numpy(x_te)).argmax(dim=1).numpy()
        write_training_plot(
            model_dir / PLOT_FILE,
            result.history,
            y_te,
            predicted,
            dataset.class_names,
            f"{hp.task} / {hp.recipe} (hidden_layers={depth}): test accuracy {test_accuracy:.3f}",
        )
        metrics["history"] = result.history
        _write_json(model_dir / METRICS_FILE, metrics)
        try:
            paths.output_data_dir.mkdir(parents=True, exist_ok=True)
            _write_json(paths.output_data_dir / METRICS_FILE, metrics)
        except OSError as e:
            log.warn(f"could not copy metrics to {paths.output_data_dir}: {e}")
        log.info(
            f"done: test_accuracy {test_accuracy:.4f}, best epoch {result.best_epoch}/"
            f"{result.epochs_run}, {metrics['total_seconds']:.1f}s; wrote {model_dir}"
        )
        _barrier(ctx)
        return metrics
    finally:
        shutdown_distributed(ctx)


def _barrier(ctx) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


def _fingerprint(data_fingerprint: str, hp: Hyperparameters, world_size: int) -> str:
    import hashlib

    doc = {"data": data_fingerprint, "hp": hp.as_dict(), "world": world_size}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def main(script: Path | None = None) -> int:
    paths = Paths.from_env()
    try:
        log.info(f"training job on {socket.gethostname()}; model dir {paths.model_dir}")
        hp = load_hyperparameters(paths)
        cluster = Cluster.from_env()
        # An import exports a model; there is nothing to train in parallel.
        if script is not None and hp.recipe != "import" and needs_torchrun(cluster):
            return relaunch(cluster, script, paths)
        run(paths, hp)
        return 0
    except TrainingError as e:
        reason = str(e)
        traceback.print_exc(file=sys.stderr)
    except MemoryError:
        reason = "out of memory while training; use a larger instance_type or a smaller dataset"
        traceback.print_exc(file=sys.stderr)
    except Exception as e:
        reason = f"internal error in the training job: {type(e).__name__}: {e}"
        traceback.print_exc(file=sys.stderr)
    sys.stderr.flush()
    write_failure(paths, reason)
    print(f"[maas] FAILED: {reason}", file=sys.stderr, flush=True)
    return 1
