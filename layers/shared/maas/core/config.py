"""Environment variables as a model: the one place configuration is read.

A dataclass whose fields declare their bounds, checked and coerced on construction the way
pydantic's lax mode reads environment strings ("30" -> 30, "false" -> False). Not pydantic on
purpose: every function reads its settings on its first request, and importing pydantic and
building a model costs a cold inference function more than its whole budget over importing
onnxruntime (bench/coldstart.py). Job specs and the wire schema, which validate what users send,
stay pydantic models.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal


class SettingsError(ValueError):
    """An environment variable the functions cannot run with (a deployment error)."""


def setting(
    default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None
) -> Any:
    """A field with bounds (as pydantic's Field(ge=, gt=, le=) would declare them)."""
    return dataclasses.field(default=default, metadata={"ge": ge, "gt": gt, "le": le})


@dataclass
class Settings:
    data_bucket: str = ""
    artifact_bucket: str = ""
    registry_table: str = ""
    stack_name: str = "maas"
    # Training backend: SageMaker CreateTrainingJob on AWS; the local stack's runner otherwise.
    training_backend: Literal["sagemaker", "local"] = "sagemaker"
    local_training_queue_url: str = ""
    # Ingest: permanent failures (no model to record them under) go here with their reason.
    ingest_dlq_url: str = ""
    training_role_arn: str = ""
    training_image: str = ""
    training_code_s3: str = ""
    training_instance_type: str = "ml.g5.xlarge"
    training_instance_count: int = setting(1, ge=1)
    training_spot: bool = True
    training_max_runtime_s: int = setting(3600, ge=60)
    # Serving.
    alias_ttl_s: float = setting(10.0, ge=0, le=60)
    session_cache_size: int = setting(4, ge=1)
    # Bytes of model files the session cache may hold; unset: half the function's memory.
    session_cache_mb: float | None = setting(None, gt=0)
    max_batch_size: int = setting(1024, ge=1)
    function_memory_mb: int = setting(1769, ge=128)
    model_cache_dir: str = "/tmp/maas-models"  # noqa: S108 - Lambda's only writable path
    # SnapStart: models whose prod version init loads ("a,b", or "*" for every prod model).
    preload_models: str = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _coerce(f.name, getattr(self, f.name), hints[f.name])
            _check_bounds(f.name, value, f.metadata)
            setattr(self, f.name, value)

    @property
    def session_cache_bytes(self) -> int:
        mb = self.session_cache_mb or self.function_memory_mb / 2
        return int(mb * 1024 * 1024)

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        raw = {
            "data_bucket": env.get("DATA_BUCKET"),
            "artifact_bucket": env.get("ARTIFACT_BUCKET"),
            "registry_table": env.get("REGISTRY_TABLE"),
            "stack_name": env.get("STACK_NAME"),
            "training_backend": env.get("TRAINING_BACKEND"),
            "local_training_queue_url": env.get("LOCAL_TRAINING_QUEUE_URL"),
            "ingest_dlq_url": env.get("INGEST_DLQ_URL"),
            "training_role_arn": env.get("TRAINING_ROLE_ARN"),
            "training_image": env.get("TRAINING_IMAGE"),
            "training_code_s3": env.get("TRAINING_CODE_S3"),
            "training_instance_type": env.get("TRAINING_INSTANCE_TYPE"),
            "training_instance_count": env.get("TRAINING_INSTANCE_COUNT"),
            "training_spot": env.get("TRAINING_SPOT"),
            "training_max_runtime_s": env.get("TRAINING_MAX_RUNTIME_S"),
            "alias_ttl_s": env.get("ALIAS_TTL_S"),
            "session_cache_size": env.get("SESSION_CACHE_SIZE"),
            "session_cache_mb": env.get("SESSION_CACHE_MB"),
            "max_batch_size": env.get("MAX_BATCH_SIZE"),
            "function_memory_mb": env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"),
            "model_cache_dir": env.get("MODEL_CACHE_DIR"),
            "preload_models": env.get("PRELOAD_MODELS"),
        }
        given: dict[str, Any] = {k: v for k, v in raw.items() if v not in (None, "")}
        return cls(**given)  # strings: __post_init__ coerces them


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


@lru_cache(maxsize=1)
def settings() -> Settings:
    return Settings.from_env()
