"""Environment variables as a model: the one place configuration is read."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, Field


class Settings(BaseModel):
    data_bucket: str = ""
    artifact_bucket: str = ""
    registry_table: str = ""
    stack_name: str = "maas"
    # Training backend: SageMaker CreateTrainingJob on AWS; the local stack's runner otherwise.
    training_backend: Literal["sagemaker", "local"] = "sagemaker"
    local_training_queue_url: str = ""
    training_role_arn: str = ""
    training_image: str = ""
    training_code_s3: str = ""
    training_instance_type: str = "ml.g5.xlarge"
    training_instance_count: int = Field(default=1, ge=1)
    training_spot: bool = True
    training_max_runtime_s: int = Field(default=3600, ge=60)
    # Serving.
    alias_ttl_s: float = Field(default=10.0, ge=0, le=60)
    session_cache_size: int = Field(default=4, ge=1)
    max_batch_size: int = Field(default=1024, ge=1)
    function_memory_mb: int = Field(default=1769, ge=128)
    model_cache_dir: str = "/tmp/maas-models"  # noqa: S108 - Lambda's only writable path

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
            "training_role_arn": env.get("TRAINING_ROLE_ARN"),
            "training_image": env.get("TRAINING_IMAGE"),
            "training_code_s3": env.get("TRAINING_CODE_S3"),
            "training_instance_type": env.get("TRAINING_INSTANCE_TYPE"),
            "training_instance_count": env.get("TRAINING_INSTANCE_COUNT"),
            "training_spot": env.get("TRAINING_SPOT"),
            "training_max_runtime_s": env.get("TRAINING_MAX_RUNTIME_S"),
            "alias_ttl_s": env.get("ALIAS_TTL_S"),
            "session_cache_size": env.get("SESSION_CACHE_SIZE"),
            "max_batch_size": env.get("MAX_BATCH_SIZE"),
            "function_memory_mb": env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"),
            "model_cache_dir": env.get("MODEL_CACHE_DIR"),
        }
        return cls.model_validate({k: v for k, v in raw.items() if v not in (None, "")})


@lru_cache(maxsize=1)
def settings() -> Settings:
    return Settings.from_env()
