"""Text to model inputs: the one implementation the training job and the inference function share.

Serving imports this module from the shared layer (``maas.serving.textprep``). The training
container ships ``training/`` only, so the training job loads this same file: from the
repository when it runs locally (``maas_training.shared`` finds
``layers/shared/maas/serving/textprep.py``), and from the copy that ``maas push-training-code``
puts into the code tarball on SageMaker. A test checks the copy is byte-identical. Hence:
standard library + numpy only, and no imports from ``maas``.

Two encoders, described by a small JSON document (``text.json`` in the model artifact):

``hashed-ngrams``  (the fastText-style recipe) lower-cased word n-grams and character n-grams of
                   each word (with ``<`` ``>`` boundary marks), each hashed with CRC-32 into
                   ``buckets`` rows of an embedding table. Output: one int64 matrix ``ids``
                   [batch, longest] padded with ``buckets`` (the model's padding row).
``tokenizer``      a Hugging Face ``tokenizer.json`` run by the ``tokenizers`` library (Rust),
                   truncated to ``max_length`` and padded to the longest text of the batch.
                   Output: the graph inputs it names (``input_ids``, ``attention_mask``,
                   ``token_type_ids``), int64.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

HASHED_NGRAMS = "hashed-ngrams"
TOKENIZER = "tokenizer"
MAX_TEXT_CHARS = 100_000  # per item; longer inputs are cut before tokenising

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


class TextInputError(ValueError):
    """A text item the encoders cannot take (not a string, not UTF-8)."""


def as_strings(items: Iterable[Any]) -> list[str]:
    """OIP BYTES elements (str, or bytes from the binary extension) as Python strings."""
    out: list[str] = []
    for i, item in enumerate(items):
        if isinstance(item, bytes | bytearray | np.bytes_):
            try:
                item = bytes(item).decode("utf-8")
            except UnicodeDecodeError:
                raise TextInputError(f"text item {i} is not valid UTF-8") from None
        elif not isinstance(item, str):
            raise TextInputError(f"text item {i} is {type(item).__name__}, not a string")
        out.append(str(item)[:MAX_TEXT_CHARS])
    return out


# --------------------------------------------------------------------------- hashed n-grams


class HashedNgrams:
    """fastText-style features: hashed word n-grams + character n-grams of words."""

    def __init__(
        self,
        buckets: int = 1 << 16,
        word_ngrams: int = 2,
        char_min: int = 3,
        char_max: int = 5,
        max_ids: int = 2048,
    ) -> None:
        if buckets < 2 or word_ngrams < 1 or not (0 <= char_min <= char_max) or max_ids < 1:
            raise ValueError("invalid hashed-ngrams settings")
        self.buckets = int(buckets)
        self.word_ngrams = int(word_ngrams)
        self.char_min = int(char_min)
        self.char_max = int(char_max)
        self.max_ids = int(max_ids)

    @property
    def pad_id(self) -> int:
        return self.buckets

    def spec(self) -> dict[str, Any]:
        return {
            "kind": HASHED_NGRAMS,
            "buckets": self.buckets,
            "word_ngrams": self.word_ngrams,
            "char_min": self.char_min,
            "char_max": self.char_max,
            "max_ids": self.max_ids,
            "inputs": ["ids"],
        }

    def features(self, text: str) -> list[str]:
        words = _WORD.findall(text.lower())
        feats: list[str] = []
        for n in range(1, self.word_ngrams + 1):
            feats.extend("w" + " ".join(words[i : i + n]) for i in range(len(words) - n + 1))
        if self.char_max > 0 and self.char_min > 0:
            for w in words:
                marked = f"<{w}>"
                m = len(marked)
                for n in range(self.char_min, min(self.char_max, m) + 1):
                    feats.extend("c" + marked[i : i + n] for i in range(m - n + 1))
        return feats

    def ids(self, text: str) -> list[int]:
        b = self.buckets
        return [zlib.crc32(f.encode("utf-8")) % b for f in self.features(text)[: self.max_ids]]

    def encode(self, texts: Sequence[Any]) -> dict[str, np.ndarray]:
        rows = [self.ids(t) for t in as_strings(texts)]
        width = max(1, max((len(r) for r in rows), default=1))
        out = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return {"ids": out}


# --------------------------------------------------------------------------- tokenizer.json


class HFTokenizer:
    """A Hugging Face tokenizer.json, truncated to max_length, padded to the batch's longest."""

    def __init__(
        self, tokenizer_json: str, max_length: int = 256, inputs: Sequence[str] = ("input_ids",)
    ) -> None:
        from tokenizers import Tokenizer  # the Rust library; what the text layer ships

        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.max_length = int(max_length)
        self.inputs = list(inputs)
        self.pad_id = pad_token_id(json.loads(tokenizer_json))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)

    def encode(self, texts: Sequence[Any]) -> dict[str, np.ndarray]:
        encs = self.tokenizer.encode_batch(as_strings(texts))
        width = max(1, max((len(e.ids) for e in encs), default=1))
        n = len(encs)
        ids = np.full((n, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        types = np.zeros((n, width), dtype=np.int64)
        for i, e in enumerate(encs):
            k = len(e.ids)
            ids[i, :k] = e.ids
            mask[i, :k] = 1
            types[i, :k] = e.type_ids
        every = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: every[name] for name in self.inputs}


def pad_token_id(doc: dict[str, Any]) -> int:
    """The padding id a tokenizer.json declares, else its [PAD]/<pad> token, else 0."""
    padding = doc.get("padding") or {}
    if isinstance(padding.get("pad_id"), int):
        return int(padding["pad_id"])
    for tok in doc.get("added_tokens") or []:
        if tok.get("content") in ("[PAD]", "<pad>"):
            return int(tok["id"])
    return 0


class PromptTokenizer:
    """Text-generation prompts, tokenized as transformers' ``AutoTokenizer`` does for the folder.

    ``rule`` (generation.json's special_tokens_rule): "tokenizer.json" lets the tokenizer's
    post-processor add the special tokens; "explicit" adds BOS/EOS itself by add_bos/add_eos
    (older Llama-family folders). A rendered chat template already holds its special tokens:
    ``encode(text, special=False)`` adds none, as apply_chat_template tokenizes."""

    def __init__(
        self,
        tokenizer_json: str,
        rule: str = "tokenizer.json",
        bos_id: int | None = None,
        eos_id: int | None = None,
        add_bos: bool = False,
        add_eos: bool = False,
    ) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        if rule not in ("tokenizer.json", "explicit"):
            raise ValueError(f"unknown special tokens rule {rule!r}")
        self.rule = rule
        self.prefix = [bos_id] if rule == "explicit" and add_bos and bos_id is not None else []
        self.suffix = [eos_id] if rule == "explicit" and add_eos and eos_id is not None else []

    @classmethod
    def from_spec(cls, tokenizer_json: str, spec: dict[str, Any]) -> PromptTokenizer:
        eos = spec.get("eos_token_ids") or [None]
        return cls(
            tokenizer_json,
            rule=str(spec.get("special_tokens_rule", "tokenizer.json")),
            bos_id=spec.get("bos_token_id"),
            eos_id=eos[0],
            add_bos=bool(spec.get("add_bos")),
            add_eos=bool(spec.get("add_eos")),
        )

    def encode(self, text: str, special: bool = True) -> list[int]:
        if not special:
            return list(self.tokenizer.encode(text, add_special_tokens=False).ids)
        if self.rule == "explicit":
            ids = self.tokenizer.encode(text, add_special_tokens=False).ids
            return [*self.prefix, *ids, *self.suffix]
        return list(self.tokenizer.encode(text, add_special_tokens=True).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))


# --------------------------------------------------------------------------- the spec


def tokenizer_spec(max_length: int, inputs: Sequence[str], file: str) -> dict[str, Any]:
    """A tokenizer spec; ``file`` is the tokenizer.json beside it (maas.core.contract names it)."""
    return {
        "kind": TOKENIZER,
        "file": file,
        "max_length": int(max_length),
        "inputs": list(inputs),
    }


def load_encoder(spec: dict[str, Any], directory: Path | None = None) -> HashedNgrams | HFTokenizer:
    """Build the encoder a text.json describes; a tokenizer spec reads its file from directory."""
    kind = spec.get("kind")
    if kind == HASHED_NGRAMS:
        return HashedNgrams(
            buckets=spec["buckets"],
            word_ngrams=spec["word_ngrams"],
            char_min=spec["char_min"],
            char_max=spec["char_max"],
            max_ids=spec["max_ids"],
        )
    if kind == TOKENIZER:
        if directory is None:
            raise ValueError("a tokenizer spec needs the directory holding its tokenizer file")
        if not spec.get("file"):
            raise ValueError("a tokenizer spec names its tokenizer file")
        path = Path(directory) / str(spec["file"])
        return HFTokenizer(
            path.read_text(encoding="utf-8"),
            max_length=int(spec.get("max_length", 256)),
            inputs=spec.get("inputs") or ["input_ids"],
        )
    raise ValueError(f"unknown text encoder kind {kind!r}")
