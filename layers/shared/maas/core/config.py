"""Environment variables as a model: each function declares the environment it reads, once.

One dataclass per function (IngestSettings, OptimizeSettings, InferenceSettings,
PredictSettings, AdminSettings), each field naming its variable, its default (none: required)
and its bounds, checked and coerced on construction the way pydantic's lax mode reads
environment strings ("30" -> 30, "false" -> False). A required variable that is unset or empty
fails from_env() with an error naming it. Not pydantic on purpose: the inference function reads
its settings on its cold path, and importing pydantic and building a model costs a cold
inference function more than its whole budget over importing onnxruntime (bench/coldstart.py).
Job specs and the wire schema, which validate what users send, stay pydantic models.

FUNCTION_SETTINGS maps template.yaml's functions to their models: the template checks and the
tests' environment resets are derived from it.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Self


class SettingsError(ValueError):
    """An environment variable the functions cannot run with (a deployment error)."""


def setting(
    env: str,
    default: Any = dataclasses.MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
) -> Any:
    """A field read from the variable `env`; no default: required. Bounds as pydantic's
    Field(ge=, gt=, le=) would declare them."""
    return dataclasses.field(default=default, metadata={"env": env, "ge": ge, "gt": gt, "le": le})


@dataclass(kw_only=True)
class EnvSettings:
    """What the four functions' settings share: coercion, bounds, reading the environment."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            where = f"{f.metadata['env']} ({f.name})"
            value = _coerce(where, getattr(self, f.name), hints[f.name])
            _check_bounds(where, value, f.metadata)
            setattr(self, f.name, value)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """The settings from `environ` (the process environment); unset or empty: the default."""
        env = os.environ if environ is None else environ
        given: dict[str, Any] = {}
        missing = []
        for f in dataclasses.fields(cls):
            value = env.get(f.metadata["env"])
            if value not in (None, ""):
                given[f.name] = value  # a string: __post_init__ coerces it
            elif f.default is dataclasses.MISSING:
                missing.append(f.metadata["env"])
        if missing:
            raise SettingsError(
                f"{cls.__name__}: required environment variable(s) not set: {', '.join(missing)}"
            )
        return cls(**given)

    @classmethod
    def variables(cls) -> dict[str, bool]:
        """Each variable this function reads, and whether it is required."""
        return {
            f.metadata["env"]: f.default is dataclasses.MISSING for f in dataclasses.fields(cls)
        }


@dataclass(kw_only=True)
class IngestSettings(EnvSettings):
    data_bucket: str = setting("DATA_BUCKET")
    artifact_bucket: str = setting("ARTIFACT_BUCKET")
    registry_table: str = setting("REGISTRY_TABLE")
    stack_name: str = setting("STACK_NAME", "maas")
    # Training backend: SageMaker CreateTrainingJob on AWS; the local stack's runner otherwise.
    training_backend: Literal["sagemaker", "local"] = setting("TRAINING_BACKEND", "sagemaker")
    local_training_queue_url: str | None = setting("LOCAL_TRAINING_QUEUE_URL", None)
    # Permanent failures (no model to record them under) go here with their reason.
    ingest_dlq_url: str | None = setting("INGEST_DLQ_URL", None)
    training_role_arn: str = setting("TRAINING_ROLE_ARN")
    training_image: str = setting("TRAINING_IMAGE")
    training_code_s3: str = setting("TRAINING_CODE_S3")
    training_instance_type: str = setting("TRAINING_INSTANCE_TYPE", "ml.g5.xlarge")
    training_instance_count: int = setting("TRAINING_INSTANCE_COUNT", 1, ge=1)
    training_spot: bool = setting("TRAINING_SPOT", True)
    training_max_runtime_s: int = setting("TRAINING_MAX_RUNTIME_S", 3600, ge=60)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.training_backend == "local" and not self.local_training_queue_url:
            raise SettingsError("TRAINING_BACKEND=local needs LOCAL_TRAINING_QUEUE_URL")


@dataclass(kw_only=True)
class OptimizeSettings(EnvSettings):
    artifact_bucket: str = setting("ARTIFACT_BUCKET")
    registry_table: str = setting("REGISTRY_TABLE")


@dataclass(kw_only=True)
class InferenceSettings(EnvSettings):
    artifact_bucket: str = setting("ARTIFACT_BUCKET")
    registry_table: str = setting("REGISTRY_TABLE")
    alias_ttl_s: float = setting("ALIAS_TTL_S", 10.0, ge=0, le=60)
    session_cache_size: int = setting("SESSION_CACHE_SIZE", 4, ge=1)
    # Bytes of model files the session cache may hold; unset: half the function's memory.
    session_cache_mb: float | None = setting("SESSION_CACHE_MB", None, gt=0)
    max_batch_size: int = setting("MAX_BATCH_SIZE", 1024, ge=1)
    # Lambda sets it from the function's MemorySize.
    function_memory_mb: int = setting("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", 1769, ge=128)
    # /tmp: Lambda's only writable path.
    model_cache_dir: str = setting("MODEL_CACHE_DIR", "/tmp/maas-models")  # noqa: S108
    # Models above this load from memory, not /tmp (512 MB unless EphemeralStorage says more).
    model_memory_load_mb: float = setting("MODEL_MEMORY_LOAD_MB", 400.0, ge=0)
    # SnapStart: models whose prod version init loads ("a,b", or "*" for every prod model).
    preload_models: str | None = setting("PRELOAD_MODELS", None)

    @property
    def session_cache_bytes(self) -> int:
        mb = self.session_cache_mb or self.function_memory_mb / 2
        return int(mb * 1024 * 1024)


@dataclass(kw_only=True)
class PredictSettings(InferenceSettings):
    """The batch-prediction function: the inference function's model store, plus its queue."""

    data_bucket: str = setting("DATA_BUCKET")
    predict_queue_url: str = setting("PREDICT_QUEUE_URL")
    # Rows per chunk: each chunk is one SQS message and one invocation.
    chunk_rows: int = setting("PREDICT_CHUNK_ROWS", 10_000, ge=1, le=1_000_000)
    # The largest input file the function reads (it holds the file in memory).
    max_input_mb: float = setting("PREDICT_MAX_INPUT_MB", 512.0, gt=0)


@dataclass(kw_only=True)
class AdminSettings(EnvSettings):
    registry_table: str = setting("REGISTRY_TABLE")


# template.yaml's logical IDs: what each function reads.
FUNCTION_SETTINGS: dict[str, type[EnvSettings]] = {
    "IngestFunction": IngestSettings,
    "OptimizeFunction": OptimizeSettings,
    "InferenceFunction": InferenceSettings,
    "PredictFunction": PredictSettings,
    "AdminFunction": AdminSettings,
}


def variables() -> set[str]:
    """Every variable some function reads (what a test resets before setting its own)."""
    return {name for cls in FUNCTION_SETTINGS.values() for name in cls.variables()}


_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """`value` as the field's type; environment strings parsed, anything else refused."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in typing.get_args(hint):
            return None
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
        origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            allowed = ", ".join(map(str, typing.get_args(hint)))
            raise SettingsError(f"{name}: {value!r} is not one of {allowed}")
        return value
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE or text in _FALSE:
                return text in _TRUE
            raise ValueError
        if hint is int:
            if isinstance(value, bool):
                raise ValueError
            number = float(value) if isinstance(value, str) and "." in value else value
            if isinstance(number, float) and not number.is_integer():
                raise ValueError
            return int(number)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is str:
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError):
        raise SettingsError(f"{name}: {value!r} is not a valid {hint.__name__}") from None
    raise TypeError(f"{name}: unsupported settings type {hint!r}")  # a programming error


def _check_bounds(name: str, value: Any, bounds: Any) -> None:
    if value is None:
        return
    if bounds.get("ge") is not None and not value >= bounds["ge"]:
        raise SettingsError(f"{name}: {value} must be >= {bounds['ge']}")
    if bounds.get("gt") is not None and not value > bounds["gt"]:
        raise SettingsError(f"{name}: {value} must be > {bounds['gt']}")
    if bounds.get("le") is not None and not value <= bounds["le"]:
        raise SettingsError(f"{name}: {value} must be <= {bounds['le']}")
