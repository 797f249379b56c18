"""The job spec: what a run folder's job.json (or a lone file's metadata) asks for.

Constraints live here so a bad spec fails before anything is started.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from maas.core import contract
from maas.core.names import MODEL_NAME_RE

# The contract's tables as types, so a bad task or recipe names the choices.
Task = Literal[contract.TASKS]  # type: ignore[valid-type]
Recipe = Literal[contract.ALL_RECIPES]  # type: ignore[valid-type]
ColumnRole = Literal["numeric", "boolean", "categorical", "datetime", "text", "ignore"]

COLUMN_RE = r"^[^\x00-\x1f]{1,128}$"


class InvalidJobSpec(ValueError):
    pass


# Bounds stop absurd values from reaching a paid GPU (names and defaults: maas.core.contract).
HYPERPARAMETER_BOUNDS: dict[str, dict[str, Any]] = {
    "epochs": {"ge": 1, "le": 2000},
    "batch_size": {"ge": 1, "le": 65536},
    "learning_rate": {"gt": 0, "le": 1.0},
    "weight_decay": {"ge": 0, "le": 1.0},
    "hidden_units": {"ge": 1, "le": 8192},
    "hidden_layers": {"ge": 0, "le": 16},
    "dropout": {"ge": 0, "lt": 1.0},
    "patience": {"ge": 1, "le": 1000},
    "seed": {"ge": 0, "le": 2**31 - 1},
    "validation_fraction": {"gt": 0, "lt": 0.5},
    "test_fraction": {"gt": 0, "lt": 0.5},
    "embedding_dim": {"ge": 1, "le": 4096},
    "buckets": {"ge": 2, "le": 1 << 24},
    "max_length": {"ge": 2, "le": 8192},
    # Compression candidates: at most 8 students, distilled for at most a day in all.
    "compress_candidates": {"ge": 0, "le": 8},
    "compress_seconds": {"ge": 1, "le": 86_400},
    "max_columns": {"ge": 1, "le": 100_000},
    "balance_classes": {"ge": 0, "le": 1},
    "vocab_size": {"ge": 259, "le": 1 << 18},
    "attention_heads": {"ge": 1, "le": 256},
    "lora_rank": {"ge": 0, "le": 1024},
}
# Text-recipe knobs a job.json leaves unset stay unsent: the training job applies the contract's
# defaults (and the recipe's) itself.
UNSENT_UNLESS_SET = (
    "embedding_dim",
    "buckets",
    "max_length",
    "compress_candidates",
    "compress_seconds",
    "vocab_size",
    "attention_heads",
    "lora_rank",
)


def _hyperparameter(name: str, default: int | float) -> Any:
    kind: Any = type(default)
    if name in UNSENT_UNLESS_SET:
        return (kind | None, Field(default=None, **HYPERPARAMETER_BOUNDS[name]))
    return (kind, Field(default=default, **HYPERPARAMETER_BOUNDS[name]))


if TYPE_CHECKING:
    Hyperparameters = BaseModel
else:
    Hyperparameters = create_model(
        "Hyperparameters",
        __config__=ConfigDict(extra="forbid"),
        __doc__="Training knobs: the contract's, each bounded.",
        __module__=__name__,
        **{n: _hyperparameter(n, d) for n, d in contract.HYPERPARAMETERS.items()},
    )


class QualityGate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Largest accuracy drop (fraction, 0.01 = 1 point) a quantized candidate may show vs fp32.
    max_accuracy_drop: float = Field(default=0.01, ge=0, le=1)
    # Smallest mean cosine similarity to fp32 outputs (embedding models).
    min_cosine: float = Field(default=0.99, ge=0, le=1)
    # Largest drop in test R^2 a quantized regressor may show vs fp32.
    max_r2_drop: float = Field(default=0.01, ge=0, le=1)
    # A model whose fp32 test accuracy is below this is REJECTED outright.
    min_accuracy: float = Field(default=0.0, ge=0, le=1)
    # Text generation: largest relative perplexity increase over fp32 (0.05 = 5 %) on held-out
    # text, and the smallest top-1 next-token agreement with fp32 (teacher-forced).
    max_perplexity_increase: float = Field(default=0.05, ge=0, le=10)
    min_agreement: float = Field(default=0.95, ge=0, le=1)


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # None: a table, and its label decides classification or regression (the training job
    # says why in its log).
    task: Task | None = None
    label: str = Field(default=contract.DEFAULT_LABEL, pattern=COLUMN_RE)
    text: str = Field(default=contract.DEFAULT_TEXT, pattern=COLUMN_RE)
    # Tables: a column's type where the training job's own typing should not decide.
    columns: dict[Annotated[str, Field(pattern=COLUMN_RE)], ColumnRole] = Field(
        default_factory=dict, max_length=10_000
    )
    # Model family within the task (contract.RECIPES): classification "auto" (depth chosen on
    # validation, then refit) or "mlp"; text-classification "ngram" (default), "finetune" (a
    # pretrained encoder, base_model, with a head) or "import"; embedding "import".
    recipe: Recipe | None = None
    # finetune: the model whose pretrained folder (its prod version's upload) is the encoder.
    base_model: str | None = Field(default=None, pattern=MODEL_NAME_RE.pattern)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    instance_type: str | None = Field(default=None, pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
    instance_count: int | None = Field(default=None, ge=1, le=16)
    spot: bool | None = None
    max_runtime_s: int | None = Field(default=None, ge=60, le=5 * 24 * 3600)
    auto_promote: bool = True
    quality_gate: QualityGate = Field(default_factory=QualityGate)

    @model_validator(mode="after")
    def _recipe_fits_task(self) -> JobSpec:
        recipes = contract.RECIPES[self.effective_task]
        if self.recipe is not None and self.recipe not in recipes:
            raise ValueError(
                f"recipe {self.recipe!r} does not apply to task {self.effective_task!r}; "
                f"choose one of: {', '.join(recipes)}"
            )
        if self.effective_recipe == "finetune" and not self.base_model:
            raise ValueError("recipe 'finetune' needs base_model: the pretrained model to tune")
        if self.base_model and self.effective_recipe != "finetune":
            raise ValueError("base_model applies to recipe 'finetune' only")
        if self.columns and self.effective_task not in contract.TABULAR_TASKS:
            raise ValueError("columns applies to tables (classification, regression) only")
        return self

    @property
    def effective_task(self) -> str:
        """The task as far as job.json says: a table's may still turn out to be regression."""
        return self.task or contract.DEFAULT_TASK

    @property
    def effective_recipe(self) -> str:
        return self.recipe or contract.default_recipe(self.effective_task)

    def hyperparameters_for_sagemaker(self) -> dict[str, str]:
        """SageMaker passes hyperparameters as strings; JSON-encode each, as script mode does."""
        hp: dict[str, Any] = self.hyperparameters.model_dump(exclude_none=True)
        given = self.hyperparameters.model_fields_set
        for key, value in contract.recipe_defaults(
            self.effective_task, self.effective_recipe
        ).items():
            if key not in given:
                hp[key] = value
        hp.update({"label": self.label, "text": self.text})
        if self.task is not None:
            hp["task"] = self.task
        if self.columns:
            hp["columns"] = json.dumps(self.columns, sort_keys=True)
        if self.recipe:
            hp["recipe"] = self.recipe
        return {k: json.dumps(v) for k, v in hp.items()}


def parse_job_json(raw: bytes, *, pretrained: bool = False) -> JobSpec:
    """A run's job.json; `pretrained` for pretrained/<model>/<run>/ (an import, by default of
    an embedding model)."""
    if len(raw) > 64 * 1024:
        raise InvalidJobSpec("job.json is larger than 64 KiB")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidJobSpec(f"job.json is not valid JSON: {e}") from None
    except RecursionError:
        raise InvalidJobSpec("job.json is not valid JSON: nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise InvalidJobSpec(f"job.json is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidJobSpec("job.json must be a JSON object")
    if not pretrained:
        return _validate(doc)
    doc.setdefault("task", "embedding")
    doc.setdefault("recipe", "import")
    spec = _validate(doc)
    if spec.effective_recipe != "import":
        raise InvalidJobSpec(
            "a pretrained/ upload is imported: its job.json takes recipe 'import' "
            "(task 'embedding', 'text-classification' for a sequence-classification model, "
            "'text-generation' for a causal LM)"
        )
    return spec


_META_KEYS = {"task", "label", "text", "recipe", "auto-promote", "instance-type"}


def parse_object_metadata(metadata: dict[str, str]) -> JobSpec:
    """Settings for a lone data file, from its `x-amz-meta-*` metadata (unknown keys ignored)."""
    doc: dict[str, Any] = {}
    for key, value in metadata.items():
        k = key.lower()
        if k not in _META_KEYS:
            continue
        if k == "auto-promote":
            doc["auto_promote"] = value.strip().lower() in ("1", "true", "yes")
        else:
            doc[k.replace("-", "_")] = value
    return _validate(doc)


def _validate(doc: dict[str, Any]) -> JobSpec:
    try:
        return JobSpec.model_validate(doc)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'job'}: {err['msg']}" for err in e.errors()
        )
        raise InvalidJobSpec(f"invalid job spec: {problems}") from None
