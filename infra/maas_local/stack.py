"""The embedded local stack: moto's server plays AWS; the production handlers do the work.

moto (S3, SQS, DynamoDB, CloudFormation outputs) on 127.0.0.1:<aws_port>
S3 notifications -> IngestQueue (moto delivers them, as S3 does)
poller           -> IngestFunction with SQS events (Lambda's event source mapping)
runner           -> training/train.py under the SageMaker contract, then OptimizeFunction
                    with the "SageMaker Training Job State Change" event
HTTP server      -> InferenceFunction with API Gateway HTTP API payload-2.0 events;
                    /admin/* (SigV4-signed only, as AWS_IAM) -> AdminFunction
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from maas.core.config import FUNCTION_SETTINGS

from .lambda_runtime import FunctionPool
from .template import load_template, resources_of_type

log = logging.getLogger("maas.local")
REPO_ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "123456789012"
LOCAL_NAMES = {
    "DataBucket": "data",
    "ArtifactBucket": "artifacts",
    "IngestQueue": "ingest",
    "IngestDLQ": "ingest-dlq",
    "RegistryTable": "registry",
}
LOCAL_TRAINING_QUEUE = "local-training"
MAX_LOCAL_VISIBILITY_S = 10  # retry failed ingest messages quickly on a laptop


def _kebab(name: str) -> str:
    name = re.sub(r"(Bucket|Table|Queue)$", "", name) or name
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class LocalStackConfig:
    aws_port: int = 4566
    api_port: int = 8080
    host: str = "127.0.0.1"
    stack_name: str = "maas"
    region: str = "us-east-1"
    workdir: Path = field(default_factory=lambda: Path(".maas/local"))
    template: Path = REPO_ROOT / "template.yaml"
    functions_dir: Path = REPO_ROOT / "functions"
    training_entry: Path = REPO_ROOT / "training" / "train.py"
    inference_containers: int = 4
    training_workers: int = 1
    quiet_functions: bool = True
    # The template's parameters, where a test or a user wants other than the defaults.
    alias_ttl_s: float | None = None  # AliasTtlSeconds (ALIAS_TTL_S)
    max_batch_size: int | None = None  # MaxBatchSize (MAX_BATCH_SIZE)
    inference_auth: str = "NONE"  # InferenceAuth: NONE or AWS_IAM (SigV4 on /v2 too)
    # Access key -> secret the AWS_IAM routes accept: the stack's own, as moto's clients use.
    credentials: dict[str, str] = field(default_factory=lambda: {"testing": "testing"})


class LocalStack:
    def __init__(self, config: LocalStackConfig | None = None) -> None:
        self.cfg = config or LocalStackConfig()
        self.cfg.workdir = self.cfg.workdir.resolve()
        self.names: dict[str, str] = {}
        self.arns: dict[str, str] = {}
        self.outputs: dict[str, str] = {}
        self.urls: dict[str, str] = {}
        self._saved_env: dict[str, str | None] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._moto: Any = None
        self._http: Any = None
        self.runner: Any = None

    @property
    def aws_url(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.aws_port}"

    @property
    def api_url(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.api_port}"

    def client(self, service: str) -> Any:
        make: Any = boto3.client  # any service by name: the typed overloads want literals
        return make(
            service,
            endpoint_url=self.aws_url,
            region_name=self.cfg.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> LocalStack:
        from moto.server import ThreadedMotoServer

        if self.cfg.inference_auth not in ("NONE", "AWS_IAM"):
            # JWT needs an identity provider: not something the local stack plays.
            raise ValueError(f"inference_auth: NONE or AWS_IAM, not {self.cfg.inference_auth!r}")
        for port in (self.cfg.aws_port, self.cfg.api_port):
            if port_open(self.cfg.host, port):
                raise RuntimeError(f"port {port} on {self.cfg.host} is already in use")
        self.cfg.workdir.mkdir(parents=True, exist_ok=True)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request lines
        self._moto = ThreadedMotoServer(
            ip_address=self.cfg.host, port=self.cfg.aws_port, verbose=False
        )
        self._moto.start()
        self._create_resources()
        self._configure_function_env()
        from .http_api import ApiServer, IamPolicy
        from .runner import TrainingRunner

        ingest = FunctionPool(self.cfg.functions_dir, "ingest", timeout_s=60)
        optimize = FunctionPool(self.cfg.functions_dir, "optimize", memory_mb=3008)
        # The inference containers run concurrently, as Lambda's do (the handler keeps no
        # per-process request state); the admin function's Powertools resolver does (see
        # FunctionPool), so its calls take turns.
        inference = FunctionPool(
            self.cfg.functions_dir, "inference", size=self.cfg.inference_containers, timeout_s=30
        )
        admin = FunctionPool(
            self.cfg.functions_dir,
            "admin",
            memory_mb=512,
            timeout_s=30,
            exclusive=threading.Lock(),
        )
        self.runner = TrainingRunner(self, optimize)
        self._spawn("ingest-poller", self._poll_ingest, ingest)
        for i in range(self.cfg.training_workers):
            self._spawn(f"training-runner-{i}", self.runner.serve, self._stop)
        iam = IamPolicy(
            dict(self.cfg.credentials),
            self.cfg.region,
            ACCOUNT,
            inference=self.cfg.inference_auth == "AWS_IAM",
        )
        self._http = ApiServer(self.cfg.host, self.cfg.api_port, inference, admin, iam)
        self._spawn("http-api", self._http.serve_forever)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._http is not None:
            self._http.shutdown()
        for t in self._threads:
            t.join(timeout=10)
        if self._moto is not None:
            # moto keeps its backends per process, not per server: without a reset, a next
            # stack in this process would find this one's buckets, queues and table.
            try:
                import requests

                requests.post(f"{self.aws_url}/moto-api/reset", timeout=10)
            except Exception:  # a stack that half-started: nothing to reset
                log.debug("moto reset failed", exc_info=True)
            self._moto.stop()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env = {}

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, target: Any, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    # --- resources from template.yaml --------------------------------------------------

    def _local_name(self, logical_id: str) -> str:
        return f"{self.cfg.stack_name}-{LOCAL_NAMES.get(logical_id) or _kebab(logical_id)}"

    def _create_resources(self) -> None:
        template = load_template(self.cfg.template)
        s3, sqs, ddb = self.client("s3"), self.client("sqs"), self.client("dynamodb")
        queues = resources_of_type(template, "AWS::SQS::Queue")
        # Dead-letter queues first: the others point at them.
        ordered = sorted(
            queues.items(), key=lambda kv: "RedrivePolicy" in kv[1].get("Properties", {})
        )
        for logical, res in ordered:
            props = res.get("Properties", {})
            name = self._local_name(logical)
            attrs: dict[str, str] = {}
            if "VisibilityTimeout" in props:
                attrs["VisibilityTimeout"] = str(
                    min(int(props["VisibilityTimeout"]), MAX_LOCAL_VISIBILITY_S)
                )
            if "MessageRetentionPeriod" in props:
                attrs["MessageRetentionPeriod"] = str(props["MessageRetentionPeriod"])
            redrive = props.get("RedrivePolicy")
            if redrive:
                attrs["RedrivePolicy"] = json.dumps(
                    {
                        "deadLetterTargetArn": self._resolve(redrive["deadLetterTargetArn"]),
                        "maxReceiveCount": int(redrive.get("maxReceiveCount", 5)),
                    }
                )
            url = sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
            self._record(logical, name, f"arn:aws:sqs:{self.cfg.region}:{ACCOUNT}:{name}", url)
        training_queue = f"{self.cfg.stack_name}-{LOCAL_TRAINING_QUEUE}"
        url = sqs.create_queue(QueueName=training_queue, Attributes={"VisibilityTimeout": "43200"})[
            "QueueUrl"
        ]
        self._record(
            "LocalTrainingQueue",
            training_queue,
            f"arn:aws:sqs:{self.cfg.region}:{ACCOUNT}:{training_queue}",
            url,
        )

        for logical, res in resources_of_type(template, "AWS::DynamoDB::Table").items():
            props = res.get("Properties", {})
            name = self._local_name(logical)
            kwargs: dict[str, Any] = {
                "TableName": name,
                "KeySchema": props["KeySchema"],
                "AttributeDefinitions": props["AttributeDefinitions"],
                "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
            }
            if props.get("GlobalSecondaryIndexes"):
                kwargs["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
            ddb.create_table(**kwargs)
            self._record(
                logical, name, f"arn:aws:dynamodb:{self.cfg.region}:{ACCOUNT}:table/{name}"
            )

        buckets = resources_of_type(template, "AWS::S3::Bucket")
        for logical, res in buckets.items():
            props = res.get("Properties", {})
            name = self._local_name(logical)
            s3.create_bucket(Bucket=name)
            if (props.get("VersioningConfiguration") or {}).get("Status") == "Enabled":
                s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
            if props.get("BucketEncryption"):
                s3.put_bucket_encryption(
                    Bucket=name,
                    ServerSideEncryptionConfiguration={
                        "Rules": [
                            {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
                        ]
                    },
                )
            self._record(logical, name, f"arn:aws:s3:::{name}")
        for logical, res in buckets.items():
            notif = res.get("Properties", {}).get("NotificationConfiguration") or {}
            configs = []
            for qc in notif.get("QueueConfigurations", []):
                entry: dict[str, Any] = {
                    "QueueArn": self._resolve(qc["Queue"]),
                    "Events": [qc["Event"]],
                }
                rules = ((qc.get("Filter") or {}).get("S3Key") or {}).get("Rules")
                if rules:
                    entry["Filter"] = {"Key": {"FilterRules": rules}}
                configs.append(entry)
            if configs:
                s3.put_bucket_notification_configuration(
                    Bucket=self.names[logical],
                    NotificationConfiguration={"QueueConfigurations": configs},
                )
        self.outputs = {
            "StackName": self.cfg.stack_name,
            "ApiUrl": self.api_url + "/",
            "DataBucketName": self.names.get("DataBucket", ""),
            "ArtifactBucketName": self.names.get("ArtifactBucket", ""),
            "RegistryTableName": self.names.get("RegistryTable", ""),
            "IngestQueueUrl": self.urls.get("IngestQueue", ""),
            "IngestDLQUrl": self.urls.get("IngestDLQ", ""),
            "LocalTrainingQueueUrl": self.urls["LocalTrainingQueue"],
        }
        # Publish the outputs where the CLI looks for a deployed stack's: CloudFormation.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.client("cloudformation").create_stack(
                StackName=self.cfg.stack_name,
                TemplateBody=json.dumps(
                    {
                        "Resources": {
                            "LocalStack": {"Type": "AWS::CloudFormation::WaitConditionHandle"}
                        },
                        "Outputs": {k: {"Value": v} for k, v in self.outputs.items()},
                    }
                ),
            )

    def _record(self, logical: str, name: str, arn: str, url: str | None = None) -> None:
        self.names[logical] = name
        self.arns[logical] = arn
        if url:
            self.urls[logical] = url

    def _resolve(self, value: Any) -> Any:
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

    def _configure_function_env(self) -> None:
        """What template.yaml's Environment gives the functions, pointed at this stack."""
        env = {
            "AWS_ENDPOINT_URL": self.aws_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": self.cfg.region,
            "AWS_REGION": self.cfg.region,
            "STACK_NAME": self.cfg.stack_name,
            "DATA_BUCKET": self.outputs["DataBucketName"],
            "ARTIFACT_BUCKET": self.outputs["ArtifactBucketName"],
            "REGISTRY_TABLE": self.outputs["RegistryTableName"],
            "TRAINING_BACKEND": "local",
            "LOCAL_TRAINING_QUEUE_URL": self.outputs["LocalTrainingQueueUrl"],
            "INGEST_DLQ_URL": self.outputs["IngestDLQUrl"],
            "TRAINING_ROLE_ARN": f"arn:aws:iam::{ACCOUNT}:role/{self.cfg.stack_name}-training",
            "TRAINING_IMAGE": "local",
            "TRAINING_CODE_S3": f"file://{self.cfg.training_entry.parent}",
            "TRAINING_SPOT": "false",
            "MODEL_CACHE_DIR": str(self.cfg.workdir / "model-cache"),
            "POWERTOOLS_SERVICE_NAME": "maas",
            "POWERTOOLS_METRICS_NAMESPACE": "maas",
        }
        for name, value in (
            ("ALIAS_TTL_S", self.cfg.alias_ttl_s),
            ("MAX_BATCH_SIZE", self.cfg.max_batch_size),
        ):
            if value is not None:  # otherwise whatever the environment says (or the default)
                env[name] = str(value)
        if self.cfg.quiet_functions:
            env.update(
                {
                    "POWERTOOLS_METRICS_DISABLED": "true",
                    "POWERTOOLS_LOG_LEVEL": "WARNING",
                    "LOG_LEVEL": "WARNING",
                }
            )
        # Each function's settings from what it will see: a variable missing or invalid fails
        # the start, naming it, rather than the function's first event.
        for settings in FUNCTION_SETTINGS.values():
            settings.from_env({**os.environ, **env})
        # The functions run in this process: they see this process's environment. Keep what
        # was there so stop() can put it back (tests and `maas demo` run more after us).
        self._saved_env = {k: os.environ.get(k) for k in env}
        os.environ.update(env)

    # --- Lambda's SQS event source mapping -----------------------------------------------

    def _poll_ingest(self, ingest: FunctionPool) -> None:
        sqs = self.client("sqs")
        url = self.urls["IngestQueue"]
        arn = self.arns["IngestQueue"]
        while not self._stop.is_set():
            try:
                resp = sqs.receive_message(
                    QueueUrl=url,
                    MaxNumberOfMessages=10,
                    WaitTimeSeconds=1,
                    AttributeNames=["All"],
                    MessageAttributeNames=["All"],
                )
            except Exception:  # the server is stopping
                if self._stop.is_set():
                    return
                log.exception("ingest poll failed")
                time.sleep(1)
                continue
            messages = resp.get("Messages", [])
            if not messages:
                continue
            event = {"Records": [sqs_record(m, arn, self.cfg.region) for m in messages]}
            try:
                result = ingest.invoke(event) or {}
                failed = {f["itemIdentifier"] for f in result.get("batchItemFailures", [])}
            except Exception:
                log.exception("ingest function failed; the batch will be retried")
                failed = {m["MessageId"] for m in messages}
            for m in messages:
                if m["MessageId"] in failed:
                    log.warning(
                        "ingest message %s failed; SQS will retry it, then dead-letter it",
                        m["MessageId"],
                    )
                    continue
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


def sqs_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """An SQS message as Lambda's event source mapping delivers it."""
    attrs = message.get("Attributes", {})
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": {
            "ApproximateReceiveCount": attrs.get("ApproximateReceiveCount", "1"),
            "SentTimestamp": attrs.get("SentTimestamp", str(int(time.time() * 1000))),
            "SenderId": attrs.get("SenderId", ACCOUNT),
            "ApproximateFirstReceiveTimestamp": attrs.get(
                "ApproximateFirstReceiveTimestamp", str(int(time.time() * 1000))
            ),
        },
        "messageAttributes": message.get("MessageAttributes", {}),
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }
