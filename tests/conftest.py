"""Shared fixtures: a moto AWS account shaped like the stack, Lambda contexts, a real model."""

from __future__ import annotations

import functools
import gc
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from maas_devkit import account, lambda_runtime, models, repo

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import reliability  # noqa: E402 - needs tests/ on sys.path first

# moto and botocore allocate heavily per test; default thresholds spent ~25% of the
# integration run in full collections of a heap that is mostly long-lived service models.
gc.set_threshold(10_000, 20, 20)

TRAINING_ROLE_ARN = f"arn:aws:iam::{repo.ACCOUNT}:role/maas-training"
TRAINING_IMAGE = (
    "763104351884.dkr.ecr.us-east-1.amazonaws.com/"
    "pytorch-training:2.5.1-gpu-py311-cu124-ubuntu22.04-sagemaker"
)
TRAINING_CODE_S3 = f"s3://{account.ARTIFACT_BUCKET}/code/training.tar.gz"


# --- AWS ----------------------------------------------------------------------------------


@dataclass
class AwsAccount:
    """Clients on the moto account, and where the stack's resources are."""

    s3: Any
    dynamodb: Any
    sqs: Any
    table: str
    data_bucket: str
    artifact_bucket: str
    local_training_queue_url: str
    ingest_dlq_url: str = ""

    def dead_letters(self) -> list[dict[str, Any]]:
        """Every message on the ingest DLQ (read without deleting: visibility 0)."""
        messages: list[dict[str, Any]] = []
        while True:
            batch = self.sqs.receive_message(
                QueueUrl=self.ingest_dlq_url,
                MaxNumberOfMessages=10,
                MessageAttributeNames=["All"],
                VisibilityTimeout=0,
            ).get("Messages", [])
            fresh = [m for m in batch if m["MessageId"] not in {x["MessageId"] for x in messages}]
            if not fresh:
                return messages
            messages.extend(fresh)

    @functools.cached_property
    def sagemaker(self) -> Any:
        import boto3

        return boto3.client("sagemaker", region_name=repo.REGION)

    def registry(self) -> Any:
        from maas.core.registry import Registry

        return Registry(self.table)

    def storage(self) -> Any:
        from maas.core.storage import Storage

        return Storage()


_LOADER: Any = None


def _fresh_boto3_session() -> Any:
    """A new boto3 session sharing one botocore loader: parsing service JSON dominates setup."""
    import boto3
    import botocore.loaders
    import botocore.session

    global _LOADER
    if _LOADER is None:
        _LOADER = botocore.loaders.create_loader()
    core = botocore.session.get_session()
    core.register_component("data_loader", _LOADER)
    session = boto3.Session(botocore_session=core, region_name=repo.REGION)
    # boto3 appends its own data path on every session; keep the shared list from growing.
    _LOADER.search_paths[:] = list(dict.fromkeys(_LOADER.search_paths))
    return session


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[AwsAccount]:
    """moto with the stack's resources and the functions' environment variables."""
    import boto3
    import moto
    from maas.core import config

    # Every variable a function declares (maas.core.config), and where the AWS SDK looks.
    aws_sdk = ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
    for name in sorted(config.variables() | set(aws_sdk)):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", repo.REGION)
    monkeypatch.setenv("REGISTRY_TABLE", account.REGISTRY_TABLE)
    monkeypatch.setenv("DATA_BUCKET", account.DATA_BUCKET)
    monkeypatch.setenv("ARTIFACT_BUCKET", account.ARTIFACT_BUCKET)
    monkeypatch.setenv("TRAINING_ROLE_ARN", TRAINING_ROLE_ARN)
    monkeypatch.setenv("TRAINING_IMAGE", TRAINING_IMAGE)
    monkeypatch.setenv("TRAINING_CODE_S3", TRAINING_CODE_S3)
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "maas")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "maas")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("MODEL_CACHE_DIR", str(tmp_path / "model-cache"))
    with moto.mock_aws():
        # After mock_aws (which drops the default session): handlers' boto3.client() calls
        # land on a fresh session that reuses the parsed service models across tests.
        monkeypatch.setattr(boto3, "DEFAULT_SESSION", _fresh_boto3_session())
        clients = {
            name: boto3.client(name, region_name=repo.REGION)  # type: ignore[call-overload]
            for name in ("s3", "sqs", "dynamodb")
        }
        res = account.create_resources(clients.__getitem__, account.stack_template())
        # As template.yaml gives the ingest function: permanent failures go straight here.
        monkeypatch.setenv("INGEST_DLQ_URL", res.urls["IngestDLQ"])
        yield AwsAccount(
            s3=clients["s3"],
            dynamodb=clients["dynamodb"],
            sqs=clients["sqs"],
            table=res.names["RegistryTable"],
            data_bucket=res.names["DataBucket"],
            artifact_bucket=res.names["ArtifactBucket"],
            local_training_queue_url=res.urls[account.LOCAL_TRAINING_QUEUE_ID],
            ingest_dlq_url=res.urls["IngestDLQ"],
        )


@pytest.fixture
def atomic_requests(aws: AwsAccount, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each AWS request applies atomically, as on AWS; moto's in-memory backends do not.

    Threads still interleave freely between requests, which is where real races happen.
    """
    import threading

    from moto.core.botocore_stubber import BotocoreStubber

    lock = threading.Lock()
    process = BotocoreStubber.process_request

    def serialised(self: BotocoreStubber, request: Any) -> Any:
        with lock:
            return process(self, request)

    monkeypatch.setattr(BotocoreStubber, "process_request", serialised)


@pytest.fixture
def registry(aws: AwsAccount) -> Any:
    return aws.registry()


@pytest.fixture
def storage(aws: AwsAccount) -> Any:
    return aws.storage()


@pytest.fixture
def lambda_context() -> lambda_runtime.LambdaContext:
    return lambda_runtime.LambdaContext()


# --- a real model -------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainedModel:
    classifier: models.TinyClassifier
    onnx: bytes
    features: Any  # np.ndarray [N, F] of raw feature rows from the dataset


@pytest.fixture(scope="session")
def iris_model() -> TrainedModel:
    """A logistic regression on iris as an ONNX classifier: 4 features, 3 named classes."""
    clf, x = models.train_tiny_classifier("iris")
    return TrainedModel(clf, clf.onnx_bytes(), x)


@pytest.fixture(scope="session")
def iris_model_reversed(iris_model: TrainedModel) -> TrainedModel:
    """The same weights with the class names reversed: a second version that answers differently."""
    base = iris_model.classifier
    clf = models.TinyClassifier(
        base.weights, base.bias, base.mean, base.scale, list(reversed(base.classes))
    )
    return TrainedModel(clf, clf.onnx_bytes(), iris_model.features)


# --- the reliability figures (README table) ---------------------------------------------


@pytest.fixture(scope="session")
def reliability_report() -> Iterator[reliability.Report]:
    """What the reliability tests tried and measured; saved for `make reliability-table`."""
    report = reliability.Report()
    yield report
    report.save()


# --- no network for pure tests ------------------------------------------------------------


_LOOPBACK = ("127.0.0.1", "::1", "localhost")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests must not reach anything off this machine."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOOPBACK:
            raise RuntimeError(f"unit tests may not use the network (tried {address!r})")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


# --- the unit tier is pure ---------------------------------------------------------------------

UNIT_DIR = TESTS_DIR / "unit"


@pytest.fixture(autouse=True)
def pure_unit_tier(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """In tests/unit a subprocess or a connection (loopback too) fails the test: it belongs
    in tests/integration."""
    if UNIT_DIR not in Path(str(request.path)).parents:
        return
    import subprocess

    def no_subprocess(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("unit tests start no subprocess: move this test to integration")

    def no_connect(self: socket.socket, address: Any) -> Any:
        raise RuntimeError(f"unit tests use no network (tried {address!r}): integration")

    monkeypatch.setattr(subprocess.Popen, "__init__", no_subprocess)
    monkeypatch.setattr(socket.socket, "connect", no_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", no_connect)
