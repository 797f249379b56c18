"""`maas generate` / `maas chat` read server-sent events as they arrive: each event as soon as
its line is whole, wherever the bytes were cut, [DONE] ends it, an error event fails it."""

from __future__ import annotations

import io
from typing import Any

import pytest
from maas.serving.generation import Completion
from maas.serving.streaming import openai_events
from maas_cli.generate import GenerateError, _write_stream, sse_events


class Run:
    """A finished generation as maas.serving.generation.Generation reports one."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces
        self.completion = Completion("".join(pieces), [1] * len(pieces), "stop", 3, 0.1, 0.01)

    def __iter__(self) -> Any:
        return iter(self.pieces)


def _wire(pieces: list[str], chat: bool) -> bytes:
    run: Any = Run(pieces)
    return b"".join(openai_events(run, "m", chat=chat, include_usage=True))


@pytest.mark.parametrize("cut", [1, 3, 7, 64, 10_000])
@pytest.mark.parametrize("chat", [False, True])
def test_the_servers_events_read_back_wherever_the_bytes_are_cut(cut: int, chat: bool) -> None:
    # GIVEN the events the streaming routes send, arriving in pieces of `cut` bytes
    wire = _wire(["Hel", "lo", ", wörld"], chat)
    chunks = [wire[i : i + cut] for i in range(0, len(wire), cut)]
    # WHEN the CLI writes them out
    out = io.StringIO()

    def text(choice: dict[str, Any]) -> Any:
        return (choice.get("delta") or {}).get("content") if chat else choice.get("text")

    got, reason, usage = _write_stream(sse_events(chunks), out, text)
    # THEN it printed the text the server made, with its finish_reason and usage
    assert got == out.getvalue() == "Hello, wörld"
    assert reason == "stop" and usage["completion_tokens"] == 3


def test_an_event_is_yielded_before_the_rest_of_the_stream_exists() -> None:
    def arriving() -> Any:
        yield b'data: {"choices": [{"text": "a"}]}\n'
        yield b"\n"
        raise AssertionError("read past the first event")

    assert next(sse_events(arriving())) == {"choices": [{"text": "a"}]}


def test_an_error_event_or_a_cut_stream_is_an_error_not_a_short_answer() -> None:
    err = b'data: {"choices": [{"text": "a"}]}\n\ndata: {"error": {"message": "boom"}}\n\n'
    with pytest.raises(GenerateError, match="the stream failed: boom"):
        list(sse_events([err]))
    with pytest.raises(GenerateError, match="before \\[DONE\\]"):
        list(sse_events([b'data: {"choices": []}\n\n']))
