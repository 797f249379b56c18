"""Small causal-LM folders and a text corpus, made at test time with no download.

``tiny_folder(arch, dst)`` writes a randomly initialised Llama, Qwen2, Qwen3 or GPT-2 folder the
way ``transformers`` saves one (config.json, model.safetensors, generation_config.json,
tokenizer.json, tokenizer_config.json, the chat template), with a byte-level BPE tokenizer
trained on ``corpus_documents()``: real English prose every machine has, the standard library's
docstrings and the READMEs under /usr/share/doc. The Llama folder keeps its chat template in
chat_template.jinja (as current transformers writes it), the Qwen2 folder inside
tokenizer_config.json (as older folders have it). Needs ``transformers`` (the dev extra).
"""

from __future__ import annotations

import gzip
import importlib
import inspect
import json
import pkgutil
import re
import warnings
from functools import cache
from pathlib import Path
from typing import Any

ARCHS = ("llama", "qwen2", "qwen3", "gpt2")
# A Zephyr-style template that reads bos_token and eos_token.
LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% elif message['role'] == 'user' %}<|user|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}<|assistant|>\n{{ message['content'] }}"
    "{{ eos_token }}\n{% else %}{{ raise_exception('unknown role ' + message['role']) }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# ChatML, as Qwen2/Qwen3 write it (a default system prompt; namespace and loop controls).
CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful "
    "assistant.<|im_end|>\n{%- endif %}"
    "{%- for message in messages %}{%- if message.content is string %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}"
    "{%- else %}{{- raise_exception('content must be a string') }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
SPECIALS = {
    "llama": ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"],
    "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "qwen3": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "gpt2": ["<|endoftext|>"],
}
DOC_MODULES = ("json", "csv", "email", "http", "logging", "argparse", "pathlib", "asyncio")


def _paragraphs(text: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", text):
        flat = " ".join(para.split())
        if len(flat) >= 40 and sum(c.isalpha() for c in flat) > 0.6 * len(flat):
            out.append(flat)
    return out


def _docstrings() -> list[str]:
    out: list[str] = []
    for name in DOC_MODULES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            root = importlib.import_module(name)
            mods = [root]
            for info in pkgutil.walk_packages(getattr(root, "__path__", []), f"{name}."):
                try:
                    mods.append(importlib.import_module(info.name))
                except Exception:  # noqa: S112 - a submodule that does not import is skipped
                    continue
        for mod in mods:
            for _, obj in [("", mod), *inspect.getmembers(mod)]:
                doc = inspect.getdoc(obj) if inspect.isclass(obj) or inspect.ismodule(obj) else None
                if doc:
                    out += _paragraphs(doc)
    return out


def _share_doc(limit: int) -> list[str]:
    out: list[str] = []
    root = Path("/usr/share/doc")
    for path in sorted(root.glob("*/README*"))[:400] if root.is_dir() else []:
        try:
            raw = path.read_bytes()
            text = gzip.decompress(raw) if path.suffix == ".gz" else raw
            out += _paragraphs(text.decode("utf-8", errors="replace"))
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
        if len(out) >= limit:
            break
    return out


@cache
def corpus_documents(limit: int = 4000) -> tuple[str, ...]:
    """Paragraphs of real prose: Python's docstrings, then /usr/share/doc READMEs; deduplicated."""
    docs = list(dict.fromkeys(_docstrings() + _share_doc(limit)))
    return tuple(docs[:limit])


def bpe_tokenizer(specials: list[str], vocab_size: int = 512) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus_documents()[:1500]), trainer)
    return tok


def _model(arch: str, vocab: int, ids: dict[str, int], width: int, layers: int) -> Any:
    import transformers as tf

    cfg: Any
    small: dict[str, Any] = {"vocab_size": vocab, "hidden_size": width}
    small |= {"intermediate_size": 2 * width, "num_hidden_layers": layers}
    small |= {"num_attention_heads": 4, "num_key_value_heads": 2}
    small |= {"max_position_embeddings": 512}
    if arch == "llama":
        cfg = tf.LlamaConfig(**small, bos_token_id=ids["<s>"], eos_token_id=ids["</s>"])
        return tf.LlamaForCausalLM(cfg)
    if arch == "qwen2":
        eos = ids["<|im_end|>"]
        cfg = tf.Qwen2Config(**small, tie_word_embeddings=True, eos_token_id=eos)
        return tf.Qwen2ForCausalLM(cfg)
    if arch == "qwen3":
        cfg = tf.Qwen3Config(**small, head_dim=width // 4, eos_token_id=ids["<|im_end|>"])
        return tf.Qwen3ForCausalLM(cfg)
    eot = ids["<|endoftext|>"]
    cfg = tf.GPT2Config(
        vocab_size=vocab, n_embd=width, n_layer=layers, n_head=4, n_positions=512,
        bos_token_id=eot, eos_token_id=eot,
    )  # fmt: skip
    return tf.GPT2LMHeadModel(cfg)


def _tokenizer(arch: str, tok: Any) -> Any:
    import transformers as tf

    t: Any

    if arch == "llama":
        t = tf.LlamaTokenizer(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
        )
        t.chat_template = LLAMA_TEMPLATE
        return t
    if arch in ("qwen2", "qwen3"):
        t = tf.Qwen2Tokenizer(
            tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
        )
        t.chat_template = CHATML_TEMPLATE
        return t
    return tf.GPT2Tokenizer(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )


def tiny_folder(
    arch: str,
    dst: Path,
    seed: int = 0,
    *,
    width: int = 64,
    layers: int = 2,
    vocab_size: int = 512,
) -> Path:
    """A randomly initialised causal-LM folder of arch (ARCHS), as transformers saves one."""
    import torch

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}")
    tok = bpe_tokenizer(SPECIALS[arch], vocab_size)
    ids = {s: tok.token_to_id(s) for s in SPECIALS[arch]}
    torch.manual_seed(seed)
    model = _model(arch, tok.get_vocab_size(), ids, width, layers).eval()
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    _tokenizer(arch, tok).save_pretrained(dst)
    if arch == "qwen2":  # an older folder: the template inside tokenizer_config.json
        jinja = dst / "chat_template.jinja"
        cfg_path = dst / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["chat_template"] = jinja.read_text()
        cfg_path.write_text(json.dumps(cfg, indent=2))
        jinja.unlink()
    return dst
