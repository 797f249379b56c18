"""Text generation: import a causal LM, train a small one from a corpus, or fine-tune one.

"import"    a Hugging Face causal-LM folder (Llama, Mistral, Qwen2, Qwen3, GPT-2) under
            pretrained/<model>/<run>/, exported as it is.
"lm"        a Llama-style decoder trained from scratch on the run's text (.txt files, or the text
            column of CSV/JSONL/Parquet), with a byte-level BPE tokenizer trained on the same
            text by ``tokenizers``; sized by embedding_dim, hidden_layers, attention_heads,
            max_length (its context) and vocab_size. Also written as a Hugging Face folder (hf/).
"finetune"  the imported model base_model names (channel "base") tuned on the run's data:
            plain text, or JSONL of chat ``messages`` / ``prompt``+``completion`` pairs rendered
            with the model's chat template, loss on the completions only. LoRA (lora_rank > 0,
            the default 8) merged before export, or full fine-tuning (lora_rank 0).

All three end in maas_training.lmsteps: the KV-cache export, checked against torch fp32 logits
on held-out text, and the model dir.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from maas_training import log
from maas_training.config import Paths
from maas_training.errors import TrainingError
from maas_training.recipes import GenerativeRecipe, register
from maas_training.shared import chattemplate, contract, textprep

EOS = "<|endoftext|>"
MIN_TRAIN_WINDOWS = 4


# --------------------------------------------------------------------------- data


def _paragraphs(text: str) -> list[str]:
    return [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]


def corpus_documents(channel: Path, column: str) -> tuple[list[str], list[str]]:
    """(documents, files): .txt paragraphs, or the text column of the tabular files."""
    from maas_training.data import DATA_SUFFIXES, _read_file

    docs: list[str] = []
    files: list[str] = []
    for path in sorted(p for p in channel.rglob("*") if p.is_file()):
        suffix = path.suffix.lower()
        if suffix == ".txt":
            docs += _paragraphs(path.read_text(encoding="utf-8", errors="replace"))
        elif suffix in DATA_SUFFIXES:
            frame = _read_file(path)
            if column not in frame.columns:
                raise TrainingError(f"{path.name} has no text column {column!r}")
            docs += [str(v) for v in frame[column].dropna().to_list() if str(v).strip()]
        else:
            continue
        files.append(str(path.relative_to(channel)))
    if not docs:
        raise TrainingError(
            "no text in the training channel: add .txt files, or CSV/JSONL/Parquet with a "
            f"{column!r} column"
        )
    return docs, files


def split_documents(docs: list[str], hp: Any) -> tuple[list[str], list[str], list[str]]:
    """(train, validation, test) documents, shuffled with the job's seed."""
    order = np.random.default_rng(hp.seed).permutation(len(docs))
    n_test = max(1, round(len(docs) * hp.test_fraction))
    n_val = max(1, round(len(docs) * hp.validation_fraction))
    if len(docs) - n_test - n_val < 1:
        raise TrainingError(f"{len(docs)} documents are too few to split for training")
    pick = [docs[i] for i in order]
    return pick[n_test + n_val :], pick[n_test : n_test + n_val], pick[:n_test]


def train_tokenizer(texts: list[str], vocab_size: int) -> str:
    """A byte-level BPE tokenizer.json (GPT-2 style: no BOS, EOS between documents)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return str(tok.to_str())


# --------------------------------------------------------------------------- a session


def _session(paths: Paths, hp: Any, fingerprint: str) -> Any:
    """(ctx, device, bf16, checkpointer) as the shared steps set them up."""
    import hashlib

    import torch

    from maas_training.trainer import Checkpointer, bf16_ok, init_distributed, pick_device

    torch.manual_seed(hp.seed)
    ctx = init_distributed()
    device = pick_device(ctx)
    use_bf16 = bf16_ok(device)
    doc = {"data": fingerprint, "hp": hp.as_dict(), "world": ctx.world_size}
    key = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    log.info(f"device {device}{' (bf16 autocast)' if use_bf16 else ''}; torch {torch.__version__}")
    checkpointer = Checkpointer(paths.checkpoint_dir, key, ctx.is_main, name="checkpoint-lm.pt")
    return ctx, device, use_bf16, checkpointer


def _fingerprint(*parts: Any) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------- import


def run_import(paths: Paths, hp: Any) -> dict[str, Any]:
    from maas_training.decoder import load_folder
    from maas_training.lmfolder import context_length, find_lm_folder, generation_spec
    from maas_training.lmsteps import LMOut, write_lm_dir
    from maas_training.recipes.pretrained import sample_texts

    t0 = time.perf_counter()
    folder = find_lm_folder(paths.train_channel, "train")
    model = load_folder(folder)
    c = model.config
    spec = generation_spec(folder, c, context_length(folder, c))
    texts, origin = sample_texts(paths.train_channel, folder, hp.text, 512)
    kind = f"{c.architecture or c.model_type} ({c.layers} layers, hidden {c.hidden_size})"
    log.info(f"importing {kind}; held-out text: {len(texts)} texts from the {origin}")
    metrics = {
        "architecture": c.architecture,
        "model_type": c.model_type,
        "layers": c.layers,
        "hidden_size": c.hidden_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "context_length": spec["context_length"],
        "sample_origin": origin,
    }
    tokenizer_json = (folder / contract.TOKENIZER_FILE).read_text(encoding="utf-8")
    out = LMOut(model, tokenizer_json, spec, texts, metrics, f"imported {kind}")
    return write_lm_dir(paths, hp, out, t0)


# --------------------------------------------------------------------------- lm


def lm_config(hp: Any, vocab_size: int) -> Any:
    from maas_training.decoder import DecoderConfig

    width, heads = int(hp.embedding_dim), int(hp.attention_heads)
    if width % heads or (width // heads) % 2:
        raise TrainingError(
            f"embedding_dim {width} must split into attention_heads {heads} of an even size"
        )
    return DecoderConfig(
        model_type="llama",
        vocab_size=vocab_size,
        hidden_size=width,
        layers=max(1, int(hp.hidden_layers)),
        heads=heads,
        kv_heads=heads,
        head_dim=width // heads,
        intermediate_size=32 * math.ceil(8 * width / 3 / 32),
        context_length=int(hp.max_length),
        norm_eps=1e-5,
        tie_embeddings=True,
        architecture="LlamaForCausalLM",
    )


def new_model(config: Any, seed: int) -> Any:
    import torch
    from torch import nn

    from maas_training.decoder import CausalLM

    torch.manual_seed(seed)
    model = CausalLM(config)
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
    return model


def write_tokenizer_files(folder: Path, tokenizer_json: str, context: int) -> int:
    """tokenizer.json, tokenizer_config.json, generation_config.json; returns EOS's id."""
    from tokenizers import Tokenizer

    eos = Tokenizer.from_str(tokenizer_json).token_to_id(EOS)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / contract.TOKENIZER_FILE).write_text(tokenizer_json, encoding="utf-8")
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "model_max_length": context,
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    gen = {"eos_token_id": eos, "bos_token_id": eos}
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return int(eos)


def lm_rows(paths: Paths, hp: Any) -> tuple[Any, str, list[list[str]], list[str], list[Any]]:
    """(config, tokenizer.json, [train, validation, test] documents, files, [train, val] rows)."""
    from tokenizers import Tokenizer

    from maas_training.lmsteps import token_stream, windows

    docs, files = corpus_documents(paths.train_channel, hp.text)
    parts = list(split_documents(docs, hp))
    tokenizer_json = train_tokenizer(parts[0], int(hp.vocab_size))
    vocab = Tokenizer.from_str(tokenizer_json).get_vocab_size()
    config = lm_config(hp, vocab)
    tok = textprep().PromptTokenizer(tokenizer_json)
    eos = Tokenizer.from_str(tokenizer_json).token_to_id(EOS)
    length = config.context_length
    rows = [windows(token_stream(tok, d, eos), length) for d in parts[:2]]
    if len(rows[0]) < MIN_TRAIN_WINDOWS or len(rows[1]) < 1:
        raise TrainingError(
            f"the corpus gives {len(rows[0])} training windows of {length} tokens: too little "
            "text (or lower max_length)"
        )
    log.info(
        f"corpus: {len(docs)} documents from {len(files)} file(s); tokenizer: {vocab} tokens; "
        f"{len(rows[0])} training windows of {length} tokens, {len(rows[1])} validation"
    )
    return config, tokenizer_json, parts, files, rows


def run_lm(paths: Paths, hp: Any) -> dict[str, Any]:
    from maas_training.decoder import save_folder
    from maas_training.lmfolder import generation_spec
    from maas_training.lmsteps import LMOut, write_lm_dir
    from maas_training.lmtrain import Rows, train_lm
    from maas_training.trainer import shutdown_distributed

    t0 = time.perf_counter()
    config, tokenizer_json, parts, files, (train, val) = lm_rows(paths, hp)
    model = new_model(config, hp.seed)
    ctx, device, bf16, ckpt = _session(paths, hp, _fingerprint(parts, tokenizer_json))
    try:
        result = train_lm(
            model,
            Rows(train, train),
            Rows(val, val),
            hp=hp,
            device=device,
            use_bf16=bf16,
            ctx=ctx,
            checkpointer=ckpt,
        )
        if not ctx.is_main:
            return {}
        with tempfile.TemporaryDirectory(prefix="maas-lm-") as tmp:
            hf = Path(tmp) / contract.HF_FOLDER
            eos = write_tokenizer_files(hf, tokenizer_json, config.context_length)
            save_folder(model, hf, eos_token_id=eos, bos_token_id=eos)
            spec = generation_spec(hf, config, config.context_length)
            n_docs = sum(len(p) for p in parts)
            metrics = {
                **_lm_metrics(config, model, result, files, n_docs, device, bf16, ctx),
                "train_windows": len(train),
            }
            kind = f"lm trained ({config.layers} layers, width {config.hidden_size})"
            out = LMOut(model, tokenizer_json, spec, parts[2], metrics, kind, hf_folder=hf)
            return write_lm_dir(paths, hp, out, t0)
    finally:
        shutdown_distributed(ctx)


def _lm_metrics(config, model, result, files, n_docs, device, bf16, ctx) -> dict[str, Any]:
    return {
        "architecture": config.architecture,
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": config.layers,
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
        "context_length": config.context_length,
        "val_loss": result.best_val_loss,
        "val_perplexity": math.exp(min(result.best_val_loss, 50.0)),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "resumed_from_epoch": result.resumed_from_epoch,
        "train_seconds": round(result.seconds, 3),
        "history": result.history,
        "data_files": files,
        "documents": n_docs,
        "device": str(device),
        "bf16": bf16,
        "world_size": ctx.world_size,
    }


# --------------------------------------------------------------------------- finetune


def _pairs(channel: Path) -> list[dict[str, Any]]:
    """JSONL rows with messages, or prompt + completion; [] when the data is plain text."""
    rows: list[dict[str, Any]] = []
    for path in sorted(channel.rglob("*.jsonl")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise TrainingError(f"{path.name} line {n} is not JSON") from None
            if isinstance(row, dict) and ("messages" in row or "completion" in row):
                rows.append(row)
    return rows


def _messages(row: dict[str, Any]) -> list[dict[str, str]]:
    if "messages" in row:
        msgs = row["messages"]
        ok = isinstance(msgs, list) and msgs and all(isinstance(m, dict) for m in msgs)
        if not ok or msgs[-1].get("role") != "assistant":
            raise TrainingError("a messages row must be a list ending with an assistant message")
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in msgs]
    return [
        {"role": "user", "content": str(row.get("prompt", ""))},
        {"role": "assistant", "content": str(row["completion"])},
    ]


def encode_pair(tok: Any, spec: dict[str, Any], row: dict[str, Any]) -> tuple[list[int], int, str]:
    """(ids, prompt length, full text): the prompt as serving encodes it, then the completion
    (loss on the completion only). With a chat template the prompt is the conversation up to
    the last assistant turn rendered with add_generation_prompt, as /v1/chat/completions does."""
    template = spec.get("chat_template")
    msgs = _messages(row)
    eos = (spec.get("eos_token_ids") or [None])[0]
    if not template:
        prompt = tok.encode(msgs[-2]["content"] if len(msgs) > 1 else "")
        completion = tok.encode(msgs[-1]["content"], special=False) + ([eos] if eos else [])
        return prompt + completion, len(prompt), msgs[-1]["content"]
    render = chattemplate().render
    names = spec["special_tokens"]
    head = render(template, msgs[:-1], names, add_generation_prompt=True)
    full = render(template, msgs, names, add_generation_prompt=False)
    if not full.startswith(head):
        raise TrainingError("the chat template does not render the prompt as a prefix of the chat")
    prompt = tok.encode(head, special=False)
    completion = tok.encode(full[len(head) :], special=False)
    return prompt + completion, len(prompt), full


def finetune_rows(paths: Paths, hp: Any, spec: dict[str, Any], tokenizer_json: str) -> Any:
    """(train, validation, test rows, test texts, kind of data)."""
    from maas_training.lmsteps import masked, prompt_tokenizer, token_stream, windows
    from maas_training.lmtrain import IGNORE, Rows

    tok = prompt_tokenizer(tokenizer_json, spec)
    width = min(int(hp.max_length), int(spec["context_length"]))
    pairs = _pairs(paths.train_channel)
    if pairs:
        order = np.random.default_rng(hp.seed).permutation(len(pairs))
        encoded = [encode_pair(tok, spec, pairs[i]) for i in order]
        ids = [e[0] for e in encoded]
        labels = [[IGNORE] * e[1] + e[0][e[1] :] for e in encoded]
        n_test = max(1, round(len(ids) * hp.test_fraction))
        n_val = max(1, round(len(ids) * hp.validation_fraction))
        pad = (spec.get("eos_token_ids") or [0])[0]
        cut = [(n_test + n_val, len(ids)), (n_test, n_test + n_val), (0, n_test)]
        rows = [masked(ids[a:b], labels[a:b], width, pad) for a, b in cut]
        texts = [e[2] for e in encoded[:n_test]]
        return rows[0], rows[1], rows[2], texts, f"{len(pairs)} instruction pairs"
    docs, _ = corpus_documents(paths.train_channel, hp.text)
    parts = split_documents(docs, hp)
    eos = (spec.get("eos_token_ids") or [None])[0]
    rows = [windows(token_stream(tok, d, eos), width) for d in parts]
    return *(Rows(r, r) for r in rows), parts[2], f"{len(docs)} text documents"


def run_finetune(paths: Paths, hp: Any) -> dict[str, Any]:
    from maas_training.decoder import load_folder
    from maas_training.lmfolder import context_length, find_lm_folder, generation_spec
    from maas_training.lmsteps import LMOut, write_lm_dir
    from maas_training.lmtrain import evaluate_lm, train_lm
    from maas_training.lora import add_adapters, merge_adapters
    from maas_training.trainer import shutdown_distributed

    t0 = time.perf_counter()
    folder = find_lm_folder(paths.base_channel, "base")
    model = load_folder(folder)
    spec = generation_spec(folder, model.config, context_length(folder, model.config))
    tokenizer_json = (folder / contract.TOKENIZER_FILE).read_text(encoding="utf-8")
    train, val, test, texts, what = finetune_rows(paths, hp, spec, tokenizer_json)
    before = evaluate_lm(model, test, 8, "cpu")
    mode = f"LoRA rank {hp.lora_rank}" if hp.lora_rank > 0 else "full fine-tuning"
    trainable = add_adapters(model, hp.lora_rank) if hp.lora_rank > 0 else None
    log.info(f"fine-tuning {folder.name} on {what} ({len(train)} train rows), {mode}")
    ctx, device, bf16, ckpt = _session(paths, hp, _fingerprint(what, tokenizer_json, len(train)))
    try:
        result = train_lm(
            model, train, val, hp=hp, device=device, use_bf16=bf16, ctx=ctx, checkpointer=ckpt
        )
        if not ctx.is_main:
            return {}
        if trainable is not None:
            merge_adapters(model)
        after = evaluate_lm(model, test, 8, "cpu")
        log.metric_line(heldout_loss_before=before[0], heldout_loss_after=after[0])
        metrics = {
            "base_architecture": model.config.architecture,
            "mode": mode,
            "trainable_parameters": trainable or sum(p.numel() for p in model.parameters()),
            "data": what,
            "heldout_loss_before": before[0],
            "heldout_loss_after": after[0],
            "heldout_accuracy_before": before[1],
            "heldout_accuracy_after": after[1],
            "val_loss": result.best_val_loss,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "train_seconds": round(result.seconds, 3),
            "history": result.history,
            "device": str(device),
            "bf16": bf16,
            "world_size": ctx.world_size,
        }
        with tempfile.TemporaryDirectory(prefix="maas-ft-") as tmp:
            hf = _tuned_folder(folder, model, Path(tmp) / contract.HF_FOLDER)
            kind = f"fine-tuned {model.config.architecture} ({mode})"
            out = LMOut(model, tokenizer_json, spec, texts, metrics, kind, hf_folder=hf)
            return write_lm_dir(paths, hp, out, t0)
    finally:
        shutdown_distributed(ctx)


def _tuned_folder(base: Path, model: Any, dst: Path) -> Path:
    """The base folder's files with the tuned weights (one model.safetensors)."""
    from maas_training.decoder import save_weights

    dst.mkdir(parents=True)
    for f in base.iterdir():
        if (
            f.is_file()
            and not f.name.endswith(".safetensors")
            and not f.name.endswith(".json.index")
        ):
            (dst / f.name).write_bytes(f.read_bytes())
    (dst / "model.safetensors.index.json").unlink(missing_ok=True)
    save_weights(model, dst)
    return dst


register(GenerativeRecipe(contract.TEXT_GENERATION, "import", run_import, trains=False))
register(GenerativeRecipe(contract.TEXT_GENERATION, "finetune", run_finetune))
register(GenerativeRecipe(contract.TEXT_GENERATION, "lm", run_lm))
