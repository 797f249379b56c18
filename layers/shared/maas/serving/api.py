"""The Open Inference Protocol v2 REST routes: what the inference function serves, and how its
failures become `{"error": ...}` responses (400/413 for the request, 404, 503, else 500)."""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from maas import __version__
from maas.core.config import InferenceSettings, SettingsError
from maas.serving.http import (
    ProtocolError,
    Request,
    Response,
    Router,
    StreamingResponse,
    error_response,
    json_response,
)
from maas.serving.metrics import Metrics
from maas.serving.oip import HEADER_LENGTH, decode_request, encode_infer_response
from maas.serving.store import ModelNotFound, ModelStore, ModelUnavailable

logger = logging.getLogger("maas.inference")
EXTENSIONS = ["binary_tensor_data", "generate"]
API_TIMEOUT_S = 30.0  # API Gateway HTTP API's integration timeout
DEADLINE_MARGIN_S = 1.5


class Serving:
    """One function's serving state: its settings and model store (made on first use), metrics.

    ``api_timeout_s``: how long its front door waits for an answer (API Gateway's HTTP API:
    30 s; a streaming front door: 15 minutes)."""

    def __init__(self, api_timeout_s: float = API_TIMEOUT_S) -> None:
        self.api_timeout_s = api_timeout_s
        self._settings: InferenceSettings | None = None
        self._store: ModelStore | None = None
        self.metrics = Metrics("maas-inference")
        self.context: Any = None  # the invocation's Lambda context (its remaining time)

    def deadline(self) -> float:
        """When a generation must stop (time.monotonic()): before the function's time limit
        and its front door's timeout, with a margin to answer."""
        remaining = self.api_timeout_s
        get = getattr(self.context, "get_remaining_time_in_millis", None)
        if callable(get):
            remaining = min(remaining, float(get()) / 1000.0)
        return time.monotonic() + remaining - DEADLINE_MARGIN_S

    def settings(self) -> InferenceSettings:
        if self._settings is None:
            self._settings = InferenceSettings.from_env()
        return self._settings

    def store(self) -> ModelStore:
        """Built on first use, so a cold start that cannot reach AWS fails the request, not init."""
        if self._store is None:
            self._store = ModelStore.from_settings(self.settings())
        return self._store

    def preload(self) -> None:
        """SnapStart: load PRELOAD_MODELS during init, and re-check the aliases after a restore.

        Never fails init: the first requests load what init could not, or report why.
        """
        try:
            wanted = (self.settings().preload_models or "").strip()
        except SettingsError as e:  # the requests that need a model fail on it too, and say so
            logger.error("not preloading: %s", e)
            return
        if not wanted:
            return
        store = self.store()
        try:
            loaded = store.preload(
                None if wanted == "*" else [m.strip() for m in wanted.split(",")]
            )
        except Exception:
            logger.exception("preloading %s failed", wanted)
            return
        logger.info("preloaded %s", ", ".join(f"{m} v{v}" for m, v in loaded) or "no models")
        try:
            from snapshot_restore_py import register_after_restore  # Lambda's Python runtime
        except ImportError:  # not on Lambda (or no SnapStart): nothing to hook
            return
        register_after_restore(store.after_restore)


def error_status(e: Exception) -> tuple[int, str]:
    """A route's exception as the client sees it: the HTTP status and message, never a trace.

    The one mapping of error classes: the gRPC routes (maas.serving.grpcweb) derive their
    codes from it.
    """
    if isinstance(e, ProtocolError):
        return e.status, str(e)
    if isinstance(e, ModelNotFound):
        return 404, str(e)
    if isinstance(e, ModelUnavailable):
        return 503, str(e)
    if isinstance(e, ClientError | BotoCoreError):
        logger.exception("AWS dependency failed")
        return 503, "model store unavailable, retry later"
    logger.exception("unhandled error")
    return 500, "internal error; see the function's logs"


def _error(e: Exception) -> Response:
    return error_response(*error_status(e))


router = Router(_error)


@router.get("/v2/health/live")
def live(s: Serving, request: Request) -> Response:
    return json_response(200, {"live": True})


@router.get("/v2/health/ready")
def ready(s: Serving, request: Request) -> Response:
    return json_response(200, {"ready": True})


@router.get("/v2")
def server_metadata(s: Serving, request: Request) -> Response:
    body = {"name": "serverless-maas", "version": __version__, "extensions": EXTENSIONS}
    return json_response(200, body)


@router.get("/v2/models/<model>")
@router.get("/v2/models/<model>/versions/<version>")
def model_metadata(
    s: Serving, request: Request, model: str, version: str | None = None
) -> Response:
    store = s.store()
    loaded = store.get(model, version)
    versions = store.ready_versions(model) if version is None else [str(loaded.version)]
    return json_response(200, loaded.metadata(versions))


@router.get("/v2/models/<model>/ready")
@router.get("/v2/models/<model>/versions/<version>/ready")
def model_ready(s: Serving, request: Request, model: str, version: str | None = None) -> Response:
    loaded = s.store().get(model, version)
    return json_response(200, {"name": model, "version": str(loaded.version), "ready": True})


@router.post("/v2/models/<model>/infer")
@router.post("/v2/models/<model>/versions/<version>/infer")
def infer(s: Serving, request: Request, model: str, version: str | None = None) -> Response:
    """Unversioned: prod, or the canary for its share of requests."""
    decoded = decode_request(request.body(), request.headers.get(HEADER_LENGTH))
    store = s.store()
    loaded = store.get(model, version, canary=True)
    started = time.perf_counter()
    outputs = loaded.infer(decoded, store.settings.max_batch_size)
    s.metrics.add_latency("InferenceLatency", (time.perf_counter() - started) * 1000)
    payload, header_length = encode_infer_response(model, loaded.version, outputs, decoded)
    if header_length is None:
        return Response(200, "application/json", payload.decode())
    return Response(
        200,
        "application/octet-stream",
        payload,
        headers={"Inference-Header-Content-Length": str(header_length)},
    )


# --- the OIP gRPC service over Connect and gRPC-Web (maas.serving.grpcweb) -------------------

GRPC_SERVICE = "inference.GRPCInferenceService"
GRPC_METHODS = (
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
)


def _grpc_route(method: str) -> None:
    @router.post(f"/{GRPC_SERVICE}/{method}")
    def call(s: Serving, request: Request) -> Response:
        # Here, not at the top: protobuf loads only when a gRPC route is hit (the REST cold path
        # never pays for it).
        from maas.serving.grpcweb import handle

        return handle(s, request, method)


for _method in GRPC_METHODS:
    _grpc_route(_method)
# --- text generation: the OIP generate extension and the OpenAI wire format -----------------


def _generator(loaded: Any, model: str) -> Any:
    if loaded.generator is None:
        raise ProtocolError(f"model {model!r} is not a text-generation model")
    return loaded.generator


def _generate(s: Serving, gen: Any, ids: list[int], doc: dict[str, Any]) -> Any:
    from maas.serving.openaiwire import sampling

    params = sampling(doc, len(ids), gen.context_length)
    started = time.perf_counter()
    completion = gen.generate(ids, params, s.deadline())
    s.metrics.add_latency("GenerationLatency", (time.perf_counter() - started) * 1000)
    return completion


def _stream(
    s: Serving, gen: Any, ids: list[int], doc: dict[str, Any], model: str,
    frame: Callable[[Any], Iterator[bytes]],
) -> StreamingResponse:  # fmt: skip
    """A generation sent as it is produced: server-sent events framed by ``frame``; the
    request is checked before the first byte, and how the stream ended is logged after."""
    from maas.serving import streaming
    from maas.serving.openaiwire import sampling

    run = gen.stream(ids, sampling(doc, len(ids), gen.context_length), s.deadline())

    def body() -> Iterator[bytes]:
        started = time.perf_counter()
        try:
            yield from frame(run)
        finally:
            s.metrics.add_latency("GenerationLatency", (time.perf_counter() - started) * 1000)
            c = run.completion
            n, why = (c.completion_tokens, c.stopped_by) if c else (0, "not started")
            logger.info(
                "stream of %s ended after %d tokens: %s", model, n, why,
                extra={"model": model, "tokens": n, "stopped_by": why},
            )  # fmt: skip

    return StreamingResponse(200, streaming.CONTENT_TYPE, body(), dict(streaming.HEADERS))


def _oip_generation(
    s: Serving, request: Request, model: str, version: str | None, stream: bool
) -> tuple[Any, Any, list[int], dict[str, Any]]:
    """(loaded model, generator, prompt ids, sampling request) of an OIP generate request."""
    from maas.serving.openaiwire import WireError, oip_generate_request, parse_json

    try:
        text, params = oip_generate_request(parse_json(request.body()), stream)
    except WireError as e:
        raise ProtocolError(str(e)) from None
    loaded = s.store().get(model, version, canary=True)
    gen = _generator(loaded, model)
    return loaded, gen, gen.prompt_ids(text), {"temperature": 0.0, **params}


@router.post("/v2/models/<model>/generate")
@router.post("/v2/models/<model>/versions/<version>/generate")
def generate(s: Serving, request: Request, model: str, version: str | None = None) -> Response:
    """OIP generate extension: text_input + parameters -> text_output (greedy by default)."""
    from maas.serving.openaiwire import WireError

    loaded, gen, ids, doc = _oip_generation(s, request, model, version, stream=False)
    try:
        completion = _generate(s, gen, ids, doc)
    except WireError as e:
        raise ProtocolError(str(e)) from None
    body = {
        "model_name": model,
        "model_version": str(loaded.version),
        "text_output": completion.text,
        "finish_reason": completion.finish_reason,
        "usage": completion.usage(),
    }
    return json_response(200, body)


@router.post("/v2/models/<model>/generate_stream")
@router.post("/v2/models/<model>/versions/<version>/generate_stream")
def generate_stream(
    s: Serving, request: Request, model: str, version: str | None = None
) -> Response:
    """OIP generate extension, streamed: text_output as server-sent events, piece by piece."""
    from maas.serving.openaiwire import WireError
    from maas.serving.streaming import oip_events

    loaded, gen, ids, doc = _oip_generation(s, request, model, version, stream=True)
    served = str(loaded.version)
    try:
        return _stream(s, gen, ids, doc, model, lambda run: oip_events(run, model, served))
    except WireError as e:
        raise ProtocolError(str(e)) from None


def _openai(handler: Callable[..., Response]) -> Callable[..., Response]:
    """Errors of a /v1 route in OpenAI's shape instead of the API's."""

    @functools.wraps(handler)
    def wrapped(s: Serving, request: Request, **kw: str) -> Response:
        from maas.serving.openaiwire import WireError, openai_error

        try:
            return handler(s, request, **kw)
        except WireError as e:
            return openai_error(e.status, str(e), e.param, e.code)
        except ModelNotFound as e:
            return openai_error(404, str(e), "model", "model_not_found")
        except ProtocolError as e:
            return openai_error(e.status, str(e))
        except Exception as e:
            plain = _error(e)
            message = json.loads(plain.body).get("error", "error")
            return openai_error(plain.status, message)

    return wrapped


@router.get("/v1/models")
@_openai
def openai_models(s: Serving, request: Request) -> Response:
    from maas.serving.openaiwire import models_body

    return json_response(200, models_body(s.store().generative_models()))


@router.post("/v1/completions")
@_openai
def openai_completions(s: Serving, request: Request) -> Response:
    from maas.serving.openaiwire import (
        check_keys,
        completion_body,
        model_name,
        parse_json,
        prompt_text,
        streaming,
    )
    from maas.serving.streaming import openai_events

    doc = parse_json(request.body())
    check_keys(doc, {"model", "prompt"})
    stream, usage = streaming(doc)
    model = model_name(doc)
    gen = _generator(s.store().get(model, None, canary=True), model)
    ids = gen.prompt_ids(prompt_text(doc))
    if stream:
        frame = functools.partial(openai_events, model=model, chat=False, include_usage=usage)
        return _stream(s, gen, ids, doc, model, frame)
    return json_response(200, completion_body(model, _generate(s, gen, ids, doc)))


@router.post("/v1/chat/completions")
@_openai
def openai_chat(s: Serving, request: Request) -> Response:
    from maas.serving.chattemplate import ChatTemplateError
    from maas.serving.openaiwire import (
        WireError,
        chat_body,
        check_keys,
        messages,
        model_name,
        parse_json,
        streaming,
    )
    from maas.serving.streaming import openai_events

    doc = parse_json(request.body())
    check_keys(doc, {"model", "messages"})
    stream, usage = streaming(doc)
    model = model_name(doc)
    msgs = messages(doc)
    gen = _generator(s.store().get(model, None, canary=True), model)
    try:
        ids = gen.chat_ids(msgs)
    except (ChatTemplateError, ValueError) as e:
        raise WireError(str(e), "messages") from None
    if stream:
        frame = functools.partial(openai_events, model=model, chat=True, include_usage=usage)
        return _stream(s, gen, ids, doc, model, frame)
    return json_response(200, chat_body(model, _generate(s, gen, ids, doc)))
