"""An AWS account shaped like the stack: the buckets, queues and table template.yaml declares.

Built through the AWS APIs, so the same code fills moto's in-process mock (the tests) and
moto's server (the local stack): the tests' table is the stack's table, its keys and indexes
read from the template, and S3's notifications go to the ingest queue as on AWS.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from maas_devkit.cfn import load_template, resources_of_type
from maas_devkit.repo import ACCOUNT, REGION, STACK_NAME

# Short local names for the template's logical ids (the rest: kebab-case of the id).
LOCAL_NAMES = {
    "DataBucket": "data",
    "ArtifactBucket": "artifacts",
    "IngestQueue": "ingest",
    "IngestDLQ": "ingest-dlq",
    "RegistryTable": "registry",
}
# Where the ingest function's local training backend sends CreateTrainingJob requests; not
# in the template (AWS's backend is SageMaker itself).
LOCAL_TRAINING_QUEUE_ID = "LocalTrainingQueue"


def _kebab(name: str) -> str:
    name = re.sub(r"(Bucket|Table|Queue)$", "", name) or name
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def local_name(logical_id: str, stack_name: str = STACK_NAME) -> str:
    """maas-data, maas-ingest-dlq, ...: the physical name a logical id gets off AWS."""
    return f"{stack_name}-{LOCAL_NAMES.get(logical_id) or _kebab(logical_id)}"


DATA_BUCKET = local_name("DataBucket")
ARTIFACT_BUCKET = local_name("ArtifactBucket")
REGISTRY_TABLE = local_name("RegistryTable")
INGEST_DLQ = local_name("IngestDLQ")
LOCAL_TRAINING_QUEUE = f"{STACK_NAME}-local-training"


@dataclass
class Resources:
    """Physical names, ARNs and queue URLs by logical id."""

    region: str = REGION
    names: dict[str, str] = field(default_factory=dict)
    arns: dict[str, str] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)

    def record(self, logical: str, name: str, arn: str, url: str | None = None) -> None:
        self.names[logical] = name
        self.arns[logical] = arn
        if url:
            self.urls[logical] = url

    def resolve(self, value: Any) -> Any:
        """A Ref or Fn::GetAtt of one of these resources, as CloudFormation resolves it."""
        if isinstance(value, dict):
            if "Fn::GetAtt" in value:
                logical, attr = value["Fn::GetAtt"]
                if attr == "Arn":
                    return self.arns[logical]
                if attr in ("QueueName", "TableName", "BucketName"):
                    return self.names[logical]
                if attr == "QueueUrl":
                    return self.urls[logical]
            if "Ref" in value:
                ref = value["Ref"]
                return self.urls.get(ref) or self.names.get(ref, ref)
        return value


@functools.cache
def stack_template() -> dict[str, Any]:
    """template.yaml, read once per process (tests build a moto account from it per test)."""
    return load_template()


def create_resources(
    client: Callable[[str], Any],
    template: dict[str, Any] | None = None,
    *,
    stack_name: str = STACK_NAME,
    region: str = REGION,
    max_visibility_s: int | None = None,
    notifications: bool = True,
) -> Resources:
    """Create the template's queues, tables and buckets through `client(service)`.

    `max_visibility_s` caps queue visibility timeouts (a laptop retries failed messages in
    seconds, not the six minutes Lambda's timeout calls for). `notifications=False` leaves the
    buckets' S3 -> SQS notifications to `configure_notifications` (after restoring objects
    that must not look like new uploads).
    """
    template = template if template is not None else load_template()
    res = Resources(region)
    _create_queues(client("sqs"), template, res, stack_name, max_visibility_s)
    _create_tables(client("dynamodb"), template, res, stack_name)
    _create_buckets(client("s3"), template, res, stack_name)
    if notifications:
        configure_notifications(client("s3"), template, res)
    return res


def configure_notifications(s3: Any, template: dict[str, Any], res: Resources) -> None:
    """The buckets' notifications to their queues, as template.yaml configures them."""
    for logical, spec in resources_of_type(template, "AWS::S3::Bucket").items():
        configs = _queue_notifications(spec, res)
        if configs:
            s3.put_bucket_notification_configuration(
                Bucket=res.names[logical],
                NotificationConfiguration={"QueueConfigurations": configs},
            )


def _create_queues(
    sqs: Any, template: dict[str, Any], res: Resources, stack: str, cap: int | None
) -> None:
    queues = resources_of_type(template, "AWS::SQS::Queue")
    # Dead-letter queues first: the others point at them.
    ordered = sorted(queues.items(), key=lambda kv: "RedrivePolicy" in kv[1].get("Properties", {}))
    for logical, spec in ordered:
        props = spec.get("Properties", {})
        attrs: dict[str, str] = {}
        if "VisibilityTimeout" in props:
            visibility = int(props["VisibilityTimeout"])
            attrs["VisibilityTimeout"] = str(visibility if cap is None else min(visibility, cap))
        if "MessageRetentionPeriod" in props:
            attrs["MessageRetentionPeriod"] = str(props["MessageRetentionPeriod"])
        redrive = props.get("RedrivePolicy")
        if redrive:
            attrs["RedrivePolicy"] = json.dumps(
                {
                    "deadLetterTargetArn": res.resolve(redrive["deadLetterTargetArn"]),
                    "maxReceiveCount": int(redrive.get("maxReceiveCount", 5)),
                }
            )
        _queue(sqs, res, logical, local_name(logical, stack), attrs)
    # A training job can run for hours: its request must not come back while it runs.
    _queue(
        sqs, res, LOCAL_TRAINING_QUEUE_ID, f"{stack}-local-training", {"VisibilityTimeout": "43200"}
    )


def _queue(sqs: Any, res: Resources, logical: str, name: str, attrs: dict[str, str]) -> None:
    url = sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
    res.record(logical, name, f"arn:aws:sqs:{res.region}:{ACCOUNT}:{name}", url)


def _create_tables(ddb: Any, template: dict[str, Any], res: Resources, stack: str) -> None:
    for logical, spec in resources_of_type(template, "AWS::DynamoDB::Table").items():
        props = spec.get("Properties", {})
        name = local_name(logical, stack)
        kwargs: dict[str, Any] = {
            "TableName": name,
            "KeySchema": props["KeySchema"],
            "AttributeDefinitions": props["AttributeDefinitions"],
            "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
        }
        if props.get("GlobalSecondaryIndexes"):
            kwargs["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
        ddb.create_table(**kwargs)
        res.record(logical, name, f"arn:aws:dynamodb:{res.region}:{ACCOUNT}:table/{name}")


def _create_buckets(s3: Any, template: dict[str, Any], res: Resources, stack: str) -> None:
    buckets = resources_of_type(template, "AWS::S3::Bucket")
    for logical, spec in buckets.items():
        props = spec.get("Properties", {})
        name = local_name(logical, stack)
        s3.create_bucket(Bucket=name)
        if (props.get("VersioningConfiguration") or {}).get("Status") == "Enabled":
            s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        if props.get("BucketEncryption"):
            s3.put_bucket_encryption(
                Bucket=name,
                ServerSideEncryptionConfiguration={
                    "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
                },
            )
        res.record(logical, name, f"arn:aws:s3:::{name}")


def _queue_notifications(spec: dict[str, Any], res: Resources) -> list[dict[str, Any]]:
    notif = spec.get("Properties", {}).get("NotificationConfiguration") or {}
    configs = []
    for qc in notif.get("QueueConfigurations", []):
        entry: dict[str, Any] = {"QueueArn": res.resolve(qc["Queue"]), "Events": [qc["Event"]]}
        rules = ((qc.get("Filter") or {}).get("S3Key") or {}).get("Rules")
        if rules:
            entry["Filter"] = {"Key": {"FilterRules": rules}}
        configs.append(entry)
    return configs
