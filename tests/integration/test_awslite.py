"""maas.serving.awslite: the inference function's light AWS reads, vs botocore and a moto server.

The signatures must be botocore's, byte for byte; the reads must return what boto3's Table
resource and S3 client return; errors must be botocore's exceptions with the service's code.
"""

from __future__ import annotations

import io
import threading
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from botocore.exceptions import ClientError, EndpointConnectionError
from maas.serving import awslite
from maas.serving.awslite import Credentials, Session, sign

NOW = datetime(2026, 1, 15, 10, 40, 0, tzinfo=UTC)
CREDS = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "token/+=")


def _botocore_authorization(
    monkeypatch: pytest.MonkeyPatch,
    auth_class: Any,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes,
    service: str,
) -> str:
    import botocore.auth

    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: NOW.replace(tzinfo=None))
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    creds = BotoCredentials(CREDS.access_key, CREDS.secret_key, CREDS.token)
    auth_class(creds, service, "us-east-1").add_auth(request)
    return str(request.headers["Authorization"])


def test_dynamodb_signature_is_botocores(monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.auth import SigV4Auth

    body = b'{"TableName": "t", "Key": {"pk": {"S": "MODEL#a"}}}'
    headers = {
        "content-type": "application/x-amz-json-1.0",
        "x-amz-target": "DynamoDB_20120810.GetItem",
    }
    url = "https://dynamodb.us-east-1.amazonaws.com/"
    ours = sign(
        "POST",
        url,
        headers,
        awslite.hashlib.sha256(body).hexdigest(),
        service="dynamodb",
        region="us-east-1",
        credentials=CREDS,
        now=NOW,
    )
    theirs = _botocore_authorization(monkeypatch, SigV4Auth, "POST", url, headers, body, "dynamodb")
    assert ours["Authorization"] == theirs


def test_s3_signature_is_botocores_for_an_encoded_key_and_a_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from botocore.auth import S3SigV4Auth

    s3 = Session(CREDS, "us-east-1", {"s3": "http://127.0.0.1:9"}).s3()
    url = s3._url("my-bucket", "models/a b+c/1/model.onnx", "v+1/=")
    headers = {"x-amz-content-sha256": awslite.EMPTY_SHA256}
    ours = sign(
        "GET",
        url,
        headers,
        awslite.EMPTY_SHA256,
        service="s3",
        region="us-east-1",
        credentials=CREDS,
        now=NOW,
    )
    theirs = _botocore_authorization(monkeypatch, S3SigV4Auth, "GET", url, headers, b"", "s3")
    assert ours["Authorization"] == theirs


def test_session_needs_static_credentials_and_a_known_region() -> None:
    env = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b", "AWS_REGION": "eu-west-1"}
    session = Session.from_env(env)
    assert session is not None
    assert session.endpoints == {
        "s3": "https://s3.eu-west-1.amazonaws.com",
        "dynamodb": "https://dynamodb.eu-west-1.amazonaws.com",
    }
    # Virtual-hosted addressing on AWS itself; path style for dotted names and custom endpoints.
    assert session.s3()._url("bkt", "k") == "https://bkt.s3.eu-west-1.amazonaws.com/k"
    assert session.s3()._url("a.b", "k") == "https://s3.eu-west-1.amazonaws.com/a.b/k"
    local = Session.from_env(env | {"AWS_ENDPOINT_URL": "http://127.0.0.1:4566/"})
    assert local is not None and local.s3()._url("bkt", "k") == "http://127.0.0.1:4566/bkt/k"
    # SnapStart's container credentials, FIPS, unknown partitions: left to boto3.
    assert Session.from_env({k: v for k, v in env.items() if k != "AWS_ACCESS_KEY_ID"}) is None
    assert Session.from_env(env | {"AWS_USE_FIPS_ENDPOINT": "true"}) is None
    assert Session.from_env(env | {"AWS_REGION": "us-isob-east-1"}) is None


def test_wanted_in_lambda_and_on_custom_endpoints_only() -> None:
    assert awslite.wanted({"LAMBDA_TASK_ROOT": "/var/task"})
    assert awslite.wanted({"AWS_ENDPOINT_URL": "http://127.0.0.1:4566"})
    assert not awslite.wanted({})
    assert not awslite.wanted({"LAMBDA_TASK_ROOT": "/var/task", "MAAS_AWS_CLIENT": "boto3"})
    assert awslite.wanted({"MAAS_AWS_CLIENT": "lite"})


# --- against a moto server ----------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_url() -> Any:
    from maas_local.stack import free_port
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def _boto(service: str, url: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(scope="module")
def session(moto_url: str) -> Session:
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_url,
    }
    s = Session.from_env(env)
    assert s is not None
    return s


def test_table_reads_match_boto3s_resource(moto_url: str, session: Session) -> None:
    ddb = _boto("dynamodb", moto_url)
    ddb.create_table(
        TableName="reg",
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
    )
    resource = boto3.resource(
        "dynamodb",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).Table("reg")
    rows = [
        {"pk": "MODEL#a", "sk": f"V#{i}", "version": i, "ok": i % 2 == 0, "w": Decimal("0.25")}
        for i in range(1, 6)
    ]
    rows[0]["nested"] = {"list": [1, "x", None, True], "map": {"k": "v"}}
    for row in rows:
        resource.put_item(Item=row)
    lite = session.table("reg")
    key = {"pk": "MODEL#a", "sk": "V#1"}
    assert (
        lite.get_item(Key=key, ConsistentRead=True)["Item"]
        == resource.get_item(Key=key, ConsistentRead=True)["Item"]
    )
    assert lite.get_item(Key={"pk": "MODEL#a", "sk": "V#9"}) == {}
    query = {
        "KeyConditionExpression": "pk = :pk AND begins_with(sk, :p)",
        "ExpressionAttributeValues": {":pk": "MODEL#a", ":p": "V#"},
        "ConsistentRead": True,
        "Limit": 2,
    }
    pages, kwargs = [], dict(query)
    while True:  # paging through LastEvaluatedKey, as the registry does
        page = lite.query(**kwargs)
        pages.append(page)
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    assert [i for p in pages for i in p["Items"]] == resource.query(**(query | {"Limit": 10}))[
        "Items"
    ]
    with pytest.raises(ClientError) as info:
        session.table("missing").get_item(Key=key)
    assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_s3_reads_match_botocores(moto_url: str, session: Session, tmp_path: Path) -> None:
    s3 = _boto("s3", moto_url)
    s3.create_bucket(Bucket="art")
    blob = bytes(range(256)) * 5000
    s3.put_object(Bucket="art", Key="models/a b/1/model.onnx", Body=blob)
    lite = session.s3()
    got = lite.get_object(Bucket="art", Key="models/a b/1/model.onnx")
    assert got["Body"].read() == blob and got["ContentLength"] == len(blob)
    dest = tmp_path / "m.onnx"
    lite.download_file("art", "models/a b/1/model.onnx", str(dest))
    assert dest.read_bytes() == blob
    with pytest.raises(ClientError) as info:
        lite.get_object(Bucket="art", Key="nope")
    assert info.value.response["Error"]["Code"] == "NoSuchKey"
    # What Storage turns into ObjectMissing, as it does for botocore's client.
    from maas.core.storage import ObjectMissing, Storage

    with pytest.raises(ObjectMissing):
        Storage(lite).get_bytes("art", "nope")


def test_registry_and_store_read_through_the_light_clients(
    moto_url: str,
    session: Session,
    tmp_path: Path,
    iris_model: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from maas.core.config import InferenceSettings
    from maas.core.registry import Registry
    from maas.core.storage import Storage
    from maas.serving.store import ModelStore
    from maas_devkit.account import ARTIFACT_BUCKET
    from maas_devkit.publish import publish_model

    ddb = _boto("dynamodb", moto_url)
    ddb.create_table(
        TableName="maas-registry",
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
    )
    _boto("s3", moto_url).create_bucket(Bucket=ARTIFACT_BUCKET)
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(name, value)  # the boto3 resource the writing registry builds
    writer = Registry("maas-registry", client=ddb)
    publish_model(writer, Storage(_boto("s3", moto_url)), "iris", 1, iris_model.onnx, promote=True)
    reader = Registry("maas-registry", table=session.table("maas-registry"))
    assert reader.get_alias("iris") == writer.get_alias("iris")
    assert reader.list_versions("iris") == writer.list_versions("iris")
    settings = InferenceSettings(
        registry_table="maas-registry",
        artifact_bucket=ARTIFACT_BUCKET,
        model_cache_dir=str(tmp_path / "cache"),
    )
    store = ModelStore(settings, reader, Storage(session.s3()))
    loaded = store.get("iris", None)
    assert loaded.version == 1 and loaded.manifest["sha256"]


# --- the HTTP connection itself -----------------------------------------------------------


class _Scripted(BaseHTTPRequestHandler):
    """Answers from a script shared by the test: chunked bodies, 500s, closing connections."""

    protocol_version = "HTTP/1.1"
    script: list[str] = []
    seen: list[str] = []

    def do_GET(self) -> None:
        action = self.script.pop(0) if self.script else "ok"
        self.seen.append(action)
        if action == "500":
            body = b"<Error><Code>InternalError</Code><Message>try again</Message></Error>"
            self.send_response(500)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif action == "chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif action == "drop":
            self.close_connection = True  # no response at all: a dead keep-alive socket
        else:
            body = b"plain body"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def scripted() -> Any:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Scripted.script, _Scripted.seen = [], []
    session = Session(CREDS, "us-east-1", {"s3": f"http://127.0.0.1:{server.server_port}"})
    yield session.s3(), _Scripted
    server.shutdown()


def test_chunked_bodies_and_keep_alive(scripted: Any) -> None:
    s3, handler = scripted
    handler.script = ["chunked", "ok"]
    assert s3.get_object(Bucket="b", Key="k")["Body"].read() == b"hello chunked world"
    assert s3.get_object(Bucket="b", Key="k")["Body"].read() == b"plain body"


def test_server_errors_are_retried_then_raised(scripted: Any, tmp_path: Path) -> None:
    s3, handler = scripted
    handler.script = ["500", "ok"]
    sink = io.BytesIO()
    s3._t.request("GET", s3._url("b", "k"), "GetObject", sink=sink)
    assert sink.getvalue() == b"plain body" and handler.seen == ["500", "ok"]
    handler.script = ["500", "500", "500"]
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket="b", Key="k")
    assert info.value.response["Error"]["Code"] == "InternalError"


def test_a_dead_connection_is_reopened(scripted: Any) -> None:
    s3, handler = scripted
    handler.script = ["ok", "drop", "ok"]
    assert s3.get_object(Bucket="b", Key="k")["Body"].read() == b"plain body"
    assert s3.get_object(Bucket="b", Key="k")["Body"].read() == b"plain body"
    assert handler.seen == ["ok", "drop", "ok"]


def test_nothing_listening_is_an_endpoint_connection_error() -> None:
    from maas_local.stack import free_port

    session = Session(CREDS, "us-east-1", {"s3": f"http://127.0.0.1:{free_port()}"})
    with pytest.raises(EndpointConnectionError):
        session.s3().get_object(Bucket="b", Key="k")
