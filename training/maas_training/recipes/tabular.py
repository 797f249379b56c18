"""Tabular classification: numeric columns into an MLP that standardises inside its graph.

"auto" fits depths 0, 1 and hidden_layers, keeps the lowest validation loss and refits it on
train + validation; "mlp" fits exactly hidden_layers, early-stopped.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from maas_training.recipes import Encoded, TrainedRecipe, Variant, register
from maas_training.shared import contract


def load(paths, hp) -> Encoded:
    from maas_training.data import load_dataset, split_indices

    dataset = load_dataset(paths.train_channel, hp.label)
    n_features = dataset.features.shape[1]
    return Encoded(
        x=dataset.features,
        y=dataset.targets,
        split=split_indices(dataset.targets, hp.validation_fraction, hp.test_fraction, hp.seed),
        class_names=dataset.class_names,
        input_name=contract.FEATURES_INPUT,
        fingerprint=dataset.fingerprint(),
        files=dataset.files,
        schema={
            "label_column": dataset.label_column,
            "features": dataset.feature_names,
            "inputs": [
                {"name": contract.FEATURES_INPUT, "datatype": "FP32", "shape": [-1, n_features]}
            ],
        },
        metadata={"maas.features": json.dumps(dataset.feature_names)},
        threads_width=max(hp.hidden_units, n_features),
        metrics={"n_features": n_features},
    )


def build(data: Encoded, hp, x_fit: np.ndarray) -> Any:
    from maas_training.model import TabularMLP

    model = TabularMLP(
        n_features=data.x.shape[1],
        n_classes=len(data.class_names),
        hidden_units=hp.hidden_units,
        hidden_layers=hp.hidden_layers,
        dropout=hp.dropout,
    )
    model.scaler.fit(x_fit)
    return model


def depths(hp) -> list[Variant]:
    """Small tables make one architecture's validation curve noisy: compare depths."""
    return [Variant(f"h{d}", {"hidden_layers": d}) for d in sorted({0, 1, hp.hidden_layers})]


def exactly(hp) -> list[Variant]:
    return [Variant(f"h{hp.hidden_layers}", {"hidden_layers": hp.hidden_layers})]


TASK = "classification"
register(TrainedRecipe(TASK, "auto", load, build, variants=depths, refit=True, max_abs_diff=1e-4))
register(TrainedRecipe(TASK, "mlp", load, build, variants=exactly, max_abs_diff=1e-4))
