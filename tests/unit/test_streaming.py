"""Streaming a generation: pieces of text as they are decoded, the server-sent events of the
OpenAI wire format and of OIP generate_stream, and the HTTP integration stream Lambda reads.

A scripted model stands in for ONNX Runtime (its greedy logits spell out a chosen token
sequence) and a byte-level tokenizer for tokenizers' (each token one or more UTF-8 bytes,
decoded with U+FFFD where a character's bytes are incomplete, as byte-level BPE decodes).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from maas.serving.generation import Generator, Sampling, _held_back
from maas.serving.http import ClientResponse, Response, StreamingResponse
from maas.serving.lambdastream import DELIMITER, integration_response, read_prelude
from maas.serving.openaiwire import WireError, check_keys, streaming
from maas.serving.streaming import DONE, oip_events, openai_events

EOS = 0


class ByteTokens:
    """Token i > 0 is the bytes VOCAB[i]; decoding joins them as byte-level BPE does."""

    def __init__(self, vocab: list[bytes]) -> None:
        self.vocab = vocab

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")

    def encode(self, text: str, special: bool = True) -> list[int]:
        return [1]


class ScriptedSession:
    """Greedy logits that pick ``script`` token by token (then EOS), from the start at each
    new generation (an empty past); counts the runs of the last one."""

    def __init__(self, script: list[int], vocab: int) -> None:
        self.script, self.vocab, self.runs = script, vocab, 0

    def get_outputs(self) -> list[Any]:
        return [type("O", (), {"name": n}) for n in ("logits", "present.0.key")]

    def get_inputs(self) -> list[Any]:
        return [type("I", (), {"name": n}) for n in ("input_ids", "past_key_values.0.key")]

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if feeds["past_key_values.0.key"].shape[2] == 0:
            self.runs = 0
        token = self.script[self.runs] if self.runs < len(self.script) else EOS
        self.runs += 1
        logits = np.zeros((1, feeds["input_ids"].shape[1], self.vocab), np.float32)
        logits[0, -1, token] = 1.0
        return [logits, np.zeros((1, 1, 1, 2), np.float32)]


def _generator(pieces: list[bytes], context: int = 64) -> tuple[Generator, ScriptedSession]:
    vocab = [b"", *pieces]
    session = ScriptedSession(list(range(1, len(vocab))), len(vocab))
    spec = {"context_length": context, "eos_token_ids": [EOS], "kv_heads": 1, "head_dim": 2}
    return Generator(session, spec, ByteTokens(vocab)), session  # type: ignore[arg-type]


GREEDY = Sampling(max_tokens=32, temperature=0.0)
# "Grüße, 世界!" with its multi-byte characters split across tokens, then " done."
SPLIT = [b"Gr", b"\xc3", b"\xbc\xc3", b"\x9f", b"e, ", b"\xe4\xb8", b"\x96\xe7\x95\x8c!", b" done."]


def test_streamed_pieces_join_to_the_buffered_answer_and_never_split_a_character() -> None:
    gen, _ = _generator(SPLIT)
    run = gen.stream([1], GREEDY)
    pieces = list(run)
    assert "".join(pieces) == "Grüße, 世界! done." == gen.generate([1], GREEDY).text
    assert not any("\ufffd" in p for p in pieces)
    # a token that ends mid-character is held until the character is whole
    assert pieces == ["Gr", "ü", "ß", "e, ", "世界!", " done."]
    assert run.completion is not None and run.completion.finish_reason == "stop"
    assert run.completion.completion_tokens == len(SPLIT)


def test_the_start_of_a_stop_sequence_is_held_until_it_is_known_not_to_be_one() -> None:
    gen, _ = _generator([b"one ", b"two", b" E", b"N", b"D three"])
    p = Sampling(max_tokens=32, temperature=0.0, stop=(" END",))
    run = gen.stream([1], p)
    pieces = list(run)
    assert pieces == ["one", " two"]  # " ", " E", " EN" may begin " END": held
    assert run.completion is not None and run.completion.text == "one two"
    assert run.completion.stopped_by == "stop sequence"
    assert gen.generate([1], p).text == "one two"
    # AND text that only looked like a stop sequence's start is shown once it is not
    gen, _ = _generator([b"a E", b"Nx"])
    assert list(gen.stream([1], p)) == ["a", " ENx"]


@pytest.mark.parametrize(
    ("max_tokens", "context", "reason", "why"),
    [(3, 64, "length", "max_tokens"), (32, 4, "length", "context"), (32, 64, "stop", "eos")],
)
def test_how_a_stream_ends_is_the_buffered_answers(
    max_tokens: int, context: int, reason: str, why: str
) -> None:
    gen, _ = _generator([b"a", b"b", b"c", b"d", b"e"], context=context)
    p = Sampling(max_tokens=max_tokens, temperature=0.0)
    run = gen.stream([1], p)
    text = "".join(run)
    assert run.completion is not None
    assert (run.completion.finish_reason, run.completion.stopped_by) == (reason, why)
    assert text == gen.generate([1], p).text


def test_a_consumer_that_stops_pulling_stops_the_model_within_the_token_in_flight() -> None:
    gen, session = _generator([b"x"] * 30)
    run = gen.stream([1], Sampling(max_tokens=30, temperature=0.0))
    pieces = iter(run)
    got = [next(pieces) for _ in range(3)]
    pieces.close()  # type: ignore[attr-defined]  # the client went away
    assert got == ["x"] * 3 and session.runs == 3
    assert run.completion is not None and run.completion.stopped_by == "closed"
    assert run.completion.completion_tokens == 3


def test_held_back_counts_undecoded_bytes_and_stop_prefixes() -> None:
    assert _held_back("abc", ()) == 0
    assert _held_back("ab\ufffd", ()) == 1
    assert _held_back("ab<|e", ("<|end|>",)) == 3
    assert _held_back("ab<", ("<|end|>", "</s>")) == 1
    assert _held_back("ab</", ("<|end|>", "</s>")) == 2


def _events(chunks: list[bytes]) -> list[Any]:
    body = b"".join(chunks).decode()
    assert body.endswith("\n\n")
    out = []
    for block in body.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_chat_chunks_are_openais_role_deltas_finish_usage_then_done() -> None:
    gen, _ = _generator([b"Hel", b"lo", b"!"])
    events = _events(
        list(openai_events(gen.stream([1], GREEDY), "m", chat=True, include_usage=True))
    )
    *chunks, usage, done = events
    assert done == "[DONE]"
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in [*chunks, usage]}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "Hello!"
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + [
        "stop"
    ]
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert all(c["usage"] is None for c in chunks)
    assert usage["choices"] == [] and usage["usage"] == {
        "prompt_tokens": 1,
        "completion_tokens": 3,
        "total_tokens": 4,
    }


def test_completion_chunks_carry_text_and_no_usage_unless_asked() -> None:
    gen, _ = _generator([b"a", b"b"])
    *chunks, done = _events(list(openai_events(gen.stream([1], GREEDY), "m", chat=False)))
    assert done == "[DONE]"
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert [c["choices"][0]["text"] for c in chunks] == ["a", "b", ""]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert not any("usage" in c for c in chunks)


class Broken(ScriptedSession):
    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.runs == 2:
            raise RuntimeError("onnxruntime failed")
        return super().run(outputs, feeds)


def _broken() -> Generator:
    vocab = [b"", b"a", b"b", b"c"]
    spec = {"context_length": 64, "eos_token_ids": [EOS], "kv_heads": 1, "head_dim": 2}
    return Generator(Broken([1, 2, 3], 4), spec, ByteTokens(vocab))  # type: ignore[arg-type]


def test_an_error_after_the_start_is_a_last_error_event_never_a_silent_cut() -> None:
    events = _events(list(openai_events(_broken().stream([1], GREEDY), "m", chat=True)))
    assert "[DONE]" not in events
    *chunks, last = events
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "a", "b"]
    assert last["error"]["type"] == "server_error" and "logs" in last["error"]["message"]
    run = _broken().stream([1], GREEDY)
    assert "[DONE]" not in _events(list(openai_events(run, "m", chat=False)))
    assert run.completion is not None and run.completion.stopped_by == "error"
    oip = _events(list(oip_events(_broken().stream([1], GREEDY), "m", "3")))
    assert [e.get("text_output") for e in oip[:-1]] == ["a", "b"]
    assert set(oip[-1]) == {"error"}


def test_oip_generate_stream_events_end_with_finish_reason_and_usage() -> None:
    gen, _ = _generator([b"a", b"b"])
    *pieces, last = _events(list(oip_events(gen.stream([1], GREEDY), "m", "3")))
    assert pieces == [
        {"model_name": "m", "model_version": "3", "text_output": "a"},
        {"model_name": "m", "model_version": "3", "text_output": "b"},
    ]
    assert last["finish_reason"] == "stop" and last["usage"]["completion_tokens"] == 2
    assert last["text_output"] == ""


@pytest.mark.parametrize(
    ("doc", "want"),
    [
        ({}, (False, False)),
        ({"stream": False}, (False, False)),
        ({"stream": True}, (True, False)),
        ({"stream": True, "stream_options": {"include_usage": True}}, (True, True)),
    ],
)
def test_stream_and_stream_options_parse_as_openai_reads_them(
    doc: dict[str, Any], want: tuple[bool, bool]
) -> None:
    check_keys(doc, set())
    assert streaming(doc) == want


@pytest.mark.parametrize(
    ("doc", "param"),
    [
        ({"stream": "yes"}, "stream"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": True, "stream_options": {"other": 1}}, "stream_options"),
        ({"stream": True, "stream_options": {"include_usage": 1}}, "stream_options"),
    ],
)
def test_bad_stream_settings_are_openai_errors_naming_the_parameter(
    doc: dict[str, Any], param: str
) -> None:
    with pytest.raises(WireError) as e:
        streaming(doc)
    assert e.value.param == param and e.value.status == 400


def test_integration_stream_is_prelude_eight_nuls_then_the_body_as_it_comes() -> None:
    closed = []
    sse = StreamingResponse(200, "text/event-stream", iter([b"data: 1\n\n", b"data: 2\n\n"]))
    chunks = list(integration_response(sse, done=lambda: closed.append(True)))
    head, _, rest = chunks[0].partition(DELIMITER)
    assert json.loads(head) == {"statusCode": 200, "headers": {"Content-Type": "text/event-stream"}}
    assert rest == b"" and chunks[1:] == [b"data: 1\n\n", b"data: 2\n\n"] and closed == [True]
    # AND the front door's side reads it back: status, headers, then the body
    again = iter(integration_response(Response(404, "application/json", '{"error": "x"}')))
    status, headers, first = read_prelude(again)
    assert (status, headers["Content-Type"]) == (404, "application/json")
    assert first + b"".join(again) == b'{"error": "x"}'


def test_a_stream_closed_early_closes_the_routes_body_and_still_reports_done() -> None:
    closed, done = [], []

    def body() -> Any:
        try:
            for i in range(100):
                yield b"%d" % i
        finally:
            closed.append(True)

    stream = integration_response(
        StreamingResponse(200, "text/event-stream", body()), done=lambda: done.append(True)
    )
    assert [next(stream) for _ in range(3)][1:] == [b"0", b"1"]
    stream.close()
    assert closed == done == [True]


def test_a_buffered_front_door_gets_the_events_joined() -> None:
    sse = StreamingResponse(200, "text/event-stream", iter([b"data: a\n\n", DONE]))
    response = ClientResponse.of(sse.to_event())
    assert response.status == 200 and response.headers["content-type"] == "text/event-stream"
    assert response.body == b"data: a\n\ndata: [DONE]\n\n"
