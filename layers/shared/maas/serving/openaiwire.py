"""The OpenAI wire format (buffered) and the OIP generate extension's request: parsing with
clear errors, and the response bodies. Standard library only (plus maas.serving.generation).

Errors on /v1/* are OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``; the
OIP generate route keeps the API's ``{"error": "..."}``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from maas.serving.generation import MAX_STOP_CHARS, MAX_STOP_SEQUENCES, Completion, Sampling
from maas.serving.http import ProtocolError, Response

DEFAULT_MAX_TOKENS = 16  # OpenAI's completions default
MAX_MESSAGES = 256
# Accepted but without effect at their neutral value; anything else is refused by name.
NEUTRAL = {"frequency_penalty": 0, "presence_penalty": 0, "n": 1, "stream": False}
IGNORED = {"user", "logprobs", "echo", "suffix", "stream_options", "metadata", "store"}
SAMPLING = {
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "repetition_penalty",
    "stop",
}


class WireError(ProtocolError):
    """A request error in OpenAI's shape: status, message, the parameter it is about, a code."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 status: int = 400) -> None:  # fmt: skip
        super().__init__(message)
        self.param = param
        self.code = code
        self.status = status


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None):
    kind = {404: "not_found_error", 503: "service_unavailable"}.get(
        status, "invalid_request_error" if status < 500 else "server_error"
    )
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return Response(status, "application/json", json.dumps(body))


def parse_json(body: bytes | str) -> dict[str, Any]:
    try:
        doc = json.loads(body or b"{}")
    except (ValueError, RecursionError):
        raise WireError("the request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise WireError("the request body must be a JSON object")
    return doc


def _number(doc: dict[str, Any], name: str, lo: float, hi: float, default: float) -> float:
    value = doc.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireError(f"{name} must be a number", name)
    if not lo <= value <= hi:
        raise WireError(f"{name} must be between {lo:g} and {hi:g}, got {value}", name)
    return float(value)


def _integer(doc: dict[str, Any], name: str, lo: int, hi: int, default: int | None) -> int | None:
    value = doc.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireError(f"{name} must be an integer", name)
    if not lo <= value <= hi:
        raise WireError(f"{name} must be between {lo} and {hi}, got {value}", name)
    return int(value)


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise WireError("stop must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise WireError(f"stop takes at most {MAX_STOP_SEQUENCES} sequences", "stop")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise WireError(f"a stop sequence is at most {MAX_STOP_CHARS} characters", "stop")
    return tuple(stops)


def check_keys(doc: dict[str, Any], own: set[str]) -> None:
    for key in doc:
        if key in NEUTRAL and doc[key] not in (NEUTRAL[key], None):
            raise WireError(f"{key}={doc[key]!r} is not supported here", key, "unsupported_value")
        if key not in own | SAMPLING | IGNORED | set(NEUTRAL):
            raise WireError(f"unknown parameter {key!r}", key, "unknown_parameter")


def sampling(doc: dict[str, Any], prompt_tokens: int, context: int) -> Sampling:
    """The sampling settings of a request, bounded by the model's context."""
    room = context - prompt_tokens
    if room < 1:
        raise WireError(
            f"the prompt is {prompt_tokens} tokens; this model's context window is {context} "
            "tokens, prompt and completion together",
            "messages" if "messages" in doc else "prompt",
            "context_length_exceeded",
        )
    name = "max_completion_tokens" if "max_completion_tokens" in doc else "max_tokens"
    wanted = _integer(doc, name, 1, 1 << 30, min(DEFAULT_MAX_TOKENS, room))
    if wanted is not None and wanted > room:
        raise WireError(
            f"{name}={wanted} with a {prompt_tokens}-token prompt exceeds this model's context "
            f"window of {context} tokens (at most {room} here)",
            name,
            "context_length_exceeded",
        )
    return Sampling(
        max_tokens=int(wanted or room),
        temperature=_number(doc, "temperature", 0.0, 2.0, 1.0),
        top_p=_number(doc, "top_p", 1e-9, 1.0, 1.0),
        top_k=int(_integer(doc, "top_k", 0, 1 << 20, 0) or 0),
        repetition_penalty=_number(doc, "repetition_penalty", 0.01, 10.0, 1.0),
        seed=_integer(doc, "seed", 0, 2**63 - 1, None),
        stop=_stop(doc.get("stop")),
    )


def model_name(doc: dict[str, Any]) -> str:
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise WireError("model is required (a model name)", "model", "missing_required_parameter")
    return model


def prompt_text(doc: dict[str, Any]) -> str:
    prompt = doc.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise WireError("prompt must be a string (one prompt per request)", "prompt")
    return prompt


def messages(doc: dict[str, Any]) -> list[dict[str, Any]]:
    msgs = doc.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise WireError("messages must be a non-empty list", "messages")
    if len(msgs) > MAX_MESSAGES:
        raise WireError(f"at most {MAX_MESSAGES} messages", "messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise WireError(f"messages[{i}] must be an object with a role", "messages")
        content = m.get("content")
        if isinstance(content, list):  # text parts
            parts = [p.get("text") for p in content if isinstance(p, dict)]
            if not all(isinstance(t, str) for t in parts):
                raise WireError(f"messages[{i}].content: only text parts are supported", "messages")
            content = "".join(str(t) for t in parts)
        if not isinstance(content, str):
            raise WireError(f"messages[{i}].content must be a string", "messages")
        out.append({"role": m["role"], "content": content})
    return out


def completion_body(model: str, c: Completion) -> dict[str, Any]:
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
        ],
        "usage": c.usage(),
    }


def chat_body(model: str, c: Completion) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": c.text},
                "finish_reason": c.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": c.usage(),
    }


def models_body(names: list[tuple[str, int]]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": created, "owned_by": "serverless-maas"}
            for m, created in names
        ],
    }


def oip_generate_request(doc: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(text_input, parameters) of the OIP generate extension's request."""
    text = doc.get("text_input")
    if not isinstance(text, str):
        raise ProtocolError("text_input must be a string")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("parameters must be an object")
    unknown = sorted(set(params) - SAMPLING - {"stream"})
    if unknown:
        raise ProtocolError(f"unknown parameter(s) {unknown}; known: {sorted(SAMPLING)}")
    if params.get("stream"):
        raise ProtocolError("streaming is generate_stream's; /generate answers buffered")
    extra = sorted(set(doc) - {"text_input", "parameters", "id"})
    if extra:
        raise ProtocolError(f"unknown field(s) {extra}")
    return text, params
