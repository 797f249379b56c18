"""Least privilege, measured: what each function calls against what template.yaml grants it.

Each function's handler runs its real flows under moto (ingest: a run, a rejection, a dead
letter, an out-of-order event; optimize: a version made ready and promoted, a failed job;
inference: metadata and inference; admin: every route), while a botocore hook records every
AWS call it makes. Each call's IAM action must be granted to that function (else it would fail
with AccessDenied on AWS), and each action granted must be one some flow used, or be listed
below with the reason it is there (else it is more than the function needs).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import pytest
from maas_devkit.account import DATA_BUCKET
from maas_devkit.cfn import as_list, load_template, policy_statements
from maas_devkit.events import http_event, put_and_notify, s3_notification, sqs_event
from maas_devkit.lambda_runtime import LambdaContext, load_handler
from maas_devkit.models import infer_body
from maas_devkit.publish import publish_model
from test_optimize import _event, _model_tarball, _start_run, _upload_artifact

SECTION = "Security"
FUNCTIONS = (
    "IngestFunction",
    "OptimizeFunction",
    "InferenceFunction",
    "PredictFunction",
    "AdminFunction",
)
# Granted, though no flow here calls it directly, and why.
IMPLIED = {
    # S3 answers 403 instead of 404 for a missing key without ListBucket: "not there" must
    # read as not there (an upload deleted before its event, a missing model.tar.gz).
    "s3:ListBucket": "missing objects read as 404",
    # Checked by SageMaker within CreateTrainingJob: passing the role, tagging on create.
    "iam:PassRole": "CreateTrainingJob passes the training role",
    "sagemaker:AddTags": "CreateTrainingJob tags the job (TaggingAction condition)",
    # Large uploads are multipart; an upload that fails is aborted.
    "s3:AbortMultipartUpload": "failed multipart uploads are aborted",
    # PRELOAD_MODELS=* (SnapStart) lists every model during init.
    "dynamodb:Scan": "PRELOAD_MODELS=* lists the models",
}


def iam_actions(service: str, operation: str, params: dict[str, Any]) -> set[str]:
    """The IAM actions AWS authorizes a call by."""
    if service == "s3":
        if operation in ("HeadObject", "GetObject"):
            return {"s3:GetObjectVersion" if params.get("VersionId") else "s3:GetObject"}
        if operation in ("CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"):
            return {"s3:PutObject"}
        if operation in ("ListObjectsV2", "ListObjects"):
            return {"s3:ListBucket"}
        return {f"s3:{operation}"}
    if service == "dynamodb" and operation == "TransactWriteItems":
        kinds = {
            "Put": "PutItem",
            "Update": "UpdateItem",
            "Delete": "DeleteItem",
            "ConditionCheck": "ConditionCheckItem",
        }
        return {f"dynamodb:{kinds[k]}" for item in params["TransactItems"] for k in item}
    if service == "sqs" and operation == "SendMessageBatch":
        return {"sqs:SendMessage"}  # SQS authorizes a batch by its single-message action
    if service == "sagemaker" and operation == "CreateTrainingJob":
        actions = {"sagemaker:CreateTrainingJob", "iam:PassRole"}
        if params.get("Tags"):
            actions.add("sagemaker:AddTags")
        return actions
    return {f"{service}:{operation}"}


def granted(function: str) -> set[str]:
    template = load_template()
    return {
        action
        for owner, statement in policy_statements(template)
        if owner == function and statement.get("Effect") == "Allow"
        for action in as_list(statement["Action"])
    }


class Recorder:
    def __init__(self) -> None:
        self.current: str | None = None
        self.calls: dict[str, set[str]] = {f: set() for f in FUNCTIONS}

    def hook(self, params: dict[str, Any], model: Any, **kwargs: Any) -> None:
        if self.current is None:
            return
        service = model.service_model.endpoint_prefix
        if service == "api.sagemaker":
            service = "sagemaker"
        self.calls[self.current] |= iam_actions(service, model.name, params)

    @contextmanager
    def as_function(self, function: str) -> Iterator[None]:
        self.current = function
        try:
            yield
        finally:
            self.current = None


@pytest.fixture
def recorder(aws: Any) -> Recorder:
    rec = Recorder()
    session = boto3.DEFAULT_SESSION
    assert session is not None
    # The API parameters as the caller passed them (before serialisation)
    session.events.register("before-parameter-build", rec.hook)
    return rec


def run(recorder: Recorder, function: str, call: Callable[[], Any]) -> Any:
    with recorder.as_function(function):
        return call()


def run_predictions(aws: Any, recorder: Recorder, iris_model: Any, ctx: Any, env: Any) -> None:
    """A table model (iris, its four columns as one matrix) scoring an upload, as S3 and the
    SQS event source deliver it: the notification, then each chunk message."""
    from maas.serving import tableprep
    from maas_devkit.account import local_name

    columns = [
        tableprep.fit_column(f"f{i}", "numeric", iris_model.features[:, i], "FP64")
        for i in range(4)
    ]
    table = tableprep.make_spec(columns, [])
    publish_model(
        aws.registry(), aws.storage(), "petals", 1, iris_model.onnx, {"table": table}, promote=True
    )
    url = aws.sqs.get_queue_url(QueueName=local_name("PredictQueue"))["QueueUrl"]
    env.setenv("PREDICT_QUEUE_URL", url)
    env.setenv("PREDICT_CHUNK_ROWS", "2")  # 3 rows: 2 chunks
    rows = "\n".join(",".join(str(v) for v in r) for r in iris_model.features[:3])
    note = put_and_notify(
        aws.s3, DATA_BUCKET, "predictions/petals/x.csv", f"f0,f1,f2,f3\n{rows}\n".encode()
    )
    predict = load_handler("predict")
    run(recorder, "PredictFunction", lambda: predict.lambda_handler(sqs_event(note), ctx))
    for _ in range(10):
        got = aws.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1).get("Messages", [])
        if not got:
            break
        aws.sqs.delete_message(QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"])
        chunk = {"Records": [{"messageId": got[0]["MessageId"], "body": got[0]["Body"]}]}
        if "chunk" in got[0]["Body"]:
            reply = run(recorder, "PredictFunction", lambda c=chunk: predict.lambda_handler(c, ctx))
            assert reply == {"batchItemFailures": []}
    summary = aws.s3.get_object(Bucket=aws.artifact_bucket, Key="predictions/petals/x.summary.json")
    assert json.loads(summary["Body"].read())["scored"] == 3


def test_each_function_is_granted_what_it_calls_and_nothing_more(
    aws: Any,
    recorder: Recorder,
    iris_model: Any,
    reliability_report: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ctx = LambdaContext()
    # --- ingest: a run, a rejection, a dead letter, a superseded event, an unversioned one
    ingest = load_handler("ingest")
    csv = b"f1,label\n1,a\n2,b\n"
    notes = [
        put_and_notify(aws.s3, DATA_BUCKET, "datasets/iris/iris.csv", csv),
        put_and_notify(aws.s3, DATA_BUCKET, "datasets/iris/r1/job.json", b'{"lable": 1}'),
        put_and_notify(aws.s3, DATA_BUCKET, "elsewhere/x.csv", csv),
        s3_notification(DATA_BUCKET, "datasets/iris/iris.csv", etag="0", sequencer="00"),
        # without a versionId (an unversioned bucket's event): the current object is read
        s3_notification(DATA_BUCKET, "datasets/iris/r1/job.json", etag="1", sequencer="FF"),
    ]
    for note in notes:
        assert run(recorder, "IngestFunction", lambda n=note: ingest.lambda_handler(
            sqs_event(n), ctx
        )) == {"batchItemFailures": []}  # fmt: skip

    # --- optimize: a version made ready and promoted, and a failed job
    optimize = load_handler("optimize")
    name = _start_run(aws, "flowers", "run-1")
    uri = _upload_artifact(aws, name, _model_tarball(iris_model))
    result = run(recorder, "OptimizeFunction", lambda: optimize.lambda_handler(
        _event(name, artifact=uri), ctx
    ))  # fmt: skip
    assert result["action"] == "ready" and result["promoted"]
    failed = _start_run(aws, "flowers", "run-2")
    run(recorder, "OptimizeFunction", lambda: optimize.lambda_handler(
        _event(failed, status="Failed", reason="AlgorithmError: x"), ctx
    ))  # fmt: skip
    missing = _start_run(aws, "flowers", "run-3")
    gone = f"s3://{aws.artifact_bucket}/training-output/{missing}/output/model.tar.gz"
    run(recorder, "OptimizeFunction", lambda: optimize.lambda_handler(
        _event(missing, artifact=gone), ctx
    ))  # fmt: skip

    # --- inference: every route
    inference = load_handler("inference")
    body = infer_body(iris_model.features[:2])
    for method, path, payload in [
        ("GET", "/v2/models/flowers", None),
        ("GET", "/v2/models/flowers/ready", None),
        ("POST", "/v2/models/flowers/infer", body),
        ("POST", "/v2/models/flowers/versions/1/infer", body),
        ("GET", "/v2/models/nope", None),
    ]:
        run(recorder, "InferenceFunction", lambda m=method, p=path, b=payload: (
            inference.lambda_handler(http_event(m, p, b), ctx)
        ))  # fmt: skip

    # --- predict: a file planned into chunks, each chunk scored, the outputs assembled
    run_predictions(aws, recorder, iris_model, ctx, monkeypatch)

    # --- admin: every route, as a signed caller, moving the alias for real
    publish_model(aws.registry(), aws.storage(), "flowers", 4, iris_model.onnx)
    admin = load_handler("admin")
    caller = {"iam": {"userArn": "arn:aws:iam::123456789012:user/ops"}}
    for method, path, payload in [
        ("GET", "/admin/models", None),
        ("GET", "/admin/models/flowers/versions", None),
        ("GET", "/admin/models/flowers/audit", None),
        ("POST", "/admin/models/flowers/canary", {"version": 4, "weight": 0.2}),
        ("POST", "/admin/models/flowers/promote", {"version": 4}),
        ("POST", "/admin/models/flowers/rollback", {}),
    ]:
        event = http_event(method, path, payload)
        event["requestContext"]["authorizer"] = caller
        reply = run(recorder, "AdminFunction", lambda e=event: admin.lambda_handler(e, ctx))
        assert reply["statusCode"] == 200, reply

    # THEN every call is granted, and every grant is used (or implied, with its reason)
    report = {}
    for function in FUNCTIONS:
        calls, grants = recorder.calls[function], granted(function)
        assert calls, f"{function}: no AWS call recorded"
        assert calls <= grants, f"{function} calls what it is not granted: {calls - grants}"
        unused = grants - calls - set(IMPLIED)
        assert not unused, f"{function} is granted more than it uses: {sorted(unused)}"
        report[function] = sorted(calls)
    reliability_report.tried(
        SECTION,
        "IAM: each function's calls vs its grants",
        "every call granted, every grant used or explained",
    )
    print(json.dumps(report, indent=1))
