"""Response streaming from a Python Lambda function: the wire a streaming function writes, and
the Runtime API loop that writes it.

Lambda's python3.12 runtime has no streaming handler. StreamingFunction's exec wrapper
(functions/streaming/stream-runtime, named by AWS_LAMBDA_EXEC_WRAPPER) therefore runs
``python -m maas.serving.lambdastream`` in place of the runtime's own loop, still in the
python3.12 runtime with the function's zip and layers. The loop speaks the Runtime API as a
custom runtime does: ``GET /runtime/invocation/next``; the handler (``_HANDLER``,
``app.stream_handler``) returns the response as bytes in the HTTP integration format that
function URLs and API Gateway's streaming integrations read (``integration_response``: a
prelude JSON with the status and headers, eight NUL bytes, then the body as it is produced);
the loop POSTs them to ``/runtime/invocation/{id}/response`` with
``Lambda-Runtime-Function-Response-Mode: streaming`` and chunked transfer, one chunk per piece
the moment it exists. A failure before the prelude is an invocation error (``/error``); one
after it closes the stream with the ``Lambda-Runtime-Function-Error-Type``/``-Body`` trailers.

A client that goes away: before pulling each next piece, the loop checks its request to the
Runtime API; once Lambda has ended it (closed it, or answered early), or a write fails, the
loop stops pulling, and a pulled generation (maas.serving.generation) stops with it, within
the token in flight. Lambda does not document that it ends the request when the HTTP client
disconnects; where it does not, the generation runs on to max_tokens or the deadline.

SnapStart: with AWS_LAMBDA_INITIALIZATION_TYPE=snap-start, the loop does what the runtime's
own does (awslambdaric's on_init_complete): after init, ``GET /runtime/restore/next`` (the
snapshot is taken there), then the handler module's ``after_restore()``.

Standard library only.
"""

from __future__ import annotations

import base64
import http.client
import importlib
import json
import logging
import os
import select
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from maas.serving.http import Response, StreamingResponse

logger = logging.getLogger("maas.lambdastream")
CONTENT_TYPE = "application/vnd.awslambda.http-integration-response"
DELIMITER = b"\0" * 8
STREAM_LIMIT_S = 900.0  # REST API response streaming (and a Lambda invocation): 15 minutes
ERROR_TYPE, ERROR_BODY = "Lambda-Runtime-Function-Error-Type", "Lambda-Runtime-Function-Error-Body"
API = "/2018-06-01/runtime"


# --- the wire: HTTP integration responses ----------------------------------------------------


def integration_response(
    response: Response, done: Callable[[], None] | None = None
) -> Iterator[bytes]:
    """A response as a streaming function returns it: the prelude (status, headers), eight NUL
    bytes, then the body, chunk by chunk for a StreamingResponse. ``done`` runs once the body
    is over, or the stream was closed early (the consumer stopped pulling)."""
    prelude = {
        "statusCode": response.status,
        "headers": {"Content-Type": response.content_type, **response.headers},
    }
    try:
        yield json.dumps(prelude).encode() + DELIMITER
        if isinstance(response, StreamingResponse):
            yield from response.chunks  # closing this generator closes the route's
        else:
            body = response.body
            yield body.encode() if isinstance(body, str) else body
    finally:
        if done is not None:
            done()


def read_prelude(chunks: Iterator[bytes]) -> tuple[int, dict[str, str], bytes]:
    """What the front door does with a streamed response: (status, headers, the body bytes that
    came with the prelude); the rest of the body is what ``chunks`` yields next."""
    buffered = b""
    for chunk in chunks:
        buffered += chunk
        if DELIMITER in buffered:
            break
    else:
        raise ValueError("the response stream ended before its prelude's eight NUL bytes")
    head, _, rest = buffered.partition(DELIMITER)
    prelude = json.loads(head)
    headers = {str(k): str(v) for k, v in (prelude.get("headers") or {}).items()}
    return int(prelude.get("statusCode", 200)), headers, rest


# --- the Runtime API -----------------------------------------------------------------------


class Context:
    """The Lambda context of one invocation, from the Runtime API's headers and environment."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.aws_request_id = headers.get("lambda-runtime-aws-request-id", "")
        self.invoked_function_arn = headers.get("lambda-runtime-invoked-function-arn", "")
        self._deadline_ms = int(headers.get("lambda-runtime-deadline-ms") or 0)
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE") or 0)
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


class Invocation(NamedTuple):
    request_id: str
    event: Any
    context: Context


def _error_doc(e: BaseException) -> dict[str, Any]:
    return {
        "errorMessage": str(e),
        "errorType": type(e).__name__,
        "stackTrace": traceback.format_exception(e),
    }


class RuntimeApi:
    """The Runtime API at AWS_LAMBDA_RUNTIME_API (host:port)."""

    def __init__(self, address: str) -> None:
        self.address = address
        host, _, port = address.rpartition(":")
        self.host, self.port = host, int(port)
        self._conn = http.client.HTTPConnection(self.host, self.port)

    def _call(self, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        self._conn.request(method, API + path, body=data, headers=headers)
        response = self._conn.getresponse()
        payload = response.read()
        return response.status, (response, payload)

    def next(self) -> Invocation:
        """Blocks until Lambda hands over the next event."""
        _, (response, payload) = self._call("GET", "/invocation/next")
        headers = {k.lower(): v for k, v in response.getheaders()}
        if headers.get("lambda-runtime-trace-id"):
            os.environ["_X_AMZN_TRACE_ID"] = headers["lambda-runtime-trace-id"]
        context = Context(headers)
        return Invocation(context.aws_request_id, json.loads(payload or b"null"), context)

    def error(self, request_id: str, e: BaseException) -> None:
        self._call(
            "POST",
            f"/invocation/{request_id}/error",
            _error_doc(e),
            **{ERROR_TYPE: f"Function.{type(e).__name__}"},
        )

    def init_error(self, e: BaseException, kind: str = "Runtime.InitError") -> None:
        self._call("POST", "/init/error", _error_doc(e), **{ERROR_TYPE: kind})

    def restore_next(self) -> None:
        status, _ = self._call("GET", "/restore/next")
        if status != 200:
            raise RuntimeError(f"GET {API}/restore/next answered {status}")

    def restore_error(self, e: BaseException) -> None:
        self._call("POST", "/restore/error", _error_doc(e), **{ERROR_TYPE: "AfterRestoreError"})

    def stream(self, request_id: str, chunks: Iterator[bytes]) -> str:
        """POST the response stream, each chunk as it comes; how it ended: "complete",
        "ended by Lambda" (the request closed or answered early), "write failed", or "failed"
        (the body raised: reported in the trailers)."""
        with socket.create_connection((self.host, self.port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            head = (
                f"POST {API}/invocation/{request_id}/response HTTP/1.1\r\n"
                f"Host: {self.address}\r\n"
                "Lambda-Runtime-Function-Response-Mode: streaming\r\n"
                "Transfer-Encoding: chunked\r\n"
                f"Content-Type: {CONTENT_TYPE}\r\n"
                f"Trailer: {ERROR_TYPE}, {ERROR_BODY}\r\n\r\n"
            )
            sock.sendall(head.encode())
            outcome, trailers = _pump(sock, chunks)
            if outcome in ("complete", "failed"):
                sock.sendall(b"0\r\n" + trailers + b"\r\n")
                _read_status(sock)
        return outcome


def _pump(sock: socket.socket, chunks: Iterator[bytes]) -> tuple[str, bytes]:
    """Write ``chunks`` as HTTP chunks until they end or the request is over; the outcome and
    the trailers to close with."""
    try:
        while True:
            if select.select([sock], [], [], 0)[0]:  # Lambda answered or closed: it is over
                return "ended by Lambda", b""
            try:
                chunk = next(chunks)
            except StopIteration:
                return "complete", b""
            except Exception as e:
                logger.exception("the response stream failed")
                body = base64.b64encode(json.dumps(_error_doc(e)).encode()).decode()
                trailers = f"{ERROR_TYPE}: Function.{type(e).__name__}\r\n{ERROR_BODY}: {body}\r\n"
                return "failed", trailers.encode()
            if chunk:
                try:
                    sock.sendall(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                except OSError:
                    return "write failed", b""
    finally:
        close = getattr(chunks, "close", None)
        if callable(close):
            close()


def _read_status(sock: socket.socket) -> None:
    sock.settimeout(10)
    try:
        line = sock.makefile("rb").readline()
    except OSError:
        return
    if line.split(b" ")[1:2] != [b"202"]:
        logger.warning("the Runtime API answered the response stream with %r", line.strip())


# --- the loop ------------------------------------------------------------------------------


class _JsonLines(logging.Formatter):
    """Log records as JSON lines (the Lambda runtime's JSON log format, which this loop
    replaces), with the invocation's request id."""

    request_id = ""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
            "requestId": self.request_id,
        }
        for key in ("model", "tokens", "stopped_by"):
            if hasattr(record, key):
                doc[key] = getattr(record, key)
        if record.exc_info:
            doc["stackTrace"] = self.formatException(record.exc_info).splitlines()
        return json.dumps(doc)


def serve(api: RuntimeApi, handler: Callable[[Any, Context], Iterator[bytes]]) -> None:
    """One invocation after another, for the life of the execution environment."""
    formatter = next(
        (h.formatter for h in logging.getLogger().handlers if isinstance(h.formatter, _JsonLines)),
        None,
    )
    while True:
        invocation = api.next()
        if formatter is not None:
            formatter.request_id = invocation.request_id
        try:
            chunks = handler(invocation.event, invocation.context)
        except Exception as e:
            logger.exception("the handler failed before its response began")
            api.error(invocation.request_id, e)
            continue
        outcome = api.stream(invocation.request_id, iter(chunks))
        if outcome != "complete":
            logger.warning("response stream %s: %s", invocation.request_id, outcome)


def main() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_JsonLines())
    level = os.environ.get("AWS_LAMBDA_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=logging.getLevelNamesMapping().get(level, 20), handlers=[handler])
    api = RuntimeApi(os.environ["AWS_LAMBDA_RUNTIME_API"])
    try:
        sys.path.insert(0, os.environ.get("LAMBDA_TASK_ROOT", "/var/task"))
        module_name, _, attr = os.environ.get("_HANDLER", "app.stream_handler").rpartition(".")
        module = importlib.import_module(module_name)
        function = getattr(module, attr)
    except Exception as e:
        logger.exception("init failed")
        api.init_error(e)
        sys.exit(1)
    if os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") == "snap-start":
        try:
            api.restore_next()
        except Exception as e:
            api.init_error(e, "Runtime.BeforeSnapshotError")
            sys.exit(64)
        try:
            hook = getattr(module, "after_restore", None)
            if callable(hook):
                hook()
        except Exception as e:
            api.restore_error(e)
            sys.exit(65)
    serve(api, function)


if __name__ == "__main__":
    main()
