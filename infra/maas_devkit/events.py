"""The events AWS hands the functions, built as AWS builds them, and the committed event files.

One builder per event type, used by the local stack (which turns real HTTP requests and SQS
messages into these), the tests and the bench. The shapes are those of the files in events/
(`sam local generate-event` output, edited to what AWS delivers); tests compare the two.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus, urlsplit

from maas_devkit.repo import ACCOUNT, EVENTS_DIR, REGION

INGEST_QUEUE_ARN = f"arn:aws:sqs:{REGION}:{ACCOUNT}:maas-ingest"
# API Gateway passes these content types through as text; everything else arrives base64.
TEXT_TYPES = ("application/json", "text/", "application/xml", "application/x-www-form-urlencoded")


def event_file(name: str) -> dict[str, Any]:
    """events/<name>, parsed: a committed fixture, so a missing or broken one is an error."""
    doc = json.loads((EVENTS_DIR / name).read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"events/{name} is not a JSON object")
    return doc


# --- API Gateway HTTP API (payload 2.0) ---------------------------------------------------


def http_api_event(
    method: str,
    raw_path: str,
    headers: dict[str, str],
    body: bytes | str | None = None,
    *,
    base64_encoded: bool | None = None,
    source_ip: str = "127.0.0.1",
) -> dict[str, Any]:
    """The event API Gateway's HTTP API gives Lambda for one request.

    `base64_encoded`: None decides as API Gateway does (text content types as they are, the
    rest base64); True or False forces it, for tests of what a client may send.
    """
    parts = urlsplit(raw_path)
    lowered = {k.lower(): v for k, v in headers.items()}
    raw = body.encode() if isinstance(body, str) else (body or b"")
    if base64_encoded is None:
        base64_encoded = not _travels_as_text(raw, lowered.get("content-type", ""))
    host = lowered.get("host", "localhost")
    api_id = host.split(".", 1)[0] if ".execute-api." in host else "local"
    now = datetime.now(UTC)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": parts.path,
        "rawQueryString": parts.query,
        "headers": lowered,
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": api_id,
            "domainName": host,
            "domainPrefix": api_id,
            "http": {
                "method": method.upper(),
                "path": parts.path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": lowered.get("user-agent", ""),
            },
            "requestId": uuid.uuid4().hex[:16],
            "routeKey": "$default",
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "isBase64Encoded": bool(base64_encoded and body is not None),
    }
    query = _query(parts.query)
    if query:
        event["queryStringParameters"] = query
    if body is not None:
        event["body"] = base64.b64encode(raw).decode() if base64_encoded else raw.decode()
    return event


def http_event(
    method: str,
    path: str,
    body: str | bytes | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    base64: bool = False,
) -> dict[str, Any]:
    """A request as a client on the internet sends it (JSON unless said otherwise)."""
    if isinstance(body, dict):
        body = json.dumps(body)
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
    if body is not None and not base64 and isinstance(body, bytes):
        body = body.decode()
    return http_api_event(
        method, path, all_headers, body, base64_encoded=base64, source_ip="203.0.113.10"
    )


# --- API Gateway REST API (Lambda proxy, payload 1.0): the streaming front door -------------


def rest_api_event(
    method: str,
    raw_path: str,
    headers: dict[str, str],
    body: bytes | str | None = None,
    *,
    resource: str | None = None,
    path_parameters: dict[str, str] | None = None,
    stage: str = "stream",
    source_ip: str = "127.0.0.1",
) -> dict[str, Any]:
    """The event a REST API's Lambda proxy integration gives the function for one request
    (the streaming API's: the same input format with responseTransferMode STREAM).

    Headers keep the case the client sent; a body is text unless the API lists binary media
    types (the streaming API lists none), so it travels as sent, never base64."""
    parts = urlsplit(raw_path)
    lowered = {k.lower(): v for k, v in headers.items()}
    host = lowered.get("host", "localhost")
    api_id = host.split(".", 1)[0] if ".execute-api." in host else "local"
    now = datetime.now(UTC)
    raw = body.encode() if isinstance(body, str) else body
    query = _query(parts.query)
    return {
        "resource": resource or parts.path,
        "path": parts.path,
        "httpMethod": method.upper(),
        "headers": dict(headers),
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": query or None,
        "multiValueQueryStringParameters": {k: v.split(",") for k, v in query.items()} or None,
        "pathParameters": path_parameters or None,
        "stageVariables": None,
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": api_id,
            "domainName": host,
            "httpMethod": method.upper(),
            "identity": {"sourceIp": source_ip, "userAgent": lowered.get("user-agent", "")},
            "path": f"/{stage}{parts.path}",
            "protocol": "HTTP/1.1",
            "requestId": str(uuid.uuid4()),
            "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "requestTimeEpoch": int(now.timestamp() * 1000),
            "resourcePath": resource or parts.path,
            "stage": stage,
        },
        "body": None if raw is None else raw.decode("utf-8", "replace"),
        "isBase64Encoded": False,
    }


def _travels_as_text(body: bytes, content_type: str) -> bool:
    if not body:
        return True
    if not content_type.startswith(TEXT_TYPES):
        return False
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:  # a "text" body that is not UTF-8 travels base64 too
        return False
    return True


def _query(raw: str) -> dict[str, str]:
    query: dict[str, str] = {}
    for pair in filter(None, raw.split("&")):
        k, _, v = pair.partition("=")
        query[k] = f"{query[k]},{v}" if k in query else v
    return query


# --- SQS (Lambda's event source mapping) --------------------------------------------------


def sqs_record(
    body: str | dict[str, Any],
    *,
    receive_count: int = 1,
    message_id: str | None = None,
    receipt_handle: str | None = None,
    attributes: dict[str, str] | None = None,
    message_attributes: dict[str, Any] | None = None,
    queue_arn: str = INGEST_QUEUE_ARN,
    region: str = REGION,
) -> dict[str, Any]:
    """One SQS message as Lambda's event source mapping delivers it."""
    text = body if isinstance(body, str) else json.dumps(body)
    now_ms = str(int(time.time() * 1000))
    attrs = {
        "ApproximateReceiveCount": str(receive_count),
        "SentTimestamp": now_ms,
        "SenderId": "AIDAIENQZJOLO23YVJ4VO",
        "ApproximateFirstReceiveTimestamp": now_ms,
    }
    attrs.update({k: v for k, v in (attributes or {}).items() if k in attrs})
    return {
        "messageId": message_id or str(uuid.uuid4()),
        "receiptHandle": receipt_handle or "AQEB" + uuid.uuid4().hex * 4,
        "body": text,
        "attributes": attrs,
        "messageAttributes": message_attributes or {},
        "md5OfBody": hashlib.md5(text.encode()).hexdigest(),  # noqa: S324 - SQS's own checksum
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


def sqs_record_of(message: dict[str, Any], queue_arn: str, region: str = REGION) -> dict[str, Any]:
    """The record for a message as ReceiveMessage returned it (the local stack's poller)."""
    attrs = message.get("Attributes", {})
    return sqs_record(
        message["Body"],
        receive_count=int(attrs.get("ApproximateReceiveCount", "1")),
        message_id=message["MessageId"],
        receipt_handle=message["ReceiptHandle"],
        attributes=attrs,
        message_attributes=message.get("MessageAttributes", {}),
        queue_arn=queue_arn,
        region=region,
    )


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
    obj: dict[str, Any] = {
        "key": quote_plus(key, safe="/"),
        "size": size,
        "eTag": etag,
        "sequencer": sequencer or f"{time.time_ns():X}",
    }
    if version_id is not None:
        obj["versionId"] = version_id
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": REGION,
        "eventTime": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
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


# --- EventBridge: SageMaker Training Job State Change ---------------------------------------


def training_state_change(
    request: dict[str, Any],
    status: str,
    *,
    reason: str = "",
    artifact: str | None = None,
    started: datetime | None = None,
    region: str = REGION,
) -> dict[str, Any]:
    """The EventBridge event SageMaker emits when the job a CreateTrainingJob request made ends."""
    name = request["TrainingJobName"]
    arn = f"arn:aws:sagemaker:{region}:{ACCOUNT}:training-job/{name}"
    now = datetime.now(UTC)
    began = started or now
    detail: dict[str, Any] = {
        "TrainingJobName": name,
        "TrainingJobArn": arn,
        "TrainingJobStatus": status,
        "SecondaryStatus": status,
        "HyperParameters": request.get("HyperParameters", {}),
        "AlgorithmSpecification": request.get("AlgorithmSpecification", {}),
        "RoleArn": request.get("RoleArn", ""),
        "InputDataConfig": request.get("InputDataConfig", []),
        "OutputDataConfig": request.get("OutputDataConfig", {}),
        "ResourceConfig": request.get("ResourceConfig", {}),
        "StoppingCondition": request.get("StoppingCondition", {}),
        "CreationTime": int(began.timestamp() * 1000),
        "TrainingStartTime": int(began.timestamp() * 1000),
        "TrainingEndTime": int(now.timestamp() * 1000),
        "LastModifiedTime": int(now.timestamp() * 1000),
        "EnableManagedSpotTraining": request.get("EnableManagedSpotTraining", False),
        "Tags": {t["Key"]: t["Value"] for t in request.get("Tags", [])},
    }
    if artifact:
        detail["ModelArtifacts"] = {"S3ModelArtifacts": artifact}
    if reason:
        detail["FailureReason"] = reason
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "SageMaker Training Job State Change",
        "source": "aws.sagemaker",
        "account": ACCOUNT,
        "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [arn],
        "detail": detail,
    }
