"""The OIP's gRPC service over Connect (unary) and gRPC-Web: what gRPC users can reach on Lambda.

`inference.GRPCInferenceService` from KServe's grpc_predict_v2.proto (vendored beside this
file, with the generated grpc_predict_v2_pb2), served on the inference function's
`POST /inference.GRPCInferenceService/<Method>` routes in the two protocols that carry gRPC's
messages over plain HTTP POSTs, and so through API Gateway's HTTP API, which native gRPC
(HTTP/2 with trailers) cannot cross:

- Connect unary: the message is the body (`application/proto`, or `application/json` in
  protobuf's JSON mapping); errors are `{"code", "message"}` with the HTTP status Connect
  assigns to the code.
- gRPC-Web: the body is one length-prefixed frame (`application/grpc-web[+proto|+json]`, or
  base64 of it with `-text`); the response is a message frame and a trailer frame carrying
  `grpc-status`, always HTTP 200; errors are trailers-only (the status in the headers).

Same model store, versions, canary draw, limits and error classes as the REST routes: the
status maas.serving.api gives an exception there is mapped to its gRPC code here
(400 invalid_argument, 404 not_found, 413 resource_exhausted, 503 unavailable, else
internal). maas.serving.api imports this module only when a gRPC route is hit, so the REST
cold path never loads protobuf (tests/integration/test_grpc.py checks it).
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from maas import __version__
from maas.serving import grpc_predict_v2_pb2 as pb
from maas.serving.http import (
    LAMBDA_PAYLOAD_BYTES,
    ProtocolError,
    Request,
    Response,
    error_response,
    inflate,
)
from maas.serving.oip import (
    MAX_BYTES_ELEMENT,
    NP_DTYPES,
    InferInput,
    InferRequest,
    _check_count,
    _datatype_of,
    _element_too_long,
    from_binary,
    to_binary,
)
from maas.serving.store import ModelUnavailable, StoreUnavailable

if TYPE_CHECKING:
    from maas.serving.api import Serving

SERVICE = "inference.GRPCInferenceService"
# The REST status of an error class (maas.serving.api.error_status) -> its gRPC code.
CODE_OF_STATUS = {
    400: "invalid_argument",
    404: "not_found",
    413: "resource_exhausted",
    503: "unavailable",
}
GRPC_STATUS = {
    "ok": 0,
    "invalid_argument": 3,
    "not_found": 5,
    "resource_exhausted": 8,
    "unimplemented": 12,
    "internal": 13,
    "unavailable": 14,
}
# The HTTP status the Connect protocol gives each code (its specification's table).
CONNECT_HTTP = {
    "invalid_argument": 400,
    "not_found": 404,
    "resource_exhausted": 429,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
}
_FRAME = struct.Struct(">BI")  # gRPC's length prefix: flags, then a big-endian length
_COMPRESSED, _TRAILER = 0x01, 0x80


class RpcError(Exception):
    """A failure with a gRPC code of its own (no REST route has the same error)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Wire(NamedTuple):
    """How a request travels: Connect or gRPC-Web, which codec, base64 or not."""

    framed: bool  # gRPC-Web's length-prefixed frames (else Connect unary: the body is the message)
    json: bool  # protobuf's JSON mapping (else binary protobuf)
    text: bool  # grpc-web-text: the frames base64-encoded
    content_type: str  # what the response says it is

    @classmethod
    def of(cls, content_type: str | None) -> Wire | None:
        kind = (content_type or "").split(";", 1)[0].strip().lower()
        if kind == "application/proto":
            return cls(False, False, False, "application/proto")
        if kind == "application/json":
            return cls(False, True, False, "application/json")
        base, _, codec = kind.partition("+")
        if base not in ("application/grpc-web", "application/grpc-web-text"):
            return None
        if codec not in ("", "proto", "json"):
            return None
        codec = codec or "proto"
        return cls(True, codec == "json", base.endswith("-text"), f"{base}+{codec}")


# --- the service's methods ------------------------------------------------------------------


def server_live(s: Serving, req: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
    return pb.ServerLiveResponse(live=True)


def server_ready(s: Serving, req: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
    return pb.ServerReadyResponse(ready=True)


def server_metadata(s: Serving, req: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
    from maas.serving.api import EXTENSIONS

    return pb.ServerMetadataResponse(
        name="serverless-maas", version=__version__, extensions=EXTENSIONS
    )


def model_metadata(s: Serving, req: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
    store = s.store()
    loaded = store.get(req.name, req.version or None)
    versions = store.ready_versions(req.name) if not req.version else [str(loaded.version)]
    meta = loaded.metadata(versions)
    return pb.ModelMetadataResponse(
        name=meta["name"],
        versions=meta["versions"],
        platform=meta["platform"],
        inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
        outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]],
    )


def model_ready(s: Serving, req: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
    """Unknown model: not_found. Known but unable to serve (not READY, failing its checksum):
    ready false, as Triton answers. The store itself unreachable: unavailable."""
    try:
        s.store().get(req.name, req.version or None)
    except StoreUnavailable:
        raise
    except ModelUnavailable:
        return pb.ModelReadyResponse(ready=False)
    return pb.ModelReadyResponse(ready=True)


def model_infer(s: Serving, req: pb.ModelInferRequest) -> pb.ModelInferResponse:
    """Unversioned: prod, or the canary for its share of requests (as REST's /infer)."""
    decoded = infer_request(req)
    store = s.store()
    loaded = store.get(req.model_name, req.model_version or None, canary=True)
    started = time.perf_counter()
    outputs = loaded.infer(decoded, store.settings.max_batch_size)
    s.metrics.add_latency("InferenceLatency", (time.perf_counter() - started) * 1000)
    raw = bool(req.raw_input_contents) or any(a.dtype == np.float16 for a in outputs.values())
    return infer_response(req.model_name, loaded.version, req.id, outputs, raw=raw)


class Method(NamedTuple):
    request: type[Message]
    reply: type[Message]
    call: Callable[[Serving, Any], Message]


METHODS: dict[str, Method] = {
    "ServerLive": Method(pb.ServerLiveRequest, pb.ServerLiveResponse, server_live),
    "ServerReady": Method(pb.ServerReadyRequest, pb.ServerReadyResponse, server_ready),
    "ModelReady": Method(pb.ModelReadyRequest, pb.ModelReadyResponse, model_ready),
    "ServerMetadata": Method(pb.ServerMetadataRequest, pb.ServerMetadataResponse, server_metadata),
    "ModelMetadata": Method(pb.ModelMetadataRequest, pb.ModelMetadataResponse, model_metadata),
    "ModelInfer": Method(pb.ModelInferRequest, pb.ModelInferResponse, model_infer),
}


# --- tensors ----------------------------------------------------------------------------------

# Which InferTensorContents field carries each datatype (FP16 has none: raw contents only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def infer_request(req: pb.ModelInferRequest) -> InferRequest:
    """A ModelInferRequest as the REST codec's decoded request, with the same checks."""
    if not req.inputs:
        raise ProtocolError("'inputs' must be a non-empty list of tensors")
    raw = req.raw_input_contents
    if raw and len(raw) != len(req.inputs):
        raise ProtocolError(
            f"raw_input_contents has {len(raw)} entries for {len(req.inputs)} inputs; "
            "give one per input, in input order, or none"
        )
    names = [t.name for t in req.inputs]
    if len(set(names)) != len(names):
        raise ProtocolError("input names must be unique")
    inputs = []
    for i, tensor in enumerate(req.inputs):
        if not tensor.name:
            raise ProtocolError(f"inputs[{i}].name must be a non-empty string")
        where = f"input {tensor.name!r}"
        datatype, shape = tensor.datatype, list(tensor.shape)
        if datatype not in NP_DTYPES:
            raise ProtocolError(
                f"{where}: unknown datatype {datatype!r}; expected one of {', '.join(NP_DTYPES)}"
            )
        if any(d < 0 for d in shape):
            raise ProtocolError(f"{where}: shape must be a list of non-negative integers")
        if raw:
            if tensor.HasField("contents"):
                raise ProtocolError(f"{where}: has both contents and raw_input_contents")
            array = from_binary(raw[i], datatype, shape, where)
        else:
            array = _from_contents(tensor.contents, datatype, shape, where)
        inputs.append(InferInput(tensor.name, datatype, shape, array))
    return InferRequest(
        inputs=inputs,
        id=req.id or None,
        outputs=[o.name for o in req.outputs] or None,
        parameters={k: _parameter(v) for k, v in req.parameters.items()},
    )


def _from_contents(
    contents: pb.InferTensorContents, datatype: str, shape: list[int], where: str
) -> np.ndarray:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise ProtocolError(f"{where}: {datatype} data must be sent in raw_input_contents")
    stray = [f.name for f, _ in contents.ListFields() if f.name != field]
    if stray:
        raise ProtocolError(f"{where}: {datatype} data goes in contents.{field}, not {stray[0]}")
    values = getattr(contents, field)
    _check_count(len(values), shape, where, "contents has")
    if datatype == "BYTES":
        texts = []
        for j, b in enumerate(values):
            if len(b) > MAX_BYTES_ELEMENT:
                raise _element_too_long(where, j, len(b))
            try:
                texts.append(b.decode("utf-8"))
            except UnicodeDecodeError:
                raise ProtocolError(
                    f"{where}: BYTES element {j} is not UTF-8 text (ONNX string tensors carry text)"
                ) from None
        return np.array(texts, dtype=np.object_).reshape(shape)
    target = np.dtype(NP_DTYPES[datatype])
    if target.kind in "iu" and values:
        # int_contents and uint_contents are 32 bits wide: INT8 etc. must fit their own type.
        info = np.iinfo(target)
        if min(values) < info.min or max(values) > info.max:
            raise ProtocolError(f"{where}: value out of range for {datatype}")
    return np.array(values, dtype=target).reshape(shape)


def _parameter(p: pb.InferParameter) -> Any:
    kind = p.WhichOneof("parameter_choice")
    return None if kind is None else getattr(p, kind)


def infer_response(
    model: str, version: int, request_id: str, outputs: dict[str, np.ndarray], *, raw: bool
) -> pb.ModelInferResponse:
    """Outputs in raw_output_contents (the binary extension's layout) or typed contents."""
    reply = pb.ModelInferResponse(model_name=model, model_version=str(version), id=request_id)
    for name, array in outputs.items():
        datatype = _datatype_of(array)
        tensor = reply.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if raw:
            reply.raw_output_contents.append(to_binary(array))
        elif datatype == "BYTES":
            tensor.contents.bytes_contents.extend(
                x if isinstance(x, bytes) else str(x).encode("utf-8") for x in array.reshape(-1)
            )
        else:
            getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(array.reshape(-1).tolist())
    return reply


# --- the wire ---------------------------------------------------------------------------------


def handle(s: Serving, request: Request, method: str) -> Response:
    """One unary call of `method`, in whichever protocol the request's content type names."""
    wire = Wire.of(request.headers.get("content-type"))
    if wire is None:
        return error_response(
            415,
            "unsupported content type; the gRPC routes take Connect (application/proto, "
            "application/json) or gRPC-Web (application/grpc-web[-text][+proto|+json])",
        )
    try:
        spec = METHODS[method]
        message = _parse(_message_bytes(request, wire), spec.request(), wire)
        return _reply(wire, spec.call(s, message))
    except RpcError as e:
        return _failure(wire, e.code, str(e))
    except Exception as e:
        from maas.serving.api import error_status

        status, text = error_status(e)
        return _failure(wire, CODE_OF_STATUS.get(status, "internal"), text)


def _message_bytes(request: Request, wire: Wire) -> bytes:
    encoding = (request.headers.get("content-encoding") or "identity").lower()
    if encoding not in ("identity", "gzip", "deflate"):
        raise RpcError("unimplemented", f"content-encoding {encoding!r} is not supported")
    body = request.body()  # base64 and gzip undone, within Lambda's 6 MB
    data = body.encode() if isinstance(body, str) else body
    if not wire.framed:
        return data
    if wire.text:
        try:
            data = base64.b64decode(data, validate=True)
        except binascii.Error:
            raise ProtocolError("grpc-web-text body is not valid base64") from None
    return _unframe(data, (request.headers.get("grpc-encoding") or "identity").lower())


def _unframe(data: bytes, encoding: str) -> bytes:
    """The one message of a unary gRPC-Web request."""
    if len(data) < _FRAME.size:
        raise ProtocolError(
            f"gRPC-Web body is {len(data)} bytes, shorter than its 5-byte frame header"
        )
    flags, length = _FRAME.unpack_from(data)
    if flags & _TRAILER:
        raise ProtocolError("gRPC-Web request starts with a trailer frame, not a message")
    end = _FRAME.size + length
    if end > len(data):
        raise ProtocolError(
            f"gRPC-Web frame declares {length} bytes but {len(data) - _FRAME.size} follow"
        )
    if end != len(data):
        raise ProtocolError("gRPC-Web body holds more than one message; these calls are unary")
    message = data[_FRAME.size : end]
    if not flags & _COMPRESSED:
        return message
    if encoding not in ("gzip", "deflate"):
        raise RpcError("unimplemented", f"grpc-encoding {encoding!r} is not supported")
    return inflate(message, encoding, LAMBDA_PAYLOAD_BYTES, "gRPC-Web message")


def _parse(data: bytes, message: Message, wire: Wire) -> Message:
    name = message.DESCRIPTOR.full_name
    if wire.json:
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):  # not UTF-8, not JSON, or absurdly nested
            raise ProtocolError(f"request is not valid JSON (expected a {name})") from None
        if not isinstance(doc, dict):  # protobuf's parser would take a list as an empty message
            raise ProtocolError(f"request must be a JSON object (a {name})")
        try:
            json_format.ParseDict(doc, message)
        except (json_format.ParseError, RecursionError) as e:
            raise ProtocolError(f"request is not a valid {name} in JSON: {e}") from None
        return message
    try:
        message.ParseFromString(data)
    except (DecodeError, RecursionError) as e:
        raise ProtocolError(f"request is not a valid {name} message: {e}") from None
    return message


def _encode(message: Message, wire: Wire) -> bytes:
    if wire.json:
        return json_format.MessageToJson(message, indent=None).encode()
    return message.SerializeToString()


def _reply(wire: Wire, message: Message) -> Response:
    payload = _encode(message, wire)
    if not wire.framed:
        return Response(200, wire.content_type, payload)
    trailers = b"grpc-status: 0\r\n"
    body = b"".join(
        [
            _FRAME.pack(0, len(payload)),
            payload,
            _FRAME.pack(_TRAILER, len(trailers)),
            trailers,
        ]
    )
    if wire.text:
        return Response(200, wire.content_type, base64.b64encode(body).decode())
    return Response(200, wire.content_type, body)


def _failure(wire: Wire, code: str, message: str) -> Response:
    if not wire.framed:
        body = json.dumps({"code": code, "message": message})
        return Response(CONNECT_HTTP[code], "application/json", body)
    # Trailers-only: the status in the headers, no frames (as gRPC servers answer errors).
    headers = {
        "grpc-status": str(GRPC_STATUS[code]),
        "grpc-message": urllib.parse.quote(message, safe=""),
    }
    return Response(200, wire.content_type, "", headers=headers)
