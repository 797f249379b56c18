"""template.yaml: the stack's shape, least privilege, and agreement with code, events and env.json.

Pure: reads files only. cfn-lint runs in-process (it is a dev dependency).
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from maas_devkit.cfn import (
    as_list,
    evaluate,
    function_environment,
    function_property,
    load_template,
    policy_statements,
    resources_of_type,
)
from maas_devkit.repo import REPO, TEMPLATE

FUNCTIONS = {
    "IngestFunction": "ingest",
    "OptimizeFunction": "optimize",
    "InferenceFunction": "inference",
    "StreamingFunction": "streaming",
    "PredictFunction": "predict",
    "AdminFunction": "admin",
}
HANDLERS = {"StreamingFunction": "app.stream_handler"}  # the others: app.lambda_handler
OIP_ROUTES = {
    ("GET", "/v2"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v2/models/{model}"),
    ("GET", "/v2/models/{model}/ready"),
    ("POST", "/v2/models/{model}/infer"),
    ("GET", "/v2/models/{model}/versions/{version}"),
    ("GET", "/v2/models/{model}/versions/{version}/ready"),
    ("POST", "/v2/models/{model}/versions/{version}/infer"),
    # The OIP gRPC service over Connect and gRPC-Web (unary POSTs, one route per method).
    *(
        ("POST", f"/inference.GRPCInferenceService/{m}")
        for m in (
            "ServerLive",
            "ServerReady",
            "ModelReady",
            "ServerMetadata",
            "ModelMetadata",
            "ModelInfer",
        )
    ),
    # Text generation: the OIP generate extension and the OpenAI wire format (buffered).
    ("POST", "/v2/models/{model}/generate"),
    ("POST", "/v2/models/{model}/versions/{version}/generate"),
    ("POST", "/v2/models/{model}/generate_stream"),
    ("POST", "/v2/models/{model}/versions/{version}/generate_stream"),
    ("GET", "/v1/models"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/chat/completions"),
}
# The streaming API's routes: every generation route, each one streamed when asked.
STREAMING_ROUTES = {
    ("GET", "/v1/models"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v2/models/{model}/generate_stream"),
    ("POST", "/v2/models/{model}/versions/{version}/generate_stream"),
}
ADMIN_ROUTES = {
    ("GET", "/admin/models"),
    ("GET", "/admin/models/{model}/versions"),
    ("GET", "/admin/models/{model}/audit"),
    ("POST", "/admin/models/{model}/promote"),
    ("POST", "/admin/models/{model}/canary"),
    ("POST", "/admin/models/{model}/rollback"),
}
INFERENCE_SECURITY = {
    "Fn::If": [
        "InferenceIamAuth",
        [{"AWS_IAM": []}],
        {"Fn::If": ["InferenceJwtAuth", [{"JWT": []}], {"Ref": "AWS::NoValue"}]},
    ]
}
# Actions AWS gives no resource-level permissions for: the only ones allowed on Resource "*".
STAR_RESOURCE_ACTIONS = {"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData"}
# Environment variables the template may set beyond those maas.core.config reads.
NON_CONFIG_ENV = {
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "LOG_LEVEL",
    "AWS_ENDPOINT_URL",
    "AWS_LAMBDA_EXEC_WRAPPER",  # Lambda's own: StreamingFunction's Runtime API loop
}


@pytest.fixture(scope="module")
def tpl() -> dict[str, Any]:
    return load_template(TEMPLATE)


@pytest.fixture(scope="module")
def res(tpl: dict[str, Any]) -> dict[str, Any]:
    return tpl["Resources"]


def props(res: dict[str, Any], name: str) -> dict[str, Any]:
    p: dict[str, Any] = res[name]["Properties"]
    return p


# --- structure ------------------------------------------------------------------------------


def test_template_is_sam(tpl: dict[str, Any]) -> None:
    assert tpl["AWSTemplateFormatVersion"] == "2010-09-09"
    assert tpl["Transform"] == "AWS::Serverless-2016-10-31"


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("DataBucket", "AWS::S3::Bucket"),
        ("DataBucketPolicy", "AWS::S3::BucketPolicy"),
        ("ArtifactBucket", "AWS::S3::Bucket"),
        ("ArtifactBucketPolicy", "AWS::S3::BucketPolicy"),
        ("IngestQueue", "AWS::SQS::Queue"),
        ("IngestDLQ", "AWS::SQS::Queue"),
        ("IngestQueuePolicy", "AWS::SQS::QueuePolicy"),
        ("OptimizeDLQ", "AWS::SQS::Queue"),
        ("RegistryTable", "AWS::DynamoDB::Table"),
        ("TrainingRole", "AWS::IAM::Role"),
        ("SharedLayer", "AWS::Serverless::LayerVersion"),
        ("RuntimeLayer", "AWS::Serverless::LayerVersion"),
        ("IngestFunction", "AWS::Serverless::Function"),
        ("OptimizeFunction", "AWS::Serverless::Function"),
        ("InferenceFunction", "AWS::Serverless::Function"),
        ("AdminFunction", "AWS::Serverless::Function"),
        ("InferenceApi", "AWS::Serverless::HttpApi"),
        ("InferenceApiAccessLogs", "AWS::Logs::LogGroup"),
        ("StreamingFunction", "AWS::Serverless::Function"),
        ("StreamingApi", "AWS::Serverless::Api"),
        ("StreamingInvokePermission", "AWS::Lambda::Permission"),
        ("StreamingUsagePlan", "AWS::ApiGateway::UsagePlan"),
        ("StreamingApiKey", "AWS::ApiGateway::ApiKey"),
        ("StreamingUsagePlanKey", "AWS::ApiGateway::UsagePlanKey"),
        ("StreamingLogGroup", "AWS::Logs::LogGroup"),
    ],
)
def test_resource_exists(res: dict[str, Any], name: str, kind: str) -> None:
    assert res[name]["Type"] == kind


def test_parameters(tpl: dict[str, Any]) -> None:
    p = tpl["Parameters"]
    assert p["Architecture"]["Default"] == "x86_64"
    assert set(p["Architecture"]["AllowedValues"]) == {"x86_64", "arm64"}
    assert p["TrainingInstanceType"]["Default"] == "ml.g5.xlarge"
    assert str(p["TrainingSpot"]["Default"]) == "true"
    assert set(map(str, p["TrainingSpot"]["AllowedValues"])) == {"true", "false"}
    assert int(p["TrainingMaxRuntime"]["Default"]) == 3600
    assert p["TrainingCodeKey"]["Default"] == "code/training.tar.gz"
    assert int(p["InferenceMemory"]["Default"]) == 1769
    assert int(p["AliasTtlSeconds"]["Default"]) == 10
    assert p["InferenceAuth"]["Default"] == "NONE"
    assert set(p["InferenceAuth"]["AllowedValues"]) == {"NONE", "AWS_IAM", "JWT"}
    assert p["JwtIssuer"]["Default"] == p["JwtAudience"]["Default"] == ""
    assert int(p["MaxBatchSize"]["Default"]) == 1024
    assert "LogLevel" in p
    assert "TrainingImage" in p


def test_training_image_defaults_to_the_regional_pytorch_dlc(
    tpl: dict[str, Any], res: dict[str, Any]
) -> None:
    image = function_environment(tpl, "IngestFunction")["TRAINING_IMAGE"]
    assert evaluate(tpl, image, {}) == (
        "763104351884.dkr.ecr.eu-west-1.amazonaws.com/"
        "pytorch-training:2.5.1-gpu-py311-cu124-ubuntu22.04-sagemaker"
    )
    custom = "444455556666.dkr.ecr.us-west-2.amazonaws.com/team/trainer:1"
    assert evaluate(tpl, image, {"TrainingImage": custom}) == custom


def test_globals(tpl: dict[str, Any]) -> None:
    g = tpl["Globals"]["Function"]
    assert g["Runtime"] == "python3.12"
    assert g["Architectures"] == [{"Ref": "Architecture"}]
    assert g["Tracing"] == "Active"
    assert g["Handler"] == "app.lambda_handler"
    assert {"Ref": "SharedLayer"} in g["Layers"]
    env = g["Environment"]["Variables"]
    assert env["REGISTRY_TABLE"] == {"Ref": "RegistryTable"}
    assert env["ARTIFACT_BUCKET"] == {"Ref": "ArtifactBucket"}
    assert env["DATA_BUCKET"] == {"Ref": "DataBucket"}
    assert env["STACK_NAME"] == {"Ref": "AWS::StackName"}
    assert env["LOG_LEVEL"] == {"Ref": "LogLevel"}
    assert "POWERTOOLS_SERVICE_NAME" in env
    assert "POWERTOOLS_METRICS_NAMESPACE" in env
    # Declared for `sam local --env-vars`, absent on AWS.
    assert env["AWS_ENDPOINT_URL"] == {"Ref": "AWS::NoValue"}


@pytest.mark.parametrize(("function", "folder"), sorted(FUNCTIONS.items()))
def test_function_code(tpl: dict[str, Any], function: str, folder: str) -> None:
    assert props(tpl["Resources"], function)["CodeUri"] == f"functions/{folder}/"
    handler = HANDLERS.get(function, "app.lambda_handler")
    assert function_property(tpl, function, "Handler") == handler
    assert function_property(tpl, function, "Runtime") == "python3.12"
    assert (REPO / "functions" / folder / "app.py").is_file()
    assert (REPO / "functions" / folder / "requirements.txt").is_file()


def test_layers(res: dict[str, Any]) -> None:
    for name, folder in (("SharedLayer", "layers/shared/"), ("RuntimeLayer", "layers/runtime/")):
        p = props(res, name)
        assert p["ContentUri"] == folder
        assert p["CompatibleRuntimes"] == ["python3.12"]
        assert p["CompatibleArchitectures"] == [{"Ref": "Architecture"}]
        meta = res[name]["Metadata"]
        # Built by the layer's Makefile (pruned, compiled; boto3 left to the runtime).
        assert meta["BuildMethod"] == "makefile"
        assert f"build-{name}:" in (REPO / folder / "Makefile").read_text()
        assert meta["BuildArchitecture"] == {"Ref": "Architecture"}
        assert (REPO / folder / "requirements.txt").is_file()
    assert (REPO / "layers/shared/maas/__init__.py").is_file()


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]+\])?==([0-9][A-Za-z0-9.]*)", line)
            assert m, f"{path}: {line!r} is not pinned with =="
            pins[m.group(1).lower()] = m.group(3)
    return pins


def test_requirements_are_pinned_and_consistent() -> None:
    shared = _pins(REPO / "layers/shared/requirements.txt")
    runtime = _pins(REPO / "layers/runtime/requirements.txt")
    optimize = _pins(REPO / "functions/optimize/requirements.txt")
    assert {"pydantic", "aws-lambda-powertools"} <= set(shared)
    assert {"onnxruntime", "numpy"} <= set(runtime)
    assert "onnx" in optimize
    for name in ("onnxruntime", "numpy"):
        if name in optimize:
            assert optimize[name] == runtime[name], f"{name} pinned differently"
    for folder in ("ingest", "inference"):
        assert _pins(REPO / "functions" / folder / "requirements.txt") == {}
    assert "torch" not in shared | runtime | optimize


def test_inference_gets_the_runtime_layer(tpl: dict[str, Any]) -> None:
    layers = tpl["Globals"]["Function"]["Layers"] + props(
        tpl["Resources"], "InferenceFunction"
    ).get("Layers", [])
    assert {"Ref": "SharedLayer"} in layers and {"Ref": "RuntimeLayer"} in layers


# --- storage ------------------------------------------------------------------------------


@pytest.mark.parametrize("bucket", ["DataBucket", "ArtifactBucket"])
def test_bucket_hardened(res: dict[str, Any], bucket: str, reliability_report: Any) -> None:
    p = props(res, bucket)
    assert p["VersioningConfiguration"]["Status"] == "Enabled"
    sse = p["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    block = p["PublicAccessBlockConfiguration"]
    assert all(
        block[k] is True
        for k in (
            "BlockPublicAcls",
            "BlockPublicPolicy",
            "IgnorePublicAcls",
            "RestrictPublicBuckets",
        )
    )
    assert p["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    reliability_report.tried(
        "Security", f"{bucket}: private, encrypted, versioned", "public access blocked"
    )


@pytest.mark.parametrize("bucket", ["DataBucket", "ArtifactBucket"])
def test_bucket_denies_plain_http(
    res: dict[str, Any], bucket: str, reliability_report: Any
) -> None:
    policies = [
        p["Properties"]
        for p in resources_of_type({"Resources": res}, "AWS::S3::BucketPolicy").values()
        if p["Properties"]["Bucket"] == {"Ref": bucket}
    ]
    assert len(policies) == 1
    denies = [
        s
        for s in policies[0]["PolicyDocument"]["Statement"]
        if s["Effect"] == "Deny"
        and str(s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport")).lower()
        == "false"
    ]
    assert denies, f"{bucket} has no deny for aws:SecureTransport false"
    resources = as_list(denies[0]["Resource"])
    assert {"Fn::GetAtt": [bucket, "Arn"]} in resources
    assert {"Fn::Sub": f"${{{bucket}.Arn}}/*"} in resources
    assert denies[0]["Principal"] == "*"
    reliability_report.tried("Security", f"{bucket}: TLS only", "plain HTTP denied")


def test_uploads_notify_the_ingest_queue(tpl: dict[str, Any], res: dict[str, Any]) -> None:
    data = res["DataBucket"]
    configs = data["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    prefixes = {}
    for c in configs:
        assert c["Event"] == "s3:ObjectCreated:*"
        rules = c["Filter"]["S3Key"]["Rules"]
        prefixes.update({r["Value"]: (r["Name"], c["Queue"]["Fn::GetAtt"][0]) for r in rules})
    # training data to the ingest queue; files to score to the batch-prediction queue
    assert prefixes == {
        "datasets/": ("prefix", "IngestQueue"),
        "pretrained/": ("prefix", "IngestQueue"),
        "predictions/": ("prefix", "PredictQueue"),
    }
    # The queue policies must exist before S3 validates the notification targets.
    assert {"IngestQueuePolicy", "PredictQueuePolicy"} <= set(as_list(data["DependsOn"]))
    # The queue policy names the bucket by its fixed name, not a Ref (that would be a cycle).
    name = evaluate(tpl, data["Properties"]["BucketName"], {})
    assert name == "maas-data-111122223333-eu-west-1"
    for policy in ("IngestQueuePolicy", "PredictQueuePolicy"):
        allow = [
            s for s in props(res, policy)["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"
        ]
        assert len(allow) == 1
        statement = allow[0]
        assert statement["Principal"] == {"Service": "s3.amazonaws.com"}
        assert as_list(statement["Action"]) == ["sqs:SendMessage"]
        source_arn = statement["Condition"]["ArnEquals"]["aws:SourceArn"]
        assert evaluate(tpl, source_arn, {}) == f"arn:aws:s3:::{name}"
        account = statement["Condition"]["StringEquals"]["aws:SourceAccount"]
        assert account == {"Ref": "AWS::AccountId"}


def test_ingest_queue_has_a_dlq(tpl: dict[str, Any], res: dict[str, Any]) -> None:
    q = props(res, "IngestQueue")
    assert q["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["IngestDLQ", "Arn"]}
    assert int(q["RedrivePolicy"]["maxReceiveCount"]) == 5
    timeout = int(function_property(tpl, "IngestFunction", "Timeout"))
    assert int(q["VisibilityTimeout"]) >= 6 * timeout
    assert props(res, "IngestDLQ")["MessageRetentionPeriod"] == 1209600
    for name in ("IngestQueue", "IngestDLQ", "OptimizeDLQ"):
        assert props(res, name)["SqsManagedSseEnabled"] is True


def test_registry_table(res: dict[str, Any]) -> None:
    t = props(res, "RegistryTable")
    assert t["BillingMode"] == "PAY_PER_REQUEST"
    assert t["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert {(a["AttributeName"], a["AttributeType"]) for a in t["AttributeDefinitions"]} == {
        ("pk", "S"),
        ("sk", "S"),
    }
    assert t["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert t["SSESpecification"]["SSEEnabled"] is True
    assert t["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}


# --- functions ------------------------------------------------------------------------------


def test_ingest_function(tpl: dict[str, Any], res: dict[str, Any]) -> None:
    p = props(res, "IngestFunction")
    (event,) = p["Events"].values()
    assert event["Type"] == "SQS"
    assert event["Properties"]["Queue"] == {"Fn::GetAtt": ["IngestQueue", "Arn"]}
    assert event["Properties"]["BatchSize"] == 10
    assert event["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    env = function_environment(tpl, "IngestFunction")
    assert env["TRAINING_BACKEND"] == "sagemaker"
    assert env["TRAINING_ROLE_ARN"] == {"Fn::GetAtt": ["TrainingRole", "Arn"]}
    assert env["TRAINING_INSTANCE_TYPE"] == {"Ref": "TrainingInstanceType"}
    assert env["TRAINING_SPOT"] == {"Ref": "TrainingSpot"}
    assert env["TRAINING_MAX_RUNTIME_S"] == {"Ref": "TrainingMaxRuntime"}
    assert (
        evaluate(tpl, env["TRAINING_CODE_S3"], {}) == "s3://<ArtifactBucket>/code/training.tar.gz"
    )
    assert env["LOCAL_TRAINING_QUEUE_URL"] == {"Ref": "AWS::NoValue"}


def test_optimize_function(res: dict[str, Any]) -> None:
    p = props(res, "OptimizeFunction")
    assert p["MemorySize"] == 3008
    assert p["Timeout"] == 900
    (event,) = p["Events"].values()
    assert event["Type"] == "EventBridgeRule"
    pattern = event["Properties"]["Pattern"]
    assert pattern["source"] == ["aws.sagemaker"]
    assert pattern["detail-type"] == ["SageMaker Training Job State Change"]
    assert set(pattern["detail"]["TrainingJobStatus"]) == {"Completed", "Failed", "Stopped"}
    assert pattern["detail"]["TrainingJobName"] == [{"prefix": "maas-"}]
    invoke = p["EventInvokeConfig"]
    assert invoke["MaximumRetryAttempts"] == 2
    assert invoke["DestinationConfig"]["OnFailure"] == {
        "Type": "SQS",
        "Destination": {"Fn::GetAtt": ["OptimizeDLQ", "Arn"]},
    }


def _routes(res: dict[str, Any], function: str = "InferenceFunction") -> set[tuple[str, str]]:
    routes = set()
    for event in props(res, function)["Events"].values():
        assert event["Type"] == "HttpApi"
        assert event["Properties"]["ApiId"] == {"Ref": "InferenceApi"}
        routes.add((event["Properties"]["Method"].upper(), event["Properties"]["Path"]))
    return routes


def test_inference_routes_are_exactly_oip(res: dict[str, Any]) -> None:
    assert _routes(res) == OIP_ROUTES
    assert len(props(res, "InferenceFunction")["Events"]) == len(OIP_ROUTES)


def test_admin_routes_are_exactly_management(res: dict[str, Any]) -> None:
    assert _routes(res, "AdminFunction") == ADMIN_ROUTES
    assert len(props(res, "AdminFunction")["Events"]) == len(ADMIN_ROUTES)


def test_inference_function(tpl: dict[str, Any], res: dict[str, Any]) -> None:
    p = props(res, "InferenceFunction")
    assert p["MemorySize"] == {"Ref": "InferenceMemory"}
    assert p["Timeout"] == 30
    env = function_environment(tpl, "InferenceFunction")
    assert env["ALIAS_TTL_S"] == {"Ref": "AliasTtlSeconds"}
    assert env["MAX_BATCH_SIZE"] == {"Ref": "MaxBatchSize"}


def test_inference_api(res: dict[str, Any]) -> None:
    api = props(res, "InferenceApi")
    assert api["DefaultRouteSettings"]["ThrottlingBurstLimit"]
    assert api["DefaultRouteSettings"]["ThrottlingRateLimit"]
    assert api["AccessLogSettings"]["DestinationArn"] == {
        "Fn::GetAtt": ["InferenceApiAccessLogs", "Arn"]
    }
    json.loads(api["AccessLogSettings"]["Format"])  # JSON access log lines
    # InferenceAuth is applied per route in the OpenAPI body: it must list the same routes.
    body_routes = {
        (method.upper(), path)
        for path, methods in api["DefinitionBody"]["paths"].items()
        for method in methods
    }
    assert body_routes == _routes(res) | _routes(res, "AdminFunction")
    for path, methods in api["DefinitionBody"]["paths"].items():
        for op in methods.values():
            if path.startswith("/admin/"):
                # Management is IAM-only whatever InferenceAuth says.
                assert op["security"] == [{"AWS_IAM": []}], path
            else:
                assert op["security"] == INFERENCE_SECURITY, path
    schemes = api["DefinitionBody"]["components"]["securitySchemes"]
    assert schemes["AWS_IAM"]["x-amazon-apigateway-authtype"] == "awsSigv4"
    when, jwt, absent = schemes["JWT"]["Fn::If"]
    assert when == "InferenceJwtAuth" and absent == {"Ref": "AWS::NoValue"}
    authorizer = jwt["x-amazon-apigateway-authorizer"]
    assert jwt["type"] == "oauth2" and authorizer["type"] == "jwt"
    assert authorizer["identitySource"] == "$request.header.Authorization"
    assert authorizer["jwtConfiguration"] == {
        "issuer": {"Ref": "JwtIssuer"},
        "audience": [{"Ref": "JwtAudience"}],
    }


def test_inference_auth_choices_give_each_route_its_security(
    tpl: dict[str, Any], reliability_report: Any
) -> None:
    """NONE leaves inference open, AWS_IAM and JWT protect it; /admin is IAM in all three."""
    paths = props(tpl["Resources"], "InferenceApi")["DefinitionBody"]["paths"]
    expected = {"NONE": None, "AWS_IAM": [{"AWS_IAM": []}], "JWT": [{"JWT": []}]}
    for choice, security in expected.items():
        for path, methods in paths.items():
            for op in methods.values():
                got = evaluate(tpl, op["security"], {"InferenceAuth": choice})
                want = [{"AWS_IAM": []}] if path.startswith("/admin/") else security
                assert got == (want if want is not None else "<AWS::NoValue>"), (choice, path)
    reliability_report.tried(
        "Security", "admin routes under every InferenceAuth choice", "AWS_IAM only"
    )


# --- the streaming front door -----------------------------------------------------------


def _streaming_ops(res: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    paths = props(res, "StreamingApi")["DefinitionBody"]["paths"]
    return {(m.upper(), path): op for path, ops in paths.items() for m, op in ops.items()}


def test_streaming_function_is_the_inference_function_with_its_own_loop(
    tpl: dict[str, Any], res: dict[str, Any]
) -> None:
    """python3.12 zip + the same layers (SnapStart stays possible), 15 minutes, the same
    grants and settings; the exec wrapper swaps the runtime's loop for the streaming one."""
    stream, inference = props(res, "StreamingFunction"), props(res, "InferenceFunction")
    assert function_property(tpl, "StreamingFunction", "Runtime") == "python3.12"
    assert "PackageType" not in stream and "ImageUri" not in stream  # a zip
    assert stream["Layers"] == inference["Layers"]
    assert stream["Timeout"] == 900 and stream["MemorySize"] == inference["MemorySize"]
    assert stream["AutoPublishAlias"] == "live"
    assert stream["SnapStart"] == inference["SnapStart"]
    assert stream["Policies"] == inference["Policies"]
    env = function_environment(tpl, "StreamingFunction")
    wrapper = env["AWS_LAMBDA_EXEC_WRAPPER"]
    assert wrapper == "/var/task/stream-runtime"
    script = REPO / "functions" / "streaming" / "stream-runtime"
    assert script.read_text().startswith("#!/bin/sh\n") and script.stat().st_mode & 0o111
    assert "-m maas.serving.lambdastream" in script.read_text()
    for name in ("ALIAS_TTL_S", "MAX_BATCH_SIZE", "PRELOAD_MODELS"):
        assert env[name] == function_environment(tpl, "InferenceFunction")[name]
    assert stream["LoggingConfig"]["LogGroup"] == {"Ref": "StreamingLogGroup"}
    assert "Events" not in stream  # StreamingApi's integrations name the function


def test_streaming_api_streams_every_generation_route_from_the_alias(
    res: dict[str, Any],
) -> None:
    api = props(res, "StreamingApi")
    assert api["StageName"] == "stream"
    assert api["EndpointConfiguration"] == {"Type": "REGIONAL"}  # 5 min idle, not 30 s
    assert api["OpenApiVersion"] == "3.0.1"
    ops = _streaming_ops(res)
    assert set(ops) == STREAMING_ROUTES
    assert _routes(res) >= STREAMING_ROUTES  # the same routes the HTTP API serves buffered
    for route, op in ops.items():
        integration = op["x-amazon-apigateway-integration"]
        assert integration["type"] == "aws_proxy" and integration["httpMethod"] == "POST"
        assert integration["responseTransferMode"] == "STREAM", route
        assert integration["timeoutInMillis"] == 900000
        uri = integration["uri"]["Fn::Sub"]
        assert uri.endswith(
            ":lambda:path/2021-11-15/functions/${StreamingFunctionAliaslive}"
            "/response-streaming-invocations"
        ), route
    permission = props(res, "StreamingInvokePermission")
    assert permission["Action"] == "lambda:InvokeFunction"  # what InvokeWithResponseStream needs
    assert permission["Principal"] == "apigateway.amazonaws.com"
    assert permission["FunctionName"] == {"Ref": "StreamingFunctionAliaslive"}
    assert permission["SourceArn"]["Fn::Sub"].endswith(":${StreamingApi}/*")
    throttle = api["MethodSettings"][0]
    assert throttle["ThrottlingRateLimit"] == {"Ref": "ApiThrottlingRateLimit"}
    assert throttle["ThrottlingBurstLimit"] == {"Ref": "ApiThrottlingBurstLimit"}


@pytest.mark.parametrize("keys", ["false", "true"])
@pytest.mark.parametrize(
    ("auth", "scheme"), [("NONE", None), ("AWS_IAM", "AWS_IAM"), ("JWT", "JWT")]
)
def test_streaming_api_security_follows_inference_auth_and_api_keys(
    tpl: dict[str, Any], auth: str, scheme: str | None, keys: str
) -> None:
    choice = {"InferenceAuth": auth, "StreamingApiKeys": keys}
    want = {scheme: []} if scheme else {}
    if keys == "true":
        want["API_KEY"] = []
    for route, op in _streaming_ops(tpl["Resources"]).items():
        got = evaluate(tpl, op["security"], choice)
        assert got == ([want] if want else "<AWS::NoValue>"), (choice, route)


def test_streaming_jwt_is_a_cognito_authorizer_for_the_issuers_user_pool(
    tpl: dict[str, Any],
) -> None:
    body = props(tpl["Resources"], "StreamingApi")["DefinitionBody"]
    schemes = body["components"]["securitySchemes"]
    assert body["x-amazon-apigateway-api-key-source"] == "HEADER"
    assert schemes["API_KEY"] == {"type": "apiKey", "name": "x-api-key", "in": "header"}
    assert schemes["AWS_IAM"]["x-amazon-apigateway-authtype"] == "awsSigv4"
    issuer = "https://cognito-idp.us-west-2.amazonaws.com/us-west-2_AbC123"
    jwt = evaluate(tpl, schemes["JWT"], {"InferenceAuth": "JWT", "JwtIssuer": issuer})
    assert jwt["x-amazon-apigateway-authorizer"] == {
        "type": "cognito_user_pools",
        "providerARNs": ["arn:aws:cognito-idp:us-west-2:111122223333:userpool/us-west-2_AbC123"],
    }
    assert evaluate(tpl, schemes["JWT"], {"InferenceAuth": "NONE"}) == "<AWS::NoValue>"


def test_streaming_api_keys_come_with_a_usage_plan(tpl: dict[str, Any]) -> None:
    res = tpl["Resources"]
    for name in ("StreamingUsagePlan", "StreamingApiKey", "StreamingUsagePlanKey"):
        assert res[name]["Condition"] == "StreamingApiKeysOn"
    assert tpl["Conditions"]["StreamingApiKeysOn"] == {
        "Fn::Equals": [{"Ref": "StreamingApiKeys"}, "true"]
    }
    assert tpl["Parameters"]["StreamingApiKeys"]["Default"] == "false"
    plan = props(res, "StreamingUsagePlan")
    assert plan["ApiStages"] == [
        {"ApiId": {"Ref": "StreamingApi"}, "Stage": {"Ref": "StreamingApi.Stage"}}
    ]
    assert plan["Throttle"] == {
        "RateLimit": {"Ref": "StreamingKeyRateLimit"},
        "BurstLimit": {"Ref": "StreamingKeyBurstLimit"},
    }
    assert plan["Quota"] == {"Limit": {"Ref": "StreamingKeyQuotaPerDay"}, "Period": "DAY"}
    key = props(res, "StreamingUsagePlanKey")
    assert key == {
        "KeyId": {"Ref": "StreamingApiKey"},
        "KeyType": "API_KEY",
        "UsagePlanId": {"Ref": "StreamingUsagePlan"},
    }


def test_jwt_auth_requires_issuer_and_audience(tpl: dict[str, Any]) -> None:
    rule = tpl["Rules"]["JwtNeedsIssuerAndAudience"]
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "InferenceAuth"}, "JWT"]}
    asserted = {a["Assert"]["Fn::Not"][0]["Fn::Equals"][0]["Ref"] for a in rule["Assertions"]}
    assert asserted == {"JwtIssuer", "JwtAudience"}


def test_admin_function_writes_only_the_registry(tpl: dict[str, Any], res: dict[str, Any]) -> None:
    p = props(res, "AdminFunction")
    assert p["CodeUri"] == "functions/admin/"
    assert {"Ref": "RuntimeLayer"} not in (p.get("Layers") or [])  # no numpy, no onnxruntime
    statements = [s for owner, s in policy_statements(tpl) if owner == "AdminFunction"]
    actions = {a for s in statements for a in as_list(s["Action"])}
    assert actions == {"dynamodb:GetItem", "dynamodb:Query", "dynamodb:Scan", "dynamodb:PutItem"}
    for s in statements:
        assert as_list(s["Resource"]) == [{"Fn::GetAtt": ["RegistryTable", "Arn"]}]


def test_environment_matches_config() -> None:
    """Every variable the template sets is one a function declares (maas.core.config, or a
    documented extra), and every function is given each variable its settings require."""
    from maas.core import config

    read = config.variables()
    assert read, "maas.core.config declares no environment variables?"
    assert set(config.FUNCTION_SETTINGS) == set(FUNCTIONS)
    tpl = load_template()
    for function in FUNCTIONS:
        env = set(function_environment(tpl, function))
        unknown = env - read - NON_CONFIG_ENV
        assert not unknown, f"{function} sets variables nothing reads: {unknown}"
        declared = config.FUNCTION_SETTINGS[function].variables()
        missing = {name for name, required in declared.items() if required} - env
        assert not missing, f"{function} lacks variables its settings require: {missing}"
    ingest = function_environment(tpl, "IngestFunction")
    for name in (
        "DATA_BUCKET",
        "ARTIFACT_BUCKET",
        "REGISTRY_TABLE",
        "TRAINING_ROLE_ARN",
        "TRAINING_IMAGE",
        "TRAINING_CODE_S3",
    ):
        assert name in read and name in ingest


# --- IAM ------------------------------------------------------------------------------------


def test_no_wildcard_actions_and_star_resources_only_where_unavoidable(tpl: dict[str, Any]) -> None:
    for owner, s in policy_statements(tpl):
        if s["Effect"] != "Allow":
            continue
        actions = as_list(s["Action"])
        for action in actions:
            assert action != "*" and not action.endswith(":*"), f"{owner}: {action}"
        if "*" in as_list(s["Resource"]):
            assert set(actions) <= STAR_RESOURCE_ACTIONS, f"{owner}: {actions} on *"


def test_pass_role_only_for_the_training_role(tpl: dict[str, Any]) -> None:
    passes = [
        (owner, s)
        for owner, s in policy_statements(tpl)
        if any(a.lower().startswith("iam:passrole") for a in as_list(s["Action"]))
    ]
    assert [owner for owner, _ in passes] == ["IngestFunction"]
    ((_, s),) = passes
    assert as_list(s["Action"]) == ["iam:PassRole"]
    assert as_list(s["Resource"]) == [{"Fn::GetAtt": ["TrainingRole", "Arn"]}]
    assert s["Condition"]["StringEquals"]["iam:PassedToService"] == "sagemaker.amazonaws.com"


def test_sagemaker_actions_scoped_to_maas_jobs(tpl: dict[str, Any]) -> None:
    for owner, s in policy_statements(tpl):
        if any(a.startswith("sagemaker:") for a in as_list(s["Action"])):
            for r in as_list(s["Resource"]):
                assert evaluate(tpl, r, {}).endswith(":training-job/maas-*"), owner


def test_training_role(tpl: dict[str, Any], res: dict[str, Any]) -> None:
    role = props(res, "TrainingRole")
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    assert trust["Action"] == "sts:AssumeRole"
    statements = [s for owner, s in policy_statements(tpl) if owner == "TrainingRole"]
    actions = {a for s in statements for a in as_list(s["Action"])}
    assert actions <= {
        "s3:GetObject",
        "s3:GetObjectVersion",
        "s3:PutObject",
        "s3:AbortMultipartUpload",
        "s3:DeleteObject",
        "s3:ListBucket",
        "s3:GetBucketLocation",
        "logs:CreateLogGroup",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "logs:DescribeLogStreams",
        "cloudwatch:PutMetricData",
        "ecr:GetAuthorizationToken",
        "ecr:BatchCheckLayerAvailability",
        "ecr:GetDownloadUrlForLayer",
        "ecr:BatchGetImage",
    }
    writes = {
        evaluate(tpl, r, {})
        for s in statements
        if "s3:PutObject" in as_list(s["Action"])
        for r in as_list(s["Resource"])
    }
    assert writes == {
        "<ArtifactBucket.Arn>/training-output/*",
        "<ArtifactBucket.Arn>/checkpoints/*",
    }
    (pull,) = [s for s in statements if "ecr:BatchGetImage" in as_list(s["Action"])]
    (repo,) = as_list(pull["Resource"])
    assert evaluate(tpl, repo, {}) == (
        "arn:aws:ecr:eu-west-1:763104351884:repository/pytorch-training"
    )
    custom = "444455556666.dkr.ecr.us-west-2.amazonaws.com/trainer@sha256:0123abcd"
    assert evaluate(tpl, repo, {"TrainingImage": custom}) == (
        "arn:aws:ecr:us-west-2:444455556666:repository/trainer"
    )


def test_inference_reads_only(tpl: dict[str, Any]) -> None:
    statements = [s for owner, s in policy_statements(tpl) if owner == "InferenceFunction"]
    actions = {a for s in statements for a in as_list(s["Action"])}
    assert not any(a.startswith("s3:Put") or a.startswith("s3:Delete") for a in actions)
    assert not {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"} & actions
    assert "s3:GetObject" in actions and "dynamodb:GetItem" in actions
    policies = props(tpl["Resources"], "InferenceFunction")["Policies"]
    assert all(isinstance(p, dict) and "Statement" in p for p in policies), "no SAM templates"


# --- outputs, events, env.json, samconfig -------------------------------------------------


def test_outputs(tpl: dict[str, Any]) -> None:
    outputs = tpl["Outputs"]
    for name in (
        "ApiUrl",
        "DataBucketName",
        "ArtifactBucketName",
        "RegistryTableName",
        "IngestQueueUrl",
        "IngestDLQUrl",
        "TrainingRoleArn",
        "StackName",
    ):
        assert name in outputs
    assert evaluate(tpl, outputs["ApiUrl"]["Value"], {}) == (
        "https://<InferenceApi>.execute-api.eu-west-1.amazonaws.com/"
    )
    assert evaluate(tpl, outputs["StreamingApiUrl"]["Value"], {}) == (
        "https://<StreamingApi>.execute-api.eu-west-1.amazonaws.com/stream/"
    )
    assert outputs["StreamingApiKeyId"]["Condition"] == "StreamingApiKeysOn"


def _event(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((REPO / "events" / name).read_text())
    return data


@pytest.mark.parametrize(
    "name", ["http-get-health-live.json", "http-get-model-metadata.json", "http-post-infer.json"]
)
def test_http_events_match_a_route(res: dict[str, Any], name: str) -> None:
    event = _event(name)
    assert event["version"] == "2.0"
    method, path = event["routeKey"].split(" ", 1)
    assert (method, path) in _routes(res)
    assert event["requestContext"]["routeKey"] == event["routeKey"]
    assert event["requestContext"]["http"]["method"] == method
    assert event["requestContext"]["http"]["path"] == event["rawPath"]
    filled = path
    for key, value in (event.get("pathParameters") or {}).items():
        filled = filled.replace("{" + key + "}", value)
    assert filled == event["rawPath"]
    if method == "POST":
        body = json.loads(event["body"])
        (tensor,) = body["inputs"]
        assert tensor["datatype"] == "FP32"
        assert len(tensor["data"]) == tensor["shape"][0] * tensor["shape"][1] == 64


@pytest.mark.parametrize(
    ("name", "function"),
    [
        ("http-post-infer-binary.json", "InferenceFunction"),
        ("http-post-admin-promote.json", "AdminFunction"),
    ],
)
def test_binary_and_admin_events_match_a_route(
    res: dict[str, Any], name: str, function: str
) -> None:
    event = _event(name)
    method, path = event["routeKey"].split(" ", 1)
    assert (method, path) in _routes(res, function)
    assert event["requestContext"]["routeKey"] == event["routeKey"]
    filled = path.replace("{model}", event["pathParameters"]["model"])
    assert filled == event["rawPath"] == event["requestContext"]["http"]["path"]
    if function == "AdminFunction":
        assert event["requestContext"]["authorizer"]["iam"]["userArn"].startswith("arn:aws:iam::")
        assert json.loads(event["body"])["version"] == 2
    else:
        import base64

        assert event["isBase64Encoded"] is True
        body = base64.b64decode(event["body"])
        length = int(event["headers"]["inference-header-content-length"])
        (tensor,) = json.loads(body[:length])["inputs"]
        assert tensor["parameters"]["binary_data_size"] == len(body) - length == 64 * 4


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("sqs-s3-put-datasets.json", "datasets/digits/digits.csv"),
        ("sqs-s3-put-jobjson.json", "datasets/iris/run-1/job.json"),
    ],
)
def test_sqs_events_carry_s3_notifications(name: str, key: str) -> None:
    (record,) = _event(name)["Records"]
    assert record["eventSource"] == "aws:sqs"
    (s3,) = json.loads(record["body"])["Records"]
    assert s3["eventName"].startswith("ObjectCreated:")
    assert s3["s3"]["bucket"]["name"] == "maas-data"
    assert s3["s3"]["object"]["key"] == key


def test_eventbridge_event_matches_the_rule(res: dict[str, Any]) -> None:
    event = _event("eventbridge-training-completed.json")
    (rule,) = props(res, "OptimizeFunction")["Events"].values()
    pattern = rule["Properties"]["Pattern"]
    assert event["source"] in pattern["source"]
    assert event["detail-type"] in pattern["detail-type"]
    detail = event["detail"]
    assert detail["TrainingJobStatus"] in pattern["detail"]["TrainingJobStatus"]
    (prefix,) = pattern["detail"]["TrainingJobName"]
    assert detail["TrainingJobName"].startswith(prefix["prefix"])
    assert detail["TrainingJobName"] == "maas-digits-0123456789ab"
    assert detail["ModelArtifacts"]["S3ModelArtifacts"] == (
        "s3://maas-artifacts/training-output/maas-digits-0123456789ab/output/model.tar.gz"
    )
    assert event["resources"] == [detail["TrainingJobArn"]]


def test_env_json_sets_only_declared_variables(tpl: dict[str, Any]) -> None:
    """`sam local` applies an env.json value only to a variable the template declares."""
    env = json.loads((REPO / "env.json").read_text())
    assert set(env) == set(FUNCTIONS)
    for function, values in env.items():
        declared = set(function_environment(tpl, function))
        # AWS_* credentials and region come from the shell for sam local; listed for clarity.
        extra = (
            set(values)
            - declared
            - {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
        )
        assert not extra, f"{function}: sam local would ignore {extra}"
        assert values["AWS_ENDPOINT_URL"] == "http://host.docker.internal:4566"
        assert values["REGISTRY_TABLE"] == "maas-registry"
    assert env["IngestFunction"]["TRAINING_BACKEND"] == "local"


def test_samconfig() -> None:
    cfg = tomllib.loads((REPO / "samconfig.toml").read_text())
    assert cfg["default"]["global"]["parameters"]["stack_name"] == "maas"
    deploy = cfg["default"]["deploy"]["parameters"]
    assert "CAPABILITY_IAM" in deploy["capabilities"]
    assert deploy["resolve_s3"] is True
    assert deploy["confirm_changeset"] is False
