"""Tables: typed columns (maas_training.tables) encoded by maas/serving/tableprep.py into an MLP
that standardises inside its graph; classification or regression, as the label says.

"auto" compares, on the same rows (k folds on small tables, maas_training.selection), in order
of preference on a tie: for a regression ridge in closed form (maas_training.ridge), the MLP at
depth 0 (a linear model), gradient-boosted trees (maas_training.trees), then the MLP at depths 1
and hidden_layers; it keeps the lowest validation loss and refits it on train + validation;
"mlp" fits exactly hidden_layers, early-stopped; "trees" the trees alone.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from maas_training import log
from maas_training.recipes import Encoded, Family, TrainedRecipe, Variant, register
from maas_training.shared import contract, tableprep, textprep

tp = tableprep()


def _targets(lab, hp) -> tuple[np.ndarray, list[str], tuple[float, float] | None]:
    """Class indices and names, or a regression's standardised target and its (mean, std)."""
    from maas_training.data import encode_labels
    from maas_training.errors import TrainingError

    if lab.task == "regression":
        y = lab.values.to_numpy(dtype=np.float64)
        return y, [], (float(y.mean()), float(y.std()) or 1.0)
    targets, names = encode_labels(lab.values)
    if len(names) < 2:
        raise TrainingError(
            f"label column {hp.label!r} has {len(names)} distinct value(s); "
            "classification needs at least 2 classes"
        )
    return targets, names, None


def _inputs(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The OIP inputs: one FP32 matrix for an all-numeric table, else one per column."""
    columns = spec["columns"]
    if spec["matrix"]:
        return [{"name": tp.MATRIX_INPUT, "datatype": "FP32", "shape": [-1, len(columns)]}]
    return [
        {
            "name": c["name"],
            "datatype": c["datatype"],
            "shape": [-1],
            "parameters": {"role": c["role"]},
        }
        for c in columns
    ]


def _fingerprint(x: np.ndarray, y: np.ndarray, spec: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    h.update(json.dumps(spec, sort_keys=True).encode())
    return h.hexdigest()


def _encode(frame, columns, train: np.ndarray) -> tuple[dict[str, Any], Any, np.ndarray]:
    """table.json fitted on the training rows only (medians and categories never see the
    test rows), its encoder, and every row encoded by it."""
    from maas_training import tables
    from maas_training.errors import TrainingError

    used = [c for c in columns if c.role != tp.IGNORE]
    values = {c.name: tables.column_values(frame[c.name], c.role) for c in used}
    factory = textprep().HashedNgrams
    try:
        fitted = [
            tp.fit_column(c.name, c.role, [values[c.name][i] for i in train], c.datatype, factory)
            for c in used
        ]
        ignored = [{"name": c.name, "reason": c.why} for c in columns if c.role == tp.IGNORE]
        spec = tp.make_spec(fitted, ignored)
        encoder = tp.TableEncoder(spec, factory)
        x = encoder.encode({name: (v, None) for name, v in values.items()})
    except tp.TableInputError as e:
        raise TrainingError(str(e)) from None
    return spec, encoder, x


def load(paths, hp) -> Encoded:
    from maas_training import tables
    from maas_training.data import read_frame, split_indices
    from maas_training.errors import TrainingError

    frame, files = read_frame(paths.train_channel)
    if hp.label not in frame.columns:
        raise TrainingError(
            f"label column {hp.label!r} not found; columns: {tables._short(list(frame.columns))}"
            " (set the label column with the 'label' key in job.json)"
        )
    lab = tables.read_label(frame, hp.label, hp.task)
    log.info(f"task {lab.task}: {lab.why}")
    if lab.dropped:
        log.info(f"dropped {lab.dropped} row(s) whose label is missing; {len(lab.values)} remain")
    frame = frame.loc[lab.values.index].reset_index(drop=True)
    columns = tables.type_columns(
        frame, hp.label, tables.parse_overrides(hp.columns), hp.max_columns
    )
    tables.log_columns(columns)
    y, class_names, scale = _targets(lab, hp)
    strata = np.zeros(len(y), dtype=np.int64) if scale else y
    split = split_indices(strata, hp.validation_fraction, hp.test_fraction, hp.seed)
    if scale:
        split = replace(split, stratified=False)
        # standardised on the training split, as the features are
        train_y = y[split.train]
        scale = (float(train_y.mean()), float(train_y.std()) or 1.0)
        y = ((y - scale[0]) / scale[1]).astype(np.float32)
    used = [c for c in columns if c.role != tp.IGNORE]
    spec, encoder, x = _encode(frame, columns, split.train)
    n = len(y)
    log.info(
        f"dataset: {n} rows, {len(used)} feature columns -> {encoder.n_features} features"
        + (f", {len(class_names)} classes" if not scale else ", regression target")
        + f" from {len(files)} file(s)"
    )
    schema_columns = [{"name": c.name, "role": c.role, "why": c.why} for c in columns]
    return Encoded(
        x=x,
        y=y.astype(np.float32) if scale else y,
        split=split,
        class_names=class_names,
        input_name=contract.FEATURES_INPUT,
        fingerprint=_fingerprint(x, y, spec),
        files=files,
        schema={
            "label_column": hp.label,
            "features": encoder.feature_names,
            "inputs": _inputs(spec),
            "graph_inputs": [contract.FEATURES_INPUT],
            "columns": schema_columns,
        },
        metadata={"maas.features": json.dumps(encoder.feature_names)},
        threads_width=max(hp.hidden_units, encoder.n_features),
        metrics={
            "n_features": encoder.n_features,
            "n_columns": len(used),
            "rows_without_label": lab.dropped,
            "task_reason": lab.why,
            "balance_classes": bool(hp.balance_classes),
        },
        task=lab.task,
        target_scale=scale,
        table_spec=spec,
        class_weights=_class_weights(y, split.train, len(class_names), hp),
    )


def _class_weights(y: np.ndarray, train: np.ndarray, n_classes: int, hp) -> np.ndarray | None:
    """balance_classes=1: n / (k * count) per class on the training split (scikit-learn's
    "balanced"), so every class weighs as much in the loss."""
    if not hp.balance_classes or n_classes == 0:
        return None
    counts = np.bincount(y[train], minlength=n_classes).astype(np.float64)
    weights = len(train) / (n_classes * np.maximum(counts, 1.0))
    log.info("class weights: " + ", ".join(f"{w:.3g}" for w in weights))
    return weights.astype(np.float32)


def build(data: Encoded, hp, x_fit: np.ndarray) -> Any:
    from maas_training.model import TabularMLP

    model = TabularMLP(
        n_features=data.x.shape[1],
        n_classes=1 if data.regression else len(data.class_names),
        hidden_units=hp.hidden_units,
        hidden_layers=hp.hidden_layers,
        dropout=hp.dropout,
    )
    model.scaler.fit(x_fit)
    return model


def depths(hp) -> list[Variant]:
    """Small tables make one architecture's validation curve noisy: compare depths (0: a linear
    model). A larger step for depth 0 was measured and dropped: on breast cancer it converged
    to a less regularised fit (served accuracy 0.965 against 0.979 at the job's own step).

    Ranks, the preference when the folds cannot tell candidates apart: linear models (0), then
    the trees (1), then the MLP by depth. Trees before hidden layers is the prior the tabular
    literature gives (Grinsztajn et al., NeurIPS 2022: trees beat MLPs on most medium-sized
    tables); on cars it is worth up to 7 points of R^2 on held-back rows (README)."""
    return [
        Variant(f"h{d}", {"hidden_layers": d}, rank=d + 1 if d else 0)
        for d in sorted({0, 1, hp.hidden_layers})
    ]


def exactly(hp) -> list[Variant]:
    return [Variant(f"h{hp.hidden_layers}", {"hidden_layers": hp.hidden_layers})]


def no_mlp(hp) -> list[Variant]:
    return []


def _family(name: str, rounds: Callable[[Any], int], **options: Any) -> Family:
    """A family whose module (maas_training.<name>: fit, outputs, export) is imported only when
    the family is used: the job looks its recipe up before torchrun, lightgbm or onnx load."""

    def late(attr: str) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            return getattr(importlib.import_module(f"maas_training.{name}"), attr)(*args)

        return call

    return Family(name, late("fit"), rounds, late("outputs"), late("export"), **options)


TREES = _family("trees", lambda f: f.rounds, rank=1)
RIDGE = _family("ridge", lambda f: 0, rank=0, regression_only=True, exact=True)

for _task in contract.TABULAR_TASKS:
    register(
        TrainedRecipe(
            _task,
            "auto",
            load,
            build,
            variants=depths,
            refit=True,
            max_abs_diff=1e-4,
            families=(RIDGE, TREES),
        )
    )
    register(TrainedRecipe(_task, "mlp", load, build, variants=exactly, max_abs_diff=1e-4))
    register(
        TrainedRecipe(_task, "trees", load, build, variants=no_mlp, refit=True, families=(TREES,))
    )
