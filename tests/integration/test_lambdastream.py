"""maas.serving.lambdastream against a Runtime API double that speaks Lambda's protocol over
real HTTP: the failures a streamed invocation can have, reported where Lambda looks for them.

- A handler that fails before its response began: POST /invocation/{id}/error, with the error
  type header, and the loop takes the next event.
- A body that fails after the prelude: the stream is closed with the
  Lambda-Runtime-Function-Error-Type / -Body trailers (the body base64 JSON), not cut short.
- SnapStart: with AWS_LAMBDA_INITIALIZATION_TYPE=snap-start the loop (the exec wrapper, in a
  process of its own) calls GET /restore/next after init and then the handler module's
  after_restore(), before the first event.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from maas.serving.http import StreamingResponse
from maas.serving.lambdastream import (
    DELIMITER,
    ERROR_BODY,
    ERROR_TYPE,
    RuntimeApi,
    integration_response,
    serve,
)
from maas_devkit.repo import REPO


class Double(ThreadingHTTPServer):
    """Hands out ``events`` one by one (then closes the connection, ending the loop), and
    records every request: (method, path, headers, body, trailers)."""

    daemon_threads = True

    def __init__(self, events: list[Any]) -> None:
        self.events = list(events)
        self.seen: list[tuple[str, str, dict[str, str], bytes, dict[str, str]]] = []
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def paths(self) -> list[str]:
        return [f"{m} {p.removeprefix('/2018-06-01/runtime')}" for m, p, *_ in self.seen]


class _Handler(BaseHTTPRequestHandler):
    server: Double
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.seen.append(("GET", self.path, dict(self.headers.items()), b"", {}))
        if self.path.endswith("/restore/next"):
            self._answer(200, b"")
            return
        if not self.server.events:  # no more work: the environment is shut down
            self.close_connection = True
            self.connection.close()
            return
        body = json.dumps(self.server.events.pop(0)).encode()
        n = len(self.server.events)
        self._answer(200, body, {"Lambda-Runtime-Aws-Request-Id": f"req-{n}"})

    def do_POST(self) -> None:
        body, trailers = b"", {}
        if self.headers.get("Transfer-Encoding") == "chunked":
            while size := int(self.rfile.readline().strip() or b"0", 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            for line in iter(self.rfile.readline, b"\r\n"):
                key, _, value = line.decode().partition(":")
                trailers[key.strip()] = value.strip()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append(("POST", self.path, dict(self.headers.items()), body, trailers))
        self._answer(202, b"")

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in {**(headers or {}), "Content-Length": str(len(body))}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_handler_failing_before_its_response_is_an_invocation_error() -> None:
    # GIVEN two events, the first of which the handler cannot answer
    double = Double([{"n": 1}, {"n": 2}])

    def handler(event: Any, context: Any) -> Iterator[bytes]:
        if event["n"] == 1:  # handed out first
            raise ValueError("no such route")
        return iter([b'{"statusCode": 200}' + DELIMITER, b"ok"])

    # WHEN the loop runs until the environment has no more work
    with pytest.raises(OSError):  # the double closed the connection: no more events
        serve(RuntimeApi(double.address), handler)
    # THEN the first is reported as the invocation's error, and the next one is answered
    assert double.paths() == [
        "GET /invocation/next",
        "POST /invocation/req-1/error",
        "GET /invocation/next",
        "POST /invocation/req-0/response",
        "GET /invocation/next",
    ]
    _, _, headers, body, _ = double.seen[1]
    assert headers[ERROR_TYPE] == "Function.ValueError"
    assert json.loads(body)["errorMessage"] == "no such route"
    _, _, headers, body, trailers = double.seen[3]
    assert headers["Lambda-Runtime-Function-Response-Mode"] == "streaming"
    assert body == b'{"statusCode": 200}' + DELIMITER + b"ok" and trailers == {}


def test_a_body_failing_after_the_prelude_closes_the_stream_with_error_trailers() -> None:
    double = Double([])

    def body() -> Iterator[bytes]:
        yield b"data: 1\n\n"
        raise RuntimeError("onnxruntime failed")

    chunks = integration_response(StreamingResponse(200, "text/event-stream", body()))
    outcome = RuntimeApi(double.address).stream("req-9", chunks)
    assert outcome == "failed"
    ((_, path, headers, sent, trailers),) = double.seen
    assert path.endswith("/invocation/req-9/response")
    assert headers["Trailer"] == f"{ERROR_TYPE}, {ERROR_BODY}"
    assert sent.partition(DELIMITER)[2] == b"data: 1\n\n"
    assert trailers[ERROR_TYPE] == "Function.RuntimeError"
    assert json.loads(base64.b64decode(trailers[ERROR_BODY]))["errorMessage"] == (
        "onnxruntime failed"
    )


def test_snapstart_restores_then_calls_after_restore_before_the_first_event(
    tmp_path: Path,
) -> None:
    # GIVEN a handler module whose after_restore leaves a mark, started as Lambda starts it
    (tmp_path / "app.py").write_text(
        "import pathlib\n"
        "def after_restore():\n"
        f"    pathlib.Path({str(tmp_path / 'restored')!r}).write_text('yes')\n"
        "def stream_handler(event, context):\n"
        "    return iter([b'{}' + b'\\0' * 8, b'hello'])\n"
    )
    double = Double([{"n": 1}])
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "AWS_LAMBDA_RUNTIME_API": double.address,
        "AWS_LAMBDA_INITIALIZATION_TYPE": "snap-start",
        "LAMBDA_TASK_ROOT": str(tmp_path),
        "PYTHONPATH": str(REPO / "layers" / "shared"),
        "_HANDLER": "app.stream_handler",
    }
    wrapper = REPO / "functions" / "streaming" / "stream-runtime"
    done = subprocess.run(
        [str(wrapper), "/var/runtime/bootstrap"], env=env, capture_output=True, timeout=60
    )
    # THEN it restored, ran the hook, then served the event (and ended with the environment)
    assert done.returncode != 0  # the double's closed connection ends the loop
    assert double.paths() == [
        "GET /restore/next",
        "GET /invocation/next",
        "POST /invocation/req-0/response",
        "GET /invocation/next",
    ]
    assert (tmp_path / "restored").read_text() == "yes"
    assert double.seen[2][3] == b"{}" + DELIMITER + b"hello"
