"""Token streaming end to end: Llama folders imported through the local stack, streamed over
its HTTP server by the streaming function's own handler code (the ~12 M-parameter one where
timing shows something: tokens take milliseconds there; the tiny one elsewhere).

1. The official openai client, unchanged: ``stream=True`` chunks join to the buffered greedy
   answer, the finish_reason comes in the last choice chunk, usage (include_usage) counts what
   the buffered answer counts, and the first chunk arrives well before the last.
2. A raw socket (what ``curl -N`` reads): the events arrive one by one, spread over the
   generation, not together at its end.
3. Four streams at once all complete while /v2/health/ready and /infer keep answering.
4. A client that disconnects after a few events: the generation stops within a few tokens.
5. The AWS side: the streaming function's Runtime API loop (its exec wrapper, in a process of
   its own) against a Runtime API that speaks Lambda's protocol: REST API proxy event in,
   the HTTP integration stream out, chunk by chunk; a request Lambda ends stops generating.
6. `maas chat` prints the answer piece by piece as it arrives.
"""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from maas_devkit.events import rest_api_event
from maas_devkit.lmfolders import import_through_stack, tiny_folder
from maas_devkit.models import infer_body
from maas_devkit.publish import publish_to_stack
from maas_devkit.repo import REPO
from maas_devkit.stacks import running_stack
from maas_local.stack import LocalStack

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]
MODEL = "tiny-llama"
SLOW = "slow-llama"
PROMPT = "The standard library"
LONG = 240  # tokens: long enough for arrival times to show how they are spread


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, iris_model: Any) -> Iterator[LocalStack]:
    with running_stack(tmp_path_factory.mktemp("stream")) as s:
        publish_to_stack(s, "iris", 1, iris_model.onnx, promote=True)
        yield s


def _import(stack: LocalStack, model: str, folder: Path) -> Path:
    import_through_stack(stack, model, folder)
    return folder


@pytest.fixture(scope="module")
def llama(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _import(stack, MODEL, tiny_folder("llama", tmp_path_factory.mktemp("llama") / "f"))


@pytest.fixture(scope="module")
def slow_llama(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wider, deeper Llama (~12 M parameters): tokens take milliseconds, as a real model's
    take tens of them, so a client reads each event before the next one is made."""
    folder = tmp_path_factory.mktemp("slow") / "f"
    return _import(stack, SLOW, tiny_folder("llama", folder, width=384, layers=6, vocab_size=4096))


def _client(stack: LocalStack) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{stack.api_url}/v1", api_key="not-needed-locally", max_retries=0)


class StreamLog(logging.Handler):
    """The functions' "stream ended" log lines (what CloudWatch gets on AWS)."""

    def __init__(self) -> None:
        super().__init__()
        self.ended: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "stopped_by"):
            self.ended.append({k: getattr(record, k) for k in ("model", "tokens", "stopped_by")})


@pytest.fixture
def stream_log() -> Iterator[StreamLog]:
    handler = StreamLog()
    logger = logging.getLogger("maas.inference")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_openai_client_streams_what_the_buffered_answer_says(
    stack: LocalStack, slow_llama: Path
) -> None:
    client = _client(stack)
    for chat in (False, True):
        ask: dict[str, Any] = {"model": SLOW, "max_tokens": LONG, "temperature": 0}
        if chat:
            ask["messages"] = [{"role": "user", "content": "Name a file format."}]
            create: Any = client.chat.completions.create
        else:
            ask["prompt"] = PROMPT
            create = client.completions.create
        # GIVEN the buffered answer to a greedy request
        buffered = create(**ask)
        want = buffered.choices[0].message.content if chat else buffered.choices[0].text
        # WHEN the same request streams, with the usage chunk
        t0 = time.perf_counter()
        stream = create(**ask, stream=True, stream_options={"include_usage": True})
        arrivals, pieces, reasons, usage = [], [], [], None
        for chunk in stream:
            arrivals.append(time.perf_counter() - t0)
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                delta = choice.delta.content if chat else choice.text
                pieces.append(delta or "")
                reasons.append(choice.finish_reason)
        # THEN the pieces join to the buffered text, the finish_reason ends the choices
        assert "".join(pieces) == want
        assert reasons[-1] == buffered.choices[0].finish_reason and not any(reasons[:-1])
        # AND usage counts what the buffered answer counted
        assert usage is not None and usage.model_dump() == buffered.usage.model_dump()
        assert usage.completion_tokens > 20, "a generation long enough to watch it stream"
        # AND the first chunk came long before the generation was over
        first, total = arrivals[0], arrivals[-1]
        print(
            f"{'chat' if chat else 'completion'} stream: {usage.completion_tokens} tokens in "
            f"{len(arrivals)} chunks, first chunk {first * 1000:.1f} ms, total "
            f"{total * 1000:.1f} ms, buffered text equal"
        )
        assert first < 0.5 * total


def _raw_stream(
    stack: LocalStack, body: dict[str, Any], path: str = "/v1/completions", stop_after: int = 0
) -> tuple[bytes, list[tuple[float, bytes]], float]:
    """POST as ``curl -N`` does and read the socket: (head, [(arrival s, bytes read)], t0)."""
    host, port = stack.api_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    data = json.dumps(body).encode()
    t0 = time.perf_counter()
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    head, reads, events = b"", [], 0
    with sock:
        while True:
            got = sock.recv(65536)
            if not got:
                break
            now = time.perf_counter() - t0
            if not head:
                head, _, got = got.partition(b"\r\n\r\n")
            reads.append((now, got))
            events += got.count(b"data: ")
            if got.endswith(b"0\r\n\r\n") or (stop_after and events >= stop_after):
                break
    return head, reads, t0


def test_events_arrive_one_by_one_over_the_generation(stack: LocalStack, slow_llama: Path) -> None:
    body = {"model": SLOW, "prompt": PROMPT, "max_tokens": LONG, "temperature": 0, "stream": True}
    head, reads, _ = _raw_stream(stack, body)
    assert b" 200 " in head.split(b"\r\n")[0]
    assert b"transfer-encoding: chunked" in head.lower()
    assert b"content-type: text/event-stream" in head.lower()
    with_events = [(t, b) for t, b in reads if b"data: " in b]
    times = [t for t, _ in with_events]
    n_events = sum(b.count(b"data: ") for _, b in with_events)
    # THEN the events came in many reads, spread over the generation
    first, last = times[0], times[-1]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    print(
        f"raw socket: {n_events} events in {len(with_events)} reads; first at "
        f"{first * 1000:.1f} ms, last at {last * 1000:.1f} ms; median gap "
        f"{statistics.median(gaps) * 1000:.2f} ms"
    )
    assert len(with_events) >= n_events // 2
    assert last - first > 0.5 * last  # spread, not all at the end
    assert b"data: [DONE]" in b"".join(b for _, b in reads)


def test_four_streams_at_once_complete_while_other_routes_answer(
    stack: LocalStack, slow_llama: Path, iris_model: Any
) -> None:
    client = _client(stack)
    done: list[int] = []
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            stream = client.completions.create(
                model=SLOW, prompt=f"{PROMPT} {i}", max_tokens=LONG, temperature=0, stream=True
            )
            done.append(sum(1 for _ in stream))
        except BaseException as e:  # a failure is reported, not lost in a thread
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    answered, latencies = 0, []
    infer = infer_body(iris_model.features[:1])
    while any(t.is_alive() for t in threads):
        s = time.perf_counter()
        ready = requests.get(f"{stack.api_url}/v2/health/ready", timeout=10)
        scored = requests.post(f"{stack.api_url}/v2/models/iris/infer", json=infer, timeout=10)
        latencies.append(time.perf_counter() - s)
        assert ready.status_code == 200 and scored.status_code == 200, scored.text
        answered += 1
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(done) == 4 and min(done) > 10
    print(
        f"4 streams ({sorted(done)} chunks) in {time.perf_counter() - t0:.2f} s; meanwhile "
        f"{answered} health+infer pairs answered, median {statistics.median(latencies) * 1000:.1f}"
        " ms"
    )
    assert answered >= 2


def test_a_client_that_disconnects_stops_its_generation(
    stack: LocalStack, slow_llama: Path, stream_log: StreamLog
) -> None:
    body = {"model": SLOW, "prompt": PROMPT, "max_tokens": LONG, "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    full = _client(stack).completions.create(
        model=SLOW, prompt=PROMPT, max_tokens=LONG, temperature=0
    )
    assert full.usage is not None and full.usage.completion_tokens > 40
    per_token = (time.perf_counter() - t0) / full.usage.completion_tokens
    stream_log.ended.clear()
    # WHEN a client reads a few events and goes away
    _, reads, _ = _raw_stream(stack, body, stop_after=4)
    seen = sum(b.count(b"data: ") for _, b in reads)
    deadline = time.monotonic() + 30
    while not stream_log.ended and time.monotonic() < deadline:
        time.sleep(0.05)
    # THEN its generation ended within a few tokens of what it had received
    (ended,) = stream_log.ended
    print(
        f"disconnect after {seen} events: generation stopped after {ended['tokens']} tokens "
        f"({ended['stopped_by']}); uninterrupted it makes {full.usage.completion_tokens} "
        f"({per_token * 1000:.1f} ms per token)"
    )
    assert ended["stopped_by"] == "closed" and ended["model"] == SLOW
    assert ended["tokens"] <= seen + 3


# --- the AWS side: the Runtime API loop in its own process ---------------------------------


class RuntimeApi(ThreadingHTTPServer):
    """Lambda's Runtime API as a streaming function sees it: one event to hand out, then the
    response stream read chunk by chunk, with each chunk's arrival time."""

    daemon_threads = True

    def __init__(self, event: dict[str, Any], end_after: int = 0) -> None:
        self.event, self.end_after = event, end_after
        self.handed = threading.Event()
        self.finished = threading.Event()
        self.headers: dict[str, str] = {}
        self.chunks: list[tuple[float, bytes]] = []
        self.trailers = b""
        self.errors: list[Any] = []
        super().__init__(("127.0.0.1", 0), _RuntimeHandler)


class _RuntimeHandler(BaseHTTPRequestHandler):
    server: RuntimeApi
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path != "/2018-06-01/runtime/invocation/next" or self.server.handed.is_set():
            self.server.finished.wait(60)  # one invocation per test: the loop waits here
            time.sleep(3600)
        self.server.handed.set()
        body = json.dumps(self.server.event).encode()
        self.send_response(200)
        self.send_header("Lambda-Runtime-Aws-Request-Id", "req-1")
        self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 900_000))
        self.send_header("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:us-east-1:1:f")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        if self.path.endswith("/error"):
            n = int(self.headers.get("Content-Length") or 0)
            self.server.errors.append(json.loads(self.rfile.read(n)))
            self._answer(202)
            return
        self.server.headers = {k.lower(): v for k, v in self.headers.items()}
        t0 = time.perf_counter()
        while True:
            size = int(self.rfile.readline().strip() or b"0", 16)
            if size == 0:
                self.server.trailers = b"".join(iter(self.rfile.readline, b"\r\n"))
                break
            self.server.chunks.append((time.perf_counter() - t0, self.rfile.read(size)))
            self.rfile.readline()
            if self.server.end_after and len(self.server.chunks) > self.server.end_after:
                # Lambda ends the request (the client went away): answer it and close.
                self._answer(202)
                self.close_connection = True
                self.server.finished.set()
                return
        self._answer(202)
        self.server.finished.set()

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _run_loop(stack: LocalStack, api: RuntimeApi, tmp: Path) -> subprocess.Popen[str]:
    """functions/streaming/stream-runtime as Lambda's python3.12 runtime starts it."""
    threading.Thread(target=api.serve_forever, daemon=True).start()
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{api.server_address[1]}",
        "LAMBDA_TASK_ROOT": str(REPO / "functions" / "streaming"),
        "PYTHONPATH": str(REPO / "layers" / "shared"),
        "_HANDLER": "app.stream_handler",
        "AWS_LAMBDA_FUNCTION_NAME": "maas-streaming",
        "AWS_ENDPOINT_URL": stack.aws_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "REGISTRY_TABLE": stack.outputs["RegistryTableName"],
        "ARTIFACT_BUCKET": stack.outputs["ArtifactBucketName"],
        "MODEL_CACHE_DIR": str(tmp / "models"),
    }
    wrapper = REPO / "functions" / "streaming" / "stream-runtime"
    return subprocess.Popen(
        [str(wrapper), "/var/runtime/bootstrap"],  # the runtime's own command: not run
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _chat_event(max_tokens: int) -> dict[str, Any]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Name a file format."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {
        "Content-Type": "application/json",
        "Host": "abc123.execute-api.us-east-1.amazonaws.com",
        "User-Agent": "OpenAI/Python",
    }
    return rest_api_event(
        "POST", "/v1/chat/completions", headers, json.dumps(body), resource="/v1/chat/completions"
    )


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.kill()
    out, _ = proc.communicate(timeout=30)
    return out


def test_runtime_loop_streams_the_integration_response_chunk_by_chunk(
    stack: LocalStack, llama: Path, tmp_path: Path
) -> None:
    buffered = _client(stack).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a file format."}],
        max_tokens=LONG,
        temperature=0,
    )
    api = RuntimeApi(_chat_event(LONG))
    proc = _run_loop(stack, api, tmp_path)
    try:
        assert api.finished.wait(300), "no response stream"
    finally:
        out = _stop(proc)
        api.shutdown()
    assert not api.errors, api.errors
    # THEN the request is Lambda's streaming response, with room for error trailers
    h = api.headers
    assert h["lambda-runtime-function-response-mode"] == "streaming"
    assert h["transfer-encoding"] == "chunked"
    assert h["content-type"] == "application/vnd.awslambda.http-integration-response"
    assert h["trailer"] == "Lambda-Runtime-Function-Error-Type, Lambda-Runtime-Function-Error-Body"
    assert api.trailers == b""
    # AND its body is the prelude, eight NUL bytes, then one chunk per event as it was made
    prelude, _, rest = api.chunks[0][1].partition(b"\0" * 8)
    assert json.loads(prelude)["statusCode"] == 200
    assert json.loads(prelude)["headers"]["Content-Type"] == "text/event-stream"
    body = rest + b"".join(c for _, c in api.chunks[1:])
    events = [e[len("data: ") :] for e in body.decode().split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == buffered.choices[0].message.content
    assert chunks[-1]["usage"] == buffered.usage.model_dump(exclude_none=True)
    times = [t for t, _ in api.chunks]
    print(
        f"runtime loop: {len(api.chunks)} chunks, first {times[1] * 1000:.1f} ms, last "
        f"{times[-1] * 1000:.1f} ms after the request began"
    )
    assert len(api.chunks) >= len(chunks) and times[-1] - times[1] > 0.5 * times[-1]
    assert "stream of tiny-llama ended" in out


def test_runtime_loop_stops_generating_when_lambda_ends_the_request(
    stack: LocalStack, llama: Path, tmp_path: Path
) -> None:
    api = RuntimeApi(_chat_event(LONG), end_after=5)
    proc = _run_loop(stack, api, tmp_path)
    try:
        assert api.finished.wait(300), "no response stream"
        deadline = time.monotonic() + 60
        lines: list[dict[str, Any]] = []
        assert proc.stdout is not None
        messages = ""
        while time.monotonic() < deadline and "ended by Lambda" not in messages:
            line = proc.stdout.readline()
            if line.startswith("{"):
                lines.append(json.loads(line))
                messages += lines[-1].get("message", "")
    finally:
        _stop(proc)
        api.shutdown()
    (ended,) = [d for d in lines if "stopped_by" in d]
    print(f"Lambda ended the request after 5 chunks: generation stopped after {ended['tokens']}")
    assert ended["stopped_by"] == "closed" and ended["tokens"] <= 5 + 3
    assert any("ended by Lambda" in d.get("message", "") for d in lines)


def test_curl_like_client_sees_a_clear_error_before_the_stream_starts(
    stack: LocalStack, llama: Path
) -> None:
    conn = http.client.HTTPConnection(stack.api_url.removeprefix("http://"), timeout=30)
    body = {"model": "no-such-model", "prompt": "x", "stream": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"content-type": "application/json"})
    r = conn.getresponse()
    doc = json.loads(r.read())
    assert r.status == 404 and doc["error"]["code"] == "model_not_found"
    conn.request(
        "POST",
        "/v1/completions",
        json.dumps({"model": MODEL, "prompt": "x", "stream_options": {"include_usage": True}}),
        {"content-type": "application/json"},
    )
    r = conn.getresponse()
    assert r.status == 400 and json.loads(r.read())["error"]["param"] == "stream_options"


def test_maas_chat_prints_the_answer_as_it_arrives(stack: LocalStack, slow_llama: Path) -> None:
    ask = "Name a file format."
    want = _client(stack).chat.completions.create(
        model=SLOW, messages=[{"role": "user", "content": ask}], max_tokens=LONG, temperature=0
    )
    assert want.usage is not None and want.usage.completion_tokens > 40
    # GIVEN `maas chat` in a terminal-like pipe, one turn typed
    env = {**os.environ, "AWS_ENDPOINT_URL": stack.aws_url, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "maas_cli.main", "chat", SLOW, "--max-tokens", str(LONG)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(ask.encode() + b"\n\n")
    proc.stdin.close()
    # WHEN its output is read as it comes
    reads: list[tuple[float, bytes]] = []
    while got := os.read(proc.stdout.fileno(), 65536):
        reads.append((time.perf_counter(), got))
    assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    out = b"".join(b for _, b in reads).decode()
    # THEN it printed the answer the buffered request gets
    assert f"{SLOW}> {want.choices[0].message.content}\n" in out
    # AND printed it piece by piece over the generation, not at its end
    at = next(i for i, (_, b) in enumerate(reads) if f"{SLOW}> ".encode() in b)
    asked, answer = reads[at][0], [t for t, _ in reads[at + 1 :]]
    span, whole = answer[-1] - answer[0], answer[-1] - asked
    print(
        f"maas chat: {want.usage.completion_tokens} tokens printed in {len(answer)} reads over "
        f"{span * 1000:.0f} ms of the {whole * 1000:.0f} ms from the request to the last piece"
    )
    assert len(answer) >= 10 and span > 0.5 * whole
