"""The one step that writes a model dir (maas/core/contract.py lists its files); the export
writes model.onnx beside it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maas_training import log
from maas_training.config import Paths
from maas_training.shared import contract


@dataclass(frozen=True)
class Sample:
    """sample.npz / calibration.npz: graph feeds, with the raw texts and targets when known."""

    feeds: dict[str, np.ndarray]
    texts: list[str] | None = None
    target: np.ndarray | None = None


@dataclass(frozen=True)
class Plot:
    history: list[dict[str, float]]
    y_true: np.ndarray
    y_pred: np.ndarray
    title: str


@dataclass(frozen=True)
class ModelDir:
    schema: dict[str, Any]  # contract.Schema
    labels: list[str]
    metrics: dict[str, Any]
    sample: Sample
    calibration: Sample | None = None
    text_spec: dict[str, Any] | None = None
    tokenizer_json: str | None = None
    plot: Plot | None = None
    table_spec: dict[str, Any] | None = None


def write_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def save_sample(path: Path, sample: Sample) -> None:
    arrays = {contract.INPUT_PREFIX + k: np.ascontiguousarray(v) for k, v in sample.feeds.items()}
    if sample.texts is not None:  # a unicode array: loads without pickle
        arrays[contract.SAMPLE_TEXT_KEY] = np.asarray(sample.texts, dtype=np.str_)
    if sample.target is not None:
        kind = np.float64 if sample.target.dtype.kind == "f" else np.int64
        arrays[contract.TARGET_KEY] = np.ascontiguousarray(sample.target, dtype=kind)
    with path.open("wb") as f:
        np.savez(f, **arrays)


def write_model_dir(paths: Paths, out: ModelDir) -> None:
    directory = paths.model_dir
    directory.mkdir(parents=True, exist_ok=True)
    save_sample(directory / contract.SAMPLE_FILE, out.sample)
    if out.calibration is not None:
        save_sample(directory / contract.CALIBRATION_FILE, out.calibration)
    if out.text_spec is not None:
        write_json(directory / contract.TEXT_SPEC_FILE, out.text_spec)
    if out.table_spec is not None:
        write_json(directory / contract.TABLE_SPEC_FILE, out.table_spec)
    if out.tokenizer_json:
        (directory / contract.TOKENIZER_FILE).write_text(out.tokenizer_json, encoding="utf-8")
    write_json(directory / contract.LABELS_FILE, out.labels)
    write_json(directory / contract.SCHEMA_FILE, out.schema)
    if out.plot is not None:
        from maas_training.plots import write_training_plot

        p = out.plot
        path = directory / contract.PLOT_FILE
        write_training_plot(path, p.history, p.y_true, p.y_pred, out.labels, p.title)
    write_json(directory / contract.METRICS_FILE, out.metrics)
    try:  # SageMaker uploads output/data as output.tar.gz, beside the model
        paths.output_data_dir.mkdir(parents=True, exist_ok=True)
        write_json(paths.output_data_dir / contract.METRICS_FILE, out.metrics)
    except OSError as e:
        log.warn(f"could not copy metrics to {paths.output_data_dir}: {e}")
