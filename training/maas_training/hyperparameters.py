"""The job's hyperparameters: the contract's names and defaults, this job's own bounds.

SageMaker passes input/config/hyperparameters.json with every value JSON-encoded into a string.
Names, defaults and the (task, recipe) table are maas/core/contract.py's (the job spec validates
against the same file); the bounds below are the training job's own last line of defence.
"""

from __future__ import annotations

import json
from dataclasses import asdict, field, make_dataclass
from typing import Any

from maas_training import log
from maas_training.config import Paths
from maas_training.errors import TrainingError
from maas_training.shared import contract

# name -> (lower bound, upper bound, lower inclusive, upper inclusive); the type is the default's.
BOUNDS: dict[str, tuple[float, float, bool, bool]] = {
    "epochs": (1, 100_000, True, True),
    "batch_size": (1, 1 << 24, True, True),
    "learning_rate": (0.0, 10.0, False, True),
    "weight_decay": (0.0, 10.0, True, True),
    "hidden_units": (1, 1 << 16, True, True),
    "hidden_layers": (0, 64, True, True),
    "dropout": (0.0, 1.0, True, False),
    "patience": (1, 100_000, True, True),
    "seed": (0, 2**31 - 1, True, True),
    "validation_fraction": (0.0, 0.5, False, False),
    "test_fraction": (0.0, 0.5, False, False),
    "embedding_dim": (1, 4096, True, True),
    "buckets": (2, 1 << 24, True, True),
    "max_length": (2, 8192, True, True),
    "compress_candidates": (0, 8, True, True),
    "compress_seconds": (1, 86_400, True, True),
    "max_columns": (1, 100_000, True, True),
    "balance_classes": (0, 1, True, True),
    "vocab_size": (259, 1 << 18, True, True),
    "attention_heads": (1, 256, True, True),
    "lora_rank": (0, 1024, True, True),
}


def _as_dict(self: Any) -> dict[str, Any]:
    d = asdict(self)
    d.pop("ignored")
    return d


# A frozen dataclass with one field per contract knob (hp.epochs, hp.recipe, ...) and the
# unknown names the job was given (`ignored`, logged, not compared).
Hyperparameters = make_dataclass(
    "Hyperparameters",
    [
        *((name, type(v), field(default=v)) for name, v in contract.STRING_HYPERPARAMETERS.items()),
        *((name, type(v), field(default=v)) for name, v in contract.HYPERPARAMETERS.items()),
        ("ignored", tuple, field(default=(), compare=False)),
    ],
    frozen=True,
    namespace={"as_dict": _as_dict, "__module__": __name__},
)


def decode_value(raw: Any) -> Any:
    """SageMaker JSON-encodes every hyperparameter into a string; undo that when it parses."""
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, ValueError):
            return raw
    return raw


def _coerce(name: str, value: Any) -> Any:
    lo, hi, lo_inc, hi_inc = BOUNDS[name]
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise TrainingError(f"hyperparameter {name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TrainingError(f"hyperparameter {name} must be a number, got {value!r}") from None
    if type(contract.HYPERPARAMETERS[name]) is int:
        if not number.is_integer():
            raise TrainingError(f"hyperparameter {name} must be an integer, got {value!r}")
        number = int(number)
    ok_lo = number >= lo if lo_inc else number > lo
    ok_hi = number <= hi if hi_inc else number < hi
    if not (ok_lo and ok_hi):
        lb = "[" if lo_inc else "("
        rb = "]" if hi_inc else ")"
        raise TrainingError(f"hyperparameter {name}={value!r} is outside {lb}{lo}, {hi}{rb}")
    return number


def _decode_all(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    values: dict[str, Any] = {}
    ignored: list[str] = []
    for key, raw_value in raw.items():
        value = decode_value(raw_value)
        if key in contract.HYPERPARAMETERS:
            values[key] = _coerce(key, value)
        elif key in contract.STRING_HYPERPARAMETERS:
            if value is None:
                continue
            if key == "columns" and isinstance(value, dict):
                value = json.dumps(value)
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise TrainingError(f"hyperparameter {key} must be a string, got {value!r}")
            values[key] = str(value)
        elif key.startswith("sagemaker_"):
            continue  # script mode adds sagemaker_program, sagemaker_region, ...
        else:
            ignored.append(key)
    return values, ignored


def _resolve_recipe(values: dict[str, Any]) -> None:
    """The task's default recipe when none is given, then that recipe's defaults."""
    task = values.get("task", contract.DETECT_TASK)
    if task != contract.DETECT_TASK and task not in contract.RECIPES:
        raise TrainingError(
            f"task {task!r} is not supported by this training job; "
            f"supported: {', '.join(contract.TASKS)}"
        )
    known = contract.RECIPES[task or contract.DEFAULT_TASK]
    recipe = values.get("recipe") or contract.default_recipe(task or contract.DEFAULT_TASK)
    if recipe not in known:
        raise TrainingError(
            f"recipe {recipe!r} is not known for task {task}; known: {', '.join(known)}"
        )
    values["recipe"] = recipe
    for key, default in contract.recipe_defaults(task or contract.DEFAULT_TASK, recipe).items():
        values.setdefault(key, default)


def parse_hyperparameters(raw: dict[str, Any]) -> Any:
    values, ignored = _decode_all(raw)
    if ignored:
        log.info(f"ignoring unknown hyperparameters: {', '.join(sorted(ignored))}")
    _resolve_recipe(values)
    hp = Hyperparameters(**values, ignored=tuple(sorted(ignored)))
    if not hp.label:
        raise TrainingError("hyperparameter label (the label column) must not be empty")
    if hp.validation_fraction + hp.test_fraction >= 0.9:
        raise TrainingError(
            "validation_fraction + test_fraction leaves under 10% of the rows for training"
        )
    return hp


def load_hyperparameters(paths: Paths) -> Any:
    path = paths.hyperparameters_file
    if not path.exists():
        log.info(f"no {path}; using default hyperparameters")
        return parse_hyperparameters({})
    try:
        doc = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TrainingError(f"hyperparameters.json is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise TrainingError("hyperparameters.json must hold a JSON object")
    return parse_hyperparameters(doc)
