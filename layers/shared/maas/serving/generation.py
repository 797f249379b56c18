"""The generation loop: an ONNX Runtime KV-cache graph, numpy sampling, ``tokenizers``.

No torch: the graph is the training job's export (maas/core/contract.py names its inputs and
outputs), the prompt is tokenized by maas.serving.textprep.PromptTokenizer (as transformers'
AutoTokenizer tokenizes it), a chat is rendered by maas.serving.chattemplate (as
apply_chat_template renders it). ``tokens`` yields one token at a time and stops when asked;
``stream`` yields the text as it is decoded (what the streaming routes send), and ``generate``,
the buffered answer, is that stream run to its end.

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
    stopped_by: str = ""  # eos | stop sequence | max_tokens | context | deadline | closed | error
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

    def stream(self, ids: list[int], p: Sampling, deadline: float | None = None) -> Generation:
        """The completion as it is produced: iterate for its text, piece by piece."""
        return Generation(self, ids, p, deadline)

    def generate(self, ids: list[int], p: Sampling, deadline: float | None = None) -> Completion:
        """The whole completion; stop sequences cut the text where they first appear.

        ``deadline`` (time.monotonic()): past it, generation ends with finish_reason "length"
        and what it has, so a request never outruns the function's time limit."""
        run = self.stream(ids, p, deadline)
        for _ in run:
            pass
        assert run.completion is not None
        return run.completion


class Generation:
    """One generation as it happens. Iterating yields each new piece of text once it is safe to
    show: never half a character (byte-level tokens may split one), never the start of what may
    still become a stop sequence. Joined, the pieces are ``completion.text``, which is set when
    the iteration ends, or when it is closed early (a client gone: ``stopped_by`` "closed").

    Generation is pulled: no token is computed before the consumer asks for the next piece, so
    a consumer that stops asking stops the model within the token in flight."""

    def __init__(self, gen: Generator, ids: list[int], p: Sampling, deadline: float | None) -> None:
        self.gen, self.ids, self.p, self.deadline = gen, ids, p, deadline
        self.token_ids: list[int] = []
        self.completion: Completion | None = None

    def __iter__(self) -> Iterator[str]:
        t0 = time.monotonic()
        out, p, first, late = self.token_ids, self.p, 0.0, [False]

        def should_stop() -> bool:
            late[0] = self.deadline is not None and time.monotonic() > self.deadline
            return late[0]

        text, sent, reason, why = "", "", "length", "closed"
        try:
            for token in self.gen.tokens(self.ids, p, should_stop):
                out.append(token)
                first = first or time.monotonic() - t0
                text = self.gen.tokenizer.decode(out)
                hit = _first_stop(text, p.stop)
                if hit is not None:
                    text, reason, why = text[:hit], "stop", "stop sequence"
                    break
                ready = len(text) - _held_back(text, p.stop)
                if ready > len(sent) and text.startswith(sent):
                    piece, sent = text[len(sent) : ready], text[:ready]
                    yield piece
            else:
                text = self.gen.tokenizer.decode(out)
                reason, why = self._why_it_ended(late[0])
            if len(text) > len(sent) and text.startswith(sent):
                piece, sent = text[len(sent) :], text
                yield piece
        except Exception:  # the model or the tokenizer failed: not a client gone
            why = "error"
            raise
        finally:
            self.completion = Completion(
                text, out, reason, len(self.ids), time.monotonic() - t0, first, stopped_by=why
            )

    def _why_it_ended(self, late: bool) -> tuple[str, str]:
        """(finish_reason, stopped_by) of a generation whose token loop ran out."""
        n, room = len(self.token_ids), self.gen.context_length - len(self.ids)
        if late:
            return "length", "deadline"
        if n < self.p.max_tokens and n < room:
            return "stop", "eos"
        return "length", "context" if n < self.p.max_tokens else "max_tokens"


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` may not be shown yet: an undecoded character
    (U+FFFD while its bytes are incomplete), or the start of a stop sequence."""
    held = len(text) - len(text.rstrip("\ufffd"))
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), held, -1):
            if text.endswith(s[:k]):
                held = k
                break
    return held


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for s in stops if s and (i := text.find(s)) >= 0]
    return min(hits) if hits else None
