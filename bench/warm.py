"""Warm latency per request, in process: the inference handler (API Gateway events, the served
version loaded from the local stack), the torch comparator (bench/torch_app.py, fp32 eager, the
same event) and bare `session.run` (the handler's own session, the same inputs already in
tensors: the difference to the handler is the handler's overhead).

Per case, `blocks` repeated runs; in each, the three variants take turns request by request
(the order rotating), for a time budget. Each block gives a p50 and a p99 per variant; the
figures are the medians over blocks, with the spread.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from maas_devkit.lambda_runtime import LambdaContext

from .common import BENCH, infer_event, percentile, summary


def load_torch_app(kind: str, model_dir: Path) -> Any:
    """A fresh copy of bench/torch_app.py configured for `kind` (it loads at import)."""
    os.environ["TORCH_MODEL"] = kind
    os.environ["TORCH_MODEL_DIR"] = str(model_dir)
    spec = importlib.util.spec_from_file_location(f"torch_app_{kind}", BENCH / "torch_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def load_handler() -> Any:
    from maas_devkit.lambda_runtime import load_handler as load

    return load("inference")


def _ok(response: dict[str, Any]) -> None:
    if response["statusCode"] != 200:
        raise RuntimeError(f"request failed: {response['statusCode']} {response['body'][:300]}")


def run_case(
    variants: dict[str, Callable[[], Any]],
    *,
    blocks: int,
    budget_s: float,
    min_n: int = 5,
    max_n: int = 2000,
) -> dict[str, Any]:
    for call in variants.values():  # warm-up: allocations, kernel choice, caches
        for _ in range(3):
            call()
    names = list(variants)
    per_block: dict[str, list[list[float]]] = {n: [] for n in names}
    perf = time.perf_counter
    for _ in range(blocks):
        times: dict[str, list[float]] = {n: [] for n in names}
        deadline = perf() + budget_s
        i = 0
        gc.collect()
        while i < max_n and (i < min_n or perf() < deadline):
            k = i % len(names)
            for name in names[k:] + names[:k]:
                t0 = perf()
                variants[name]()
                times[name].append((perf() - t0) * 1e3)
            i += 1
        for name in names:
            per_block[name].append(times[name])
    out: dict[str, Any] = {"blocks": blocks}
    for name in names:
        runs = per_block[name]
        out[name] = {
            "p50_ms": summary([percentile(r, 50) for r in runs]),
            "p99_ms": summary([percentile(r, 99) for r in runs]),
            "n_per_block": len(runs[0]),
        }
    return out


def digits_cases(handler: Any, torch_app: Any, x: np.ndarray, **kw: Any) -> dict[str, Any]:
    ctx = LambdaContext("maas-bench-inference")
    results = {}
    for batch in (1, 32):
        rows = x[:batch].astype(np.float32)
        body = {
            "inputs": [
                {"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                 "data": rows.reshape(-1).tolist()}
            ]
        }  # fmt: skip
        event = infer_event("digits", body)
        _ok(handler.lambda_handler(event, ctx))
        session = handler.store().get("digits", None).session
        feeds = {"input": rows}
        results[f"digits_b{batch}"] = run_case(
            {
                "handler": lambda e=event: _ok(handler.lambda_handler(e, ctx)),
                "torch": lambda e=event: _ok(torch_app.lambda_handler(e, ctx)),
                "bare": lambda f=feeds, s=session: s.run(None, f),
            },
            **kw,
        )
    return results


def text_cases(
    handler: Any, torch_app: Any, texts: dict[str, str], budgets: dict[str, float], **kw: Any
) -> dict[str, Any]:
    ctx = LambdaContext("maas-bench-inference")
    results = {}
    for label, text in texts.items():
        for batch in (1, 32):
            items = [text] * batch
            body = {
                "inputs": [{"name": "text", "shape": [batch], "datatype": "BYTES", "data": items}]
            }
            event = infer_event("minilm", body)
            _ok(handler.lambda_handler(event, ctx))
            loaded = handler.store().get("minilm", None)
            assert loaded.preprocess is not None
            feeds = loaded.preprocess({"text": np.asarray(items, dtype=object)})
            session = loaded.session
            name = f"minilm_{label}_b{batch}"
            results[name] = run_case(
                {
                    "handler": lambda e=event: _ok(handler.lambda_handler(e, ctx)),
                    "torch": lambda e=event: _ok(torch_app.lambda_handler(e, ctx)),
                    "bare": lambda f=feeds, s=session: s.run(None, f),
                },
                budget_s=budgets.get(name, kw.get("budget_s", 3.0)),
                **{k: v for k, v in kw.items() if k != "budget_s"},
            )
            results[name]["tokens"] = int(feeds["input_ids"].shape[1])
    return results


def text_of_tokens(tokenizer_json: Path, tokens: int, prose: str) -> str:
    """A prefix of `prose` that the tokenizer turns into exactly `tokens` ids ([CLS]/[SEP] in)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_truncation()
    enc = tok.encode(prose)
    words = [(s, e) for (s, e), t in zip(enc.offsets, enc.ids, strict=True) if e > s]
    cut = words[tokens - 3][1]  # tokens - 2 content ids, then [SEP]
    text = prose[:cut]
    while len(tok.encode(text).ids) > tokens:
        text = text[:-1].rstrip()
    return text


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for case, r in results.items():
        h, t, b = (r[v]["p50_ms"]["median"] for v in ("handler", "torch", "bare"))
        out[case] = {
            "served_over_torch_p50": h / t,
            "handler_overhead_ms": h - b,
            "handler_overhead_pct": (h - b) / b * 100,
        }
    return out
