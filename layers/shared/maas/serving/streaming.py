"""Server-sent events of a generation as it happens: the streaming half of the OpenAI wire
format, and the OIP generate extension's generate_stream. Standard library only.

- /v1/completions and /v1/chat/completions with ``"stream": true``: one ``data: {...}`` chunk
  per piece of text (``text_completion`` chunks; ``chat.completion.chunk`` with a ``delta``,
  the role in the first), then a chunk with an empty delta carrying the ``finish_reason``, with
  ``stream_options.include_usage`` a usage chunk (``"choices": []``) after it, and
  ``data: [DONE]``. Every chunk before the usage one has ``"usage": null`` when usage is asked
  for, as OpenAI's do.
- /v2/models/{m}/generate_stream: one ``data: {"text_output": ...}`` event per piece, the last
  one with ``finish_reason`` and ``usage`` (Triton's generate_stream has no ``[DONE]``).
- An error once the first byte is out can no longer change the status: it is one last event
  with an ``error`` member (OpenAI's shape on /v1, the API's ``{"error": "..."}`` on /v2), so a
  client raises rather than taking a cut stream for a finished one.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

from maas.serving.generation import Generation

logger = logging.getLogger("maas.inference")
CONTENT_TYPE = "text/event-stream"
HEADERS = {"Cache-Control": "no-cache"}
DONE = b"data: [DONE]\n\n"
FAILED = "generation failed after the stream started; see the function's logs"


def event(data: Any) -> bytes:
    """One server-sent event carrying ``data`` as compact JSON."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def openai_events(
    run: Generation, model: str, *, chat: bool, include_usage: bool = False
) -> Iterator[bytes]:
    """A /v1 completion or chat completion as OpenAI streams it."""
    head: dict[str, Any] = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(text: str | None, finish_reason: str | None = None, role: bool = False) -> bytes:
        if chat:
            delta = {} if text is None else {"content": text}
            if role:
                delta = {"role": "assistant", **delta}
            choice: dict[str, Any] = {"index": 0, "delta": delta}
        else:
            choice = {"index": 0, "text": text or ""}
        choice.update(logprobs=None, finish_reason=finish_reason)
        body = {**head, "choices": [choice]}
        if include_usage:
            body["usage"] = None
        return event(body)

    try:
        if chat:
            yield chunk("", role=True)
        for piece in run:
            yield chunk(piece)
        completion = run.completion
        assert completion is not None
        yield chunk(None, completion.finish_reason)
        if include_usage:
            yield event({**head, "choices": [], "usage": completion.usage()})
        yield DONE
    except Exception:
        logger.exception("generation failed mid-stream")
        error = {"message": FAILED, "type": "server_error", "param": None, "code": None}
        yield event({"error": error})


def oip_events(run: Generation, model: str, version: str) -> Iterator[bytes]:
    """The OIP generate extension's generate_stream: text_output piece by piece."""
    head = {"model_name": model, "model_version": version}
    try:
        for piece in run:
            yield event({**head, "text_output": piece})
        completion = run.completion
        assert completion is not None
        yield event(
            {
                **head,
                "text_output": "",
                "finish_reason": completion.finish_reason,
                "usage": completion.usage(),
            }
        )
    except Exception:
        logger.exception("generation failed mid-stream")
        yield event({"error": FAILED})
