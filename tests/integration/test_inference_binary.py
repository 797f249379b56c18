"""InferenceFunction with the binary tensor extension, as API Gateway delivers it.

Events are what the HTTP API hands Lambda: non-text bodies base64-encoded with
isBase64Encoded set, headers lower-cased. Binary bodies and responses are built and read here
with struct and numpy, independently of the codec under test.
"""

from __future__ import annotations

import base64
import gzip
import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from maas.serving.http import ClientResponse
from maas.serving.oip import InferenceResponse
from maas_devkit.events import http_event
from maas_devkit.lambda_runtime import load_handler
from maas_devkit.models import infer_body
from maas_devkit.publish import publish_model

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")

HEADER = "inference-header-content-length"
WIRE = {  # datatype -> (numpy dtype on the wire, ONNX TensorProto name)
    "BOOL": ("<?", "BOOL"),
    "UINT8": ("<u1", "UINT8"),
    "UINT16": ("<u2", "UINT16"),
    "UINT32": ("<u4", "UINT32"),
    "UINT64": ("<u8", "UINT64"),
    "INT8": ("<i1", "INT8"),
    "INT16": ("<i2", "INT16"),
    "INT32": ("<i4", "INT32"),
    "INT64": ("<i8", "INT64"),
    "FP16": ("<f2", "FLOAT16"),
    "FP32": ("<f4", "FLOAT"),
    "FP64": ("<f8", "DOUBLE"),
    "BYTES": (None, "STRING"),
}
VALUES: dict[str, list[Any]] = {
    "BOOL": [True, False, True, True, False, False],
    "UINT8": [0, 1, 2, 253, 254, 255],
    "UINT16": [0, 1, 2, 65533, 65534, 65535],
    "UINT32": [0, 1, 2, 2**32 - 3, 2**32 - 2, 2**32 - 1],
    "UINT64": [0, 1, 2, 2**63, 2**64 - 2, 2**64 - 1],
    "INT8": [-128, -1, 0, 1, 2, 127],
    "INT16": [-32768, -1, 0, 1, 2, 32767],
    "INT32": [-(2**31), -1, 0, 1, 2, 2**31 - 1],
    "INT64": [-(2**63), -1, 0, 1, 2, 2**63 - 1],
    "FP16": [-2.5, -1.0, 0.0, 0.5, 1024.0, 65504.0],
    "FP32": [-2.5, -1.0, 0.0, 0.5, 2.0**-10, 2.0**100],  # exact in float32
    "FP64": [-2.5, -1.0, 0.0, 0.5, 1e-300, 1e300],
    "BYTES": ["", "a", "bc", "héllo wörld", "日本", "x" * 70],
}


@dataclass
class Raw:
    status: int
    headers: dict[str, str]
    body: bytes
    base64: bool

    def json(self) -> Any:
        return json.loads(self.body)

    def tensors(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(header document, {output name: flat values}), binary outputs read by hand."""
        length = int(self.headers.get(HEADER, len(self.body)))
        doc = json.loads(self.body[:length])
        offset, values = length, {}
        for out in doc["outputs"]:
            size = (out.get("parameters") or {}).get("binary_data_size")
            if size is None:
                values[out["name"]] = out["data"]
                continue
            chunk = self.body[offset : offset + size]
            offset += size
            values[out["name"]] = _read(out["datatype"], chunk)
        assert offset == len(self.body)
        return doc, values


def _read(datatype: str, chunk: bytes) -> list[Any]:
    dtype = WIRE[datatype][0]
    if dtype is not None:
        return np.frombuffer(chunk, dtype=dtype).tolist()
    out, i = [], 0
    while i < len(chunk):
        (n,) = struct.unpack_from("<I", chunk, i)
        out.append(chunk[i + 4 : i + 4 + n].decode())
        i += 4 + n
    return out


def _write(datatype: str, values: list[Any]) -> bytes:
    dtype = WIRE[datatype][0]
    if dtype is not None:
        return np.array(values, dtype=dtype).tobytes()
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


class Api:
    def __init__(self, app: Any, context: Any) -> None:
        self.app = app
        self.context = context

    def send(self, path: str, body: bytes | str, headers: dict[str, str] | None = None) -> Raw:
        binary = isinstance(body, bytes)
        hdrs = {"content-type": "application/octet-stream" if binary else "application/json"}
        hdrs.update(headers or {})
        event = http_event("POST", path, body, headers=hdrs, base64=binary)
        response = self.app.lambda_handler(event, self.context)
        status, out_headers, payload = ClientResponse.of(response)
        return Raw(status, out_headers, payload, bool(response["isBase64Encoded"]))

    def binary(
        self,
        model: str,
        inputs: list[tuple[str, str, list[int], bytes]],
        version: str | None = None,
        **extra: Any,
    ) -> Raw:
        header = {
            "inputs": [
                {"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(b)}}
                for n, d, s, b in inputs
            ],
            **extra,
        }
        head = json.dumps(header).encode()
        body = head + b"".join(b for *_, b in inputs)
        return self.send(_path(model, version), body, {HEADER: str(len(head))})


def _path(model: str, version: str | None = None) -> str:
    return f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"


def _assert_error(reply: Raw, status: int, *fragments: str) -> None:
    assert reply.status == status, reply.body[:500]
    doc = reply.json()
    assert set(doc) == {"error"} and "Traceback" not in doc["error"], doc
    for fragment in fragments:
        assert fragment in doc["error"], doc["error"]


@pytest.fixture
def api(aws: Any, lambda_context: Any) -> Api:
    return Api(load_handler("inference"), lambda_context)


@pytest.fixture
def iris(aws: Any, registry: Any, storage: Any, iris_model: Any) -> Any:
    publish_model(registry, storage, "iris", 1, iris_model.onnx, promote=True)
    return iris_model


def _onnx(onnx: bytes, rows: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    probabilities, label = session.run(["probabilities", "label"], {"input": rows})
    return {"probabilities": probabilities, "label": label}


# --- binary in, binary out ------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 64])
def test_binary_request_gets_binary_response_matching_json_and_onnx(
    api: Api, iris: Any, batch: int
) -> None:
    # GIVEN rows sent as tritonclient sends them by default: binary input, binary_data_output
    rows = np.resize(iris.features, (batch, 4)).astype(np.float32)
    reply = api.binary(
        "iris",
        [("input", "FP32", [batch, 4], rows.astype("<f4").tobytes())],
        id="bin-1",
        parameters={"binary_data_output": True},
    )

    # THEN the response is binary: base64 to API Gateway, with the header length
    assert reply.status == 200, reply.body[:300]
    assert reply.base64 and reply.headers["content-type"] == "application/octet-stream"
    doc, values = reply.tensors()
    assert (doc["model_name"], doc["model_version"], doc["id"]) == ("iris", "1", "bin-1")
    assert all("data" not in o for o in doc["outputs"])
    InferenceResponse.model_validate(doc)
    # AND its predictions are the JSON path's and ONNX Runtime's
    as_json = api.send(_path("iris"), json.dumps(infer_body(rows))).json()
    json_values = {o["name"]: o["data"] for o in as_json["outputs"]}
    want = _onnx(iris.onnx, rows)
    assert values["label"] == json_values["label"] == [str(x) for x in want["label"]]
    np.testing.assert_array_equal(values["probabilities"], want["probabilities"].reshape(-1))
    np.testing.assert_allclose(json_values["probabilities"], values["probabilities"], rtol=1e-7)


def test_binary_request_with_json_outputs_gets_plain_json(api: Api, iris: Any) -> None:
    rows = iris.features[:2].astype("<f4")
    reply = api.binary(
        "iris",
        [("input", "FP32", [2, 4], rows.tobytes())],
        outputs=[{"name": "label", "parameters": {"binary_data": False}}],
    )
    assert reply.status == 200 and not reply.base64
    assert HEADER not in reply.headers
    doc = reply.json()
    assert [o["name"] for o in doc["outputs"]] == ["label"]
    assert doc["outputs"][0]["data"] == ["setosa", "setosa"]


def test_json_request_can_ask_for_one_binary_output(api: Api, iris: Any) -> None:
    # GIVEN a JSON request asking for probabilities in binary and the label as JSON
    body = infer_body(iris.features[[0, 50]])
    body["outputs"] = [
        {"name": "probabilities", "parameters": {"binary_data": True}},
        {"name": "label"},
    ]
    reply = api.send(_path("iris"), json.dumps(body))

    # THEN exactly that output is binary
    assert reply.status == 200 and reply.base64
    doc, values = reply.tensors()
    probs, label = doc["outputs"]
    assert probs["parameters"] == {"binary_data_size": 2 * 3 * 4}
    assert label["data"] == ["setosa", "versicolor"]
    assert len(values["probabilities"]) == 6


def test_binary_request_with_unknown_top_level_keys_and_version_route(api: Api, iris: Any) -> None:
    rows = iris.features[:1].astype("<f4")
    reply = api.binary(
        "iris",
        [("input", "FP32", [1, 4], rows.tobytes())],
        version="1",
        model_name="iris",  # KServe's client sends it; the protocol lets servers ignore it
        sequence={"x": 1},
        parameters={"binary_data_output": True, "priority": 0},
    )
    assert reply.status == 200
    doc, values = reply.tensors()
    assert doc["model_version"] == "1" and values["label"] == ["setosa"]


def test_gzip_and_deflate_request_bodies_are_inflated(api: Api, iris: Any) -> None:
    body = json.dumps(infer_body(iris.features[:1])).encode()
    for encoding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        reply = api.send(_path("iris"), packed, {"content-encoding": encoding})
        assert reply.status == 200, (encoding, reply.body[:200])
    _assert_error(api.send(_path("iris"), b"\x1f\x8bnot gzip", {"content-encoding": "gzip"}), 400)


# --- every datatype ---------------------------------------------------------------------------


def identity_model(datatype: str) -> bytes:
    from onnx import TensorProto, helper

    elem = getattr(TensorProto, WIRE[datatype][1])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        f"identity-{datatype.lower()}",
        [helper.make_tensor_value_info("x", elem, ["batch", 3])],
        [helper.make_tensor_value_info("y", elem, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


@pytest.mark.parametrize("datatype", list(WIRE))
def test_every_datatype_round_trips_as_binary_and_as_json(
    api: Api, registry: Any, storage: Any, datatype: str
) -> None:
    # GIVEN a model whose input and output are that datatype
    name = f"id-{datatype.lower()}"
    publish_model(registry, storage, name, 1, identity_model(datatype), promote=True)
    values = VALUES[datatype]
    meta = json.loads(
        api.app.lambda_handler(http_event("GET", f"/v2/models/{name}"), api.context)["body"]
    )
    assert meta["inputs"] == [{"name": "x", "datatype": datatype, "shape": [-1, 3]}]

    # WHEN the same [2, 3] tensor is sent binary (binary back) and JSON (nested; JSON back)
    binary = api.binary(
        name,
        [("x", datatype, [2, 3], _write(datatype, values))],
        parameters={"binary_data_output": True},
    )
    nested = [values[:3], values[3:]]
    doc = {"inputs": [{"name": "x", "datatype": datatype, "shape": [2, 3], "data": nested}]}
    as_json = api.send(_path(name), json.dumps(doc))

    # THEN both give the values back exactly, the JSON data flat
    assert binary.status == 200, binary.body[:300]
    header, got = binary.tensors()
    assert header["outputs"][0]["datatype"] == datatype
    assert header["outputs"][0]["shape"] == [2, 3]
    assert got["y"] == values
    assert as_json.status == 200, as_json.body[:300]
    (out,) = as_json.json()["outputs"]
    assert (out["datatype"], out["shape"], out["data"]) == (datatype, [2, 3], values)


# --- bad requests are 400 (or 413), never 500 -----------------------------------------------


@pytest.mark.parametrize(
    "data, message",
    [
        (struct.pack("<I", 2) + b"ab" + b"\x03\x00", "truncated length prefix"),
        (struct.pack("<I", 9) + b"abc", "declares 9 bytes but only 3 remain"),
        (struct.pack("<I", 1) + b"a", "needs 2 elements but its binary data has 1"),
    ],
)
def test_malformed_bytes_tensor_is_400_not_500(
    api: Api, registry: Any, storage: Any, data: bytes, message: str
) -> None:
    publish_model(registry, storage, "words", 1, identity_model("BYTES"), promote=True)
    # shape [1, 2]: two elements, but the data holds a truncated/overlong/missing one
    reply = api.binary("words", [("x", "BYTES", [1, 2], data)])
    _assert_error(reply, 400, message)


@pytest.mark.parametrize(
    "shape, size, message",
    [
        ([2, 4], 28, "needs 32 bytes (8 x 4) but binary_data_size is 28"),
        ([1, 4], 20, "needs 16 bytes (4 x 4) but binary_data_size is 20"),
    ],
)
def test_binary_element_count_that_does_not_fit_the_shape_is_400(
    api: Api, iris: Any, shape: list[int], size: int, message: str
) -> None:
    reply = api.binary("iris", [("input", "FP32", shape, b"\x00" * size)])
    _assert_error(reply, 400, message)


def test_json_wrong_element_count_is_400(api: Api, iris: Any) -> None:
    body = {
        "inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP32", "data": [[1] * 4] * 2}]
    }
    _assert_error(
        api.send(_path("iris"), json.dumps(body)), 400, "needs 12 elements but data has 8"
    )


def test_header_length_beyond_the_body_is_400(api: Api, iris: Any) -> None:
    body = json.dumps(infer_body(iris.features[:1])).encode()
    reply = api.send(_path("iris"), body, {HEADER: str(len(body) + 10)})
    _assert_error(reply, 400, "Inference-Header-Content-Length")


def test_binary_body_without_header_length_is_400(api: Api, iris: Any) -> None:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 16},
                }
            ]
        }
    ).encode()
    reply = api.send(_path("iris"), head + np.zeros(4, "<f4").tobytes())
    _assert_error(reply, 400, "Inference-Header-Content-Length")


def test_binary_wrong_datatype_for_the_model_is_400(api: Api, iris: Any) -> None:
    reply = api.binary("iris", [("input", "FP64", [1, 4], np.zeros(4, "<f8").tobytes())])
    _assert_error(reply, 400, "FP64", "FP32")


def test_binary_non_finite_input_is_400(api: Api, iris: Any) -> None:
    rows = np.array([[1, 2, np.nan, 4]], "<f4")
    _assert_error(api.binary("iris", [("input", "FP32", [1, 4], rows.tobytes())]), 400, "NaN")


def test_binary_body_over_6_mb_is_413(api: Api, iris: Any) -> None:
    rows = np.zeros((400_000, 4), "<f4")  # 6.4 MB of tensor data
    _assert_error(
        api.binary("iris", [("input", "FP32", [400_000, 4], rows.tobytes())]), 413, "exceeds"
    )


def test_binary_batch_above_max_batch_size_is_413(
    aws: Any, iris: Any, monkeypatch: pytest.MonkeyPatch, lambda_context: Any
) -> None:
    monkeypatch.setenv("MAX_BATCH_SIZE", "64")
    api = Api(load_handler("inference"), lambda_context)
    ok = api.binary("iris", [("input", "FP32", [64, 4], np.zeros((64, 4), "<f4").tobytes())])
    assert ok.status == 200
    big = api.binary("iris", [("input", "FP32", [65, 4], np.zeros((65, 4), "<f4").tobytes())])
    _assert_error(big, 413, "batch 65 exceeds the limit of 64")


def test_binary_request_event_from_events_folder_is_served(
    api: Api, registry: Any, storage: Any
) -> None:
    """events/http-post-infer-binary.json, as `sam local invoke -e` would replay it."""
    from maas_devkit.events import event_file
    from maas_devkit.models import train_tiny_classifier

    clf, _ = train_tiny_classifier("digits")
    publish_model(registry, storage, "digits", 1, clf.onnx_bytes(), promote=True)
    event = event_file("http-post-infer-binary.json")
    assert event is not None
    response = api.app.lambda_handler(event, api.context)
    assert response["statusCode"] == 200 and response["isBase64Encoded"] is True
    body = base64.b64decode(response["body"])
    length = int(response["headers"]["Inference-Header-Content-Length"])
    label = json.loads(body[:length])["outputs"][1]
    assert label["name"] == "label" and label["datatype"] == "BYTES"
