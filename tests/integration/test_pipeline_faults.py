"""Pipeline faults: whatever breaks between an upload and a served version, prod keeps serving.

GIVEN iris v1 trained, optimized and in prod, each test breaks v2 one way: its training job
fails (bad data, a loss that is not finite, out of time: the real training entry point under
the local SageMaker-style runner, upload to registry), its model.tar.gz is missing or corrupt,
the optimizer crashes, the quality gate rejects it, or the completion event comes twice. Each
ends in the registry with its reason (FAILED or REJECTED), nothing of v2 is promoted, and the
inference function keeps answering from v1.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from maas_devkit.events import http_event, put_and_notify, sqs_event
from maas_devkit.lambda_runtime import LambdaContext, load_handler
from maas_devkit.models import infer_body
from maas_devkit.repo import REGION, REPO
from maas_local.runner import TrainingRunner
from test_optimize import _event, _model_tarball, _optimize, _start_run, _upload_artifact

SECTION = "Pipeline faults"
ROWS = "f1,f2,f3,f4,species\n" + "\n".join(
    f"{i % 7 + 0.5},{i % 5 + 1.0},{i % 3 + 2.0},{i % 11 * 0.1},{'ab'[i % 2]}" for i in range(60)
)


@pytest.fixture
def v1_in_prod(aws: Any, iris_model: Any, lambda_context: Any) -> str:
    name = _start_run(aws, "iris", "run-1")
    uri = _upload_artifact(aws, name, _model_tarball(iris_model))
    assert _optimize(_event(name, artifact=uri), lambda_context)["action"] == "ready"
    assert aws.registry().get_alias("iris").version == 1
    return name


def assert_prod_serves_v1(aws: Any, iris_model: Any, lambda_context: Any) -> None:
    registry = aws.registry()
    alias = registry.get_alias("iris")
    assert alias.version == 1 and alias.canary_version is None
    app = load_handler("inference")
    event = http_event("POST", "/v2/models/iris/infer", infer_body(iris_model.features[:3]))
    response = app.lambda_handler(event, lambda_context)
    assert response["statusCode"] == 200, response["body"]
    assert json.loads(response["body"])["model_version"] == "1"


# --- training jobs that fail, through the real entry point and the local runner ------------


class Optimize:
    """The runner's view of OptimizeFunction: the production handler, invoked in process."""

    def invoke(self, event: dict[str, Any]) -> Any:
        return load_handler("optimize").lambda_handler(event, LambdaContext("optimize"))


def run_training(aws: Any, workdir: Path, timeout_s: int | None = None) -> dict[str, Any]:
    """Hand the CreateTrainingJob request ingest queued to the runner, as the local stack does."""
    (message,) = aws.sqs.receive_message(
        QueueUrl=aws.local_training_queue_url, MaxNumberOfMessages=1
    )["Messages"]
    request = json.loads(message["Body"])
    if timeout_s is not None:  # job.json's floor is 60 s: shorten it here, as a test may
        request["StoppingCondition"]["MaxRuntimeInSeconds"] = timeout_s
    stack = SimpleNamespace(
        cfg=SimpleNamespace(
            workdir=workdir, training_entry=REPO / "training" / "train.py", region=REGION
        ),
        client=lambda service: boto3.client(service, region_name=REGION),
    )
    runner = TrainingRunner(stack, Optimize())  # type: ignore[arg-type]
    runner.on_line = lambda job, line: None
    return runner.run(request)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "data", "job", "timeout_s", "reason"),
    [
        ("bad data (label column missing)", ROWS, {"label": "kind"}, None, "'kind'"),
        (
            "loss not finite",
            # finite values, but x - mean overflows float32 in the standardisation
            "f1,species\n"
            + "\n".join(f"{3.3e38 if i == 0 else -3.3e38},{'ab'[i % 2]}" for i in range(40)),
            {"label": "species"},
            None,
            "not finite",
        ),
        ("out of time", ROWS, {"label": "species"}, 1, "MaxRuntimeExceeded"),
    ],
)
def test_failed_training_job_is_failed_with_its_reason_and_prod_keeps_serving(
    aws: Any, v1_in_prod: str, iris_model: Any, lambda_context: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, reliability_report: Any,
    fault: str, data: str, job: dict[str, Any], timeout_s: int | None, reason: str,
) -> None:  # fmt: skip
    # GIVEN the ingest function hands jobs to the local runner (as the local stack's does)
    monkeypatch.setenv("TRAINING_BACKEND", "local")
    monkeypatch.setenv("LOCAL_TRAINING_QUEUE_URL", aws.local_training_queue_url)
    put_and_notify(aws.s3, aws.data_bucket, "datasets/iris/run-2/data.csv", data.encode())
    note = put_and_notify(
        aws.s3, aws.data_bucket, "datasets/iris/run-2/job.json", json.dumps(job).encode()
    )
    assert load_handler("ingest").lambda_handler(sqs_event(note), lambda_context) == {
        "batchItemFailures": []
    }

    # WHEN its training job runs and fails
    outcome = run_training(aws, tmp_path, timeout_s)

    # THEN v2 is FAILED with the job's own reason (output/failure, or the runtime limit)
    assert outcome["status"] == "Failed", outcome
    record = aws.registry().get_version("iris", 2)
    assert record.status == "FAILED"
    assert reason in record.reason, record.reason
    assert_prod_serves_v1(aws, iris_model, lambda_context)
    reliability_report.tried(SECTION, f"training: {fault}", "FAILED with the job's reason")


# --- artifacts, the optimizer, the gate, duplicates ----------------------------------------


def _completion(aws: Any, iris_model: Any, fault: str) -> dict[str, Any]:
    name = _start_run(aws, "iris", "run-2")
    uri = f"s3://{aws.artifact_bucket}/training-output/{name}/output/model.tar.gz"
    if fault == "model.tar.gz missing":
        return _event(name, artifact=uri)
    if fault == "model.tar.gz corrupt":
        return _event(name, artifact=_upload_artifact(aws, name, b"\x1f\x8b\x08 truncated"))
    if fault == "model.tar.gz without model.onnx":
        tarball = _model_tarball(iris_model, drop=("model.onnx",))
        return _event(name, artifact=_upload_artifact(aws, name, tarball))
    if fault == "no artifact in the event":
        return _event(name)
    return _event(name, artifact=_upload_artifact(aws, name, _model_tarball(iris_model)))


@pytest.mark.parametrize(
    "fault",
    [
        "model.tar.gz missing",
        "model.tar.gz corrupt",
        "model.tar.gz without model.onnx",
        "no artifact in the event",
        "optimizer crash",
    ],
)
def test_broken_artifact_or_optimizer_crash_fails_v2_and_promotes_nothing(
    aws: Any, v1_in_prod: str, iris_model: Any, lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch, reliability_report: Any, fault: str,
) -> None:  # fmt: skip
    event = _completion(aws, iris_model, fault)
    if fault == "optimizer crash":
        import maas.optimize.quantize

        def crash(*args: Any, **kwargs: Any) -> Any:
            raise MemoryError("onnxruntime could not allocate 3 GB")

        monkeypatch.setattr(maas.optimize.quantize, "optimize_model", crash)

    result = _optimize(event, lambda_context)

    assert result["action"] == "failed"
    record = aws.registry().get_version("iris", 2)
    assert record.status == "FAILED" and record.reason.startswith("optimize failed")
    keys = aws.s3.list_objects_v2(Bucket=aws.artifact_bucket, Prefix="models/iris/2/")
    assert keys.get("KeyCount", 0) == 0  # nothing of v2 is published either
    assert_prod_serves_v1(aws, iris_model, lambda_context)
    reliability_report.tried(SECTION, fault, "FAILED, nothing promoted")


def _with_metrics(tarball: bytes, metrics: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as src,
        tarfile.open(fileobj=out, mode="w:gz") as dst,
    ):
        for member in src.getmembers():
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == "metrics.json":
                data = json.dumps(metrics).encode()
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    return out.getvalue()


def test_gate_failure_rejects_v2_and_prod_keeps_serving(
    aws: Any, v1_in_prod: str, iris_model: Any, lambda_context: Any, reliability_report: Any
) -> None:
    # GIVEN v2's job asked for at least 0.9 test accuracy and reached 0.5
    name = _start_run(aws, "iris", "run-2", spec={"quality_gate": {"min_accuracy": 0.9}})
    tarball = _with_metrics(_model_tarball(iris_model), {"test_accuracy": 0.5})
    result = _optimize(_event(name, artifact=_upload_artifact(aws, name, tarball)), lambda_context)
    assert result["action"] == "rejected"
    record = aws.registry().get_version("iris", 2)
    assert record.status == "REJECTED" and "min_accuracy" in record.reason
    assert_prod_serves_v1(aws, iris_model, lambda_context)
    reliability_report.tried(SECTION, "quality gate failed", "REJECTED, nothing promoted")


def test_duplicate_completion_event_makes_one_version_and_prod_keeps_serving(
    aws: Any, v1_in_prod: str, iris_model: Any, lambda_context: Any, reliability_report: Any
) -> None:
    # WHEN EventBridge delivers v1's completion again (at-least-once), twice
    uri = f"s3://{aws.artifact_bucket}/training-output/{v1_in_prod}/output/model.tar.gz"
    results = [_optimize(_event(v1_in_prod, artifact=uri), lambda_context) for _ in range(2)]
    assert [r["action"] for r in results] == ["duplicate", "duplicate"]
    assert [v.version for v in aws.registry().list_versions("iris")] == [1]
    assert_prod_serves_v1(aws, iris_model, lambda_context)
    reliability_report.tried(SECTION, "duplicate completion event", "one version")
