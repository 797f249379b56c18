"""Streaming through the production handlers, driven by the events AWS would send: a tiny
Llama imported by the training job and made ready by the optimizer handler (as in
test_generation), then

- StreamingFunction's ``stream_handler`` with the REST API proxy event of a streamed chat
  (events/rest-post-chat-completions-stream.json, as API Gateway's streaming integration
  delivers it): the HTTP integration stream, whose events join to the buffered answer;
- InferenceFunction with the HTTP API event of the same request: the events whole, at the end
  (the HTTP API cannot stream);
- OIP generate_stream against generate; requests that are wrong fail before the first byte,
  with the status and error shape of the route.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from maas.serving.http import ClientResponse
from maas.serving.lambdastream import read_prelude
from maas_devkit import events, lambda_runtime
from maas_devkit.lmfolders import tiny_folder
from test_generation import MODEL, _serve
from test_lm_import import _import_job

pytestmark = pytest.mark.usefixtures("aws")
CHAT = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Name a file format."}],
    "max_tokens": 12,
    "temperature": 0,
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The import job's model dir for a tiny Llama folder."""
    root = tmp_path_factory.mktemp("stream")
    proc = _import_job(root / "job", tiny_folder("llama", root / "folder"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "job" / "model"


def _sse(body: bytes) -> list[Any]:
    blocks = body.decode().split("\n\n")
    assert blocks[-1] == "", "every event ends with a blank line"
    out = []
    for block in blocks[:-1]:
        assert block.startswith("data: ")
        data = block[len("data: ") :]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def _stream(event: dict[str, Any], context: Any) -> tuple[int, dict[str, str], list[bytes]]:
    chunks = iter(lambda_runtime.load_handler("streaming").stream_handler(event, context))
    status, headers, first = read_prelude(chunks)
    return status, headers, [first, *chunks]


def _buffered(path: str, body: dict[str, Any], context: Any) -> ClientResponse:
    event = events.http_event("POST", path, body=json.dumps(body))
    handler = lambda_runtime.load_handler("inference")
    return ClientResponse.of(handler.lambda_handler(event, context))


def test_rest_event_streams_a_chat_that_joins_to_the_buffered_answer(
    aws: Any, model_dir: Path, lambda_context: Any
) -> None:
    _serve(aws, model_dir, lambda_context)
    want = _buffered("/v1/chat/completions", CHAT, lambda_context).json()
    # GIVEN the event API Gateway's streaming integration hands the function
    event = events.event_file("rest-post-chat-completions-stream.json")
    assert json.loads(event["body"]) == {
        **CHAT,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    # WHEN the streaming function answers it
    status, headers, chunks = _stream(event, lambda_context)
    # THEN the prelude says 200 text/event-stream, and each event is a chunk of its own
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    assert headers["Cache-Control"] == "no-cache"
    body = b"".join(chunks)
    parsed = _sse(body)
    assert len([c for c in chunks if c]) == len(parsed)
    *choices, usage, done = parsed
    assert done == "[DONE]"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in choices)
    assert text == want["choices"][0]["message"]["content"]
    assert choices[-1]["choices"][0]["finish_reason"] == want["choices"][0]["finish_reason"]
    assert usage["usage"] == want["usage"]


def test_http_api_answers_a_streamed_request_with_the_events_whole(
    aws: Any, model_dir: Path, lambda_context: Any
) -> None:
    _serve(aws, model_dir, lambda_context)
    ask = {"model": MODEL, "prompt": "A file", "max_tokens": 12, "temperature": 0}
    buffered = _buffered("/v1/completions", ask, lambda_context).json()
    streamed = _buffered("/v1/completions", {**ask, "stream": True}, lambda_context)
    assert streamed.status == 200 and streamed.headers["content-type"] == "text/event-stream"
    *chunks, done = _sse(streamed.body)
    assert done == "[DONE]"
    assert "".join(c["choices"][0]["text"] for c in chunks) == buffered["choices"][0]["text"]


def test_generate_stream_says_what_generate_says(
    aws: Any, model_dir: Path, lambda_context: Any
) -> None:
    _serve(aws, model_dir, lambda_context)
    ask = {"text_input": "The standard library", "parameters": {"max_tokens": 10}}
    want = _buffered(f"/v2/models/{MODEL}/generate", ask, lambda_context).json()
    event = events.rest_api_event(
        "POST",
        f"/v2/models/{MODEL}/generate_stream",
        {"Content-Type": "application/json"},
        json.dumps(ask),
        resource="/v2/models/{model}/generate_stream",
        path_parameters={"model": MODEL},
    )
    status, _, chunks = _stream(event, lambda_context)
    *pieces, last = _sse(b"".join(chunks))
    assert status == 200
    assert "".join(p["text_output"] for p in pieces) == want["text_output"]
    assert (last["finish_reason"], last["usage"]) == (want["finish_reason"], want["usage"])
    assert {p["model_version"] for p in [*pieces, last]} == {want["model_version"]}


@pytest.mark.parametrize(
    ("path", "body", "status", "check"),
    [
        ("/v1/completions", {"model": "nope", "prompt": "x", "stream": True}, 404,
         lambda d: d["error"]["code"] == "model_not_found"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "stream": "yes"}, 400,
         lambda d: d["error"]["param"] == "stream"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [], "stream": True}, 400,
         lambda d: d["error"]["param"] == "messages"),
        ("/v1/completions", {"model": MODEL, "prompt": "word " * 700, "stream": True}, 400,
         lambda d: d["error"]["code"] == "context_length_exceeded"),
        (f"/v2/models/{MODEL}/generate_stream",
         {"text_input": "x", "parameters": {"stream": False}}, 400,
         lambda d: "generate_stream always streams" in d["error"]),
        (f"/v2/models/{MODEL}/generate", {"text_input": "x", "parameters": {"stream": True}}, 400,
         lambda d: "generate_stream" in d["error"]),
    ],
)  # fmt: skip
def test_bad_stream_requests_fail_before_the_first_byte(
    aws: Any,
    model_dir: Path,
    lambda_context: Any,
    path: str,
    body: dict[str, Any],
    status: int,
    check: Any,
) -> None:
    _serve(aws, model_dir, lambda_context)
    event = events.rest_api_event(
        "POST", path, {"Content-Type": "application/json"}, json.dumps(body)
    )
    got, headers, chunks = _stream(event, lambda_context)
    assert got == status and headers["Content-Type"] == "application/json"
    assert check(json.loads(b"".join(chunks)))
