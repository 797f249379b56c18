"""OptimizeFunction: training artifact -> quantized candidates -> manifest -> registry -> alias."""

from __future__ import annotations

import copy
import io
import json
import tarfile
from typing import Any

import numpy as np
import pytest
from maas.core.names import job_name
from maas_devkit import events, lambda_runtime, models

pytestmark = pytest.mark.usefixtures("aws")


def _model_tarball(model: Any, *, drop: tuple[str, ...] = ()) -> bytes:
    """What the training job leaves in model.tar.gz, per maas/core/contract.py."""
    x = model.features.astype(np.float32)
    clf = model.classifier
    logits = ((x - clf.mean) / clf.scale) @ clf.weights.T + clf.bias
    target = logits.argmax(axis=1).astype(np.int64)
    files: dict[str, bytes] = {"model.onnx": model.onnx}
    for name, rows in (("sample.npz", slice(0, None, 3)), ("calibration.npz", slice(1, None, 3))):
        buf = io.BytesIO()
        np.savez(buf, input__input=x[rows], target=target[rows])
        files[name] = buf.getvalue()
    files["metrics.json"] = json.dumps({"test_accuracy": 1.0, "task": "classification"}).encode()
    files["labels.json"] = json.dumps(clf.classes).encode()
    files["schema.json"] = json.dumps(
        {
            "task": "classification",
            "label_column": "species",
            "features": [f"f{i}" for i in range(clf.n_features)],
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, clf.n_features]}],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, clf.n_classes]},
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
            ],
        }
    ).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            if name in drop:
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _start_run(aws, model: str, run: str, *, spec: dict[str, Any] | None = None) -> str:
    """Registry state as ingest leaves it: a claimed, started job at TRAINING with its spec."""
    registry = aws.registry()
    name = job_name(model, run, "etag-" + run)
    claim = registry.claim_job(job_name=name, model=model, run=run, source="s3://x/y", actor="test")
    registry.update_summary(model, claim.version, {"spec": spec or {}})
    registry.mark_started(name)
    return name


def _event(
    name: str, status: str = "Completed", artifact: str | None = None, reason: str | None = None
) -> dict[str, Any]:
    base = events.event_file("eventbridge-training-completed.json")
    assert base is not None, "events/eventbridge-training-completed.json is missing"
    event = copy.deepcopy(base)
    detail = event["detail"]
    detail["TrainingJobName"] = name
    detail["TrainingJobStatus"] = status
    detail.pop("FailureReason", None)
    if artifact:
        detail["ModelArtifacts"] = {"S3ModelArtifacts": artifact}
    else:
        detail.pop("ModelArtifacts", None)
    if reason:
        detail["FailureReason"] = reason
    return event


def _upload_artifact(aws, name: str, data: bytes) -> str:
    key = f"training-output/{name}/output/model.tar.gz"
    aws.s3.put_object(Bucket=aws.artifact_bucket, Key=key, Body=data)
    return f"s3://{aws.artifact_bucket}/{key}"


def _optimize(event: dict[str, Any], lambda_context) -> dict[str, Any]:
    return lambda_runtime.load_handler("optimize").lambda_handler(event, lambda_context)


def test_completed_job_becomes_ready_promoted_version_with_manifest(
    aws, iris_model, lambda_context
):
    # GIVEN a finished training job's artifact
    name = _start_run(aws, "iris", "run-1")
    uri = _upload_artifact(aws, name, _model_tarball(iris_model))
    # WHEN the state-change event arrives
    result = _optimize(_event(name, artifact=uri), lambda_context)
    # THEN version 1 is READY, promoted, and its manifest describes what is served
    assert result["action"] == "ready" and result["promoted"] is True
    registry = aws.registry()
    record = registry.get_version("iris", 1)
    assert record.status == "READY"
    assert registry.get_alias("iris").version == 1
    manifest = json.loads(
        aws.s3.get_object(Bucket=aws.artifact_bucket, Key="models/iris/1/manifest.json")[
            "Body"
        ].read()
    )
    served = aws.s3.get_object(Bucket=aws.artifact_bucket, Key="models/iris/1/model.onnx")
    assert models.sha256_hex(served["Body"].read()) == manifest["sha256"]
    recipes = [c["recipe"] for c in manifest["quantization"]["candidates"]]
    assert "fp32" in recipes and "dynamic-int8-per-channel" in recipes
    assert "dynamic-int8-per-tensor" in recipes
    assert manifest["recipe"] == record.summary["recipe"]
    assert manifest["labels"] == iris_model.classifier.classes
    assert manifest["training_job"] == name


def test_served_version_answers_inference_after_optimize(aws, iris_model, lambda_context):
    # GIVEN a version produced by the optimizer
    name = _start_run(aws, "iris", "run-1")
    _optimize(
        _event(name, artifact=_upload_artifact(aws, name, _model_tarball(iris_model))),
        lambda_context,
    )
    # WHEN a client asks the inference function
    rows = iris_model.features[:3]
    event = events.http_event("POST", "/v2/models/iris/infer", body=models.infer_body(rows))
    response = lambda_runtime.load_handler("inference").lambda_handler(event, lambda_context)
    # THEN it answers with class names
    assert response["statusCode"] == 200, response["body"]
    outputs = {o["name"]: o for o in json.loads(response["body"])["outputs"]}
    assert outputs["label"]["data"] == ["setosa", "setosa", "setosa"]


def test_duplicate_completion_event_makes_one_version(aws, iris_model, lambda_context):
    name = _start_run(aws, "iris", "run-1")
    event = _event(name, artifact=_upload_artifact(aws, name, _model_tarball(iris_model)))
    first = _optimize(event, lambda_context)
    second = _optimize(event, lambda_context)
    assert (first["action"], second["action"]) == ("ready", "duplicate")
    assert [v.version for v in aws.registry().list_versions("iris")] == [1]


def test_failed_job_records_reason_and_keeps_prod(aws, iris_model, lambda_context):
    # GIVEN v1 serving
    first = _start_run(aws, "iris", "run-1")
    _optimize(
        _event(first, artifact=_upload_artifact(aws, first, _model_tarball(iris_model))),
        lambda_context,
    )
    # WHEN v2's training job fails
    second = _start_run(aws, "iris", "run-2")
    reason = "AlgorithmError: label column 'species' not found"
    result = _optimize(_event(second, status="Failed", reason=reason), lambda_context)
    # THEN v2 is FAILED with the job's reason and prod stays on v1
    assert result["action"] == "failed"
    record = aws.registry().get_version("iris", 2)
    assert record.status == "FAILED" and "label column 'species' not found" in record.reason
    assert aws.registry().get_alias("iris").version == 1


@pytest.mark.parametrize("artifact", ["corrupt", "missing", "incomplete"])
def test_bad_artifact_fails_version_and_promotes_nothing(aws, iris_model, lambda_context, artifact):
    name = _start_run(aws, "iris", "run-1")
    if artifact == "corrupt":
        uri = _upload_artifact(aws, name, b"\x1f\x8b not really gzip")
    elif artifact == "missing":
        uri = f"s3://{aws.artifact_bucket}/training-output/{name}/output/model.tar.gz"
    else:
        uri = _upload_artifact(aws, name, _model_tarball(iris_model, drop=("sample.npz",)))
    result = _optimize(_event(name, artifact=uri), lambda_context)
    assert result["action"] == "failed"
    record = aws.registry().get_version("iris", 1)
    assert record.status == "FAILED" and record.reason.startswith("optimize failed")
    assert aws.registry().get_alias("iris") is None


def test_auto_promote_off_leaves_prod_alone(aws, iris_model, lambda_context):
    name = _start_run(aws, "iris", "run-1", spec={"auto_promote": False})
    result = _optimize(
        _event(name, artifact=_upload_artifact(aws, name, _model_tarball(iris_model))),
        lambda_context,
    )
    assert result["action"] == "ready" and result["promoted"] is False
    assert aws.registry().get_version("iris", 1).status == "READY"
    assert aws.registry().get_alias("iris") is None


def test_gate_rejects_model_below_min_accuracy(aws, iris_model, lambda_context):
    name = _start_run(aws, "iris", "run-1", spec={"quality_gate": {"min_accuracy": 1.0}})
    tarball = _model_tarball(iris_model)
    # Rewrite metrics.json with a lower fp32 accuracy.
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as src,
        tarfile.open(fileobj=out, mode="w:gz") as dst,
    ):
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name == "metrics.json":
                data = json.dumps({"test_accuracy": 0.5}).encode()
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    result = _optimize(
        _event(name, artifact=_upload_artifact(aws, name, out.getvalue())), lambda_context
    )
    assert result["action"] == "rejected"
    assert aws.registry().get_version("iris", 1).status == "REJECTED"
    assert aws.registry().get_alias("iris") is None


def test_event_for_a_job_this_stack_did_not_start_is_ignored(aws, lambda_context):
    result = _optimize(
        _event("maas-other-0123456789ab", artifact="s3://x/y.tar.gz"), lambda_context
    )
    assert result["action"] == "ignored"
