"""StreamingFunction: the inference routes behind a front door that streams (the REST API with
responseTransferMode STREAM), so a generation reaches the client token by token.

Wiring only, as InferenceFunction's handler: the same routes (maas.serving.api), the same
model store and settings; only the response travels differently. ``stream_handler`` returns
the response as the HTTP integration stream (maas.serving.lambdastream.integration_response:
prelude, eight NUL bytes, then each server-sent event as it is produced); the function's exec
wrapper (``stream-runtime``) runs lambdastream's Runtime API loop, which writes it out chunk by
chunk. The local stack's HTTP server calls ``stream_handler`` the same way.

Its generations may last up to the streaming front door's 15 minutes (and the function's
remaining time), not the HTTP API's 30 s. ``lambda_handler`` answers a buffered invocation
(``sam local invoke``, the console's test button) with the stream joined.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from maas.serving.api import Serving, router
from maas.serving.lambdastream import STREAM_LIMIT_S, integration_response

app = router
serving = Serving(api_timeout_s=STREAM_LIMIT_S)
store = serving.store


def stream_handler(event: dict[str, Any], context: Any) -> Iterator[bytes]:
    serving.context = context  # its remaining time bounds a generation
    response = app.resolve(event, serving)
    name = str(getattr(context, "function_name", ""))
    return integration_response(response, done=lambda: serving.metrics.flush(name))


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    serving.context = context
    try:
        return app.resolve(event, serving).to_event()
    finally:
        serving.metrics.flush(str(getattr(context, "function_name", "")))


def after_restore() -> None:
    """SnapStart: lambdastream's loop calls it after a restore (the prod aliases read again)."""
    if (serving.settings().preload_models or "").strip():
        serving.store().after_restore()


serving.preload()
