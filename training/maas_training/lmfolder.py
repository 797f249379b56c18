"""A Hugging Face causal-LM folder's tokenizer side, read the way transformers reads it.

From ``tokenizer.json``, ``tokenizer_config.json``, the chat template (``chat_template.jinja``,
or inside tokenizer_config.json) and ``generation_config.json`` the job writes
``generation.json`` (maas/core/contract.py's GenerationSpec): what the inference function's
generation loop needs to tokenize a prompt exactly as ``AutoTokenizer`` does, render a chat
exactly as ``apply_chat_template`` does, and stop where the model's EOS says. Other files of
the folder are ignored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from maas_training.decoder import DecoderConfig
from maas_training.errors import TrainingError
from maas_training.shared import chattemplate, contract

TOKENIZER_CONFIG = "tokenizer_config.json"
GENERATION_CONFIG = "generation_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token")
# Tokenizer classes whose transformers implementation adds BOS/EOS by add_bos_token /
# add_eos_token instead of tokenizer.json's post-processor (older Llama-family folders).
EXPLICIT_BOS_CLASSES = {
    "LlamaTokenizer",
    "LlamaTokenizerFast",
    "CodeLlamaTokenizer",
    "CodeLlamaTokenizerFast",
    "GemmaTokenizer",
    "GemmaTokenizerFast",
}
SAMPLING_KEYS = ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty")


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TrainingError(f"cannot read {path.name}: {e}") from None
    return doc if isinstance(doc, dict) else {}


def find_lm_folder(channel: Path, what: str) -> Path:
    """The shallowest folder under channel with config.json and tokenizer.json side by side."""
    if not channel.is_dir():
        raise TrainingError(f"{what} channel {channel} does not exist or is not a directory")
    for cfg in sorted(channel.rglob("config.json"), key=lambda p: (len(p.parts), str(p))):
        if (cfg.parent / contract.TOKENIZER_FILE).is_file():
            return cfg.parent
    raise TrainingError(
        f"no Hugging Face causal-LM folder in the {what} channel: need config.json, "
        "*.safetensors, tokenizer.json and tokenizer_config.json side by side"
    )


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])  # an AddedToken written out
    return None


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, list):
        return [int(v) for v in value]
    return [int(value)]


def special_tokens(folder: Path) -> tuple[dict[str, str], dict[str, int]]:
    """(name -> text, text -> id) of the tokenizer's special tokens."""
    from tokenizers import Tokenizer

    cfg = read_json(folder / TOKENIZER_CONFIG)
    tok = Tokenizer.from_file(str(folder / contract.TOKENIZER_FILE))
    names = {k: t for k in SPECIAL_KEYS if (t := _token_text(cfg.get(k))) is not None}
    ids = {t: i for t in names.values() if (i := tok.token_to_id(t)) is not None}
    return names, ids


def _byte_level(tokenizer: dict[str, Any]) -> bool:
    pre = tokenizer.get("pre_tokenizer") or {}
    kinds = [pre.get("type")] + [p.get("type") for p in pre.get("pretokenizers") or []]
    return "ByteLevel" in kinds


def special_tokens_rule(cfg: dict[str, Any], tokenizer: dict[str, Any]) -> tuple[str, bool, bool]:
    """("tokenizer.json" | "explicit", add_bos, add_eos): see contract.GenerationSpec.

    Current folders (every architecture the tests pin against transformers) keep the rule in
    tokenizer.json's post-processor. Older SentencePiece-era Llama folders (LlamaTokenizerFast
    with add_bos_token, a Metaspace tokenizer.json) get the explicit rule; transformers 5
    rebuilds such a tokenizer from its vocabulary and merges, which is not pinned here."""
    explicit = (
        str(cfg.get("tokenizer_class", "")) in EXPLICIT_BOS_CLASSES
        and ("add_bos_token" in cfg or "add_eos_token" in cfg)
        and not _byte_level(tokenizer)
    )
    if not explicit:
        return "tokenizer.json", False, False
    return "explicit", bool(cfg.get("add_bos_token", True)), bool(cfg.get("add_eos_token", False))


def generation_spec(folder: Path, config: DecoderConfig, context_length: int) -> dict[str, Any]:
    """generation.json for the folder (contract.GenerationSpec)."""
    cfg = read_json(folder / TOKENIZER_CONFIG)
    gen = read_json(folder / GENERATION_CONFIG)
    model_cfg = read_json(folder / "config.json")
    names, ids = special_tokens(folder)
    jinja = folder / CHAT_TEMPLATE_FILE
    template = chattemplate().template_of(
        cfg, jinja.read_text(encoding="utf-8") if jinja.is_file() else None
    )
    eos = _ids(gen.get("eos_token_id", model_cfg.get("eos_token_id")))
    if not eos and names.get("eos_token") in ids:
        eos = [ids[names["eos_token"]]]
    bos = gen.get("bos_token_id", model_cfg.get("bos_token_id"))
    if bos is None and names.get("bos_token") in ids:
        bos = ids[names["bos_token"]]
    rule, add_bos, add_eos = special_tokens_rule(cfg, read_json(folder / contract.TOKENIZER_FILE))
    return {
        "architecture": config.architecture or config.model_type,
        "model_type": config.model_type,
        "layers": config.layers,
        "kv_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "vocab_size": config.vocab_size,
        "context_length": context_length,
        "bos_token_id": None if bos is None else int(bos),
        "eos_token_ids": eos,
        "special_tokens_rule": rule,
        "add_bos": add_bos,
        "add_eos": add_eos,
        "special_tokens": names,
        "chat_template": template,
        "generation_defaults": {k: gen[k] for k in SAMPLING_KEYS if k in gen},
    }


def context_length(folder: Path, config: DecoderConfig) -> int:
    """Tokens the model takes: its positions, capped by tokenizer_config's model_max_length."""
    limit = read_json(folder / TOKENIZER_CONFIG).get("model_max_length")
    n = config.context_length
    if isinstance(limit, int | float) and 0 < limit < n:
        n = int(limit)
    return int(n)
