"""A served version without a pipeline run: what the optimizer leaves behind, written directly."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from maas_devkit.account import ARTIFACT_BUCKET, DATA_BUCKET


def publish_model(
    registry: Any,
    storage: Any,
    model: str,
    version: int,
    onnx_bytes: bytes,
    manifest_extra: dict[str, Any] | None = None,
    *,
    promote: bool = False,
    status: str = "READY",
    bucket: str = ARTIFACT_BUCKET,
    data_bucket: str = DATA_BUCKET,
) -> dict[str, Any]:
    """Artifact + manifest in S3 and a registered version; returns the manifest written.

    `status` stops the version early (TRAINING, OPTIMIZING) for tests of not-ready versions.
    """
    from maas.core.artifacts import model_prefix
    from maas.core.contract import MANIFEST_FILE, MODEL_FILE
    from maas.core.names import job_name
    from maas.core.registry import OPTIMIZING, READY, TRAINING

    manifest: dict[str, Any] = {
        "model": model,
        "version": version,
        "task": "classification",
        "platform": "onnxruntime_onnx",
        "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "size_bytes": len(onnx_bytes),
        "created_at": datetime.now(UTC).isoformat(),
        "training_job": "",
    }
    manifest.update(manifest_extra or {})
    run = f"run-{version}"
    name = job_name(model, run, uuid.uuid4().hex)
    manifest["training_job"] = manifest["training_job"] or name
    claim = registry.claim_job(
        job_name=name,
        model=model,
        run=run,
        source=f"s3://{data_bucket}/datasets/{model}/{run}/job.json",
        actor="test",
    )
    if claim.version != version:
        raise AssertionError(f"{model}: registry allocated v{claim.version}, not v{version}")
    prefix = model_prefix(model, version)
    storage.put_bytes(bucket, prefix + MODEL_FILE, onnx_bytes)
    storage.put_bytes(
        bucket,
        prefix + MANIFEST_FILE,
        json.dumps(manifest).encode(),
        content_type="application/json",
    )
    steps = {TRAINING: [], OPTIMIZING: [OPTIMIZING], READY: [OPTIMIZING, READY]}[status]
    current = TRAINING
    for step in steps:
        registry.transition(
            model,
            version,
            expected=(current,),
            status=step,
            actor="test",
            reason=f"test publish {step.lower()}",
            summary={"sha256": manifest["sha256"]} if step == READY else None,
        )
        current = step
    if promote:
        registry.promote(model, version, actor="test", reason="test publish")
    return manifest


def publish_to_stack(
    stack: Any, model: str, version: int, onnx_bytes: bytes, *, promote: bool = False
) -> dict[str, Any]:
    """publish_model into a running stack's bucket and table (any object with .client()
    and .outputs: the local stack, or a maas_cli StackHandle)."""
    from maas.core.registry import Registry
    from maas.core.storage import Storage

    registry = Registry(stack.outputs["RegistryTableName"], client=stack.client("dynamodb"))
    return publish_model(
        registry,
        Storage(stack.client("s3")),
        model,
        version,
        onnx_bytes,
        promote=promote,
        bucket=stack.outputs["ArtifactBucketName"],
        data_bucket=stack.outputs["DataBucketName"],
    )
