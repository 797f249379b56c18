"""The OIP gRPC service over Connect and gRPC-Web, through the inference handler with real events.

Requests are built with the generated messages (KServe's grpc_predict_v2.proto) and framed by
hand with struct, independently of maas.serving.grpcweb; predictions are compared with the
JSON /infer route's on the same model, at batch 1 and 64.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format
from maas.serving import grpc_predict_v2_pb2 as pb
from maas.serving.http import ClientResponse
from maas_devkit.events import http_api_event, http_event
from maas_devkit.lambda_runtime import load_handler
from maas_devkit.models import infer_body
from maas_devkit.publish import publish_model
from maas_devkit.repo import REPO

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")

SERVICE = "/inference.GRPCInferenceService"
SERVING = REPO / "layers" / "shared" / "maas" / "serving"
GRPC_CODES = {"invalid_argument": 3, "not_found": 5, "resource_exhausted": 8, "unavailable": 14}


class Rpc:
    """Calls the handler's gRPC routes as Connect and gRPC-Web clients send them."""

    def __init__(self, app: Any, context: Any) -> None:
        self.app = app
        self.context = context

    def post(self, method: str, body: bytes, content_type: str, **headers: str) -> ClientResponse:
        event = http_api_event(
            "POST", f"{SERVICE}/{method}", {"content-type": content_type, **headers}, body
        )
        return ClientResponse.of(self.app.lambda_handler(event, self.context))

    def connect(self, method: str, message: Any, reply: type[Any], codec: str = "proto") -> Any:
        if codec == "json":
            payload = json_format.MessageToJson(message).encode()
            r = self.post(method, payload, "application/json", **{"connect-protocol-version": "1"})
        else:
            payload = message.SerializeToString()
            r = self.post(method, payload, "application/proto", **{"connect-protocol-version": "1"})
        if r.status != 200:
            raise ConnectFailure(r.status, json.loads(r.body))
        assert r.headers["content-type"] == (
            "application/json" if codec == "json" else "application/proto"
        )
        out = reply()
        if codec == "json":
            json_format.Parse(r.body, out)
        else:
            out.ParseFromString(r.body)
        return out

    def grpc_web(self, method: str, message: Any, reply: type[Any], text: bool = False) -> Any:
        data = message.SerializeToString()
        body = struct.pack(">BI", 0, len(data)) + data
        kind = "application/grpc-web-text+proto" if text else "application/grpc-web+proto"
        r = self.post(method, base64.b64encode(body) if text else body, kind)
        assert r.status == 200  # gRPC-Web: always 200, the status is in the trailers
        payload = base64.b64decode(r.body) if text else r.body
        frames = read_frames(payload)
        trailers = dict(r.headers)
        for flags, frame in frames:
            if flags & 0x80:
                for line in frame.decode().split("\r\n"):
                    if line:
                        key, _, value = line.partition(":")
                        trailers[key.strip().lower()] = value.strip()
        status = int(trailers["grpc-status"])
        if status != 0:
            raise GrpcFailure(status, urllib.parse.unquote(trailers.get("grpc-message", "")))
        (message_frame,) = [f for flags, f in frames if not flags & 0x80]
        out = reply()
        out.ParseFromString(message_frame)
        return out


class ConnectFailure(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {body}")
        self.status, self.code, self.message = status, body["code"], body["message"]


class GrpcFailure(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"grpc-status {status}: {message}")
        self.status, self.message = status, message


def read_frames(body: bytes) -> list[tuple[int, bytes]]:
    frames, offset = [], 0
    while offset < len(body):
        flags, length = struct.unpack_from(">BI", body, offset)
        frames.append((flags, body[offset + 5 : offset + 5 + length]))
        offset += 5 + length
    assert offset == len(body)
    return frames


@pytest.fixture
def rpc(aws: Any, lambda_context: Any) -> Rpc:
    return Rpc(load_handler("inference"), lambda_context)


@pytest.fixture
def iris(aws: Any, registry: Any, storage: Any, iris_model: Any) -> Any:
    publish_model(registry, storage, "iris", 1, iris_model.onnx, promote=True)
    publish_model(registry, storage, "iris", 2, iris_model.onnx)
    return iris_model


def infer_message(rows: np.ndarray, *, raw: bool = True, **fields: Any) -> pb.ModelInferRequest:
    x = rows.astype(np.float32)
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=x.shape)
    req = pb.ModelInferRequest(**{"model_name": "iris", "inputs": [tensor], **fields})
    if raw:
        req.raw_input_contents.append(x.astype("<f4").tobytes())
    else:
        tensor = req.inputs[0]
        tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    return req


def outputs_of(reply: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    dtypes = {"FP32": "<f4", "INT64": "<i8"}
    out = {}
    for i, t in enumerate(reply.outputs):
        if reply.raw_output_contents and t.datatype == "BYTES":
            raw, values, offset = reply.raw_output_contents[i], [], 0
            while offset < len(raw):
                (n,) = struct.unpack_from("<I", raw, offset)
                values.append(raw[offset + 4 : offset + 4 + n].decode())
                offset += 4 + n
            out[t.name] = np.array(values, dtype=object).reshape(list(t.shape))
        elif reply.raw_output_contents:
            out[t.name] = np.frombuffer(reply.raw_output_contents[i], dtypes[t.datatype]).reshape(
                list(t.shape)
            )
        elif t.datatype == "BYTES":
            values = [b.decode() for b in t.contents.bytes_contents]
            out[t.name] = np.array(values, dtype=object).reshape(list(t.shape))
        else:
            field = {"FP32": "fp32_contents", "INT64": "int64_contents"}[t.datatype]
            out[t.name] = np.array(getattr(t.contents, field)).reshape(list(t.shape))
    return out


def rest_outputs(app: Any, context: Any, rows: np.ndarray) -> tuple[str, dict[str, np.ndarray]]:
    event = http_event("POST", "/v2/models/iris/infer", infer_body(rows))
    reply = ClientResponse.of(app.lambda_handler(event, context)).json()
    return reply["model_version"], {
        o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in reply["outputs"]
    }


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("protocol", ["connect-proto", "connect-json", "grpc-web", "grpc-web-text"])
def test_model_infer_matches_json_infer_at_batch_sizes(
    rpc: Rpc, iris: Any, batch: int, protocol: str
) -> None:
    # GIVEN iris in prod and `batch` real rows
    rows = np.resize(iris.features, (batch, iris.features.shape[1])).astype(np.float32)
    version, expected = rest_outputs(rpc.app, rpc.context, rows)
    # WHEN ModelInfer is called with binary raw_input_contents
    req = infer_message(rows, id=f"req-{batch}")
    if protocol.startswith("connect"):
        reply = rpc.connect("ModelInfer", req, pb.ModelInferResponse, protocol.split("-")[1])
    else:
        reply = rpc.grpc_web(
            "ModelInfer", req, pb.ModelInferResponse, text=protocol.endswith("text")
        )
    # THEN the predictions are the JSON route's, with model_version and id set
    assert reply.model_name == "iris" and reply.model_version == version == "1"
    assert reply.id == f"req-{batch}"
    got = outputs_of(reply)
    assert sorted(got) == sorted(expected)
    for name, want in expected.items():
        if want.dtype.kind == "f":
            np.testing.assert_array_equal(got[name].astype(np.float32), want.astype(np.float32))
        else:
            assert got[name].tolist() == want.tolist()


def test_typed_contents_in_and_out(rpc: Rpc, iris: Any) -> None:
    rows = iris.features[:3].astype(np.float32)
    _, expected = rest_outputs(rpc.app, rpc.context, rows)
    reply = rpc.connect("ModelInfer", infer_message(rows, raw=False), pb.ModelInferResponse, "json")
    assert not reply.raw_output_contents  # typed contents in, typed contents out
    got = outputs_of(reply)
    np.testing.assert_allclose(got["probabilities"], expected["probabilities"], rtol=1e-6)
    assert got["label"].tolist() == expected["label"].tolist()


def test_versions_metadata_and_health(rpc: Rpc, iris: Any) -> None:
    req = infer_message(iris.features[:1], model_version="2")
    assert rpc.grpc_web("ModelInfer", req, pb.ModelInferResponse).model_version == "2"
    meta = rpc.connect(
        "ModelMetadata", pb.ModelMetadataRequest(name="iris"), pb.ModelMetadataResponse
    )
    assert meta.name == "iris" and list(meta.versions) == ["1", "2"]
    assert meta.inputs[0].name == "input" and list(meta.inputs[0].shape) == [-1, 4]
    assert meta.platform == "onnxruntime_onnx"
    one = pb.ModelMetadataRequest(name="iris", version="2")
    assert list(rpc.connect("ModelMetadata", one, pb.ModelMetadataResponse).versions) == ["2"]
    ready = pb.ModelReadyRequest(name="iris")
    assert rpc.grpc_web("ModelReady", ready, pb.ModelReadyResponse).ready
    assert rpc.connect("ServerLive", pb.ServerLiveRequest(), pb.ServerLiveResponse, "json").live
    assert rpc.grpc_web("ServerReady", pb.ServerReadyRequest(), pb.ServerReadyResponse).ready
    server = rpc.connect("ServerMetadata", pb.ServerMetadataRequest(), pb.ServerMetadataResponse)
    assert server.name == "serverless-maas" and "binary_tensor_data" in server.extensions


def test_model_ready_is_false_for_a_version_that_cannot_serve(
    rpc: Rpc, registry: Any, storage: Any, iris_model: Any
) -> None:
    publish_model(registry, storage, "iris", 1, iris_model.onnx, promote=True)
    publish_model(registry, storage, "iris", 2, iris_model.onnx, status="TRAINING")
    req = pb.ModelReadyRequest(name="iris", version="2")
    assert not rpc.connect("ModelReady", req, pb.ModelReadyResponse).ready
    with pytest.raises(ConnectFailure) as e:
        rpc.connect("ModelReady", pb.ModelReadyRequest(name="nope"), pb.ModelReadyResponse)
    assert e.value.code == "not_found"


BAD_CASES = {
    "bad protobuf": ("invalid_argument", b"\xff\xff\xff\xff"),
    "unknown model": ("not_found", None),
    "unknown version": ("not_found", None),
    "wrong shape": ("invalid_argument", None),
    "raw contents too short": ("invalid_argument", None),
    "batch above the limit": ("resource_exhausted", None),
    "message above 6 MB": ("resource_exhausted", b"\x0a" + b"\x00" * (6 * 1024 * 1024 + 16)),
}


def _bad_message(case: str, iris: Any) -> bytes:
    rows = iris.features[:2]
    if case == "unknown model":
        return infer_message(rows, model_name="nope").SerializeToString()
    if case == "unknown version":
        return infer_message(rows, model_version="9").SerializeToString()
    if case == "wrong shape":
        req = infer_message(rows)
        req.inputs[0].shape[:] = [2, 5]
        return req.SerializeToString()
    if case == "raw contents too short":
        req = infer_message(rows)
        req.raw_input_contents[0] = req.raw_input_contents[0][:-4]
        return req.SerializeToString()
    if case == "batch above the limit":
        return infer_message(np.resize(rows, (1025, 4))).SerializeToString()
    raise AssertionError(case)


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_requests_get_their_codes_and_the_function_keeps_serving(
    rpc: Rpc, iris: Any, case: str
) -> None:
    code, fixed = BAD_CASES[case]
    data = fixed if fixed is not None else _bad_message(case, iris)
    # Connect: the code in the JSON error body, with Connect's HTTP status
    r = rpc.post("ModelInfer", data, "application/proto")
    assert r.status in (400, 404, 429), r.body
    assert r.json()["code"] == code and r.json()["message"]
    # gRPC-Web: trailers-only, grpc-status in the headers
    w = rpc.post("ModelInfer", struct.pack(">BI", 0, len(data)) + data, "application/grpc-web")
    assert w.status == 200 and int(w.headers["grpc-status"]) == GRPC_CODES[code], w.headers
    assert w.headers["grpc-message"]
    # and the next request is served
    ok = rpc.grpc_web("ModelInfer", infer_message(iris.features[:1]), pb.ModelInferResponse)
    assert ok.model_version == "1"


def test_grpc_web_framing_errors_are_invalid_argument(rpc: Rpc, iris: Any) -> None:
    data = infer_message(iris.features[:1]).SerializeToString()
    framed = struct.pack(">BI", 0, len(data)) + data
    for body in (b"\x00\x00", framed[:-1], framed + framed, b"\x80" + framed[1:]):
        r = rpc.post("ModelInfer", body, "application/grpc-web+proto")
        assert r.headers["grpc-status"] == "3", body[:8]
    gz = gzip.compress(data)
    compressed = struct.pack(">BI", 1, len(gz)) + gz
    r = rpc.post(
        "ModelInfer", compressed, "application/grpc-web+proto", **{"grpc-encoding": "gzip"}
    )
    assert r.headers.get("grpc-status") is None  # compressed message frames are read
    assert read_frames(r.body)[-1] == (0x80, b"grpc-status: 0\r\n")


def test_connect_gzip_body_and_json_errors(rpc: Rpc, iris: Any) -> None:
    data = infer_message(iris.features[:1]).SerializeToString()
    r = rpc.post(
        "ModelInfer", gzip.compress(data), "application/proto", **{"content-encoding": "gzip"}
    )
    assert r.status == 200
    bad = rpc.post("ModelInfer", b'{"modelName": 5}', "application/json")
    assert bad.status == 400 and bad.json()["code"] == "invalid_argument"
    wrong = rpc.post("ModelInfer", data, "text/plain")
    assert wrong.status == 415 and "error" in wrong.json()


def test_vendored_pb2_is_what_protoc_generates_from_the_vendored_proto(tmp_path: Path) -> None:
    """The committed grpc_predict_v2_pb2.py/.pyi are regenerated and compared byte for byte."""
    shutil.copy(SERVING / "grpc_predict_v2.proto", tmp_path)
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path}", f"--python_out={tmp_path}",
         f"--pyi_out={tmp_path}", str(tmp_path / "grpc_predict_v2.proto")],
        check=True,
    )  # fmt: skip
    for name in ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi"):
        assert (tmp_path / name).read_bytes() == (SERVING / name).read_bytes(), name


def test_rest_requests_never_import_protobuf_and_grpc_ones_do(aws: Any, iris_model: Any) -> None:
    """A fresh process answers REST requests without loading protobuf (the cold path's cost)."""
    state = _run_child(iris_model)
    assert state["rest"] == [200, 200, 200]
    assert state["protobuf_after_rest"] is False
    assert state["grpc"] == 200 and state["protobuf_after_grpc"] is True


def _run_child(iris_model: Any) -> dict[str, Any]:
    code = textwrap.dedent(
        """
        import json, sys
        import moto
        import boto3
        with moto.mock_aws():
            from maas_devkit import account
            from maas_devkit.cfn import load_template
            from maas_devkit.publish import publish_model
            from maas.core.registry import Registry
            from maas.core.storage import Storage
            clients = {n: boto3.client(n) for n in ("s3", "sqs", "dynamodb")}
            account.create_resources(clients.__getitem__, load_template())
            publish_model(Registry(account.REGISTRY_TABLE), Storage(), "iris", 1,
                          open(sys.argv[1], "rb").read(), promote=True)
            before = "google.protobuf" in sys.modules
            from maas_devkit.events import http_api_event, http_event
            from maas_devkit.lambda_runtime import LambdaContext, load_handler
            app = load_handler("inference")
            ctx = LambdaContext()
            statuses = []
            for method, path, body in (
                ("GET", "/v2/health/ready", None),
                ("GET", "/v2/models/iris", None),
                ("POST", "/v2/models/iris/infer", {"inputs": [{"name": "input", "shape": [1, 4],
                    "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}),
            ):
                reply = app.lambda_handler(http_event(method, path, body), ctx)
                statuses.append(reply["statusCode"])
            after_rest = "google.protobuf" in sys.modules
            event = http_api_event("POST", "/inference.GRPCInferenceService/ServerLive",
                                   {"content-type": "application/proto"}, b"")
            grpc = app.lambda_handler(event, ctx)["statusCode"]
            print(json.dumps({"before": before, "rest": statuses,
                              "protobuf_after_rest": after_rest, "grpc": grpc,
                              "protobuf_after_grpc": "google.protobuf" in sys.modules}))
        """
    )
    model = Path(os.environ.get("MODEL_CACHE_DIR", "/tmp")) / "iris-child.onnx"
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_bytes(iris_model.onnx)
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(model)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    state: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    assert state["before"] is False  # nothing in the setup loaded it either
    return state
