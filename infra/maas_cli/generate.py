"""`maas generate` and `maas chat`: a quick try of a text-generation model over the stack's
OpenAI-compatible routes (/v1/completions, /v1/chat/completions), SigV4-signed when the session
has credentials (InferenceAuth=AWS_IAM needs it; an open API ignores the signature)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TextIO

from maas_cli.connect import StackHandle


class GenerateError(RuntimeError):
    pass


def post(stack: StackHandle, path: str, body: dict[str, Any], timeout: float = 60) -> Any:
    import requests

    from maas_cli.sigv4 import sign

    url = stack.outputs["ApiUrl"].rstrip("/") + path
    data = json.dumps(body).encode()
    headers = {"content-type": "application/json"}
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
    try:
        r = requests.post(url, data=data, headers=headers, timeout=timeout)
    except requests.RequestException as e:
        raise GenerateError(f"inference API at {url} unreachable: {e}") from None
    try:
        doc = r.json()
    except ValueError:
        doc = {}
    if r.status_code != 200:
        err = doc.get("error")
        message = err.get("message") if isinstance(err, dict) else err
        raise GenerateError(f"{message or r.text or r.reason} (HTTP {r.status_code})")
    return doc


def sampling(args: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"max_tokens": args.max_tokens, "temperature": args.temperature}
    if args.seed is not None:
        body["seed"] = args.seed
    return body


def generate(stack: StackHandle, model: str, prompt: str, args: Any, out: TextIO) -> int:
    doc = post(stack, "/v1/completions", {"model": model, "prompt": prompt, **sampling(args)})
    choice, usage = doc["choices"][0], doc["usage"]
    out.write(choice["text"] + "\n")
    print(
        f"[{choice['finish_reason']}; {usage['prompt_tokens']} prompt + "
        f"{usage['completion_tokens']} completion tokens]",
        file=sys.stderr,
    )
    return 0


def chat(stack: StackHandle, model: str, args: Any, read: Callable[[str], str], out: TextIO) -> int:
    """A conversation: each line you type is a user turn; an empty line or EOF ends it."""
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
        doc = post(
            stack, "/v1/chat/completions", {"model": model, "messages": messages, **sampling(args)}
        )
        answer = doc["choices"][0]["message"]["content"]
        messages.append({"role": "assistant", "content": answer})
        out.write(f"{model}> {answer}\n")
        out.flush()
    return 0
