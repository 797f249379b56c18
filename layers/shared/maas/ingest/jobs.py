"""Starting training jobs: one request shape (SageMaker's CreateTrainingJob), two backends."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

import boto3
from botocore.exceptions import ClientError

from maas.core.config import IngestSettings
from maas.ingest.jobspec import JobSpec

TRAINING_OUTPUT_PREFIX = "training-output/"
CHECKPOINT_PREFIX = "checkpoints/"
# name=value lines the training entry point prints; SageMaker scrapes them into CloudWatch.
METRIC_NAMES = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "test_accuracy",
    "test_loss",
    "onnx_cosine_mean",
)
METRIC_DEFINITIONS = [
    # "(?:^| )": whole names only (test_loss must not match inside another name).
    {"Name": name, "Regex": rf"(?:^| ){name}=([-+0-9.eE]+|nan|inf)"}
    for name in METRIC_NAMES
]


@dataclass(frozen=True)
class TrainingRequest:
    job_name: str
    model: str
    version: int
    data_uri: str
    spec: JobSpec
    # More channels beside "train" (name -> S3 prefix): "base" for a finetune's encoder.
    channels: dict[str, str] = field(default_factory=dict)

    def to_create_training_job(self, settings: IngestSettings) -> dict[str, Any]:
        """The CreateTrainingJob request for the AWS PyTorch image in script mode."""
        spec = self.spec
        runtime = spec.max_runtime_s or settings.training_max_runtime_s
        spot = settings.training_spot if spec.spot is None else spec.spot
        hyper = spec.hyperparameters_for_sagemaker()
        # Script mode: the stock PyTorch training image fetches and runs our code tarball.
        hyper.update(
            {
                "sagemaker_program": json.dumps("train.py"),
                "sagemaker_submit_directory": json.dumps(settings.training_code_s3),
                "sagemaker_container_log_level": json.dumps(20),
            }
        )
        artifacts = settings.artifact_bucket
        request: dict[str, Any] = {
            "TrainingJobName": self.job_name,
            "AlgorithmSpecification": {
                "TrainingImage": settings.training_image,
                "TrainingInputMode": "File",
                "MetricDefinitions": METRIC_DEFINITIONS,
            },
            "RoleArn": settings.training_role_arn,
            "HyperParameters": hyper,
            "InputDataConfig": [
                {
                    "ChannelName": channel,
                    "DataSource": {
                        "S3DataSource": {
                            "S3DataType": "S3Prefix",
                            "S3Uri": uri,
                            "S3DataDistributionType": "FullyReplicated",
                        }
                    },
                    "InputMode": "File",
                }
                for channel, uri in {"train": self.data_uri, **self.channels}.items()
            ],
            "OutputDataConfig": {"S3OutputPath": f"s3://{artifacts}/{TRAINING_OUTPUT_PREFIX}"},
            "ResourceConfig": {
                "InstanceType": spec.instance_type or settings.training_instance_type,
                "InstanceCount": spec.instance_count or settings.training_instance_count,
                "VolumeSizeInGB": 30,
            },
            "StoppingCondition": {"MaxRuntimeInSeconds": runtime},
            "EnableManagedSpotTraining": spot,
            "Tags": [
                {"Key": "maas:stack", "Value": settings.stack_name},
                {"Key": "maas:model", "Value": self.model},
                {"Key": "maas:version", "Value": str(self.version)},
            ],
        }
        if spot:
            # Spot needs a wait budget >= runtime, and checkpoints to resume after interruption.
            request["StoppingCondition"]["MaxWaitTimeInSeconds"] = runtime * 2
            request["CheckpointConfig"] = {
                "S3Uri": f"s3://{artifacts}/{CHECKPOINT_PREFIX}{self.job_name}/",
                "LocalPath": "/opt/ml/checkpoints",
            }
        return request


class TrainingBackend(Protocol):
    def start(self, request: TrainingRequest) -> None: ...


class SageMakerBackend:
    def __init__(self, settings: IngestSettings, client: Any = None) -> None:
        self.settings = settings
        self.sm = client or boto3.client("sagemaker")

    def start(self, request: TrainingRequest) -> None:
        try:
            self.sm.create_training_job(**request.to_create_training_job(self.settings))
        except ClientError as e:
            # The job name is deterministic: "in use" means a previous delivery started it.
            if e.response["Error"]["Code"] == "ResourceInUse":
                return
            raise


class LocalBackend:
    """Hands the same CreateTrainingJob request to the local stack's runner through SQS."""

    def __init__(self, settings: IngestSettings, client: Any = None) -> None:
        self.settings = settings
        self.sqs = client or boto3.client("sqs")

    def start(self, request: TrainingRequest) -> None:
        body = request.to_create_training_job(self.settings)
        self.sqs.send_message(
            QueueUrl=self.settings.local_training_queue_url, MessageBody=json.dumps(body)
        )


def backend_for(settings: IngestSettings) -> TrainingBackend:
    if settings.training_backend == "local":
        return LocalBackend(settings)
    return SageMakerBackend(settings)
