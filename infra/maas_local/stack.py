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

import contextlib
import json
import logging
import os
import shutil
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from maas.core.config import FUNCTION_SETTINGS
from maas_cli.connect import port_open
from maas_devkit.account import (
    LOCAL_TRAINING_QUEUE_ID,
    Resources,
    configure_notifications,
    create_resources,
)
from maas_devkit.cfn import load_template
from maas_devkit.events import sqs_record_of
from maas_devkit.repo import ACCOUNT, FUNCTIONS_DIR, TEMPLATE, TRAINING_ENTRY

from maas_local.console import Console
from maas_local.lambda_runtime import FunctionPool
from maas_local.lock import WorkdirLock
from maas_local.state import Snapshot, StateStore

log = logging.getLogger("maas.local")
MAX_LOCAL_VISIBILITY_S = 10  # retry failed ingest messages quickly on a laptop
SAVE_DELAY_S = 0.2  # changes arriving together are saved together
STOPPED = "local stack stopped"
READ_ACTIONS = ("Get", "List", "Describe", "Query", "Scan", "BatchGet", "TransactGet")


class PortInUse(RuntimeError):
    pass


def changes_state(environ: dict[str, Any]) -> bool:
    """Whether a request to moto may change what the stack saves (objects and items).

    Queues are saved when the stack stops, not on every message, so SQS never counts.
    """
    if environ.get("REQUEST_METHOD") in ("GET", "HEAD", "OPTIONS"):
        return False
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target.startswith("DynamoDB"):
        return not target.rsplit(".", 1)[-1].startswith(READ_ACTIONS)
    if target or environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
        return False  # SQS, CloudFormation, STS: JSON or query protocols
    return not environ.get("PATH_INFO", "").startswith("/moto-api")  # S3: PUT, POST, DELETE


def _moto_server_class() -> Any:
    from moto.server import ThreadedMotoServer
    from werkzeug.serving import make_server

    class MotoServer(ThreadedMotoServer):
        """moto's threaded server, telling the stack when a request changed its state."""

        def __init__(self, changed: threading.Event, host: str, port: int) -> None:
            super().__init__(ip_address=host, port=port, verbose=False)
            self._changed = changed

        def _server_entry(self) -> None:
            from moto.moto_server.werkzeug_app import (
                DomainDispatcherApplication,
                MotoRequestHandler,
                create_backend_app,
            )

            moto_app = DomainDispatcherApplication(create_backend_app)
            changed = self._changed

            def app(environ: dict[str, Any], start_response: Any) -> Any:
                if changes_state(environ):
                    changed.set()
                return moto_app(environ, start_response)

            self._server = make_server(
                self._ip_address, self._port, app, True, request_handler=MotoRequestHandler
            )
            self._server_ready_event.set()
            self._server.serve_forever()

    return MotoServer


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
    template: Path = TEMPLATE
    functions_dir: Path = FUNCTIONS_DIR
    training_entry: Path = TRAINING_ENTRY
    inference_containers: int = 4
    training_workers: int = 1
    quiet_functions: bool = True
    # The template's parameters, where a test or a user wants other than the defaults.
    alias_ttl_s: float | None = None  # AliasTtlSeconds (ALIAS_TTL_S)
    max_batch_size: int | None = None  # MaxBatchSize (MAX_BATCH_SIZE)
    inference_auth: str = "NONE"  # InferenceAuth: NONE or AWS_IAM (SigV4 on /v2 too)
    # Access key -> secret the AWS_IAM routes accept: the stack's own, as moto's clients use.
    credentials: dict[str, str] = field(default_factory=lambda: {"testing": "testing"})
    reset: bool = False  # start empty: forget the state, journals and caches of the work dir
    console: bool = False  # print the pipeline's steps (maas local up, maas demo)


class LocalStack:
    def __init__(self, config: LocalStackConfig | None = None) -> None:
        self.cfg = config or LocalStackConfig()
        self.cfg.workdir = self.cfg.workdir.resolve()
        self.resources = Resources(self.cfg.region)
        self.outputs: dict[str, str] = {}
        self._saved_env: dict[str, str | None] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._moto: Any = None
        self._http: Any = None
        self.runner: Any = None
        self.state = StateStore(self.cfg.workdir / "state")
        self._lock = WorkdirLock(self.cfg.workdir)
        self._changed = threading.Event()
        self.restored: Snapshot | None = None
        self.console = Console(quiet=not self.cfg.console)

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

        if self.cfg.inference_auth not in ("NONE", "AWS_IAM"):
            # JWT needs an identity provider: not something the local stack plays.
            raise ValueError(f"inference_auth: NONE or AWS_IAM, not {self.cfg.inference_auth!r}")
        self._lock.acquire(aws_port=self.cfg.aws_port, api_port=self.cfg.api_port)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        for port, flag in ((self.cfg.aws_port, "--aws-port"), (self.cfg.api_port, "--api-port")):
            if port_open(self.cfg.host, port):
                raise PortInUse(
                    f"port {port} on {self.cfg.host} is in use: another `maas local up`? "
                    f"try {flag} {free_port(self.cfg.host)}"
                )
        if self.cfg.reset:
            self.state.reset()
            for sub in ("jobs", "model-cache"):
                shutil.rmtree(self.cfg.workdir / sub, ignore_errors=True)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request lines
        self._moto = _moto_server_class()(self._changed, self.cfg.host, self.cfg.aws_port)
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
        # Batch predictions: chunk messages fan out over these containers, as over Lambda's.
        predict = FunctionPool(self.cfg.functions_dir, "predict", size=2, timeout_s=300)
        self.runner = TrainingRunner(self, optimize, self.console)
        self._recover()
        self._spawn("state-saver", self._save_changes)
        self._spawn("ingest-poller", self._poll_ingest, ingest)
        for i in range(2):
            self._spawn(f"predict-poller-{i}", self._poll_predict, predict)
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

    def stop(self) -> None:
        """Stop taking work, save everything (the queues' messages too), then shut down."""
        self._stop.set()
        if self._http is not None:
            self._http.shutdown()
            self._http = None
        if self.runner is not None:
            self.runner.interrupt()
        for t in self._threads:
            t.join(timeout=10)
        self._threads = []
        if self._moto is not None and self.resources.names:
            try:
                self.state.save(self.client, self.resources, queues=True)
            except Exception:
                log.exception("saving the stack's state failed; the last snapshot stands")
        if self._moto is not None:
            # moto keeps its backends per process, not per server: without a reset, a next
            # stack in this process would find this one's buckets, queues and table.
            try:
                import requests

                requests.post(f"{self.aws_url}/moto-api/reset", timeout=10)
            except Exception:  # a stack that half-started: nothing to reset
                log.debug("moto reset failed", exc_info=True)
            self._moto.stop()
            self._moto = None
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env = {}
        self._lock.release()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, target: Any, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    # --- resources from template.yaml --------------------------------------------------

    @property
    def names(self) -> dict[str, str]:
        return self.resources.names

    @property
    def arns(self) -> dict[str, str]:
        return self.resources.arns

    @property
    def urls(self) -> dict[str, str]:
        return self.resources.urls

    def _create_resources(self) -> None:
        template = load_template(self.cfg.template)
        self.resources = create_resources(
            self.client,
            template,
            stack_name=self.cfg.stack_name,
            region=self.cfg.region,
            max_visibility_s=MAX_LOCAL_VISIBILITY_S,
            notifications=False,
        )
        self.restored = self.state.latest()
        if self.restored is not None:
            self.state.restore(self.client, self.resources, self.restored)
            log.info("restored the state saved at %s", self.restored.saved_at)
        configure_notifications(self.client("s3"), template, self.resources)
        self.outputs = {
            "StackName": self.cfg.stack_name,
            "ApiUrl": self.api_url + "/",
            "DataBucketName": self.names.get("DataBucket", ""),
            "ArtifactBucketName": self.names.get("ArtifactBucket", ""),
            "RegistryTableName": self.names.get("RegistryTable", ""),
            "IngestQueueUrl": self.urls.get("IngestQueue", ""),
            "IngestDLQUrl": self.urls.get("IngestDLQ", ""),
            "PredictQueueUrl": self.urls.get("PredictQueue", ""),
            "LocalTrainingQueueUrl": self.urls[LOCAL_TRAINING_QUEUE_ID],
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
            "PREDICT_QUEUE_URL": self.outputs["PredictQueueUrl"],
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

    # --- state: saved as it changes, recovered at start --------------------------------

    def _save_changes(self) -> None:
        """Snapshot the buckets and the table after each change (queues: at stop)."""
        while not self._stop.is_set():
            if not self._changed.wait(timeout=0.5):
                continue
            time.sleep(SAVE_DELAY_S)
            self._changed.clear()
            try:
                self.state.save(self.client, self.resources)
            except Exception:
                if self._stop.is_set():
                    return
                log.exception("saving the stack's state failed; retrying at the next change")
                self._changed.set()

    def _recover(self) -> None:
        """Interrupted jobs resume; versions no job will ever finish are failed, saying why."""
        from maas.core.registry import FAILED, OPTIMIZING, TRAINING, Conflict, Registry

        resumed = set(self.runner.resume_unfinished())
        queued = set()
        for message in (self.restored.queues if self.restored else {}).get(
            LOCAL_TRAINING_QUEUE_ID, []
        ):
            try:
                queued.add(json.loads(message["body"])["TrainingJobName"])
            except (ValueError, KeyError, TypeError):
                continue
        registry = Registry(self.outputs["RegistryTableName"], client=self.client("dynamodb"))
        for model in registry.list_models():
            for record in registry.list_versions(model):
                job = record.job_name
                if record.status == TRAINING and job not in resumed | queued and job:
                    self.runner.fail(job, STOPPED)
                elif record.status == OPTIMIZING and job not in resumed:
                    with contextlib.suppress(Conflict):
                        registry.transition(
                            model,
                            record.version,
                            expected=(OPTIMIZING,),
                            status=FAILED,
                            actor="local-stack",
                            reason=f"{STOPPED} while optimizing; upload again",
                        )
        if resumed:
            log.info("resuming %s", ", ".join(sorted(resumed)))

    # --- Lambda's SQS event source mapping -----------------------------------------------

    def _poll_ingest(self, ingest: FunctionPool) -> None:
        self._poll("IngestQueue", ingest, 10, self._announce_uploads)

    def _poll_predict(self, predict: FunctionPool) -> None:
        """PredictQueue -> PredictFunction, one message per invocation (its BatchSize)."""
        self._poll("PredictQueue", predict, 1)

    def _announce_uploads(self, messages: list[dict[str, Any]]) -> None:
        for bucket, key in _uploads(messages):
            self.console.upload_seen(bucket, key)

    def _poll(
        self,
        queue_id: str,
        pool: FunctionPool,
        batch: int,
        seen: Any = None,
    ) -> None:
        """One SQS event source mapping: receive, invoke, delete what did not fail."""
        sqs = self.client("sqs")
        url = self.urls[queue_id]
        arn = self.arns[queue_id]
        while not self._stop.is_set():
            try:
                resp = sqs.receive_message(
                    QueueUrl=url,
                    MaxNumberOfMessages=batch,
                    WaitTimeSeconds=1,
                    AttributeNames=["All"],
                    MessageAttributeNames=["All"],
                )
            except Exception:  # the server is stopping
                if self._stop.is_set():
                    return
                log.exception("%s poll failed", pool.name)
                time.sleep(1)
                continue
            messages = resp.get("Messages", [])
            if not messages:
                continue
            if seen is not None:
                seen(messages)
            event = {"Records": [sqs_record_of(m, arn, self.cfg.region) for m in messages]}
            try:
                result = pool.invoke(event) or {}
                failed = {f["itemIdentifier"] for f in result.get("batchItemFailures", [])}
            except Exception:
                log.exception("%s function failed; the batch will be retried", pool.name)
                failed = {m["MessageId"] for m in messages}
            for m in messages:
                if m["MessageId"] in failed:
                    log.warning(
                        "%s message %s failed; SQS will retry it, then dead-letter it",
                        pool.name,
                        m["MessageId"],
                    )
                    continue
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


def _uploads(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(bucket, key) of the object-created notifications among SQS messages."""
    from urllib.parse import unquote_plus

    found = []
    for m in messages:
        try:
            records = json.loads(m["Body"]).get("Records") or []
            for r in records:
                if str(r.get("eventName", "")).startswith("ObjectCreated"):
                    found.append(
                        (r["s3"]["bucket"]["name"], unquote_plus(r["s3"]["object"]["key"]))
                    )
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return found
