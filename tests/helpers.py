"""Builders the tests share: Lambda events, handler loading, a real small ONNX model, publishing.

A plain module (tests/conftest.py puts tests/ on sys.path), so test files import it directly.
Event builders start from the files in events/ when they exist (the ones `sam local invoke -e`
replays) and only fall back to building the documented shapes from scratch.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import importlib.util
import json
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote_plus

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EVENTS_DIR = REPO / "events"
REGION = "us-east-1"
ACCOUNT = "123456789012"
DATA_BUCKET = "maas-data"
ARTIFACT_BUCKET = "maas-artifacts"
LOCAL_TRAINING_QUEUE = "maas-local-training"
INGEST_DLQ = "maas-ingest-dlq"
INGEST_QUEUE_ARN = f"arn:aws:sqs:{REGION}:{ACCOUNT}:maas-ingest"


# --- handlers -----------------------------------------------------------------------------


def load_handler(name: str) -> ModuleType:
    """Import functions/<name>/app.py afresh: handlers keep module-level state between calls."""
    path = REPO / "functions" / name / "app.py"
    module_name = f"maas_test_handler_{name}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None, f"no handler at {path}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeLambdaContext:
    """What Powertools reads from the Lambda context object."""

    def __init__(self, function_name: str = "maas-test-function", timeout_ms: int = 30_000):
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = 1769
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function_name}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "2024/01/01/[$LATEST]0123456789abcdef"
        self._deadline = time.monotonic() + timeout_ms / 1000

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


# --- event files --------------------------------------------------------------------------


def event_file(name: str) -> dict[str, Any] | None:
    """events/<name> parsed, or None when that file does not exist (yet) or is not JSON."""
    path = EVENTS_DIR / name
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


@cache
def _event_docs() -> tuple[dict[str, Any], ...]:
    docs = []
    for path in sorted(EVENTS_DIR.glob("*.json")) if EVENTS_DIR.is_dir() else []:
        doc = event_file(path.name)
        if doc is not None:
            docs.append(doc)
    return tuple(docs)


def _first_record(source: str) -> dict[str, Any] | None:
    for doc in _event_docs():
        records = doc.get("Records")
        if isinstance(records, list) and records and isinstance(records[0], dict):
            if records[0].get("eventSource") == source:
                return copy.deepcopy(records[0])
            if source == "aws:s3" and records[0].get("eventSource") == "aws:sqs":
                try:
                    inner = json.loads(records[0].get("body", ""))["Records"][0]
                except (ValueError, KeyError, IndexError, TypeError):
                    continue
                if isinstance(inner, dict) and inner.get("eventSource") == "aws:s3":
                    return copy.deepcopy(inner)
    return None


def _base_http_event() -> dict[str, Any] | None:
    for doc in _event_docs():
        context = doc.get("requestContext")
        if doc.get("version") == "2.0" and isinstance(context, dict) and "http" in context:
            return copy.deepcopy(doc)
    return None


# --- SQS ----------------------------------------------------------------------------------


def sqs_record(body: str | dict[str, Any], *, receive_count: int = 1) -> dict[str, Any]:
    """One record as Lambda's SQS event source mapping delivers it."""
    text = body if isinstance(body, str) else json.dumps(body)
    now_ms = str(int(time.time() * 1000))
    record = _first_record("aws:sqs") or {}
    record.update(
        {
            "messageId": str(uuid.uuid4()),
            "receiptHandle": "AQEB" + uuid.uuid4().hex * 4,
            "body": text,
            "attributes": {
                "ApproximateReceiveCount": str(receive_count),
                "SentTimestamp": now_ms,
                "SenderId": "AIDAIENQZJOLO23YVJ4VO",
                "ApproximateFirstReceiveTimestamp": now_ms,
            },
            "messageAttributes": {},
            "md5OfBody": hashlib.md5(text.encode()).hexdigest(),
            "eventSource": "aws:sqs",
            "eventSourceARN": INGEST_QUEUE_ARN,
            "awsRegion": REGION,
        }
    )
    return record


def sqs_event(*bodies: str | dict[str, Any]) -> dict[str, Any]:
    return {"Records": [sqs_record(b) for b in bodies]}


# --- S3 notifications ---------------------------------------------------------------------


def s3_notification(
    bucket: str,
    key: str,
    *,
    etag: str,
    version_id: str | None = None,
    event_name: str = "ObjectCreated:Put",
    sequencer: str | None = None,
    size: int = 1024,
) -> dict[str, Any]:
    """The S3 event notification JSON that S3 puts on the queue (key URL-encoded, '+' = space)."""
    record = _first_record("aws:s3") or {}
    obj: dict[str, Any] = {
        "key": quote_plus(key, safe="/"),
        "size": size,
        "eTag": etag,
        "sequencer": sequencer or f"{time.time_ns():X}",
    }
    if version_id is not None:
        obj["versionId"] = version_id
    record.update(
        {
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "awsRegion": REGION,
            "eventTime": datetime.now(UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "eventName": event_name,
            "userIdentity": {"principalId": "AWS:AIDAINPONIXQXHT3IKHL2"},
            "requestParameters": {"sourceIPAddress": "203.0.113.10"},
            "responseElements": {
                "x-amz-request-id": uuid.uuid4().hex[:16].upper(),
                "x-amz-id-2": base64.b64encode(uuid.uuid4().bytes * 2).decode(),
            },
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": "maas-datasets-created",
                "bucket": {
                    "name": bucket,
                    "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                    "arn": f"arn:aws:s3:::{bucket}",
                },
                "object": obj,
            },
        }
    )
    return {"Records": [record]}


def s3_test_event(bucket: str) -> dict[str, Any]:
    """What S3 sends once when a notification configuration is saved."""
    return {
        "Service": "Amazon S3",
        "Event": "s3:TestEvent",
        "Time": "2024-01-01T00:00:00.000Z",
        "Bucket": bucket,
        "RequestId": uuid.uuid4().hex[:16].upper(),
        "HostId": uuid.uuid4().hex,
    }


def put_and_notify(
    s3: Any, bucket: str, key: str, body: bytes, metadata: dict[str, str] | None = None
) -> dict[str, Any]:
    """Upload an object and return the notification S3 would send for it."""
    r = s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata=metadata or {})
    return s3_notification(
        bucket, key, etag=r["ETag"].strip('"'), version_id=r.get("VersionId"), size=len(body)
    )


# --- API Gateway HTTP API (payload 2.0) ---------------------------------------------------


def http_event(
    method: str,
    path: str,
    body: str | bytes | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    base64: bool = False,  # isBase64Encoded
) -> dict[str, Any]:
    now = datetime.now(UTC)
    event = _base_http_event() or {}
    for dynamic in ("pathParameters", "queryStringParameters", "cookies", "stageVariables"):
        event.pop(dynamic, None)
    if isinstance(body, dict):
        body = json.dumps(body)
    if body is not None and base64:
        raw = body.encode() if isinstance(body, str) else body
        body = _b64encode(raw)
    elif isinstance(body, bytes):
        body = body.decode()
    all_headers = {
        "accept": "application/json",
        "content-type": "application/json",
        "host": "abc123.execute-api.us-east-1.amazonaws.com",
        "user-agent": "pytest",
        "x-forwarded-for": "203.0.113.10",
        "x-forwarded-proto": "https",
    }
    if body is not None:
        all_headers["content-length"] = str(len(body))
    all_headers.update({k.lower(): v for k, v in (headers or {}).items()})
    context = event.get("requestContext") or {}
    context.update(
        {
            "accountId": ACCOUNT,
            "apiId": "abc123",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {
                "method": method.upper(),
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.10",
                "userAgent": "pytest",
            },
            "requestId": uuid.uuid4().hex[:16],
            "routeKey": "$default",
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        }
    )
    context.pop("authorizer", None)
    context.pop("authentication", None)
    event.update(
        {
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": path,
            "rawQueryString": "",
            "headers": all_headers,
            "requestContext": context,
            "isBase64Encoded": bool(base64 and body is not None),
        }
    )
    if body is None:
        event.pop("body", None)
    else:
        event["body"] = body
    return event


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# --- a real small model -------------------------------------------------------------------


class TinyClassifier:
    """A trained softmax regression and its ONNX graph, built per the artifacts contract."""

    def __init__(
        self,
        weights: np.ndarray,
        bias: np.ndarray,
        mean: np.ndarray,
        scale: np.ndarray,
        classes: list[str],
    ) -> None:
        self.weights = weights.astype(np.float32)  # [C, F]
        self.bias = bias.astype(np.float32)  # [C]
        self.mean = mean.astype(np.float32)
        self.scale = scale.astype(np.float32)
        self.classes = classes

    @property
    def n_features(self) -> int:
        return int(self.weights.shape[1])

    @property
    def n_classes(self) -> int:
        return int(self.weights.shape[0])

    def onnx_bytes(self) -> bytes:
        """input FP32 [batch, F] -> probabilities FP32 [batch, C], label STRING [batch]."""
        from onnx import TensorProto, checker, helper, numpy_helper

        f, c = self.n_features, self.n_classes
        inits = [
            numpy_helper.from_array(self.mean, "mean"),
            numpy_helper.from_array(self.scale, "scale"),
            numpy_helper.from_array(self.weights.T.copy(), "weights"),
            numpy_helper.from_array(self.bias, "bias"),
            helper.make_tensor(
                "classes", TensorProto.STRING, [c], [name.encode() for name in self.classes]
            ),
        ]
        nodes = [
            helper.make_node("Sub", ["input", "mean"], ["centred"]),
            helper.make_node("Div", ["centred", "scale"], ["standardised"]),
            helper.make_node("Gemm", ["standardised", "weights", "bias"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["probabilities"], ["index"], axis=1, keepdims=0),
            helper.make_node("Gather", ["classes", "index"], ["label"], axis=0),
        ]
        graph = helper.make_graph(
            nodes,
            "tiny-classifier",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", f])],
            [
                helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", c]),
                helper.make_tensor_value_info("label", TensorProto.STRING, ["batch"]),
            ],
            initializer=inits,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="maas-tests"
        )
        model.ir_version = 9
        checker.check_model(model)
        return model.SerializeToString()


def load_dataset(dataset: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """iris or digits from scikit-learn's bundled files, without importing scikit-learn (slow)."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    assert spec is not None and spec.submodule_search_locations, "scikit-learn is not installed"
    data_dir = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    if dataset == "iris":
        lines = (data_dir / "iris.csv").read_text().splitlines()
        classes = lines[0].split(",")[2:]
        table = np.loadtxt(lines[1:], delimiter=",")
    elif dataset == "digits":
        with gzip.open(data_dir / "digits.csv.gz", "rt") as f:
            table = np.loadtxt(f, delimiter=",")
        classes = [str(d) for d in range(10)]
    else:
        raise ValueError(f"unknown dataset {dataset!r}")
    return table[:, :-1].astype(np.float32), table[:, -1].astype(np.int64), classes


def train_tiny_classifier(
    dataset: str = "iris", *, steps: int = 300, learning_rate: float = 0.5
) -> tuple[TinyClassifier, np.ndarray]:
    """Softmax regression by full-batch gradient descent: well under a second, deterministic."""
    x, y, classes = load_dataset(dataset)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    n, f = z.shape
    c = len(classes)
    onehot = np.eye(c, dtype=np.float32)[y]
    weights = np.zeros((c, f), dtype=np.float32)
    bias = np.zeros(c, dtype=np.float32)
    for _ in range(steps):
        logits = z @ weights.T + bias
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        grad = (probs - onehot) / n
        weights -= learning_rate * (grad.T @ z + 1e-3 * weights)
        bias -= learning_rate * grad.sum(axis=0)
    return TinyClassifier(weights, bias, mean, scale, classes), x


# --- publishing a served version ----------------------------------------------------------


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
) -> dict[str, Any]:
    """What the optimizer leaves behind: artifact + manifest in S3, a registered version.

    `status` stops the version early (TRAINING, OPTIMIZING) for tests of not-ready versions.
    Returns the manifest written.
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
        "sha256": sha256_hex(onnx_bytes),
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
        source=f"s3://{DATA_BUCKET}/datasets/{model}/{run}/job.json",
        actor="test",
    )
    assert claim.version == version, f"{model}: registry allocated v{claim.version}, not v{version}"
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


def infer_body(
    rows: Iterable[Iterable[float]] | np.ndarray,
    *,
    request_id: str | None = None,
    name: str = "input",
    nested: bool = False,
    outputs: list[str] | None = None,
) -> dict[str, Any]:
    """An OIP inference request for a [N, F] FP32 batch."""
    array = np.asarray(rows, dtype=np.float32)
    data = array.tolist() if nested else array.reshape(-1).tolist()
    body: dict[str, Any] = {
        "inputs": [{"name": name, "shape": list(array.shape), "datatype": "FP32", "data": data}]
    }
    if request_id is not None:
        body["id"] = request_id
    if outputs is not None:
        body["outputs"] = [{"name": o} for o in outputs]
    return body
