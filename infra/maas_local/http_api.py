"""An HTTP server that turns requests into API Gateway events for the stack's functions.

/admin/* goes to the admin function and only when SigV4-signed by the stack's credentials
(template.yaml puts AWS_IAM on those routes); the streaming API's routes (template.yaml's
StreamingApi: the generation routes) go to the streaming function as REST API proxy events,
and its response is sent as it comes, chunked (the streaming integration); everything else
goes to the inference function as HTTP API (payload 2.0) events. The inference and streaming
routes are signed too when the stack's inference auth is AWS_IAM. Events above Lambda's 6 MB
invocation payload limit are refused with 413 before any function runs, as Lambda would.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import select
import socket
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from maas.serving.http import LAMBDA_PAYLOAD_BYTES, ClientResponse, error_body
from maas.serving.lambdastream import read_prelude
from maas_devkit.events import http_api_event, rest_api_event

from maas_local.lambda_runtime import FunctionPool
from maas_local.sigv4 import Unauthorized, verify

log = logging.getLogger("maas.local.api")
MAX_PAYLOAD = 10 * 1024 * 1024  # API Gateway's own request limit; Lambda's 6 MB is the function's
ADMIN_PREFIX = "/admin/"


@dataclass(frozen=True)
class IamPolicy:
    """Who may call the AWS_IAM routes: the stack's access keys, in its region and account."""

    credentials: dict[str, str]
    region: str
    account: str
    inference: bool = False  # InferenceAuth=AWS_IAM: the inference routes need SigV4 too


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog is 5: a burst of new connections (16 clients opening
    # theirs at once) overflowed it and had connections reset. API Gateway takes thousands.
    request_queue_size = 128

    def __init__(
        self,
        host: str,
        port: int,
        function: FunctionPool,
        admin: FunctionPool | None = None,
        iam: IamPolicy | None = None,
        streaming: FunctionPool | None = None,
        stream_routes: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.function = function
        self.admin = admin
        self.iam = iam or IamPolicy({"testing": "testing"}, "us-east-1", "123456789012")
        self.streaming = streaming
        # (method, template path with {params}): the streaming API's routes.
        self.stream_routes = [
            (m.upper(), path, re.compile("^" + re.sub(r"{(\w+)}", r"(?P<\1>[^/]+)", path) + "$"))
            for m, path in stream_routes
        ]
        super().__init__((host, port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that resets its kept-alive connection (one that went away mid-stream) is
        no server error; anything else is logged as socketserver would print it."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("%s closed its connection", client_address)
            return
        log.exception("request from %s failed", client_address)

    def stream_route(self, method: str, path: str) -> tuple[str, dict[str, str]] | None:
        """(the route's template path, its path parameters) when the streaming API has it."""
        if self.streaming is None:
            return None
        for m, template, pattern in self.stream_routes:
            match = pattern.match(path) if m == method else None
            if match:
                return template, match.groupdict()
        return None


class _Handler(BaseHTTPRequestHandler):
    server: ApiServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # small responses otherwise wait on delayed ACKs (~40 ms)

    def _read_chunked(self) -> bytes | None:
        """A `Transfer-Encoding: chunked` body (connect-python's gRPC-Web client streams its
        request so), whole, as API Gateway hands it to Lambda; None past MAX_PAYLOAD."""
        parts: list[bytes] = []
        total = 0
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers, if any
                return b"".join(parts)
            total += size
            if total > MAX_PAYLOAD:
                return None
            parts.append(self.rfile.read(size))
            self.rfile.readline()  # the CRLF after each chunk

    def _handle(self) -> None:
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body_chunked = self._read_chunked() if chunked else b""
        except ValueError:
            length, body_chunked = -1, b""
        if length < 0:  # API Gateway answers a malformed Content-Length itself
            self._error(400, "Bad Request", "malformed Content-Length or chunked body")
            self.close_connection = True
            return
        if length > MAX_PAYLOAD or body_chunked is None:
            self._reply(
                413,
                {"content-type": "application/json"},
                error_body("request too large").encode(),
            )
            self.close_connection = True
            return
        body = body_chunked if chunked else self.rfile.read(length) if length else b""
        path = urlsplit(self.path).path
        admin = path == ADMIN_PREFIX.rstrip("/") or path.startswith(ADMIN_PREFIX)
        route = None if admin else self.server.stream_route(self.command, path)
        function = self.server.admin if admin else self.server.function
        if route is not None:
            function = self.server.streaming
        if function is None:
            self._error(404, "Not Found")
            return
        caller = None
        if admin or self.server.iam.inference:
            iam = self.server.iam
            try:
                caller = verify(
                    self.command,
                    self.path,
                    dict(self.headers.items()),
                    body,
                    credentials=iam.credentials,
                    region=iam.region,
                    account=iam.account,
                )
            except Unauthorized as e:
                # API Gateway answers {"message": "Forbidden"}; the reason helps on a laptop.
                self._error(403, "Forbidden", str(e))
                return
        if route is not None:
            self._stream(function, route, body)
            return
        event = http_api_event(
            self.command,
            self.path,
            dict(self.headers.items()),
            body or None,
            source_ip=self.client_address[0],
        )
        if caller is not None:
            event["requestContext"]["authorizer"] = caller.authorizer()
        if len(event.get("body") or "") + 8192 > LAMBDA_PAYLOAD_BYTES and (
            len(json.dumps(event)) > LAMBDA_PAYLOAD_BYTES
        ):
            self._error(
                413,
                "Request Entity Too Large",
                f"the request does not fit Lambda's {LAMBDA_PAYLOAD_BYTES} byte invocation payload "
                "(binary bodies travel base64-encoded, 4/3 their size)",
            )
            return
        try:
            result = function.invoke(event)
        except Exception:
            log.exception("inference function failed")
            # What API Gateway answers when the integration fails.
            self._reply(
                500, {"content-type": "application/json"}, b'{"message":"Internal Server Error"}'
            )
            return
        self._reply(*ClientResponse.of(result))

    def _stream(
        self, function: FunctionPool, route: tuple[str, dict[str, str]], body: bytes
    ) -> None:
        """The streaming integration: a REST API proxy event in, the response out as the
        function produces it (chunked), until it ends or the client goes away."""
        resource, params = route
        event = rest_api_event(
            self.command,
            self.path,
            dict(self.headers.items()),
            body or None,
            resource=resource,
            path_parameters=params,
            source_ip=self.client_address[0],
        )
        if len(json.dumps(event)) > LAMBDA_PAYLOAD_BYTES:
            self._error(413, "Request Entity Too Large", "the event exceeds Lambda's payload limit")
            return
        started = False
        try:
            with function.stream(event) as chunks:
                status, headers, first = read_prelude(chunks)
                self.send_response(status)
                for k, v in headers.items():
                    if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(k, v)
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                started = True
                for chunk in itertools.chain([first], chunks):
                    if chunk:
                        self.wfile.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                    if _client_gone(self.connection):  # before the next piece is made
                        self.close_connection = True
                        return
                self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client went away mid-write
            self.close_connection = True
        except Exception:
            log.exception("streaming function failed")
            self.close_connection = True
            if not started:
                self._error(500, "Internal Server Error")

    def _error(self, status: int, message: str, detail: str | None = None) -> None:
        body: dict[str, str] = {"message": message}
        if detail:
            body["error"] = detail
        self._reply(status, {"content-type": "application/json"}, json.dumps(body).encode())

    def _reply(self, status: int, headers: dict[str, str], payload: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            if k not in ("content-length", "connection"):
                self.send_header(k, v)
        self.send_header("content-length", str(len(payload)))
        # Headers and body in one write (end_headers() would flush the headers on their own).
        self._headers_buffer.append(b"\r\n")  # type: ignore[attr-defined]
        if self.command != "HEAD":
            self._headers_buffer.append(payload)  # type: ignore[attr-defined]
        self.flush_headers()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def _client_gone(sock: socket.socket) -> bool:
    """Whether the client closed its side: readable, and nothing to read."""
    try:
        if not select.select([sock], [], [], 0)[0]:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True
