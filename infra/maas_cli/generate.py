"""`maas generate` and `maas chat`: a quick try of a text-generation model over the stack's
OpenAI-compatible routes (/v1/completions, /v1/chat/completions), streamed: the text is printed
as it arrives, from the streaming API (StreamingApiUrl; the HTTP API, which sends the events at
the end, where a stack has none). SigV4-signed when the session has credentials
(InferenceAuth=AWS_IAM needs it; an open API ignores the signature); MAAS_API_KEY is sent as
the API key (StreamingApiKeys=true)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

from maas_cli.connect import StackHandle


class GenerateError(RuntimeError):
    pass


def _request(
    stack: StackHandle, path: str, body: dict[str, Any]
) -> tuple[str, bytes, dict[str, str]]:
    """(url, body, headers) of a POST to the stack's streaming API (its API where it has none),
    SigV4-signed when the session has credentials, with MAAS_API_KEY as the API key."""
    from maas_cli.sigv4 import sign

    base = stack.outputs.get("StreamingApiUrl") or stack.outputs["ApiUrl"]
    url = base.rstrip("/") + path
    data = json.dumps(body).encode()
    headers = {"content-type": "application/json", "accept": "text/event-stream"}
    if os.environ.get("MAAS_API_KEY"):
        headers["x-api-key"] = os.environ["MAAS_API_KEY"]
    credentials = stack.session.get_credentials()
    if credentials is not None:
        frozen = credentials.get_frozen_credentials()
        headers = sign(
            "POST",
            url,
            data,
            access_key=frozen.access_key,
            secret_key=frozen.secret_key,
            token=frozen.token,
            region=stack.session.region_name or "us-east-1",
            headers=headers,
        )
    return url, data, headers


def stream(
    stack: StackHandle, path: str, body: dict[str, Any], timeout: float = 60
) -> Iterator[dict[str, Any]]:
    """POST with ``"stream": true`` (and the usage chunk); each server-sent event's JSON as it
    arrives, until ``[DONE]``. An error before the stream is the HTTP status's; one after it
    is the stream's error event."""
    import requests

    ask = {**body, "stream": True, "stream_options": {"include_usage": True}}
    url, data, headers = _request(stack, path, ask)
    try:
        r = requests.post(url, data=data, headers=headers, timeout=timeout, stream=True)
    except requests.RequestException as e:
        raise GenerateError(f"inference API at {url} unreachable: {e}") from None
    with r:
        if r.status_code != 200:
            raise GenerateError(f"{_message(r.content) or r.reason} (HTTP {r.status_code})")
        # chunk_size None: each piece as the server sends it, not 512 bytes at a time
        yield from sse_events(r.iter_content(chunk_size=None))


def sse_events(chunks: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """The JSON of each ``data:`` line of a server-sent event stream, as soon as its line is
    whole, up to ``[DONE]``; ``chunks`` are the bytes as they arrive, cut anywhere."""
    buffered = b""
    for chunk in chunks:
        buffered += chunk
        *lines, buffered = buffered.split(b"\n")
        for line in lines:
            if not line.startswith(b"data:"):
                continue  # blank lines between events, comments, other fields
            data = line[len(b"data:") :].strip()
            if data == b"[DONE]":
                return
            doc = json.loads(data)
            if "error" in doc:
                raise GenerateError(f"the stream failed: {_message(data)}")
            yield doc
    raise GenerateError("the stream ended before [DONE]")


def _message(raw: bytes) -> str:
    try:
        err = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        return raw.decode(errors="replace")
    message = err.get("message") if isinstance(err, dict) else err
    return str(message or "")


def sampling(args: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"max_tokens": args.max_tokens, "temperature": args.temperature}
    if args.seed is not None:
        body["seed"] = args.seed
    return body


def _write_stream(
    events: Iterator[dict[str, Any]], out: TextIO, piece: Callable[[dict[str, Any]], Any]
) -> tuple[str, str | None, dict[str, Any]]:
    """Writes each piece of text as it arrives; (the whole text, finish_reason, usage)."""
    text, reason = "", None
    usage: dict[str, Any] = {}
    for doc in events:
        usage = doc.get("usage") or usage
        for choice in doc.get("choices") or ():
            got = piece(choice) or ""
            text += got
            out.write(got)
            out.flush()
            reason = choice.get("finish_reason") or reason
    return text, reason, usage


def generate(stack: StackHandle, model: str, prompt: str, args: Any, out: TextIO) -> int:
    body = {"model": model, "prompt": prompt, **sampling(args)}
    _, reason, usage = _write_stream(
        stream(stack, "/v1/completions", body), out, lambda c: c.get("text")
    )
    out.write("\n")
    print(
        f"[{reason}; {usage.get('prompt_tokens')} prompt + "
        f"{usage.get('completion_tokens')} completion tokens]",
        file=sys.stderr,
    )
    return 0


def chat(stack: StackHandle, model: str, args: Any, read: Callable[[str], str], out: TextIO) -> int:
    """A conversation: each line you type is a user turn; an empty line or EOF ends it. The
    answer is printed token by token as it arrives."""
    messages: list[dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    while True:
        try:
            line = read("you> ")
        except EOFError:
            break
        if not line.strip():
            break
        messages.append({"role": "user", "content": line})
        out.write(f"{model}> ")
        body = {"model": model, "messages": messages, **sampling(args)}
        events = stream(stack, "/v1/chat/completions", body)
        answer, _, _ = _write_stream(events, out, lambda c: (c.get("delta") or {}).get("content"))
        messages.append({"role": "assistant", "content": answer})
        out.write("\n")
        out.flush()
    return 0
