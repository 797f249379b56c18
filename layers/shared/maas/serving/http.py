"""The HTTP API's wire as Lambda sees it: API Gateway payload 2.0 events in, responses out.

One definition each of the route table, the request body (base64, gzip/deflate, Lambda's
6 MB limit), the response event and the `{"error": ...}` shape, for the inference function,
the admin function (the error shape), the local stack's API server and the tests. Standard
library only: it sits on the inference function's cold path, and the admin function has no
numpy.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

LAMBDA_PAYLOAD_BYTES = 6 * 1024 * 1024  # Lambda's synchronous invocation payload limit
# What each error status means on this API (docs/openapi.json's descriptions).
ERRORS = {
    400: "Malformed or inconsistent request",
    403: "Not SigV4-signed by an authorized IAM identity",
    404: "No such model, version or route",
    409: "The registry is not in a state that allows it (conditional write lost or refused)",
    413: "Body above Lambda's 6 MB payload limit, batch above the configured maximum, or a "
    "BYTES element above 64 KiB",
    503: "The model cannot serve now (not READY, artifact missing or failing its checksum)",
}


class ProtocolError(ValueError):
    """A malformed or inconsistent request: HTTP 400."""

    status = 400


class PayloadTooLarge(ProtocolError):
    status = 413


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


class StreamingResponse(Response):
    """A response written as it is produced (server-sent events): a front door that streams
    sends each chunk when it comes (maas.serving.lambdastream); a buffered one gets them joined
    when the last is made (to_event), so the same route answers both."""

    def __init__(
        self,
        status: int,
        content_type: str,
        chunks: Iterator[bytes],
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, content_type, "", headers)
        self.chunks = chunks

    def to_event(self) -> dict[str, Any]:
        self.body = b"".join(self.chunks).decode()
        return super().to_event()


class ClientResponse(NamedTuple):
    """A function's result as API Gateway hands it to the client: bytes, lower-cased headers."""

    status: int
    headers: dict[str, str]
    body: bytes

    @classmethod
    def of(cls, result: dict[str, Any]) -> ClientResponse:
        headers = {k.lower(): str(v) for k, v in (result.get("headers") or {}).items()}
        raw = result.get("body") or ""
        payload = base64.b64decode(raw) if result.get("isBase64Encoded") else raw.encode()
        return cls(int(result.get("statusCode", 200)), headers, payload)

    def json(self) -> Any:
        """The body parsed as JSON; None for an empty body."""
        return json.loads(self.body) if self.body else None


def json_response(status: int, body: dict[str, Any]) -> Response:
    return Response(status, "application/json", json.dumps(body))


def error_body(message: str) -> str:
    """The API's one error shape: `{"error": message}`, never a trace."""
    return json.dumps({"error": message})


def error_response(status: int, message: str) -> Response:
    return Response(status, "application/json", error_body(message))


# --- requests -----------------------------------------------------------------------------


class Request:
    """A payload 2.0 event as a route reads it: method, path, lower-cased headers, body."""

    def __init__(self, event: dict[str, Any]) -> None:
        context = event.get("requestContext") or {}
        self.event = event
        self.method = (context.get("http") or {}).get("method") or event.get("httpMethod") or "GET"
        self.path = event.get("rawPath") or event.get("path") or "/"
        self.headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}

    def body(self) -> bytes | str:
        """The body as the client sent it (see decode_body)."""
        return decode_body(
            self.event.get("body") or "",
            bool(self.event.get("isBase64Encoded")),
            self.headers.get("content-encoding"),
        )


def decode_body(
    raw: str, is_base64: bool, encoding: str | None, limit: int = LAMBDA_PAYLOAD_BYTES
) -> bytes | str:
    """The request body as sent: base64 undone, gzip/deflate undone, within `limit` bytes."""
    body: bytes | str = raw
    if is_base64:
        try:
            body = base64.b64decode(raw, validate=True)
        except binascii.Error:
            raise ProtocolError("request body is not valid base64") from None
    if len(body) > limit:
        raise PayloadTooLarge(f"request body exceeds {limit} bytes (Lambda's limit)")
    if encoding and encoding.lower() in ("gzip", "deflate"):
        data = body.encode("latin-1") if isinstance(body, str) else body
        body = inflate(data, encoding, limit, "request body")
    return body


def inflate(data: bytes, encoding: str, limit: int, what: str) -> bytes:
    """gzip or zlib data (the header says which) inflated, refusing more than `limit` bytes."""
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        raise ProtocolError(f"{what} is not valid {encoding} data") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed {what} exceeds {limit} bytes")
    return out


# --- routing ------------------------------------------------------------------------------


class Endpoint(NamedTuple):
    method: str
    path: str  # as the template writes it, with <name> parameters (Powertools' spelling)
    pattern: re.Pattern[str]
    handler: Callable[..., Response]


class Router:
    """A route table, so the cold path need not import Powertools' resolver.

    Routes are `handler(context, request, **path_parameters)`; `context` is whatever the
    function passes to resolve() (its state). Any exception a route raises becomes the
    response `errors` makes of it.
    """

    def __init__(self, errors: Callable[[Exception], Response]) -> None:
        self.routes: list[Endpoint] = []
        self._errors = errors

    def route(self, method: str, path: str) -> Callable[[Callable[..., Response]], Any]:
        # Literal parts escaped ("/inference.GRPCInferenceService/..." has a dot), <name> captured.
        parts = re.split(r"<(\w+)>", path)
        regex = "".join(
            f"(?P<{part}>[^/]+)" if i % 2 else re.escape(part) for i, part in enumerate(parts)
        )
        pattern = re.compile(f"^{regex}$")

        def register(handler: Callable[..., Response]) -> Callable[..., Response]:
            self.routes.append(Endpoint(method, path, pattern, handler))
            return handler

        return register

    def get(self, path: str) -> Callable[[Callable[..., Response]], Any]:
        return self.route("GET", path)

    def post(self, path: str) -> Callable[[Callable[..., Response]], Any]:
        return self.route("POST", path)

    def resolve(self, event: dict[str, Any], context: Any) -> Response:
        request = Request(event)
        for endpoint in self.routes:
            match = endpoint.method == request.method and endpoint.pattern.match(request.path)
            if match:
                try:
                    return endpoint.handler(context, request, **match.groupdict())
                except Exception as e:
                    return self._errors(e)
        return error_response(404, f"no route for {request.method} {request.path}")
