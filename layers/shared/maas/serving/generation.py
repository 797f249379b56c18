"""The generation loop: an ONNX Runtime KV-cache graph, numpy sampling, ``tokenizers``.

No torch: the graph is the training job's export (maas/core/contract.py names its inputs and
outputs), the prompt is tokenized by maas.serving.textprep.PromptTokenizer (as transformers'
AutoTokenizer tokenizes it), a chat is rendered by maas.serving.chattemplate (as
apply_chat_template renders it). ``tokens`` yields one token at a time and stops when asked
(the streaming issue builds on it); ``generate`` is the buffered answer.

Sampling follows transformers' order: repetition penalty, temperature, top-k, top-p, then a
draw (greedy when temperature is 0). A seed makes a sampled answer repeatable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from maas.core.contract import INPUT_IDS
from maas.serving.textprep import PromptTokenizer

MAX_STOP_SEQUENCES = 4  # OpenAI's limit
MAX_STOP_CHARS = 256


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # stop | length
    prompt_tokens: int
    seconds: float = 0.0
    first_token_s: float = 0.0
    stopped_by: str = ""  # eos | stop sequence | max_tokens | context | deadline
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def next_token(logits: np.ndarray, seen: list[int], p: Sampling, rng: np.random.Generator) -> int:
    """One token from the last position's logits (float) under the sampling settings."""
    x = logits.astype(np.float64, copy=True)
    if p.repetition_penalty != 1.0 and seen:
        idx = np.unique(np.asarray(seen, dtype=np.int64))
        vals = x[idx]
        x[idx] = np.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    if p.temperature == 0.0:
        return int(np.argmax(x))
    x /= p.temperature
    if 0 < p.top_k < len(x):
        kth = np.partition(x, -p.top_k)[-p.top_k]
        x[x < kth] = -np.inf
    probs = np.exp(x - x.max())
    probs /= probs.sum()
    if p.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cum = np.cumsum(probs[order])
        keep = cum - probs[order] < p.top_p  # the smallest head reaching top_p
        mask = np.zeros_like(probs, dtype=bool)
        mask[order[keep]] = True
        probs = np.where(mask, probs, 0.0)
        probs /= probs.sum()
    return int(rng.choice(len(probs), p=probs))


class Generator:
    """One loaded model's generation: its session, generation.json spec and tokenizer."""

    def __init__(self, session: Any, spec: dict[str, Any], tokenizer: PromptTokenizer) -> None:
        self.session = session
        self.spec = spec
        self.tokenizer = tokenizer
        self.context_length = int(spec["context_length"])
        self.eos = {int(t) for t in spec.get("eos_token_ids") or []}
        self.outputs = [o.name for o in session.get_outputs()]
        self.past_names = [i.name for i in session.get_inputs()[1:]]
        kv, hd = int(spec["kv_heads"]), int(spec["head_dim"])
        self.empty = {n: np.zeros((1, kv, 0, hd), np.float32) for n in self.past_names}

    @property
    def chat_template(self) -> str | None:
        return self.spec.get("chat_template")

    def prompt_ids(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt)

    def chat_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        from maas.serving.chattemplate import render

        template = self.chat_template
        if not template:
            raise ValueError("this model has no chat template: use /v1/completions")
        text = render(template, messages, dict(self.spec.get("special_tokens") or {}))
        return self.tokenizer.encode(text, special=False)

    def tokens(
        self,
        ids: list[int],
        p: Sampling,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Iterator[int]:
        """Token ids one at a time, until EOS (not yielded), max_tokens, the context's end, or
        should_stop() (checked before each step)."""
        rng = np.random.default_rng(p.seed)
        seen = list(ids)
        feeds = {INPUT_IDS: np.asarray([ids], dtype=np.int64), **self.empty}
        for _ in range(min(p.max_tokens, self.context_length - len(ids))):
            if should_stop():
                return
            out = self.session.run(self.outputs, feeds)
            token = next_token(out[0][0, -1], seen, p, rng)
            if token in self.eos:
                return
            yield token
            seen.append(token)
            feeds = {INPUT_IDS: np.asarray([[token]], dtype=np.int64)}
            feeds.update(zip(self.past_names, out[1:], strict=True))

    def generate(self, ids: list[int], p: Sampling, deadline: float | None = None) -> Completion:
        """The whole completion; stop sequences cut the text where they first appear.

        ``deadline`` (time.monotonic()): past it, generation ends with finish_reason "length"
        and what it has, so a request never outruns the function's time limit."""
        t0 = time.monotonic()
        out: list[int] = []
        first = 0.0
        late = [False]

        def should_stop() -> bool:
            late[0] = deadline is not None and time.monotonic() > deadline
            return late[0]

        text, reason, why = "", "length", "max_tokens"
        for token in self.tokens(ids, p, should_stop):
            out.append(token)
            first = first or time.monotonic() - t0
            text = self.tokenizer.decode(out)
            hit = _first_stop(text, p.stop)
            if hit is not None:
                text, reason, why = text[:hit], "stop", "stop sequence"
                break
        else:
            text = self.tokenizer.decode(out)
            if late[0]:
                why = "deadline"
            elif len(out) < p.max_tokens and len(ids) + len(out) < self.context_length:
                reason, why = "stop", "eos"
            elif len(out) < p.max_tokens:
                why = "context"
        return Completion(text, out, reason, len(ids), time.monotonic() - t0, first, stopped_by=why)


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for s in stops if s and (i := text.find(s)) >= 0]
    return min(hits) if hits else None
