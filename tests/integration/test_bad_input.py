"""Every kind of bad request, one after another on one warm inference function.

Each gets a 4xx (503 for a model that is not ready) with `{"error": ...}` and nothing else,
and the function answers the next good request normally: a bad request never leaves state
behind. The single cases are tested where their code lives (test_inference*.py, test_oip*.py);
this is the catalogue the README's reliability table reports.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from maas.serving.http import ClientResponse
from maas.serving.oip import MAX_BYTES_ELEMENT
from maas_devkit.events import http_event
from maas_devkit.lambda_runtime import load_handler
from maas_devkit.models import infer_body
from maas_devkit.publish import publish_model

SECTION = "Bad input at the API"
HEADER = "inference-header-content-length"
MAX_BATCH = 64


def words_model() -> bytes:
    """A BYTES model: text [batch] in, the same text out."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["echo"])],
        "words",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("echo", TensorProto.STRING, ["batch"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def penguins() -> tuple[bytes, dict[str, Any]]:
    """A table model: island (categorical), mass (numeric), seen (datetime) in, one input per
    column; the graph sums the features (what it computes does not matter here)."""
    from maas.serving import tableprep as tp
    from onnx import TensorProto, helper

    columns = [
        tp.fit_column("island", tp.CATEGORICAL, ["Biscoe", "Dream", "Biscoe", "Dream"], "BYTES"),
        tp.fit_column("mass", tp.NUMERIC, [3500.0, None, 4200.0, 3900.0], "FP64"),
        tp.fit_column("seen", tp.DATETIME, ["2024-01-01", "2024-02-01"], "BYTES"),
    ]
    spec = tp.make_spec(columns, [])
    width = tp.TableEncoder(spec).n_features
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["input", "axes"], ["prediction"], keepdims=0)],
        "penguins",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString(), {"table": spec, "task": "regression"}


def columns(**overrides: Any) -> dict[str, Any]:
    """A good one-row penguins request, with inputs replaced (None: left out) or added."""
    tensors = {
        "island": {"name": "island", "shape": [1], "datatype": "BYTES", "data": ["Biscoe"]},
        "mass": {"name": "mass", "shape": [1], "datatype": "FP64", "data": [None]},
        "seen": {"name": "seen", "shape": [1], "datatype": "BYTES", "data": ["2024-03-01"]},
    }
    for name, tensor in overrides.items():
        if tensor is None:
            tensors.pop(name)
        else:
            tensors[name] = {"name": name, "shape": [len(tensor[1])], "datatype": tensor[0],
                             "data": tensor[1]}  # fmt: skip
    return {"inputs": list(tensors.values())}


def penguin(**overrides: Any) -> Request:
    return post("/v2/models/penguins/infer", columns(**overrides))


MEGABYTE = "x" * (1 << 20)


@pytest.fixture
def handler(
    aws: Any,
    registry: Any,
    storage: Any,
    iris_model: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    monkeypatch.setenv("MAX_BATCH_SIZE", str(MAX_BATCH))
    publish_model(registry, storage, "iris", 1, iris_model.onnx, promote=True)
    publish_model(registry, storage, "iris", 2, iris_model.onnx, status="TRAINING")
    publish_model(registry, storage, "words", 1, words_model(), promote=True)
    graph, manifest = penguins()
    publish_model(registry, storage, "penguins", 1, graph, manifest, promote=True)
    return load_handler("inference")


# method, path, body, headers, base64 (True: encode the body; "raw": it is the event's body)
Request = tuple[str, str, Any, dict[str, str], bool | str]


def post(path: str, body: Any, headers: dict[str, str] | None = None, b64: bool = False) -> Request:
    return ("POST", path, body, headers or {}, b64)


def binary(header: dict[str, Any], blob: bytes, length: int | str | None = None) -> Request:
    head = json.dumps(header).encode()
    value = str(len(head) if length is None else length)
    return post(
        "/v2/models/iris/infer",
        head + blob,
        {HEADER: value, "content-type": "application/octet-stream"},
        True,
    )


def fp32(shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": data}]}


def text(strings: list[str]) -> dict[str, Any]:
    return {
        "inputs": [{"name": "text", "shape": [len(strings)], "datatype": "BYTES", "data": strings}]
    }


ROW = [5.1, 3.5, 1.4, 0.2]
BIN_HEAD = {
    "inputs": [
        {
            "name": "input",
            "shape": [1, 4],
            "datatype": "FP32",
            "parameters": {"binary_data_size": 16},
        }
    ]
}
LONG = "x" * (MAX_BYTES_ELEMENT + 1)

# (name, request, status, a fragment of the error)
CASES: list[tuple[str, Callable[[], Request], int, str]] = [
    ("malformed JSON", lambda: post("/v2/models/iris/infer", '{"inputs": ['), 400, "JSON"),
    ("JSON that is not an object", lambda: post("/v2/models/iris/infer", "[1, 2]"), 400, "object"),
    ("empty body", lambda: post("/v2/models/iris/infer", ""), 400, "empty"),
    ("nested 100k deep", lambda: post("/v2/models/iris/infer", "[" * 100_000), 400, "JSON"),
    (
        "invalid base64 body",
        lambda: ("POST", "/v2/models/iris/infer", "!!!", {"content-type": "x/y"}, "raw"),
        400,
        "base64",
    ),
    (
        "binary header length past the body",
        lambda: binary(BIN_HEAD, np.zeros(4, "<f4").tobytes(), 10_000),
        400,
        "Inference-Header-Content-Length",
    ),
    (
        "binary header length cutting the JSON",
        lambda: binary(BIN_HEAD, np.zeros(4, "<f4").tobytes(), 20),
        400,
        "JSON",
    ),
    (
        "binary header length not a number",
        lambda: binary(BIN_HEAD, np.zeros(4, "<f4").tobytes(), "twelve"),
        400,
        "integer",
    ),
    (
        "binary_data_size past the body",
        lambda: binary(BIN_HEAD, np.zeros(2, "<f4").tobytes()),
        400,
        "binary",
    ),
    (
        "wrong datatype",
        lambda: post(
            "/v2/models/iris/infer",
            {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "INT64", "data": [1] * 4}]},
        ),
        400,
        "datatype",
    ),
    (
        "unknown datatype",
        lambda: post(
            "/v2/models/iris/infer",
            {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP8", "data": [1] * 4}]},
        ),
        400,
        "datatype",
    ),
    ("wrong shape", lambda: post("/v2/models/iris/infer", fp32([1, 5], [*ROW, 1])), 400, "shape"),
    (
        "wrong element count",
        lambda: post("/v2/models/iris/infer", fp32([2, 4], ROW)),
        400,
        "elements",
    ),
    (
        "absurd shape",
        lambda: post("/v2/models/iris/infer", fp32([2**62, 4], ROW)),
        400,
        "elements",
    ),
    ("negative dimension", lambda: post("/v2/models/iris/infer", fp32([-1, 4], ROW)), 400, "shape"),
    (
        "strings for FP32",
        lambda: post("/v2/models/iris/infer", fp32([1, 4], ["1", "2", "3", "4"])),
        400,
        "numbers",
    ),
    (
        "NaN (JSON)",
        lambda: post(
            "/v2/models/iris/infer",
            '{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,NaN]}]}',
        ),
        400,
        "NaN",
    ),
    (
        "Infinity (binary)",
        lambda: binary(BIN_HEAD, np.array([1, 2, np.inf, 4], "<f4").tobytes()),
        400,
        "infinite",
    ),
    ("empty batch", lambda: post("/v2/models/iris/infer", fp32([0, 4], [])), 400, "empty batch"),
    (
        "batch above the limit",
        lambda: post("/v2/models/iris/infer", fp32([MAX_BATCH + 1, 4], ROW * (MAX_BATCH + 1))),
        413,
        "exceeds the limit",
    ),
    (
        "body above 6 MB",
        lambda: post("/v2/models/iris/infer", json.dumps(fp32([1, 4], ROW)) + " " * (6 << 20)),
        413,
        "exceeds",
    ),
    (
        "gzip bomb",
        lambda: post(
            "/v2/models/iris/infer",
            _gzip(b" " * (7 << 20)),
            {"content-encoding": "gzip", "content-type": "application/octet-stream"},
            True,
        ),
        413,
        "decompressed",
    ),
    ("unknown model", lambda: post("/v2/models/nope/infer", fp32([1, 4], ROW)), 404, "not found"),
    (
        "model name with path traversal",
        lambda: post("/v2/models/..%2F..%2Fetc/infer", fp32([1, 4], ROW)),
        404,
        "not found",
    ),
    (
        "unknown version",
        lambda: post("/v2/models/iris/versions/99/infer", fp32([1, 4], ROW)),
        404,
        "not found",
    ),
    (
        "version that is not a number",
        lambda: post("/v2/models/iris/versions/1e3/infer", fp32([1, 4], ROW)),
        404,
        "not found",
    ),
    (
        "model not ready",
        lambda: post("/v2/models/iris/versions/2/infer", fp32([1, 4], ROW)),
        503,
        "TRAINING",
    ),
    (
        "unsupported path",
        lambda: ("GET", "/v2/models/iris/explain", None, {}, False),
        404,
        "no route",
    ),
    ("unsupported method", lambda: ("DELETE", "/v2/models/iris", None, {}, False), 404, "no route"),
    ("GET on infer", lambda: ("GET", "/v2/models/iris/infer", None, {}, False), 404, "no route"),
    (
        "very long string in BYTES (JSON)",
        lambda: post("/v2/models/words/infer", text(["ok", LONG])),
        413,
        "per element",
    ),
    (
        "very long string in BYTES (binary)",
        lambda: post(
            "/v2/models/words/infer",
            _bytes_binary([b"ok", LONG.encode()]),
            {HEADER: str(_BYTES_HEAD_LEN), "content-type": "application/octet-stream"},
            True,
        ),
        413,
        "per element",
    ),
    (
        "BYTES element length lying",
        lambda: post(
            "/v2/models/words/infer",
            _bytes_binary([b"ok"], declared=[1 << 31]),
            {HEADER: str(_BYTES_HEAD_LEN), "content-type": "application/octet-stream"},
            True,
        ),
        400,
        "declares",
    ),
    # --- a table model: one input per column
    (
        "table: a string column sent as numbers",
        lambda: penguin(island=("FP32", [1.0])),
        400,
        "input 'island': datatype FP32 does not fit a categorical column",
    ),
    (
        "table: a numeric column sent as strings",
        lambda: penguin(mass=("BYTES", ["heavy"])),
        400,
        "input 'mass': datatype BYTES does not fit a numeric column",
    ),
    ("table: a missing column", lambda: penguin(mass=None), 400, "missing input(s) 'mass'"),
    (
        "table: an extra column",
        lambda: penguin(colour=("BYTES", ["blue"])),
        400,
        "unknown input(s) 'colour'",
    ),
    (
        "table: a 1 MB category string",
        lambda: penguin(island=("BYTES", [MEGABYTE])),
        413,
        "input 'island': BYTES element 0",
    ),
    (
        "table: a date that is not ISO 8601",
        lambda: penguin(seen=("BYTES", ["next week"])),
        400,
        "column 'seen': 'next week' is not an ISO 8601 date",
    ),
    (
        "table: columns of different lengths",
        lambda: penguin(island=("BYTES", ["Biscoe", "Dream"])),
        400,
        "input 'mass' has 1 rows; the other columns have 2",
    ),
    (
        "table: NaN token for a missing number",
        lambda: post(
            "/v2/models/penguins/infer",
            json.dumps(columns()).replace("[null]", "[NaN]"),
        ),
        400,
        "send null for a missing value",
    ),
]


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, 9)


_BYTES_HEAD = b""
_BYTES_HEAD_LEN = 0


def _bytes_binary(elements: list[bytes], declared: list[int] | None = None) -> bytes:
    global _BYTES_HEAD, _BYTES_HEAD_LEN
    sizes = declared or [len(e) for e in elements]
    blob = b"".join(struct.pack("<I", n) + e for n, e in zip(sizes, elements, strict=True))
    head = {
        "inputs": [
            {
                "name": "text",
                "shape": [len(elements)],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(blob)},
            }
        ]
    }
    _BYTES_HEAD = json.dumps(head).encode()
    _BYTES_HEAD_LEN = len(_BYTES_HEAD)
    return _BYTES_HEAD + blob


def call(app: Any, context: Any, request: Request) -> tuple[int, Any, dict[str, str]]:
    method, path, body, headers, b64 = request
    event = http_event(method, path, body, headers=headers, base64=b64 is True)
    if b64 == "raw":
        event["isBase64Encoded"] = True
    reply = ClientResponse.of(app.lambda_handler(event, context))
    return reply.status, reply.json(), reply.headers


def test_each_bad_request_is_refused_with_an_error_and_the_next_one_is_served(
    handler: Any, lambda_context: Any, iris_model: Any, reliability_report: Any
) -> None:
    good = post("/v2/models/iris/infer", infer_body(iris_model.features[:3]))
    good_text = post("/v2/models/words/infer", text(["a", "b"]))
    assert call(handler, lambda_context, good)[0] == 200
    refused: list[str] = []
    for name, make, status, fragment in CASES:
        # WHEN a bad request arrives at the warm function
        got, body, headers = call(handler, lambda_context, make())

        # THEN it is refused with its status and an error body, no traceback
        assert got == status, f"{name}: {got} {body}"
        assert isinstance(body, dict) and set(body) == {"error"}, f"{name}: {body}"
        assert fragment.lower() in body["error"].lower(), f"{name}: {body['error']}"
        assert "Traceback" not in body["error"] and 'File "' not in body["error"]
        assert headers.get("content-type", "").startswith("application/json")

        # AND the next good requests are answered as before
        after, answer, _ = call(handler, lambda_context, good)
        assert after == 200, f"after {name}: {after} {answer}"
        assert answer["model_version"] == "1"
        assert call(handler, lambda_context, good_text)[0] == 200, f"after {name}"
        refused.append(name)
        reliability_report.tried(
            SECTION,
            name,
            f'{status} with {{"error"}}; next request 200'
            if status != 503
            else '503 with {"error"}; next request 200',
        )
    assert len(refused) == len(CASES)
