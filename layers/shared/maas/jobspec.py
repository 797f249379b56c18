"""The job spec: what a run folder's job.json (or a lone file's metadata) asks for.

Constraints live here so a bad spec fails before anything is started.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Task = Literal["classification", "text-classification", "embedding"]

COLUMN_RE = r"^[^\x00-\x1f]{1,128}$"


class InvalidJobSpec(ValueError):
    pass


class Hyperparameters(BaseModel):
    """Training knobs; bounds stop absurd values from reaching a paid GPU."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(default=200, ge=1, le=2000)
    batch_size: int = Field(default=64, ge=1, le=65536)
    learning_rate: float = Field(default=1e-3, gt=0, le=1.0)
    weight_decay: float = Field(default=1e-4, ge=0, le=1.0)
    hidden_units: int = Field(default=128, ge=1, le=8192)
    hidden_layers: int = Field(default=2, ge=0, le=16)
    dropout: float = Field(default=0.1, ge=0, lt=1.0)
    patience: int = Field(default=15, ge=1, le=1000)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    validation_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.15, gt=0, lt=0.5)


class QualityGate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Largest accuracy drop (fraction, 0.01 = 1 point) a quantized candidate may show vs fp32.
    max_accuracy_drop: float = Field(default=0.01, ge=0, le=1)
    # Smallest mean cosine similarity to fp32 outputs (embedding models).
    min_cosine: float = Field(default=0.99, ge=0, le=1)
    # A model whose fp32 test accuracy is below this is REJECTED outright.
    min_accuracy: float = Field(default=0.0, ge=0, le=1)


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: Task = "classification"
    label: str = Field(default="label", pattern=COLUMN_RE)
    text: str = Field(default="text", pattern=COLUMN_RE)
    # Model family within the task: "auto" (depth chosen on validation, then refit) or "mlp".
    recipe: Literal["auto", "mlp"] | None = None
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    instance_type: str | None = Field(default=None, pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
    instance_count: int | None = Field(default=None, ge=1, le=16)
    spot: bool | None = None
    max_runtime_s: int | None = Field(default=None, ge=60, le=5 * 24 * 3600)
    auto_promote: bool = True
    quality_gate: QualityGate = Field(default_factory=QualityGate)

    @field_validator("task")
    @classmethod
    def _task_supported(cls, v: str) -> str:
        if v != "classification":
            raise ValueError(f"task {v!r} is not supported yet; supported: classification")
        return v

    def hyperparameters_for_sagemaker(self) -> dict[str, str]:
        """SageMaker passes hyperparameters as strings; JSON-encode each, as script mode does."""
        hp: dict[str, Any] = self.hyperparameters.model_dump()
        hp.update({"task": self.task, "label": self.label, "text": self.text})
        if self.recipe:
            hp["recipe"] = self.recipe
        return {k: json.dumps(v) for k, v in hp.items()}


def parse_job_json(raw: bytes) -> JobSpec:
    if len(raw) > 64 * 1024:
        raise InvalidJobSpec("job.json is larger than 64 KiB")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidJobSpec(f"job.json is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidJobSpec("job.json must be a JSON object")
    return _validate(doc)


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
