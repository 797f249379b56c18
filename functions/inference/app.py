"""InferenceFunction: Open Inference Protocol v2 over API Gateway HTTP API (payload 2.0).

JSON and Triton's binary tensor extension both ways. API Gateway hands non-text bodies over
base64-encoded; they are decoded to bytes here (Powertools' decoded_body assumes UTF-8 text),
and binary responses go back base64-encoded with isBase64Encoded set.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import zlib
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError
from maas import __version__
from maas.oip import (
    HEADER_LENGTH,
    PayloadTooLarge,
    ProtocolError,
    decode_request,
    encode_infer_response,
)
from maas.serving import ModelNotFound, ModelStore, ModelUnavailable

logger = Logger()
tracer = Tracer()
metrics = Metrics()
app = APIGatewayHttpResolver()

MAX_BODY_BYTES = 6 * 1024 * 1024  # Lambda's synchronous payload limit
EXTENSIONS = ["binary_tensor_data"]
_store: ModelStore | None = None


def store() -> ModelStore:
    """Built on first use, so a cold start that cannot reach AWS fails the request, not init."""
    global _store
    if _store is None:
        from maas.config import settings
        from maas.registry import Registry
        from maas.storage import Storage

        cfg = settings()
        _store = ModelStore(cfg, Registry(cfg.registry_table), Storage())
    return _store


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(status_code=status, content_type="application/json", body=json.dumps(body))


@app.get("/v2/health/live")
def live() -> Response:
    return _json(200, {"live": True})


@app.get("/v2/health/ready")
def ready() -> Response:
    return _json(200, {"ready": True})


@app.get("/v2")
def server_metadata() -> Response:
    return _json(200, {"name": "serverless-maas", "version": __version__, "extensions": EXTENSIONS})


@app.get("/v2/models/<model>")
def model_metadata(model: str) -> Response:
    return _metadata(model, None)


@app.get("/v2/models/<model>/versions/<version>")
def version_metadata(model: str, version: str) -> Response:
    return _metadata(model, version)


@app.get("/v2/models/<model>/ready")
def model_ready(model: str) -> Response:
    return _ready(model, None)


@app.get("/v2/models/<model>/versions/<version>/ready")
def version_ready(model: str, version: str) -> Response:
    return _ready(model, version)


@app.post("/v2/models/<model>/infer")
def infer(model: str) -> Response:
    return _infer(model, None)


@app.post("/v2/models/<model>/versions/<version>/infer")
def version_infer(model: str, version: str) -> Response:
    return _infer(model, version)


def _metadata(model: str, version: str | None) -> Response:
    loaded = store().get(model, version)
    versions = store().ready_versions(model) if version is None else [str(loaded.version)]
    return _json(200, loaded.metadata(versions))


def _ready(model: str, version: str | None) -> Response:
    loaded = store().get(model, version)
    return _json(200, {"name": model, "version": str(loaded.version), "ready": True})


@tracer.capture_method
def _infer(model: str, version: str | None) -> Response:
    event = app.current_event
    headers = event.headers  # a new case-insensitive dict on every access: read it once
    body = _body(event.body or "", bool(event.is_base64_encoded), headers.get("content-encoding"))
    request = decode_request(body, headers.get(HEADER_LENGTH))
    s = store()
    loaded = s.get(model, version, canary=True)
    started = time.perf_counter()
    outputs = loaded.infer(request, s.settings.max_batch_size)
    metrics.add_metric(
        "InferenceLatency", MetricUnit.Milliseconds, (time.perf_counter() - started) * 1000
    )
    payload, header_length = encode_infer_response(model, loaded.version, outputs, request)
    if header_length is None:
        return Response(200, "application/json", payload.decode())
    # bytes: Powertools sends them base64-encoded with isBase64Encoded set.
    return Response(
        200,
        "application/octet-stream",
        payload,
        headers={"Inference-Header-Content-Length": str(header_length)},
    )


def _body(raw: str, is_base64: bool, encoding: str | None) -> bytes | str:
    """The request body as sent: base64 undone, gzip/deflate undone, within Lambda's limit."""
    body: bytes | str = raw
    if is_base64:
        try:
            body = base64.b64decode(raw, validate=True)
        except binascii.Error:
            raise ProtocolError("request body is not valid base64") from None
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body exceeds {MAX_BODY_BYTES} bytes (Lambda's limit)")
    if encoding and encoding.lower() in ("gzip", "deflate"):
        data = body.encode("latin-1") if isinstance(body, str) else body
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
        try:
            body = inflater.decompress(data, MAX_BODY_BYTES + 1)
        except zlib.error:
            raise ProtocolError(f"request body is not valid {encoding} data") from None
        if len(body) > MAX_BODY_BYTES or inflater.unconsumed_tail:
            raise PayloadTooLarge(f"decompressed request body exceeds {MAX_BODY_BYTES} bytes")
    return body


@app.exception_handler(ProtocolError)
def _bad_request(e: ProtocolError) -> Response:
    return _json(e.status, {"error": str(e)})


@app.exception_handler(ModelNotFound)
def _not_found(e: ModelNotFound) -> Response:
    return _json(404, {"error": str(e)})


@app.exception_handler(ModelUnavailable)
def _unavailable(e: ModelUnavailable) -> Response:
    return _json(503, {"error": str(e)})


@app.exception_handler([ClientError, BotoCoreError])
def _aws_unavailable(e: Exception) -> Response:
    logger.exception("AWS dependency failed")
    return _json(503, {"error": "model store unavailable, retry later"})


@app.exception_handler(Exception)
def _internal(e: Exception) -> Response:
    logger.exception("unhandled error")
    return _json(500, {"error": "internal error; see the function's logs"})


@app.not_found
def _no_route(_: Exception) -> Response:
    event = app.current_event
    return _json(404, {"error": f"no route for {event.request_context.http.method} {event.path}"})


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
