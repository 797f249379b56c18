"""The SageMaker training contract: where things are, and the hyperparameters.

Every default path sits under /opt/ml; MAAS_OPT_ML relocates that base (local runs), and the
SM_* variables SageMaker sets win over both.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from maas_training import log
from maas_training.errors import TrainingError

DEFAULT_BASE = "/opt/ml"


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value) if value else default


@dataclass(frozen=True)
class Paths:
    base: Path
    model_dir: Path
    train_channel: Path
    base_channel: Path  # "base": the pretrained encoder a finetune recipe starts from
    input_config_dir: Path
    output_dir: Path
    output_data_dir: Path
    checkpoint_dir: Path

    @property
    def hyperparameters_file(self) -> Path:
        return self.input_config_dir / "hyperparameters.json"

    @property
    def failure_file(self) -> Path:
        return self.output_dir / "failure"

    @classmethod
    def from_env(cls) -> Paths:
        base = Path(os.environ.get("MAAS_OPT_ML") or DEFAULT_BASE)
        output_dir = _env_path("SM_OUTPUT_DIR", base / "output")
        return cls(
            base=base,
            model_dir=_env_path("SM_MODEL_DIR", base / "model"),
            train_channel=_env_path("SM_CHANNEL_TRAIN", base / "input" / "data" / "train"),
            base_channel=_env_path("SM_CHANNEL_BASE", base / "input" / "data" / "base"),
            input_config_dir=_env_path("SM_INPUT_CONFIG_DIR", base / "input" / "config"),
            output_dir=output_dir,
            output_data_dir=_env_path("SM_OUTPUT_DATA_DIR", output_dir / "data"),
            checkpoint_dir=_env_path("MAAS_CHECKPOINT_DIR", base / "checkpoints"),
        )


@dataclass(frozen=True)
class Cluster:
    hosts: list[str]
    current_host: str
    num_gpus: int

    @property
    def node_rank(self) -> int:
        return self.hosts.index(self.current_host) if self.current_host in self.hosts else 0

    @classmethod
    def from_env(cls) -> Cluster:
        raw_hosts = os.environ.get("SM_HOSTS")
        hosts: list[str] = []
        if raw_hosts:
            try:
                parsed = json.loads(raw_hosts)
            except json.JSONDecodeError:
                parsed = [h.strip() for h in raw_hosts.split(",") if h.strip()]
            hosts = [str(h) for h in parsed] if isinstance(parsed, list) else [str(parsed)]
        current = os.environ.get("SM_CURRENT_HOST") or (hosts[0] if hosts else "algo-1")
        if not hosts:
            hosts = [current]
        # SageMaker always sets SM_NUM_GPUS; unset (a plain local run) means one process,
        # which still uses cuda:0 when there is a GPU.
        raw_gpus = (os.environ.get("SM_NUM_GPUS") or "0").strip()
        try:
            num_gpus = int(raw_gpus)
        except ValueError:
            raise TrainingError(f"SM_NUM_GPUS must be an integer, got {raw_gpus!r}") from None
        return cls(hosts=hosts, current_host=current, num_gpus=max(0, num_gpus))


# --- hyperparameters ----------------------------------------------------------------------

# task -> its recipes, the first being the default.
#   classification       "auto": pick the MLP depth (0, 1 or hidden_layers) by validation loss,
#                        then refit the winner on train + validation; "mlp": exactly
#                        hidden_layers, early-stopped.
#   text-classification  "ngram": hashed word + character n-grams into an embedding bag
#                        (fastText-style); "finetune": a pretrained encoder (channel "base")
#                        with a classification head; "import": a Hugging Face
#                        sequence-classification folder exported as it is.
#   embedding            "import": a Hugging Face / sentence-transformers folder exported with
#                        its pooling and normalisation.
RECIPES: dict[str, tuple[str, ...]] = {
    "classification": ("auto", "mlp"),
    "text-classification": ("ngram", "finetune", "import"),
    "embedding": ("import",),
}
SUPPORTED_TASKS = tuple(RECIPES)
SUPPORTED_RECIPES = tuple(dict.fromkeys(r for rs in RECIPES.values() for r in rs))
# Defaults that differ by recipe, applied to the keys a job does not set (the same table as
# maas.ingest.jobspec.RECIPE_DEFAULTS).
RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "ngram": {
        "epochs": 30,
        "learning_rate": 1e-2,
        "weight_decay": 0.0,
        "patience": 3,
        "dropout": 0.0,
        "batch_size": 128,
    },
    "finetune": {
        "epochs": 4,
        "learning_rate": 5e-5,
        "weight_decay": 0.01,
        "patience": 2,
        "batch_size": 32,
        "dropout": 0.1,
    },
}


@dataclass(frozen=True)
class Hyperparameters:
    """Same names and defaults as maas.ingest.jobspec.Hyperparameters (+ task/label/text/recipe)."""

    task: str = "classification"
    label: str = "label"
    text: str = "text"
    recipe: str = ""  # "" = the task's default recipe
    epochs: int = 200
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    hidden_units: int = 128
    hidden_layers: int = 2
    dropout: float = 0.1
    patience: int = 15
    seed: int = 0
    validation_fraction: float = 0.15
    test_fraction: float = 0.15
    # Text recipes: embedding width and hash buckets (ngram), tokens per text (finetune/import).
    embedding_dim: int = 64
    buckets: int = 1 << 16
    max_length: int = 128
    ignored: tuple[str, ...] = field(default=(), compare=False)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("ignored")
        return d


# name -> (type, lower bound, upper bound, lower inclusive, upper inclusive)
_NUMERIC: dict[str, tuple[type, float, float, bool, bool]] = {
    "epochs": (int, 1, 100_000, True, True),
    "batch_size": (int, 1, 1 << 24, True, True),
    "learning_rate": (float, 0.0, 10.0, False, True),
    "weight_decay": (float, 0.0, 10.0, True, True),
    "hidden_units": (int, 1, 1 << 16, True, True),
    "hidden_layers": (int, 0, 64, True, True),
    "dropout": (float, 0.0, 1.0, True, False),
    "patience": (int, 1, 100_000, True, True),
    "seed": (int, 0, 2**31 - 1, True, True),
    "validation_fraction": (float, 0.0, 0.5, False, False),
    "test_fraction": (float, 0.0, 0.5, False, False),
    "embedding_dim": (int, 1, 4096, True, True),
    "buckets": (int, 2, 1 << 24, True, True),
    "max_length": (int, 2, 8192, True, True),
}
_STRINGS = ("task", "label", "text", "recipe")


def decode_value(raw: Any) -> Any:
    """SageMaker JSON-encodes every hyperparameter into a string; undo that when it parses."""
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, ValueError):
            return raw
    return raw


def _coerce(name: str, value: Any) -> Any:
    kind, lo, hi, lo_inc, hi_inc = _NUMERIC[name]
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise TrainingError(f"hyperparameter {name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TrainingError(f"hyperparameter {name} must be a number, got {value!r}") from None
    if kind is int:
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


def parse_hyperparameters(raw: dict[str, Any]) -> Hyperparameters:
    values: dict[str, Any] = {}
    ignored: list[str] = []
    for key, raw_value in raw.items():
        value = decode_value(raw_value)
        if key in _NUMERIC:
            values[key] = _coerce(key, value)
        elif key in _STRINGS:
            if value is None:
                continue
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise TrainingError(f"hyperparameter {key} must be a string, got {value!r}")
            values[key] = str(value)
        elif key.startswith("sagemaker_"):
            continue  # script mode adds sagemaker_program, sagemaker_region, ...
        else:
            ignored.append(key)
    if ignored:
        log.info(f"ignoring unknown hyperparameters: {', '.join(sorted(ignored))}")
    task = values.get("task", "classification")
    if task not in RECIPES:
        raise TrainingError(
            f"task {task!r} is not supported by this training job; "
            f"supported: {', '.join(SUPPORTED_TASKS)}"
        )
    recipe = values.get("recipe") or RECIPES[task][0]
    if recipe not in RECIPES[task]:
        raise TrainingError(
            f"recipe {recipe!r} is not known for task {task}; known: {', '.join(RECIPES[task])}"
        )
    values["recipe"] = recipe
    for key, default in RECIPE_DEFAULTS.get(recipe, {}).items():
        values.setdefault(key, default)
    hp = Hyperparameters(**values, ignored=tuple(sorted(ignored)))
    if not hp.label:
        raise TrainingError("hyperparameter label (the label column) must not be empty")
    if hp.validation_fraction + hp.test_fraction >= 0.9:
        raise TrainingError(
            "validation_fraction + test_fraction leaves under 10% of the rows for training"
        )
    return hp


def load_hyperparameters(paths: Paths) -> Hyperparameters:
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
