"""The training recipes: one object per (task, recipe) of the contract's table, found by name.

A recipe brings what differs between model families (how its data is read and encoded, which
model it builds, which candidates it compares) and nothing else; maas_training.steps runs every
recipe through the same fit -> choose -> refit -> evaluate -> export -> write-model-dir steps,
or, for a pretrained model, straight to export. A new model family is a module in this package
that calls ``register`` (with its row in maas/core/contract.py's RECIPES); it is picked up by
name, with no other change.

Heavy imports (torch, pandas) stay inside the recipes' functions: the job looks its recipe up
before it decides whether to relaunch itself under torchrun.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maas_training.shared import contract

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from maas_training.config import Paths
    from maas_training.data import Split

Hyperparameters = Any  # maas_training.hyperparameters.Hyperparameters (a generated dataclass)


@dataclass(frozen=True)
class Variant:
    """One candidate of the choose-by-validation step: hyperparameter overrides."""

    phase: str  # names its checkpoint file
    overrides: dict[str, Any] = field(default_factory=dict)
    rank: int = 0  # preference on a tie, lowest first (maas_training.selection.pick)

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.overrides.items())


@dataclass(frozen=True)
class Encoded:
    """A trained recipe's rows, encoded for its model, and what the model dir records of them."""

    x: np.ndarray  # model input rows: float32 feature values or int64 token ids
    y: np.ndarray  # int64 class index per row; a regression's float32 standardised target
    split: Split
    class_names: list[str]
    input_name: str  # the graph input (sample.npz: INPUT_PREFIX + input_name)
    fingerprint: str  # the data's identity, for checkpoints
    files: list[str]
    schema: dict[str, Any]  # schema.json beyond task, labels and outputs
    metadata: dict[str, str] = field(
        default_factory=dict
    )  # model.onnx metadata beyond the defaults
    texts: np.ndarray | None = None  # the raw texts beside their ids (sample, calibration)
    pad_id: int | None = None  # token ids: all-padding columns are trimmed from small batches
    text_spec: dict[str, Any] | None = None  # text.json
    tokenizer_json: str | None = None
    threads_width: int | None = None  # CPU: torch threads from batch x width (None: torch's)
    metrics: dict[str, Any] = field(default_factory=dict)  # recipe-specific metrics.json entries
    builder_args: dict[str, Any] = field(default_factory=dict)  # for this recipe's build only
    task: str = ""  # the task the data decided (a table's label), when the job named none
    target_scale: tuple[float, float] | None = None  # regression: the target's (mean, std)
    table_spec: dict[str, Any] | None = None  # table.json (maas/serving/tableprep.py)
    class_weights: np.ndarray | None = None  # per class, in every loss (balance_classes=1)

    @property
    def regression(self) -> bool:
        return self.target_scale is not None

    def targets(self, rows: np.ndarray) -> np.ndarray:
        """The rows' targets as the model dir records them: class index, or the value."""
        if self.target_scale is None:
            return self.y[rows]
        mean, std = self.target_scale
        return self.y[rows].astype("float64") * std + mean


def single(hp: Hyperparameters) -> list[Variant]:
    return [Variant(hp.recipe)]


@dataclass(frozen=True)
class Family:
    """A model family fitted outside the torch loop (gradient-boosted trees), compared with the
    recipe's torch variants on the same rows by the same validation loss."""

    name: str
    # (data, hp, rows, validation rows or None, rounds) -> (fitted, validation loss): early-
    # stopped on the validation rows, or exactly `rounds` rounds without them (a refit).
    fit: Callable[[Encoded, Hyperparameters, np.ndarray, np.ndarray | None, int | None], Any]
    rounds: Callable[[Any], int]  # the rounds a fit chose
    outputs: Callable[[Any, Encoded, np.ndarray], np.ndarray]  # the exported graph's output
    export: Callable[[Any, Encoded, Path, dict[str, str]], None]  # writes model.onnx
    rank: int = 0  # preference on a tie, lowest first, beside the variants' ranks
    regression_only: bool = False  # not a candidate for a classifier
    exact: bool = False  # a closed-form fit: no rounds to report


@dataclass(frozen=True)
class TrainedRecipe:
    task: str
    name: str
    load: Callable[[Paths, Hyperparameters], Encoded]
    # (data, hyperparameters with the variant's overrides, the rows it is fitted on) -> logits
    build: Callable[[Encoded, Hyperparameters, np.ndarray], nn.Module]
    variants: Callable[[Hyperparameters], list[Variant]] = single
    refit: bool = False  # refit the chosen candidate on train + validation
    eval_batch: int = 8192
    max_abs_diff: float = 1e-3  # onnxruntime vs torch, probabilities
    calibration: bool = True  # write calibration.npz (static quantization)
    families: tuple[Family, ...] = ()  # compared beside the torch variants (see Family)
    trains = True


@dataclass(frozen=True)
class Pretrained:
    """A pretrained model ready to export, with the texts its export is checked on."""

    module: nn.Module
    feeds: dict[str, np.ndarray]
    texts: list[str]
    output_name: str
    labels: list[str] | None  # None: not a classifier
    schema: dict[str, Any]  # schema.json beyond task and labels
    text_spec: dict[str, Any]
    tokenizer_json: str
    kind: str  # what it is, for the log
    metrics: dict[str, Any]
    # Texts other than the gate's sample, encoded like feeds: what compression students are
    # distilled on (None: no compression candidates).
    distill_feeds: dict[str, np.ndarray] | None = None


@dataclass(frozen=True)
class PretrainedRecipe:
    task: str
    name: str
    load: Callable[[Paths, Hyperparameters], Pretrained]
    prefer: str = "torchscript"  # the exporter tried first
    trains = False


@dataclass(frozen=True)
class GenerativeRecipe:
    """A text-generation recipe: it runs its own steps (maas_training.lmsteps ends them all)."""

    task: str
    name: str
    run: Callable[[Paths, Hyperparameters], dict[str, Any]]
    trains: bool = True


Recipe = TrainedRecipe | PretrainedRecipe | GenerativeRecipe
REGISTRY: dict[tuple[str, str], Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    key = (recipe.task, recipe.name)
    if recipe.name not in contract.RECIPES.get(recipe.task, ()):
        raise ValueError(f"recipe {key} is not in the contract's RECIPES table")
    if key in REGISTRY:
        raise ValueError(f"recipe {key} is registered twice")
    REGISTRY[key] = recipe
    return recipe


def load_all() -> dict[tuple[str, str], Recipe]:
    """Import every module of this package (each registers its recipes)."""
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{__name__}.{module.name}")
    return REGISTRY


def task_key(task: str) -> str:
    """The registry's task for a job's: a table whose task the label decides is looked up
    under the default (the tabular recipes register the same functions for both)."""
    return task or contract.DEFAULT_TASK


def get(task: str, name: str) -> Recipe:
    recipes = load_all()
    if (task, name) not in recipes:
        raise KeyError(f"no training recipe {name!r} for task {task!r}")
    return recipes[(task, name)]
