"""InferenceFunction: Open Inference Protocol v2 over API Gateway HTTP API (payload 2.0).

JSON and Triton's binary tensor extension both ways. API Gateway hands non-text bodies over
base64-encoded; they are decoded to bytes here, and binary responses go back base64-encoded
with isBase64Encoded set.

Built for the cold start: a fresh function answers its first request having imported the
standard library, numpy and onnxruntime, and little else (bench/coldstart.py measures it
against a bare onnxruntime process). So the routing is a table here rather than Powertools'
resolver, logs are the standard library's (Lambda's JSON log format adds the request id, see
template.yaml), the one metric is written in CloudWatch's embedded metric format by
`_emit_metrics`, there is no X-Ray SDK (Tracing stays on at the function: Lambda traces the
invocation itself), and pydantic and boto3 load only where a request needs them (a malformed
request's error message; an environment without static credentials). Each of those imports
costs, in a fresh process, between a fifth of and twice what importing onnxruntime costs.

PRELOAD_MODELS (a comma-separated list, or "*" for every model with a prod alias) loads those
models during init, for SnapStart: the snapshot then holds their sessions, and after a restore
the prod aliases are read again, so a promotion made after the snapshot is served.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import sys
import time
import zlib
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from maas import __version__
from maas.serving.oip import (
    HEADER_LENGTH,
    PayloadTooLarge,
    ProtocolError,
    decode_request,
    encode_infer_response,
)
from maas.serving.store import ModelNotFound, ModelStore, ModelUnavailable

logger = logging.getLogger("maas.inference")
MAX_BODY_BYTES = 6 * 1024 * 1024  # Lambda's synchronous payload limit
EXTENSIONS = ["binary_tensor_data"]
_store: ModelStore | None = None
_cold = True


def store() -> ModelStore:
    """Built on first use, so a cold start that cannot reach AWS fails the request, not init."""
    global _store
    if _store is None:
        from maas.core.config import settings

        _store = ModelStore.from_settings(settings())
    return _store


# --- responses and routes -----------------------------------------------------------------


class Response:
    def __init__(
        self,
        status: int,
        content_type: str,
        body: str | bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.content_type = content_type
        self.body = body
        self.headers = headers or {}

    def to_event(self) -> dict[str, Any]:
        """The API Gateway HTTP API (payload 2.0) response; bytes go base64-encoded."""
        body = self.body
        binary = isinstance(body, bytes)
        return {
            "statusCode": self.status,
            "headers": {"Content-Type": self.content_type, **self.headers},
            "body": base64.b64encode(body).decode() if isinstance(body, bytes) else body,
            "isBase64Encoded": binary,
        }


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(status, "application/json", json.dumps(body))


Handler = Callable[..., Response]
# (method, path as the template writes it with <name> parameters, matcher, handler)
ROUTES: list[tuple[str, str, re.Pattern[str], Handler]] = []


def route(method: str, path: str) -> Callable[[Handler], Handler]:
    pattern = re.compile("^" + re.sub(r"<(\w+)>", r"(?P<\1>[^/]+)", path) + "$")

    def register(handler: Handler) -> Handler:
        ROUTES.append((method, path, pattern, handler))
        return handler

    return register


@route("GET", "/v2/health/live")
def live(event: dict[str, Any]) -> Response:
    return _json(200, {"live": True})


@route("GET", "/v2/health/ready")
def ready(event: dict[str, Any]) -> Response:
    return _json(200, {"ready": True})


@route("GET", "/v2")
def server_metadata(event: dict[str, Any]) -> Response:
    return _json(200, {"name": "serverless-maas", "version": __version__, "extensions": EXTENSIONS})


@route("GET", "/v2/models/<model>")
def model_metadata(event: dict[str, Any], model: str) -> Response:
    return _metadata(model, None)


@route("GET", "/v2/models/<model>/versions/<version>")
def version_metadata(event: dict[str, Any], model: str, version: str) -> Response:
    return _metadata(model, version)


@route("GET", "/v2/models/<model>/ready")
def model_ready(event: dict[str, Any], model: str) -> Response:
    return _ready(model, None)


@route("GET", "/v2/models/<model>/versions/<version>/ready")
def version_ready(event: dict[str, Any], model: str, version: str) -> Response:
    return _ready(model, version)


@route("POST", "/v2/models/<model>/infer")
def infer(event: dict[str, Any], model: str) -> Response:
    return _infer(event, model, None)


@route("POST", "/v2/models/<model>/versions/<version>/infer")
def version_infer(event: dict[str, Any], model: str, version: str) -> Response:
    return _infer(event, model, version)


def _metadata(model: str, version: str | None) -> Response:
    loaded = store().get(model, version)
    versions = store().ready_versions(model) if version is None else [str(loaded.version)]
    return _json(200, loaded.metadata(versions))


def _ready(model: str, version: str | None) -> Response:
    loaded = store().get(model, version)
    return _json(200, {"name": model, "version": str(loaded.version), "ready": True})


_metrics: dict[str, float] = {}


def _infer(event: dict[str, Any], model: str, version: str | None) -> Response:
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    body = _body(
        event.get("body") or "", bool(event.get("isBase64Encoded")), headers.get("content-encoding")
    )
    request = decode_request(body, headers.get(HEADER_LENGTH))
    s = store()
    loaded = s.get(model, version, canary=True)
    started = time.perf_counter()
    outputs = loaded.infer(request, s.settings.max_batch_size)
    _metrics["InferenceLatency"] = (time.perf_counter() - started) * 1000
    payload, header_length = encode_infer_response(model, loaded.version, outputs, request)
    if header_length is None:
        return Response(200, "application/json", payload.decode())
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


def _error(e: Exception) -> Response:
    """Errors as {"error": ...}: 400/413 for the request, 404, 503, else 500; never a trace."""
    if isinstance(e, ProtocolError):
        return _json(e.status, {"error": str(e)})
    if isinstance(e, ModelNotFound):
        return _json(404, {"error": str(e)})
    if isinstance(e, ModelUnavailable):
        return _json(503, {"error": str(e)})
    if isinstance(e, ClientError | BotoCoreError):
        logger.exception("AWS dependency failed")
        return _json(503, {"error": "model store unavailable, retry later"})
    logger.exception("unhandled error")
    return _json(500, {"error": "internal error; see the function's logs"})


def resolve(event: dict[str, Any]) -> Response:
    context = event.get("requestContext") or {}
    method = (context.get("http") or {}).get("method") or event.get("httpMethod") or "GET"
    path = event.get("rawPath") or event.get("path") or "/"
    for verb, _, pattern, handler in ROUTES:
        match = verb == method and pattern.match(path)
        if match:
            try:
                return handler(event, **match.groupdict())
            except Exception as e:
                return _error(e)
    return _json(404, {"error": f"no route for {method} {path}"})


# --- metrics (CloudWatch embedded metric format) ------------------------------------------


def _emit_metrics(function_name: str) -> None:
    """This invocation's metrics as one EMF log line (what Powertools Metrics writes)."""
    global _cold
    cold, _cold = _cold, False
    values = dict(_metrics)
    _metrics.clear()
    if os.environ.get("POWERTOOLS_METRICS_DISABLED", "").lower() in ("1", "true"):
        return
    namespace = os.environ.get("POWERTOOLS_METRICS_NAMESPACE")
    if not namespace:
        return
    service = os.environ.get("POWERTOOLS_SERVICE_NAME", "maas-inference")
    now = int(time.time() * 1000)

    def emf(dimensions: list[str], units: dict[str, str], fields: dict[str, Any]) -> dict:
        return {
            "_aws": {
                "Timestamp": now,
                "CloudWatchMetrics": [
                    {
                        "Namespace": namespace,
                        "Dimensions": [dimensions],
                        "Metrics": [{"Name": n, "Unit": u} for n, u in units.items()],
                    }
                ],
            },
            **fields,
        }

    lines = []
    if values:
        lines.append(
            emf(
                ["service"],
                dict.fromkeys(values, "Milliseconds"),
                {"service": service, **{n: [v] for n, v in values.items()}},
            )
        )
    if cold:
        lines.append(
            emf(
                ["function_name", "service"],
                {"ColdStart": "Count"},
                {"function_name": function_name, "service": service, "ColdStart": [1.0]},
            )
        )
    for line in lines:
        sys.stdout.write(json.dumps(line) + "\n")


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    try:
        return resolve(event).to_event()
    finally:
        _emit_metrics(str(getattr(context, "function_name", "")))


# --- SnapStart: load prod models during init, re-check the registry after a restore -------


def _preload() -> None:
    from maas.core.config import settings

    wanted = settings().preload_models.strip()
    if not wanted:
        return
    s = store()
    try:
        loaded = s.preload(None if wanted == "*" else [m.strip() for m in wanted.split(",")])
    except Exception:  # the first requests load what init could not: never fail init for it
        logger.exception("preloading %s failed", wanted)
        return
    logger.info("preloaded %s", ", ".join(f"{m} v{v}" for m, v in loaded) or "no models")
    try:
        from snapshot_restore_py import register_after_restore  # Lambda's Python runtime
    except ImportError:  # not on Lambda (or no SnapStart): nothing to hook
        return
    register_after_restore(s.after_restore)


_preload()
