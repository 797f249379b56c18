"""Schemathesis against docs/openapi.json, through the handlers, with a real published model.

Every operation of the HTTP API's OpenAPI document gets generated requests, valid and
invalid (negative data), sent through a WSGI front that turns each into the API Gateway HTTP
API (payload 2.0) event the local stack's server builds, for the inference or the admin
handler (admin requests carry the IAM caller API Gateway would have verified). The model path
parameter is often "iris", a published model, so the infer routes run the model too.
Checks: no 5xx, status codes, content types, headers and bodies as the document says.
"""

from __future__ import annotations

import json
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from maas.serving.http import ClientResponse
from maas_devkit.events import http_api_event
from maas_devkit.lambda_runtime import LambdaContext, load_handler
from maas_devkit.publish import publish_model
from maas_devkit.repo import REPO
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.transport.serialization import serialize_binary
from test_bad_input import penguins

SECTION = "Fuzzing"
DOC = REPO / "docs" / "openapi.json"
EXAMPLES = 80  # per operation and generation phase: 21 operations make well over 1,000 cases
MIN_CASES = 1_000
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
CALLER = {
    "iam": {
        "accessKey": "AKIAFUZZ",
        "accountId": "123456789012",
        "callerId": "AIDAFUZZ",
        "principalOrgId": None,
        "userArn": "arn:aws:iam::123456789012:user/fuzzer",
        "userId": "AIDAFUZZ",
    }
}

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class HandlerApp:
    """WSGI in front of the Lambda handlers, as API Gateway's HTTP API is in front of them."""

    def __init__(self, inference: Any, admin: Any) -> None:
        self.inference = inference
        self.admin = admin
        self.context = LambdaContext("fuzz")
        self.statuses: Counter[int] = Counter()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        path = quote(environ.get("PATH_INFO", "/"), safe="/%")
        if environ.get("QUERY_STRING"):
            path += "?" + environ["QUERY_STRING"]
        headers = {
            k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")
        }
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(key):
                headers[key.replace("_", "-").lower()] = environ[key]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        event = http_api_event(method, path, headers, body)
        admin = event["rawPath"].startswith("/admin/")
        if admin and "authorization" not in headers:
            # API Gateway's AWS_IAM authorizer (the local stack's answer, with its reason)
            result = {
                "statusCode": 403,
                "headers": {"content-type": "application/json"},
                "body": '{"message": "Forbidden", "error": "no Authorization header"}',
            }
        elif admin:  # signed: API Gateway verified it and names the caller
            event["requestContext"]["authorizer"] = CALLER
            result = self.admin.lambda_handler(event, self.context)
        else:
            result = self.inference.lambda_handler(event, self.context)
        status, headers, payload = ClientResponse.of(result)
        self.statuses[status] += 1
        out = list(headers.items())
        out.append(("Content-Length", str(len(payload))))
        start_response(f"{status} {'OK' if status < 400 else 'Error'}", out)
        return [payload]


class Tally:
    cases = 0
    with_model = 0
    operations: set[str] = set()
    statuses: Counter[int] = Counter()
    first = 0.0  # when the first generated case ran


# The document is loaded once; the handlers behind it are set up per operation (each of the
# parametrized tests below gets a fresh moto account with the model published).
APP = HandlerApp(None, None)
schema = schemathesis.openapi.from_path(DOC)
schema.app = APP
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=EXAMPLES,
    deterministic=True,
)


@schemathesis.serializer("application/proto")
def _protobuf(ctx: Any, value: Any) -> dict[str, Any]:
    """Connect's binary codec: the generated bytes are the message."""
    return {"data": serialize_binary(value)}


@schemathesis.serializer("application/grpc-web+proto")
def _grpc_web(ctx: Any, value: Any) -> dict[str, Any]:
    """gRPC-Web: the generated bytes in one message frame, so they reach the protobuf parser
    (the framing's own errors are tests/integration/test_grpc.py's)."""
    data = serialize_binary(value)
    return {"data": struct.pack(">BI", 0, len(data)) + data}


@schema.hook("map_path_parameters")
def _published_model(ctx: Any, path_parameters: dict[str, Any] | None) -> dict[str, Any] | None:
    """Half the cases name a published model (iris, or the per-column table model penguins),
    and a version it has, so models really run."""
    if path_parameters and "model" in path_parameters:
        digest = sum(repr(sorted(path_parameters.items())).encode())  # stable, unlike hash()
        if digest % 2 == 0:
            path_parameters["model"] = "iris" if digest % 4 == 0 else "penguins"
            if "version" in path_parameters and digest % 8 in (0, 2):
                path_parameters["version"] = "1"
    return path_parameters


@pytest.fixture(autouse=True)
def handlers(
    aws: Any, registry: Any, storage: Any, iris_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    publish_model(registry, storage, "iris", 1, iris_model.onnx, promote=True)
    publish_model(registry, storage, "iris", 2, iris_model.onnx)
    graph, manifest = penguins()
    publish_model(registry, storage, "penguins", 1, graph, manifest, promote=True)
    APP.inference = load_handler("inference")
    APP.admin = load_handler("admin")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
def test_generated_requests_get_no_5xx_and_responses_match_the_document(case: Any) -> None:
    Tally.first = Tally.first or time.perf_counter()
    response = case.call()
    Tally.cases += 1
    Tally.with_model += (case.path_parameters or {}).get("model") in ("iris", "penguins")
    Tally.operations.add(case.operation.label)
    Tally.statuses[response.status_code] += 1
    case.validate_response(response, checks=CHECKS)


def test_fuzzing_ran_enough_cases_and_found_nothing(reliability_report: Any) -> None:
    """Runs after the generated tests (file order): their totals, for the README table."""
    if Tally.cases == 0:
        pytest.skip("the generated tests did not run (deselected)")
    server_errors = sum(n for s, n in Tally.statuses.items() if s >= 500)
    reliability_report.measured(
        SECTION,
        cases=Tally.cases,
        operations=len(Tally.operations),
        with_model=Tally.with_model,
        server_errors=server_errors,
        schema_violations=0,  # any would have failed its generated test above
        statuses=", ".join(f"{s} x{n}" for s, n in sorted(Tally.statuses.items())),
        seconds=round(time.perf_counter() - Tally.first, 1),  # generation and checks included
    )
    assert server_errors == 0
    methods = {"get", "post", "put", "delete", "patch"}
    document = json.loads(DOC.read_text())["paths"].values()
    assert len(Tally.operations) == sum(len(set(ops) & methods) for ops in document)
    assert Tally.cases >= MIN_CASES, f"only {Tally.cases} generated cases ran"
