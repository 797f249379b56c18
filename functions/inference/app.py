"""InferenceFunction: Open Inference Protocol v2 over API Gateway HTTP API (payload 2.0)."""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError
from maas import __version__
from maas.oip import ProtocolError, decode_request, encode_response
from maas.serving import ModelNotFound, ModelStore, ModelUnavailable

logger = Logger()
tracer = Tracer()
metrics = Metrics()
app = APIGatewayHttpResolver()

MAX_BODY_BYTES = 6 * 1024 * 1024  # Lambda's synchronous payload limit
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
    return _json(200, {"name": "serverless-maas", "version": __version__, "extensions": []})


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
    body: bytes | str = event.body or ""
    if event.is_base64_encoded:
        # Bytes, not powertools' decoded_body: that assumes UTF-8 and crashes on binary bodies.
        try:
            body = base64.b64decode(body, validate=True)
        except binascii.Error:
            return _json(400, {"error": "request body is not valid base64"})
    if len(body) > MAX_BODY_BYTES:
        return _json(413, {"error": f"request body exceeds {MAX_BODY_BYTES} bytes"})
    request = decode_request(body)
    s = store()
    loaded = s.get(model, version)
    started = time.perf_counter()
    outputs = loaded.infer(request, s.settings.max_batch_size)
    metrics.add_metric(
        "InferenceLatency", MetricUnit.Milliseconds, (time.perf_counter() - started) * 1000
    )
    return _json(200, encode_response(model, loaded.version, outputs, request.id))


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
