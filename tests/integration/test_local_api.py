"""The local stack's HTTP server: AWS_IAM on /admin (and on /v2 when asked), Lambda's 6 MB limit.

A fake function stands in for the handlers: these tests are about what reaches it.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from maas_cli.sigv4 import sign
from maas_local.http_api import ApiServer, IamPolicy
from maas_local.stack import free_port

pytestmark = pytest.mark.usefixtures("no_network")


class FakeFunction:
    def __init__(self, name: str) -> None:
        self.name = name
        self.events: list[dict[str, Any]] = []

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        self.events.append(event)
        return {"statusCode": 200, "headers": {"content-type": "application/json"}, "body": "{}"}


@pytest.fixture(params=[False, True], ids=["inference-open", "inference-iam"])
def server(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[str, FakeFunction, FakeFunction, bool]]:
    inference, admin = FakeFunction("inference"), FakeFunction("admin")
    iam = IamPolicy({"testing": "testing"}, "us-east-1", "123456789012", inference=request.param)
    port = free_port()
    api = ApiServer("127.0.0.1", port, inference, admin, iam)
    thread = threading.Thread(target=api.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", inference, admin, request.param
    finally:
        api.shutdown()
        api.server_close()


def _signed(method: str, url: str, body: bytes = b"", secret: str = "testing") -> dict[str, str]:
    return sign(method, url, body, access_key="testing", secret_key=secret, region="us-east-1")


def test_admin_needs_a_valid_signature_and_gets_the_caller(server: Any) -> None:
    base, inference, admin, _ = server
    url = f"{base}/admin/models"
    unsigned = requests.get(url, timeout=10)
    assert unsigned.status_code == 403 and unsigned.json()["message"] == "Forbidden"
    assert requests.get(url, headers=_signed("GET", url, secret="x"), timeout=10).status_code == 403
    assert admin.events == []

    ok = requests.get(url, headers=_signed("GET", url), timeout=10)
    assert ok.status_code == 200
    (event,) = admin.events
    assert event["requestContext"]["authorizer"]["iam"]["userArn"].endswith(":user/testing")
    assert inference.events == []


def test_inference_is_open_unless_the_stack_says_aws_iam(server: Any) -> None:
    base, inference, _, iam = server
    url = f"{base}/v2/health/live"
    assert requests.get(url, timeout=10).status_code == (403 if iam else 200)
    assert requests.get(url, headers=_signed("GET", url), timeout=10).status_code == 200
    assert len(inference.events) == (1 if iam else 2)


def test_event_above_lambdas_6_mb_payload_is_413_before_any_function_runs(server: Any) -> None:
    base, inference, _, iam = server
    url = f"{base}/v2/models/m/infer"

    def post(body: bytes) -> requests.Response:
        headers = {"content-type": "application/octet-stream"}
        if iam:
            headers = sign(
                "POST", url, body, access_key="testing", secret_key="testing",
                region="us-east-1", headers=headers,
            )  # fmt: skip
        return requests.post(url, data=body, headers=headers, timeout=30)

    # 5 MiB of binary is 6.7 MiB once base64-encoded into the event: over Lambda's limit
    big = post(bytes(5 * 1024 * 1024))
    assert big.status_code == 413 and "6291456 byte" in big.json()["error"]
    assert inference.events == []
    assert post(bytes(1024)).status_code == 200
    assert len(inference.events) == 1


def test_malformed_content_length_is_400_and_the_server_keeps_serving(server: Any) -> None:
    import socket
    from urllib.parse import urlsplit

    base, _, _, iam = server
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
        s.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n")
        assert b" 400 " in s.recv(1024).split(b"\r\n", 1)[0]
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
        s.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
        assert b" 400 " in s.recv(1024).split(b"\r\n", 1)[0]
    if not iam:
        assert requests.get(f"{base}/v2/health/live", timeout=10).status_code == 200


def test_chunked_body_reaches_the_function_whole(server: Any) -> None:
    """API Gateway buffers a chunked request (connect-python's gRPC-Web client sends one)."""
    base, inference, _, iam = server
    body = b"\x00\x00\x00\x00\x03abc"

    def chunks() -> Iterator[bytes]:
        yield body[:4]
        yield body[4:]

    url = f"{base}/inference.GRPCInferenceService/ServerLive"
    headers = {"content-type": "application/grpc-web+proto"}
    if iam:  # signed over the whole body, however it is chunked
        headers |= _signed("POST", url, body)
    reply = requests.post(url, data=chunks(), headers=headers, timeout=10)
    assert reply.status_code == 200
    (event,) = inference.events
    assert base64.b64decode(event["body"]) == body


def test_json_body_that_is_not_utf8_reaches_the_function_base64_encoded() -> None:
    from maas_devkit.events import http_api_event

    event = http_api_event("POST", "/v2/x", {"Content-Type": "application/json"}, b"\x80\x81")
    assert event["isBase64Encoded"] is True and event["body"] == "gIE="
