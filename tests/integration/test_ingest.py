"""IngestFunction end to end under moto: SQS-wrapped S3 notifications -> training job + version."""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from typing import Any
from urllib.parse import unquote_plus

import boto3
import botocore.session
import pytest
from botocore.exceptions import ClientError
from botocore.validate import validate_parameters
from maas.core.config import IngestSettings
from maas.core.names import job_name
from maas.core.registry import FAILED, TRAINING, Registry
from maas.core.storage import Storage
from maas.ingest.jobs import SageMakerBackend
from maas.ingest.service import Ingest
from maas_devkit.events import event_file, put_and_notify, s3_notification, s3_test_event, sqs_event
from maas_devkit.lambda_runtime import load_handler

CSV = b"f1,f2,label\n1.0,2.0,a\n3.0,4.0,b\n"
SAGEMAKER_JOB_NAME = r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$"


@pytest.fixture
def ingest_app(aws: Any) -> Any:
    return load_handler("ingest")


@pytest.fixture
def sent_requests(aws: Any) -> list[dict[str, Any]]:
    """Every CreateTrainingJob request the handler sends, exactly as it builds it."""
    captured: list[dict[str, Any]] = []
    session = boto3.DEFAULT_SESSION  # the one the aws fixture installed; handlers use it
    assert session is not None
    session.events.register(
        "provide-client-params.sagemaker.CreateTrainingJob",
        lambda params, **_: captured.append(copy.deepcopy(params)),
    )
    return captured


def training_jobs(aws: Any) -> list[str]:
    summaries = aws.sagemaker.list_training_jobs()["TrainingJobSummaries"]
    return [j["TrainingJobName"] for j in summaries]


@cache
def create_training_job_shape() -> Any:
    model = botocore.session.get_session().get_service_model("sagemaker")
    return model.operation_model("CreateTrainingJob").input_shape


# --- the event builders keep the shape of the real events --------------------------------


def test_built_sqs_and_s3_events_have_the_shape_of_the_events_files() -> None:
    # GIVEN the replayable event file, and an event built by the tests' helpers
    real = event_file("sqs-s3-put-datasets.json")
    built = sqs_event(s3_notification("maas-data", "datasets/x/y.csv", etag="e", version_id="v"))

    # THEN both have the same keys at every level that matters
    real_sqs, built_sqs = real["Records"][0], built["Records"][0]
    assert set(built_sqs) == set(real_sqs)
    assert set(built_sqs["attributes"]) == set(real_sqs["attributes"])
    real_s3 = json.loads(real_sqs["body"])["Records"][0]
    built_s3 = json.loads(built_sqs["body"])["Records"][0]
    assert set(built_s3) == set(real_s3)
    assert set(built_s3["s3"]) == set(real_s3["s3"])
    assert set(built_s3["s3"]["object"]) == set(real_s3["s3"]["object"])


# --- lone data file -----------------------------------------------------------------------


def test_lone_csv_upload_starts_sagemaker_job_with_the_documented_request(
    aws: Any, ingest_app: Any, lambda_context: Any, sent_requests: list[dict[str, Any]]
) -> None:
    # GIVEN a CSV uploaded straight under datasets/digits/
    note = put_and_notify(aws.s3, "maas-data", "datasets/digits/digits.csv", CSV)

    # WHEN S3's notification arrives through SQS
    result = ingest_app.lambda_handler(sqs_event(note), lambda_context)

    # THEN nothing failed and SageMaker has exactly one job, shaped as script mode expects
    assert result == {"batchItemFailures": []}
    [name] = training_jobs(aws)
    assert name.startswith("maas-digits-")
    job = aws.sagemaker.describe_training_job(TrainingJobName=name)
    assert (
        job["AlgorithmSpecification"]["TrainingImage"] == IngestSettings.from_env().training_image
    )
    assert job["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    assert job["RoleArn"] == "arn:aws:iam::123456789012:role/maas-training"
    [channel] = job["InputDataConfig"]
    assert channel["ChannelName"] == "train"
    assert channel["DataSource"]["S3DataSource"]["S3DataType"] == "S3Prefix"
    assert channel["DataSource"]["S3DataSource"]["S3Uri"] == (
        "s3://maas-data/datasets/digits/digits.csv"
    )
    hyper = job["HyperParameters"]
    assert all(isinstance(v, str) for v in hyper.values())
    decoded = {k: json.loads(v) for k, v in hyper.items()}
    assert decoded["sagemaker_program"] == "train.py"
    assert decoded["sagemaker_submit_directory"] == "s3://maas-artifacts/code/training.tar.gz"
    assert decoded["label"] == "label"
    assert "task" not in decoded  # a lone table: the training job lets its label decide
    assert decoded["epochs"] == 200
    assert job["OutputDataConfig"]["S3OutputPath"] == "s3://maas-artifacts/training-output/"
    assert job["ResourceConfig"]["InstanceType"] == "ml.g5.xlarge"
    assert job["ResourceConfig"]["InstanceCount"] == 1
    assert job["EnableManagedSpotTraining"] is True
    stopping = job["StoppingCondition"]
    assert stopping["MaxRuntimeInSeconds"] == 3600
    assert stopping["MaxWaitTimeInSeconds"] >= stopping["MaxRuntimeInSeconds"]
    assert job["CheckpointConfig"] == {
        "S3Uri": f"s3://maas-artifacts/checkpoints/{name}/",
        "LocalPath": "/opt/ml/checkpoints",
    }
    # AND the request itself is valid for the real API, with metric scraping and tags
    [request] = sent_requests
    validate_parameters(request, create_training_job_shape())
    assert {m["Name"] for m in request["AlgorithmSpecification"]["MetricDefinitions"]} >= {
        "train_loss",
        "val_accuracy",
        "test_accuracy",
    }
    tags = {t["Key"]: t["Value"] for t in request["Tags"]}
    assert tags["maas:model"] == "digits" and tags["maas:version"] == "1"
    # AND the registry has version 1 training under that job, with the spec recorded
    [version] = Registry(aws.table).list_versions("digits")
    assert (version.version, version.status, version.job_name) == (1, TRAINING, name)
    assert version.source == "s3://maas-data/datasets/digits/digits.csv"
    assert version.summary["spec"]["label"] == "label"


def test_training_job_name_is_sagemaker_valid_for_the_longest_model_name(
    aws: Any, ingest_app: Any, lambda_context: Any
) -> None:
    # GIVEN a model name of the maximum 63 characters
    model = "m" + "-x" * 31
    note = put_and_notify(aws.s3, "maas-data", f"datasets/{model}/data.csv", CSV)

    # WHEN it is ingested
    ingest_app.lambda_handler(sqs_event(note), lambda_context)

    # THEN the job name still fits SageMaker's rules
    [name] = training_jobs(aws)
    assert len(name) <= 63
    assert re.fullmatch(SAGEMAKER_JOB_NAME, name)


def test_same_notification_delivered_twice_starts_one_job_and_one_version(
    aws: Any, ingest_app: Any, lambda_context: Any
) -> None:
    # GIVEN one upload
    note = put_and_notify(aws.s3, "maas-data", "datasets/digits/digits.csv", CSV)

    # WHEN SQS delivers its notification twice, in two invocations
    first = ingest_app.lambda_handler(sqs_event(note), lambda_context)
    second = ingest_app.lambda_handler(sqs_event(note), lambda_context)

    # THEN one job and one version exist
    assert first == second == {"batchItemFailures": []}
    assert len(training_jobs(aws)) == 1
    assert [v.version for v in Registry(aws.table).list_versions("digits")] == [1]


def test_same_notification_twice_in_one_batch_starts_one_job(
    aws: Any, ingest_app: Any, lambda_context: Any
) -> None:
    # GIVEN one upload whose notification appears twice in the same batch
    note = put_and_notify(aws.s3, "maas-data", "datasets/digits/digits.csv", CSV)

    # WHEN the batch is handled
    result = ingest_app.lambda_handler(sqs_event(note, note), lambda_context)

    # THEN the second copy is recognised as a duplicate
    assert result == {"batchItemFailures": []}
    assert len(training_jobs(aws)) == 1
    assert len(Registry(aws.table).list_versions("digits")) == 1


def test_new_object_version_of_same_key_starts_a_new_version(
    aws: Any, ingest_app: Any, lambda_context: Any
) -> None:
    # GIVEN the same key uploaded twice with different content (a versioned bucket)
    first = put_and_notify(aws.s3, "maas-data", "datasets/digits/digits.csv", CSV)
    second = put_and_notify(aws.s3, "maas-data", "datasets/digits/digits.csv", CSV + b"5,6,a\n")

    # WHEN both notifications arrive
    ingest_app.lambda_handler(sqs_event(first), lambda_context)
    ingest_app.lambda_handler(sqs_event(second), lambda_context)

    # THEN each upload got its own job and version
    assert len(set(training_jobs(aws))) == 2
    assert [v.version for v in Registry(aws.table).list_versions("digits")] == [1, 2]


def test_url_encoded_key_with_spaces_and_unicode_starts_job(
    aws: Any, ingest_app: Any, lambda_context: Any, sent_requests: list[dict[str, Any]]
) -> None:
    # GIVEN a file name with a space, a '+' and a non-ASCII letter (S3 URL-encodes the key)
    key = "datasets/digits/my data+ü.csv"
    note = put_and_notify(aws.s3, "maas-data", key, CSV)
    assert note["Records"][0]["s3"]["object"]["key"] != key

    # WHEN it is ingested
    result = ingest_app.lambda_handler(sqs_event(note), lambda_context)

    # THEN the decoded key is the data channel
    assert result == {"batchItemFailures": []}
    [request] = sent_requests
    s3_uri = request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"]
    assert s3_uri == f"s3://maas-data/{key}"


def test_object_metadata_sets_label_and_auto_promote_for_lone_file(
    aws: Any, ingest_app: Any, lambda_context: Any, sent_requests: list[dict[str, Any]]
) -> None:
    # GIVEN a lone file uploaded with x-amz-meta-label and x-amz-meta-auto-promote
    note = put_and_notify(
        aws.s3,
        "maas-data",
        "datasets/digits/digits.csv",
        CSV,
        metadata={"label": "digit", "auto-promote": "false"},
    )

    # WHEN it is ingested
    ingest_app.lambda_handler(sqs_event(note), lambda_context)

    # THEN the job trains on that label and the version will not auto-promote
    [request] = sent_requests
    assert json.loads(request["HyperParameters"]["label"]) == "digit"
    [version] = Registry(aws.table).list_versions("digits")
    assert version.summary["spec"]["auto_promote"] is False


# --- run folders --------------------------------------------------------------------------


def test_data_files_inside_run_folder_start_nothing(
    aws: Any, ingest_app: Any, lambda_context: Any
) -> None:
    # GIVEN data files uploaded into a run folder, without job.json yet
    notes = [
        put_and_notify(aws.s3, "maas-data", f"datasets/iris/run-1/part-{i}.csv", CSV)
        for i in range(3)
    ]

    # WHEN their notifications arrive
    result = ingest_app.lambda_handler(sqs_event(*notes), lambda_context)

    # THEN they are ignored: no job, no version
    assert result == {"batchItemFailures": []}
    assert training_jobs(aws) == []
    assert Registry(aws.table).list_versions("iris") == []


def test_run_folder_job_json_starts_job_over_the_whole_folder(
    aws: Any, ingest_app: Any, lambda_context: Any, sent_requests: list[dict[str, Any]]
) -> None:
    # GIVEN a run folder with data and then its job.json
    put_and_notify(aws.s3, "maas-data", "datasets/iris/run-1/part-0.csv", CSV)
    note = put_and_notify(
        aws.s3,
        "maas-data",
        "datasets/iris/run-1/job.json",
        json.dumps({"label": "species"}).encode(),
    )

    # WHEN job.json's notification arrives
    result = ingest_app.lambda_handler(sqs_event(note), lambda_context)

    # THEN the job reads the folder as its channel and trains on the requested label
    assert result == {"batchItemFailures": []}
    [name] = training_jobs(aws)
    job = aws.sagemaker.describe_training_job(TrainingJobName=name)
    s3_source = job["InputDataConfig"][0]["DataSource"]["S3DataSource"]
    assert s3_source == {
        "S3DataType": "S3Prefix",
        "S3Uri": "s3://maas-data/datasets/iris/run-1/",
        "S3DataDistributionType": "FullyReplicated",
    }
    assert json.loads(job["HyperParameters"]["label"]) == "species"
    [version] = Registry(aws.table).list_versions("iris")
    assert (version.version, version.status, version.run) == (1, TRAINING, "run-1")


def test_job_json_overrides_reach_the_request_without_spot(
    aws: Any, ingest_app: Any, lambda_context: Any, sent_requests: list[dict[str, Any]]
) -> None:
    # GIVEN a job.json asking for on-demand capacity, another instance and fewer epochs
    spec = {
        "hyperparameters": {"epochs": 5},
        "instance_type": "ml.g4dn.xlarge",
        "spot": False,
        "max_runtime_s": 600,
    }
    note = put_and_notify(
        aws.s3, "maas-data", "datasets/iris/run-2/job.json", json.dumps(spec).encode()
    )

    # WHEN it is ingested
    ingest_app.lambda_handler(sqs_event(note), lambda_context)

    # THEN the request follows it, with no spot-only settings
    [request] = sent_requests
    assert request["ResourceConfig"]["InstanceType"] == "ml.g4dn.xlarge"
    assert request["EnableManagedSpotTraining"] is False
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 600}
    assert "CheckpointConfig" not in request
    assert json.loads(request["HyperParameters"]["epochs"]) == 5


def test_invalid_job_json_records_failed_version_and_is_not_retried(
    aws: Any, ingest_app: Any, lambda_context: Any
) -> None:
    # GIVEN a job.json with a key the spec does not know
    note = put_and_notify(
        aws.s3,
        "maas-data",
        "datasets/iris/run-3/job.json",
        json.dumps({"lable": "species"}).encode(),
    )

    # WHEN it is ingested (twice, as SQS may)
    result = ingest_app.lambda_handler(sqs_event(note), lambda_context)
    again = ingest_app.lambda_handler(sqs_event(note), lambda_context)

    # THEN no job starts, the message is not retried, and one FAILED version says why
    assert result == again == {"batchItemFailures": []}
    assert training_jobs(aws) == []
    [version] = Registry(aws.table).list_versions("iris")
    assert version.status == FAILED
    assert "lable" in version.reason


def test_unsupported_lone_file_records_failed_version_and_is_not_retried(
    aws: Any, ingest_app: Any, lambda_context: Any
) -> None:
    # GIVEN a file in a format training cannot read, under a valid model
    note = put_and_notify(aws.s3, "maas-data", "datasets/digits/digits.xlsx", b"PK\x03\x04")

    # WHEN it is ingested
    result = ingest_app.lambda_handler(sqs_event(note), lambda_context)

    # THEN the user finds a FAILED version saying why, and SQS does not retry it
    assert result == {"batchItemFailures": []}
    assert training_jobs(aws) == []
    [version] = Registry(aws.table).list_versions("digits")
    assert version.status == FAILED
    assert "unsupported data format" in version.reason


def test_rejection_interrupted_before_recording_is_completed_on_redelivery(
    aws: Any, ingest_app: Any, lambda_context: Any
) -> None:
    # GIVEN an invalid job.json whose first delivery claimed a version and then crashed
    note = put_and_notify(aws.s3, "maas-data", "datasets/iris/run-4/job.json", b"[]")
    obj = note["Records"][0]["s3"]["object"]
    key = "datasets/iris/run-4/job.json"
    name = job_name("iris", "rejected", f"{key}\0{obj['versionId']}")
    Registry(aws.table).claim_job(job_name=name, model="iris", run="-", source=key, actor="test")

    # WHEN the notification is delivered again
    result = ingest_app.lambda_handler(sqs_event(note), lambda_context)

    # THEN the version does not stay TRAINING forever: it is FAILED with the reason
    assert result == {"batchItemFailures": []}
    [version] = Registry(aws.table).list_versions("iris")
    assert version.status == FAILED
    assert "JSON object" in version.reason


# --- what does not start a run ------------------------------------------------------------


def test_object_deleted_before_delivery_is_ignored(
    aws: Any, ingest_app: Any, lambda_context: Any
) -> None:
    # GIVEN a notification for an object that no longer exists
    note = s3_notification("maas-data", "datasets/digits/gone.csv", etag="0" * 32)

    # WHEN it arrives
    result = ingest_app.lambda_handler(sqs_event(note), lambda_context)

    # THEN nothing starts and nothing is retried
    assert result == {"batchItemFailures": []}
    assert training_jobs(aws) == []
    assert Registry(aws.table).list_versions("digits") == []


def test_key_outside_datasets_is_dead_lettered_with_its_reason(
    aws: Any, ingest_app: Any, lambda_context: Any
) -> None:
    # GIVEN an object outside datasets/ (the bucket's notification filters would not send it)
    note = put_and_notify(aws.s3, "maas-data", "scratch/digits.csv", CSV)

    # WHEN its notification arrives
    result = ingest_app.lambda_handler(sqs_event(note), lambda_context)

    # THEN nothing starts, nothing is retried, and the DLQ holds the event with the reason
    assert result == {"batchItemFailures": []}
    assert training_jobs(aws) == []
    assert Registry(aws.table).list_models() == []
    (letter,) = aws.dead_letters()
    assert "outside datasets/" in letter["MessageAttributes"]["maas-reason"]["StringValue"]


def test_s3_test_event_and_delete_event_are_ignored(
    aws: Any, ingest_app: Any, lambda_context: Any
) -> None:
    # GIVEN S3's configuration test event and a delete notification
    deleted = s3_notification(
        "maas-data", "datasets/digits/digits.csv", etag="0" * 32, event_name="ObjectRemoved:Delete"
    )

    # WHEN they arrive
    result = ingest_app.lambda_handler(
        sqs_event(s3_test_event("maas-data"), deleted), lambda_context
    )

    # THEN neither starts anything
    assert result == {"batchItemFailures": []}
    assert training_jobs(aws) == []


def test_message_that_is_not_json_is_dead_lettered_at_once_with_its_reason(
    aws: Any, ingest_app: Any, lambda_context: Any
) -> None:
    # GIVEN a batch with a garbage message and a good notification
    good = put_and_notify(aws.s3, "maas-data", "datasets/digits/digits.csv", CSV)
    event = sqs_event("this is not json", good)

    # WHEN the batch is handled
    result = ingest_app.lambda_handler(event, lambda_context)

    # THEN the garbage went to the DLQ as it was, the reason attached, without five retries
    assert result == {"batchItemFailures": []}
    (letter,) = aws.dead_letters()
    assert letter["Body"] == "this is not json"
    assert "not JSON" in letter["MessageAttributes"]["maas-reason"]["StringValue"]
    assert len(training_jobs(aws)) == 1


def test_without_a_dlq_a_permanent_failure_fails_its_message_alone(
    aws: Any, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an ingest function with no INGEST_DLQ_URL (SQS's redrive is then the only way)
    monkeypatch.delenv("INGEST_DLQ_URL")
    app = load_handler("ingest")
    good = put_and_notify(aws.s3, "maas-data", "datasets/digits/digits.csv", CSV)
    event = sqs_event("this is not json", good)

    # WHEN the batch is handled
    result = app.lambda_handler(event, lambda_context)

    # THEN only the garbage message is reported for retry / dead-lettering by the queue
    assert result == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}
    assert len(training_jobs(aws)) == 1


def test_invalid_model_name_is_dead_lettered_and_the_rest_of_the_batch_starts(
    aws: Any, ingest_app: Any, lambda_context: Any
) -> None:
    # GIVEN an upload under an invalid model name next to a good one
    bad = put_and_notify(aws.s3, "maas-data", "datasets/Digits/digits.csv", CSV)
    good = put_and_notify(aws.s3, "maas-data", "datasets/digits/digits.csv", CSV)
    event = sqs_event(bad, good)

    # WHEN the batch is handled
    result = ingest_app.lambda_handler(event, lambda_context)

    # THEN the bad one is dead-lettered (no registry row to record it in), the good one starts
    assert result == {"batchItemFailures": []}
    (letter,) = aws.dead_letters()
    assert json.loads(letter["Body"]) == bad
    assert "invalid model name" in letter["MessageAttributes"]["maas-reason"]["StringValue"]
    assert letter["MessageAttributes"]["maas-key"]["StringValue"] == "datasets/Digits/digits.csv"
    assert len(training_jobs(aws)) == 1
    assert Registry(aws.table).list_models() == ["digits"]


def test_claimed_but_unstarted_job_is_started_on_redelivery(
    aws: Any, ingest_app: Any, lambda_context: Any
) -> None:
    # GIVEN a previous delivery that claimed the version and crashed before starting the job
    note = put_and_notify(aws.s3, "maas-data", "datasets/digits/digits.csv", CSV)
    version_id = note["Records"][0]["s3"]["object"]["versionId"]
    name = job_name("digits", "digits", version_id)
    Registry(aws.table).claim_job(
        job_name=name,
        model="digits",
        run="digits",
        source="s3://maas-data/datasets/digits/digits.csv",
        actor="test",
    )

    # WHEN the notification is delivered again
    ingest_app.lambda_handler(sqs_event(note), lambda_context)

    # THEN the same job and version are used
    assert training_jobs(aws) == [name]
    assert [v.version for v in Registry(aws.table).list_versions("digits")] == [1]


class FlakySummaryRegistry(Registry):
    """A registry whose first summary write fails, as a throttled DynamoDB call would."""

    def __init__(self, table: str) -> None:
        super().__init__(table)
        self.failures_left = 1

    def update_summary(self, model: str, version: int, fields: dict[str, Any]) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise ClientError(
                {"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "UpdateItem"
            )
        super().update_summary(model, version, fields)


def test_spec_survives_a_failure_while_recording_it(aws: Any) -> None:
    # GIVEN an ingest whose first attempt to record the job spec fails
    registry = FlakySummaryRegistry(aws.table)
    ingest = Ingest(registry, Storage(), SageMakerBackend(IngestSettings.from_env()))
    note = put_and_notify(
        aws.s3,
        "maas-data",
        "datasets/iris/run-1/job.json",
        json.dumps({"auto_promote": False}).encode(),
    )
    body = json.dumps(note)

    # WHEN the message fails once and SQS redelivers it
    with pytest.raises(ClientError):
        ingest.handle_message(body)
    [outcome] = ingest.handle_message(body)

    # THEN the job runs once and the version keeps the spec the optimizer will read
    assert outcome.action == "started"
    assert len(training_jobs(aws)) == 1
    [version] = registry.list_versions("iris")
    assert version.summary["spec"]["auto_promote"] is False


# --- local backend ------------------------------------------------------------------------


def test_local_backend_queues_the_same_create_training_job_request(
    aws: Any, monkeypatch: pytest.MonkeyPatch, lambda_context: Any
) -> None:
    # GIVEN the local stack's backend
    monkeypatch.setenv("TRAINING_BACKEND", "local")
    monkeypatch.setenv("LOCAL_TRAINING_QUEUE_URL", aws.local_training_queue_url)
    app = load_handler("ingest")
    note = put_and_notify(aws.s3, "maas-data", "datasets/digits/digits.csv", CSV)

    # WHEN an upload is ingested
    result = app.lambda_handler(sqs_event(note), lambda_context)

    # THEN no SageMaker job exists, and the queue holds a valid CreateTrainingJob request
    assert result == {"batchItemFailures": []}
    assert training_jobs(aws) == []
    messages = aws.sqs.receive_message(
        QueueUrl=aws.local_training_queue_url, MaxNumberOfMessages=10
    )["Messages"]
    [message] = messages
    request = json.loads(message["Body"])
    validate_parameters(request, create_training_job_shape())
    assert request["TrainingJobName"].startswith("maas-digits-")
    assert request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == (
        "s3://maas-data/datasets/digits/digits.csv"
    )
    assert json.loads(request["HyperParameters"]["sagemaker_program"]) == "train.py"
    [version] = Registry(aws.table).list_versions("digits")
    assert (version.status, version.job_name) == (TRAINING, request["TrainingJobName"])


# --- the replayable event file ------------------------------------------------------------


@pytest.mark.parametrize(
    "name, model, channel",
    [
        ("sqs-s3-put-datasets.json", "digits", "s3://maas-data/datasets/digits/digits.csv"),
        ("sqs-s3-put-jobjson.json", "iris", "s3://maas-data/datasets/iris/run-1/"),
    ],
)
def test_events_file_replayed_starts_a_job(
    aws: Any,
    ingest_app: Any,
    lambda_context: Any,
    sent_requests: list[dict[str, Any]],
    name: str,
    model: str,
    channel: str,
) -> None:
    # GIVEN the event file `sam local invoke -e` replays, with the object it names uploaded
    event = event_file(name)
    for record in event["Records"]:
        note = json.loads(record["body"])
        for s3_record in note["Records"]:
            s3_record["s3"]["bucket"]["name"] = "maas-data"
            s3_record["s3"]["bucket"]["arn"] = "arn:aws:s3:::maas-data"
            key = unquote_plus(s3_record["s3"]["object"]["key"])
            body = json.dumps({"label": "label"}).encode() if key.endswith("job.json") else CSV
            put = aws.s3.put_object(Bucket="maas-data", Key=key, Body=body)
            s3_record["s3"]["object"]["versionId"] = put["VersionId"]
            s3_record["s3"]["object"]["eTag"] = put["ETag"].strip('"')
        record["body"] = json.dumps(note)

    # WHEN it is handled
    result = ingest_app.lambda_handler(event, lambda_context)

    # THEN it starts the training job the file describes
    assert result == {"batchItemFailures": []}
    [request] = sent_requests
    assert request["TrainingJobName"].startswith(f"maas-{model}-")
    assert request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == channel
    assert [v.version for v in Registry(aws.table).list_versions(model)] == [1]


# --- text jobs and pretrained imports ----------------------------------------------------


def test_pretrained_folder_job_json_starts_an_import_of_the_run_folder(
    aws: Any, ingest_app: Any, lambda_context: Any, sent_requests: list[dict[str, Any]]
) -> None:
    # GIVEN a model folder under pretrained/ whose files never trigger, then its job.json
    for key in ("pretrained/minilm/v1/config.json", "pretrained/minilm/v1/tokenizer.json"):
        note = put_and_notify(aws.s3, "maas-data", key, b"{}")
        ingest_app.lambda_handler(sqs_event(note), lambda_context)
    assert sent_requests == []
    note = put_and_notify(aws.s3, "maas-data", "pretrained/minilm/v1/job.json", b"{}")
    # WHEN it is ingested
    ingest_app.lambda_handler(sqs_event(note), lambda_context)
    # THEN an embedding import of the folder starts on the training backend
    [request] = sent_requests
    [channel] = request["InputDataConfig"]
    assert channel["DataSource"]["S3DataSource"]["S3Uri"] == "s3://maas-data/pretrained/minilm/v1/"
    hyper = {k: json.loads(v) for k, v in request["HyperParameters"].items()}
    assert (hyper["task"], hyper["recipe"]) == ("embedding", "import")
    metrics = {
        m["Name"]: m["Regex"] for m in request["AlgorithmSpecification"]["MetricDefinitions"]
    }
    assert re.search(metrics["val_loss"], "epoch=3 train_loss=0.5 val_loss=0.25").group(1) == "0.25"
    assert re.search(metrics["test_loss"], "test_accuracy=0.9 test_loss=0.125").group(1) == "0.125"


def test_finetune_gets_the_base_models_imported_folder_as_channel_base(
    aws: Any, ingest_app: Any, lambda_context: Any, sent_requests: list[dict[str, Any]]
) -> None:
    registry = Registry(aws.table)
    # GIVEN an imported pretrained model promoted to prod
    name = job_name("minilm", "v1", "etag")
    claim = registry.claim_job(
        job_name=name,
        model="minilm",
        run="v1",
        source="s3://maas-data/pretrained/minilm/v1/job.json",
        actor="test",
    )
    registry.transition("minilm", claim.version, expected=(TRAINING,), status="OPTIMIZING",
                        actor="test", reason="")  # fmt: skip
    registry.transition("minilm", claim.version, expected=("OPTIMIZING",), status="READY",
                        actor="test", reason="")  # fmt: skip
    registry.promote("minilm", claim.version, actor="test", reason="")
    # WHEN a text run asks to fine-tune it
    spec = {"task": "text-classification", "recipe": "finetune", "base_model": "minilm"}
    note = put_and_notify(
        aws.s3, "maas-data", "datasets/docs/r1/job.json", json.dumps(spec).encode()
    )
    ingest_app.lambda_handler(sqs_event(note), lambda_context)
    # THEN the job reads the data (train) and the pretrained folder (base)
    [request] = sent_requests
    channels = {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
        for c in request["InputDataConfig"]
    }
    assert channels == {
        "train": "s3://maas-data/datasets/docs/r1/",
        "base": "s3://maas-data/pretrained/minilm/v1/",
    }
    hyper = {k: json.loads(v) for k, v in request["HyperParameters"].items()}
    assert (hyper["recipe"], hyper["epochs"], hyper["learning_rate"]) == ("finetune", 4, 5e-5)


def test_finetune_of_an_unknown_base_model_is_rejected_with_the_reason(
    aws: Any, ingest_app: Any, lambda_context: Any, sent_requests: list[dict[str, Any]]
) -> None:
    spec = {"task": "text-classification", "recipe": "finetune", "base_model": "nobody"}
    note = put_and_notify(
        aws.s3, "maas-data", "datasets/docs/r2/job.json", json.dumps(spec).encode()
    )
    ingest_app.lambda_handler(sqs_event(note), lambda_context)
    assert sent_requests == []
    [version] = Registry(aws.table).list_versions("docs")
    assert version.status == FAILED and "base_model 'nobody'" in version.reason
