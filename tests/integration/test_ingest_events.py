"""Ingest under hostile and unlucky delivery: every event ends in the registry or the DLQ.

Duplicates, out-of-order delivery (S3's `sequencer` decides), multipart uploads, keys outside
the contract, the pipeline's own objects, hostile job.json files, and failures that only a
retry can cure: each ends in a registry record (a version, FAILED with its reason, or an audit
entry) or a dead letter with its reason. Nothing is lost and nothing starts twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError
from maas.core.names import job_name
from maas.core.registry import FAILED, TRAINING, Registry, pad_sequencer
from maas.core.storage import Storage
from maas.ingest.service import Ingest
from maas_devkit.account import ARTIFACT_BUCKET, DATA_BUCKET
from maas_devkit.cfn import load_template
from maas_devkit.events import put_and_notify, s3_notification, sqs_event, sqs_record_of
from maas_devkit.lambda_runtime import load_handler
from maas_devkit.repo import REGION

SECTION = "Ingest events"
CSV = b"f1,f2,label\n1.0,2.0,a\n3.0,4.0,b\n"


@pytest.fixture
def ingest_app(aws: Any) -> Any:
    return load_handler("ingest")


def training_jobs(aws: Any) -> list[str]:
    return [
        j["TrainingJobName"] for j in aws.sagemaker.list_training_jobs()["TrainingJobSummaries"]
    ]


def reason_of(letter: dict[str, Any]) -> str:
    return str(letter["MessageAttributes"]["maas-reason"]["StringValue"])


def with_sequencer(note: dict[str, Any], sequencer: str | None) -> dict[str, Any]:
    obj = note["Records"][0]["s3"]["object"]
    if sequencer is None:
        obj.pop("sequencer", None)  # as moto's notifications come
    else:
        obj["sequencer"] = sequencer
    return note


# --- out-of-order delivery ------------------------------------------------------------------


def test_sequencers_compare_as_s3_documents_after_right_padding() -> None:
    # S3: "right pad the shorter value with zeros, and then do a lexicographical comparison"
    assert pad_sequencer("0055AED6DCD90281E5") < pad_sequencer("0055AED6DCD90281E6")
    assert pad_sequencer("0055AED6DCD90281E5") < pad_sequencer("0055AED6DCD90281E5A")
    assert pad_sequencer("0055aed6dcd90281e5") == pad_sequencer("0055AED6DCD90281E500")
    assert pad_sequencer("9") > pad_sequencer("10")  # right padding, not numeric order
    for bad in ("", "xyz", "12 34", "A" * 65):
        with pytest.raises(ValueError):
            pad_sequencer(bad)


def test_older_event_delivered_after_a_newer_one_is_superseded_not_started(
    aws: Any, ingest_app: Any, lambda_context: Any, reliability_report: Any
) -> None:
    # GIVEN the same key uploaded twice (a versioned bucket keeps both)
    key = "datasets/digits/digits.csv"
    older = with_sequencer(put_and_notify(aws.s3, DATA_BUCKET, key, CSV), "0062B7A5E1D5C19A01")
    newer = with_sequencer(
        put_and_notify(aws.s3, DATA_BUCKET, key, CSV + b"5,6,a\n"), "0062B7A5E1D5C19A02"
    )

    # WHEN S3 delivers the newer event first, then the older one, then the newer one again
    results = [ingest_app.lambda_handler(sqs_event(n), lambda_context) for n in (newer, older)]
    ingest_app.lambda_handler(sqs_event(newer), lambda_context)

    # THEN only the newer upload trains, once; the older one is audited as superseded
    assert results == [{"batchItemFailures": []}] * 2
    registry = Registry(aws.table)
    [version] = registry.list_versions("digits")
    newer_version = newer["Records"][0]["s3"]["object"]["versionId"]
    assert version.status == TRAINING
    assert training_jobs(aws) == [job_name("digits", "digits", newer_version)]
    [audit] = [a for a in registry.audit_log("digits") if a["action"] == "upload-superseded"]
    assert "0062B7A5E1D5C19A01" in audit["detail"] and "0062B7A5E1D5C19A02" in audit["detail"]
    reliability_report.tried(SECTION, "out-of-order delivery", "sequencer decides")


def test_events_in_order_each_start_their_own_version(
    aws: Any, ingest_app: Any, lambda_context: Any
) -> None:
    key = "datasets/digits/digits.csv"
    first = with_sequencer(put_and_notify(aws.s3, DATA_BUCKET, key, CSV), "0062B7A5E1D5C19A01")
    second = with_sequencer(
        put_and_notify(aws.s3, DATA_BUCKET, key, CSV + b"5,6,a\n"), "0062B7A5E1D5C19A0201"
    )
    for note in (first, second):
        assert ingest_app.lambda_handler(sqs_event(note), lambda_context) == {
            "batchItemFailures": []
        }
    assert [v.version for v in Registry(aws.table).list_versions("digits")] == [1, 2]


def test_events_without_a_sequencer_are_not_ordered_but_still_deduplicated(
    aws: Any, ingest_app: Any, lambda_context: Any
) -> None:
    # GIVEN moto-style notifications (no sequencer) for two versions of one key, newer first
    key = "datasets/digits/digits.csv"
    first = with_sequencer(put_and_notify(aws.s3, DATA_BUCKET, key, CSV), None)
    second = with_sequencer(put_and_notify(aws.s3, DATA_BUCKET, key, CSV + b"5,6,a\n"), None)

    # WHEN they arrive out of order, the newer one twice
    for note in (second, first, second):
        ingest_app.lambda_handler(sqs_event(note), lambda_context)

    # THEN each upload has exactly one version (nothing decides order without a sequencer)
    assert len(Registry(aws.table).list_versions("digits")) == 2
    assert len(training_jobs(aws)) == 2


# --- upload kinds -------------------------------------------------------------------------


def test_complete_multipart_upload_starts_one_job(
    aws: Any, ingest_app: Any, lambda_context: Any, reliability_report: Any
) -> None:
    # GIVEN a dataset uploaded in parts, as `aws s3 cp` does for large files
    key = "datasets/digits/big file.csv"
    upload = aws.s3.create_multipart_upload(Bucket=DATA_BUCKET, Key=key)
    part = aws.s3.upload_part(
        Bucket=DATA_BUCKET, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=CSV
    )
    done = aws.s3.complete_multipart_upload(
        Bucket=DATA_BUCKET,
        Key=key,
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )
    note = s3_notification(
        DATA_BUCKET,
        key,
        etag=done["ETag"].strip('"'),
        version_id=done["VersionId"],
        event_name="ObjectCreated:CompleteMultipartUpload",
    )

    # WHEN its notification arrives (twice)
    for _ in range(2):
        ingest_app.lambda_handler(sqs_event(note), lambda_context)

    # THEN one job over that object, one version
    assert len(training_jobs(aws)) == 1
    assert [v.version for v in Registry(aws.table).list_versions("digits")] == [1]
    reliability_report.tried(SECTION, "CompleteMultipartUpload", "one job")


def test_event_for_a_deleted_version_is_ignored_not_retried(
    aws: Any, ingest_app: Any, lambda_context: Any
) -> None:
    # GIVEN an upload deleted before its notification was handled: its version id now names a
    # delete marker (S3 answers HEAD with 405, not 404)
    key = "datasets/digits/digits.csv"
    aws.s3.put_object(Bucket=DATA_BUCKET, Key=key, Body=CSV)
    marker = aws.s3.delete_object(Bucket=DATA_BUCKET, Key=key)
    note = s3_notification(DATA_BUCKET, key, etag="0" * 32, version_id=marker["VersionId"])

    # THEN nothing starts and nothing is retried
    assert ingest_app.lambda_handler(sqs_event(note), lambda_context) == {"batchItemFailures": []}
    assert training_jobs(aws) == []


# --- every kind of event ends somewhere ---------------------------------------------------

Make = Callable[[Any], dict[str, Any]]


def _upload(key: str, body: bytes = CSV, bucket: str = DATA_BUCKET) -> Make:
    return lambda aws: put_and_notify(aws.s3, bucket, key, body)


def _job(doc: Any, model: str = "iris", run: str = "run-1") -> Make:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return _upload(f"datasets/{model}/{run}/job.json", raw)


# (id, notification, where it ends: "started" | "failed" (a FAILED version) | "dlq", reason)
CASES: list[tuple[str, Make, str, str]] = [
    ("lone csv", _upload("datasets/iris/iris.csv"), "started", ""),
    (
        "url-encoded key with spaces and unicode",
        _upload("datasets/iris/my data+ü €.csv"),
        "started",
        "",
    ),
    ("unknown format", _upload("datasets/iris/iris.xlsx", b"PK\x03\x04"), "failed", "format"),
    ("job.json unknown field", _job({"lable": "species"}), "failed", "lable"),
    ("job.json not an object", _job([1, 2]), "failed", "JSON object"),
    ("job.json malformed", _job(b'{"label": '), "failed", "not valid JSON"),
    ("job.json nested 60k deep", _job(b"[" * 60_000), "failed", "nested too deeply"),
    ("job.json 5000-digit number", _job(b'{"spot": ' + b"9" * 5000 + b"}"), "failed", "digits"),
    ("job.json absurd epochs", _job({"hyperparameters": {"epochs": 10**12}}), "failed", "epochs"),
    (
        "job.json absurd learning rate",
        _job({"hyperparameters": {"learning_rate": 1e308}}),
        "failed",
        "learning_rate",
    ),
    ("job.json 10,000 instances", _job({"instance_count": 10_000}), "failed", "instance_count"),
    ("job.json runtime of years", _job({"max_runtime_s": 10**9}), "failed", "max_runtime_s"),
    (
        "job.json instance type injection",
        _job({"instance_type": "ml.p4d.24xlarge; rm -rf /"}),
        "failed",
        "instance_type",
    ),
    (
        "job.json base_model traversal",
        _job({"task": "text-classification", "recipe": "finetune", "base_model": "../../etc"}),
        "failed",
        "base_model",
    ),
    ("job.json label with newline", _job({"label": "a\nb"}), "failed", "label"),
    ("job.json over 64 KiB", _job(b" " * 70_000 + b"{}"), "failed", "larger than 65536"),
    ("run name '..'", _upload("datasets/iris/../job.json", b"{}"), "failed", "invalid run name"),
    (
        "path traversal below the model",
        _upload("datasets/iris/run-1/../../x/job.json", b"{}"),
        "failed",
        "path traversal",
    ),
    ("model name traversal", _upload("datasets/..%2Fetc/x.csv"), "dlq", "invalid model name"),
    ("upper-case model name", _upload("datasets/Iris/iris.csv"), "dlq", "invalid model name"),
    ("file outside datasets/", _upload("scratch/iris.csv"), "dlq", "outside datasets/"),
    ("file directly under datasets/", _upload("datasets/iris.csv"), "dlq", "model folder"),
    (
        "object the pipeline wrote",
        _upload("models/iris/1/model.onnx", b"onnx", ARTIFACT_BUCKET),
        "dlq",
        "written by the pipeline",
    ),
    (
        "training output tarball",
        _upload("training-output/maas-iris-x/output/model.tar.gz", b"gz", ARTIFACT_BUCKET),
        "dlq",
        "written by the pipeline",
    ),
    ("another bucket", _upload("datasets/iris/iris.csv", CSV, "someone-else"), "dlq", "not the"),
    ("not JSON", lambda aws: "{{{ not an S3 event", "dlq", "not JSON"),  # type: ignore[arg-type, return-value]
    ("JSON without Records", lambda aws: {"hello": "world"}, "dlq", "no Records"),
    (
        "record without a key",
        lambda aws: {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {}}}]},
        "dlq",
        "without bucket name or object key",
    ),
]


@pytest.mark.parametrize(("case", "make", "ends", "reason"), CASES, ids=[c[0] for c in CASES])
def test_every_event_ends_in_the_registry_or_the_dlq_with_a_reason(
    aws: Any,
    ingest_app: Any,
    lambda_context: Any,
    reliability_report: Any,
    case: str,
    make: Make,
    ends: str,
    reason: str,
) -> None:
    aws.s3.create_bucket(Bucket="someone-else")
    # GIVEN one event, delivered twice (SQS delivers at least once)
    note = make(aws)
    body = note if isinstance(note, str) else json.dumps(note)

    # WHEN the ingest function handles it
    results = [ingest_app.lambda_handler(sqs_event(body), lambda_context) for _ in range(2)]

    # THEN neither delivery is left to SQS's retries, and it ended where it should
    assert results == [{"batchItemFailures": []}] * 2
    registry = Registry(aws.table)
    versions = [v for m in registry.list_models() for v in registry.list_versions(m)]
    letters = aws.dead_letters()
    if ends == "started":
        assert len(training_jobs(aws)) == 1 and [v.status for v in versions] == [TRAINING]
        assert letters == []
        outcome = "one job, one version"
    elif ends == "failed":
        assert training_jobs(aws) == [] and letters == []
        [version] = versions  # one FAILED version, however often delivered
        assert version.status == FAILED and reason in version.reason, version.reason
        outcome = "FAILED version with the reason"
    else:
        assert training_jobs(aws) == [] and versions == []
        assert len(letters) == 2  # each delivery parks its event; none is dropped
        assert all(reason in reason_of(letter) for letter in letters), reason_of(letters[0])
        assert letters[0]["Body"] == body or json.loads(letters[0]["Body"])["Records"]
        outcome = "dead letter with the reason"
    reliability_report.tried(SECTION, case, outcome)


def test_template_never_notifies_from_the_artifact_bucket() -> None:
    # The pipeline writes only to ArtifactBucket; were it wired to the queue, the ingest
    # function would dead-letter its objects (above) rather than start runs from them.
    resources = load_template()["Resources"]
    assert "NotificationConfiguration" not in resources["ArtifactBucket"]["Properties"]
    rules = resources["DataBucket"]["Properties"]["NotificationConfiguration"]
    prefixes = {
        r["Value"]: c["Queue"]["Fn::GetAtt"][0]
        for c in rules["QueueConfigurations"]
        for r in c["Filter"]["S3Key"]["Rules"]
        if r["Name"] == "prefix"
    }
    # training data to the ingest queue; files to score (batch predictions) to their own
    assert prefixes == {
        "datasets/": "IngestQueue",
        "pretrained/": "IngestQueue",
        "predictions/": "PredictQueue",
    }


# --- failures a retry may cure: partial batch failure, then the DLQ ----------------------


class FlakyBackend:
    """SageMaker throttling every start for one model; the others start."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def start(self, request: Any) -> None:
        if request.model == "flaky":
            raise ClientError(
                {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}},
                "CreateTrainingJob",
            )
        self.started.append(request.job_name)


def test_record_failing_every_retry_is_a_partial_batch_failure_then_reaches_the_dlq(
    aws: Any, ingest_app: Any, lambda_context: Any, reliability_report: Any
) -> None:
    # GIVEN an ingest queue that redrives to the DLQ after 3 receives, as template.yaml's
    # does after 5 (a queue of its own: the stack's also gets S3's notifications of the
    # uploads below), and a training backend that always throttles one model
    dlq_arn = f"arn:aws:sqs:{REGION}:123456789012:maas-ingest-dlq"
    queue_arn = f"arn:aws:sqs:{REGION}:123456789012:maas-ingest-retried"
    url = aws.sqs.create_queue(
        QueueName="maas-ingest-retried",
        Attributes={
            "VisibilityTimeout": "0",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "3"}),
        },
    )["QueueUrl"]
    backend = FlakyBackend()
    registry = Registry(aws.table)
    ingest_app._ingest = Ingest(registry, Storage(), backend, data_bucket=DATA_BUCKET)
    for key in ("datasets/flaky/a.csv", "datasets/steady/b.csv"):
        note = put_and_notify(aws.s3, DATA_BUCKET, key, CSV)
        aws.sqs.send_message(QueueUrl=url, MessageBody=json.dumps(note))

    # WHEN Lambda's event source mapping polls until the queue is empty
    failures_reported = 0
    for _ in range(10):
        messages = aws.sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"]
        ).get("Messages", [])
        if not messages:
            break
        event = {"Records": [sqs_record_of(m, queue_arn, REGION) for m in messages]}
        failed = {
            f["itemIdentifier"]
            for f in ingest_app.lambda_handler(event, lambda_context)["batchItemFailures"]
        }
        failures_reported += len(failed)
        for m in messages:
            if m["MessageId"] not in failed:
                aws.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])

    # THEN the steady upload started once; the flaky one was reported failed on each of its
    # 3 receives (alone, never its batch) and then moved to the DLQ, its event intact
    assert len(backend.started) == 1
    assert failures_reported == 3
    (letter,) = aws.dead_letters()
    assert json.loads(letter["Body"])["Records"][0]["s3"]["object"]["key"] == "datasets/flaky/a.csv"
    # Its version waits at TRAINING, unstarted: a redrive of the letter starts it.
    [version] = registry.list_versions("flaky")
    assert version.status == TRAINING
    reliability_report.tried(
        SECTION, "throttled start on every retry", "partial batch failure x3, then the DLQ"
    )
