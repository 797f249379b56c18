"""Token streaming: streamed against buffered through the local HTTP API, and the streaming
handler's own cost per token against the bare generation loop.

    python -m bench.streaming [--quick]     (also part of `make bench`)

One model: bench.generation's randomly initialised Llama (width 512, 8 layers, 8,192 tokens of
vocabulary, ~29 M parameters), uploaded as a Hugging Face folder to a local stack, which
imports it (the training job) and serves what the optimizer chose. Then, in this process:

- **through the HTTP API**: the same greedy ``/v1/completions`` request, ``"stream": true``
  (read as it arrives, ``maas_cli.generate.sse_events``) and buffered, interleaved round by
  round: time to first token as the client sees it (the first event with text; buffered: the
  whole answer), total time, tokens/s (completion tokens / total) and, streamed, the decode
  rate between the first and the last text event. The stack's server and this client share
  one process (and its GIL), as in the e2e tests.
- **handler overhead per token**: StreamingFunction's ``stream_handler`` on the REST API event
  of the same streamed request, consumed to its end (routing, parsing, the store's cached
  model, incremental detokenization, stop-sequence hold-back, SSE framing, the integration
  stream), against ``Generator.tokens()`` alone on the same generator and prompt ids, pair by
  pair (bench.overhead.interleaved); both make the same number of tokens (checked).

Writes bench/streaming.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from .generation import LAYERS, VOCAB, WIDTH
from .overhead import interleaved

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "streaming.json"
MODEL = "bench-llama"
PROMPT = "The standard library provides"
NEW = 128  # tokens per request
TARGET_OVERHEAD = 0.05


def serve(stack: Any, work: Path) -> None:
    """The bench model uploaded as a folder, imported and made ready by the stack."""
    from maas_devkit.lmfolders import import_through_stack, tiny_folder

    folder = tiny_folder("llama", work / "folder", width=WIDTH, layers=LAYERS, vocab_size=VOCAB)
    import_through_stack(stack, MODEL, folder, timeout=1800)


def _ask(stream: bool) -> dict[str, Any]:
    ask: dict[str, Any] = {"model": MODEL, "prompt": PROMPT, "max_tokens": NEW, "temperature": 0}
    if stream:
        ask.update(stream=True, stream_options={"include_usage": True})
    return ask


def streamed(url: str) -> dict[str, float]:
    import requests
    from maas_cli.generate import sse_events

    t0 = time.perf_counter()
    texts: list[float] = []
    tokens = 0
    with requests.post(f"{url}/v1/completions", json=_ask(True), stream=True, timeout=300) as r:
        r.raise_for_status()
        for doc in sse_events(r.iter_content(chunk_size=None)):
            if any(c.get("text") for c in doc["choices"]):
                texts.append(time.perf_counter() - t0)
            if doc.get("usage"):
                tokens = doc["usage"]["completion_tokens"]
    total = time.perf_counter() - t0
    return {
        "first_token_s": texts[0],
        "total_s": total,
        "tokens": tokens,
        "tokens_per_s": tokens / total,
        "decode_tokens_per_s": (tokens - 1) / (texts[-1] - texts[0]),
        "text_events": len(texts),
    }


def buffered(url: str) -> dict[str, float]:
    import requests

    t0 = time.perf_counter()
    r = requests.post(f"{url}/v1/completions", json=_ask(False), timeout=300)
    r.raise_for_status()
    total = time.perf_counter() - t0
    tokens = r.json()["usage"]["completion_tokens"]
    return {
        "first_token_s": total,
        "total_s": total,
        "tokens": tokens,
        "tokens_per_s": tokens / total,
    }


def over_http(url: str, rounds: int) -> dict[str, Any]:
    """Streamed and buffered, alternating which goes first; medians of each figure."""
    streamed(url), buffered(url)  # warm: the model loaded, the sessions run once
    runs: dict[str, list[dict[str, float]]] = {"streamed": [], "buffered": []}
    for r in range(rounds):
        order = ("streamed", "buffered") if r % 2 == 0 else ("buffered", "streamed")
        for side in order:
            runs[side].append(streamed(url) if side == "streamed" else buffered(url))
    return {
        side: {k: statistics.median(run[k] for run in v) for k in v[0]} | {"runs": len(v)}
        for side, v in runs.items()
    }


def handler_overhead(pairs: int) -> dict[str, Any]:
    """stream_handler consumed to its end against Generator.tokens(), per token."""
    from maas.serving.api import _generator
    from maas.serving.generation import Sampling
    from maas_devkit.events import rest_api_event
    from maas_devkit.lambda_runtime import LambdaContext, load_handler

    handler = load_handler("streaming")
    context = LambdaContext("maas-streaming", timeout_s=900)
    event = rest_api_event(
        "POST",
        "/v1/completions",
        {"Content-Type": "application/json"},
        json.dumps(_ask(True)),
        resource="/v1/completions",
    )
    gen = _generator(handler.serving.store().get(MODEL, None), MODEL)
    ids = gen.prompt_ids(PROMPT)
    counts: dict[str, int] = {}

    def through_handler() -> None:
        body = b"".join(handler.stream_handler(event, context))
        usage = json.loads(body.rsplit(b"data: ", 2)[1])["usage"]
        counts["handler"] = usage["completion_tokens"]

    def bare() -> None:
        counts["bare"] = sum(1 for _ in gen.tokens(ids, Sampling(NEW, temperature=0.0)))

    th, tb = interleaved(through_handler, bare, pairs, warmup=2)
    if counts["handler"] != counts["bare"]:
        raise AssertionError(f"the two sides made different token counts: {counts}")
    n = counts["bare"]
    h, b = statistics.median(th), statistics.median(tb)
    return {
        "tokens": n,
        "handler_ms_per_token": h / n * 1e3,
        "bare_ms_per_token": b / n * 1e3,
        "overhead_ms_per_token": (h - b) / n * 1e3,
        "overhead_ratio": (h - b) / b,
        # each pair's own ratio, the median: robust to load that drifts between pairs
        "overhead_ratio_paired": statistics.median(x / y - 1 for x, y in zip(th, tb, strict=True)),
        "target_ratio": TARGET_OVERHEAD,
        "pairs": pairs,
    }


def table(result: dict[str, Any]) -> str:
    s, b = result["http"]["streamed"], result["http"]["buffered"]
    o = result["handler"]
    lines = [
        f"| through the local HTTP API ({s['tokens']:.0f} tokens) | first token (ms) | "
        "total (ms) | tokens/s | decode tokens/s |",
        "|---|---|---|---|---|",
        f"| streamed | {s['first_token_s'] * 1e3:.1f} | {s['total_s'] * 1e3:.0f} | "
        f"{s['tokens_per_s']:.1f} | {s['decode_tokens_per_s']:.1f} |",
        f"| buffered | {b['first_token_s'] * 1e3:.1f} | {b['total_s'] * 1e3:.0f} | "
        f"{b['tokens_per_s']:.1f} | |",
        "",
        "| per token | bare loop (ms) | stream_handler (ms) | overhead (ms) | ratio |",
        "|---|---|---|---|---|",
        f"| {o['tokens']} tokens | {o['bare_ms_per_token']:.3f} | "
        f"{o['handler_ms_per_token']:.3f} | {o['overhead_ms_per_token']:.4f} | "
        f"{o['overhead_ratio'] * 100:+.2f} % (pair by pair "
        f"{o['overhead_ratio_paired'] * 100:+.2f} %; target <= {TARGET_OVERHEAD * 100:.0f} %) |",
    ]
    return "\n".join(lines)


def run(quick: bool = False) -> dict[str, Any]:
    from maas_devkit.stacks import running_stack

    from .common import loadavg, machine, now_iso

    with tempfile.TemporaryDirectory(prefix="maas-bench-stream-") as tmp:
        work = Path(tmp)
        with running_stack(work / "stack") as stack:
            serve(stack, work)
            result = {
                "date": now_iso(),
                "machine": machine(),
                "loadavg_start": loadavg(),
                "model": {"width": WIDTH, "layers": LAYERS, "vocab": VOCAB},
                "prompt": PROMPT,
                "max_tokens": NEW,
                "http": over_http(stack.api_url, 3 if quick else 9),
                "handler": handler_overhead(5 if quick else 25),
            }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    print(table(run(p.parse_args().quick)))


if __name__ == "__main__":
    main()
