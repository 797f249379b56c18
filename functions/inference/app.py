"""InferenceFunction: Open Inference Protocol v2 over API Gateway HTTP API (payload 2.0).

Wiring only: the routes, body decoding and error mapping are maas.serving.api and
maas.serving.http, the metric lines maas.serving.metrics. JSON and Triton's binary tensor
extension both ways; non-text bodies arrive base64-encoded and binary responses go back so.

Built for the cold start: a fresh function answers its first request having imported the
standard library, numpy and onnxruntime, and little else (bench/coldstart.py measures it
against a bare onnxruntime process). So the routing is maas.serving.http's table rather than
Powertools' resolver, logs are the standard library's (Lambda's JSON log format adds the request
id, see template.yaml), the one metric is written in CloudWatch's embedded metric format by
maas.serving.metrics, there is no X-Ray SDK (Tracing stays on at the function: Lambda traces the
invocation itself), settings are a plain dataclass (maas.core.config), and pydantic and boto3
load only where a request needs them (a malformed request's error message; an environment
without static credentials). Each of those imports costs, in a fresh process, between a fifth
of and twice what importing onnxruntime costs.

PRELOAD_MODELS (a comma-separated list, or "*" for every model with a prod alias) loads those
models during init, for SnapStart: the snapshot then holds their sessions, and after a restore
the prod aliases are read again, so a promotion made after the snapshot is served.
"""

from __future__ import annotations

from typing import Any

from maas.serving.api import Serving, router

app = router
serving = Serving()
store = serving.store


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    serving.context = context  # its remaining time bounds a generation
    try:
        return app.resolve(event, serving).to_event()
    finally:
        serving.metrics.flush(str(getattr(context, "function_name", "")))


serving.preload()
