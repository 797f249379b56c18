"""Pretrained imports: a Hugging Face folder exported as it is, with the tokenizer that serves it.

"embedding": a Hugging Face / sentence-transformers BERT folder, exported with its pooling and
normalisation. "text-classification" / "import": a sequence-classification folder, exported
with its labels (config.json id2label). The export is checked on texts of the run folder, or,
when it has none, on prose every container has (the model's README, Python's docstrings).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from maas_training import log
from maas_training.errors import TrainingError
from maas_training.recipes import Pretrained, PretrainedRecipe, register
from maas_training.shared import contract, textprep

SAMPLE_TEXTS = 128
# Texts beyond the gate's sample that compression students are distilled on (never the gate's).
DISTILL_TEXTS = 2048
INPUTS = ["input_ids", "attention_mask"]


def find_model_folder(channel: Path, what: str) -> Path:
    """The shallowest folder under channel holding config.json (a Hugging Face model folder)."""
    if not channel.is_dir():
        raise TrainingError(f"{what} channel {channel} does not exist or is not a directory")
    found = sorted(channel.rglob("config.json"), key=lambda p: (len(p.parts), str(p)))
    for cfg in found:
        if (cfg.parent / contract.TOKENIZER_FILE).is_file():
            return cfg.parent
    raise TrainingError(
        f"no Hugging Face model folder in the {what} channel: need config.json, "
        "model.safetensors and tokenizer.json side by side"
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def sentence_transformers_head(folder: Path) -> tuple[str, bool] | None:
    """(pooling, normalize) from modules.json and its Pooling config; None if not an ST folder."""
    modules = _read_json(folder / "modules.json")
    if not isinstance(modules, list):
        return None
    pooling, normalize = "mean", False
    for m in modules:
        kind = str(m.get("type", ""))
        if kind.endswith("Pooling"):
            cfg = _read_json(folder / str(m.get("path", "")) / "config.json") or {}
            if cfg.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif cfg.get("pooling_mode_mean_tokens", True):
                pooling = "mean"
            else:
                raise TrainingError(f"unsupported sentence-transformers pooling: {cfg}")
        elif kind.endswith("Normalize"):
            normalize = True
    return pooling, normalize


def token_limit(folder: Path, max_positions: int, fallback: int) -> int:
    """Tokens per text: sentence-transformers' max_seq_length, else tokenizer.json's truncation."""
    sbert = _read_json(folder / "sentence_bert_config.json") or {}
    tok = _read_json(folder / contract.TOKENIZER_FILE) or {}
    limit = sbert.get("max_seq_length") or (tok.get("truncation") or {}).get("max_length")
    return int(min(max_positions, int(limit) if limit else fallback))


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _sentences(text: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", text):
        if re.search(r"^\s*(```|>>>|\||#|- |\* |\$ )", para, re.M):
            continue
        for s in _SENTENCE.split(" ".join(para.split())):
            if 20 <= len(s) <= 400 and sum(c.isalpha() for c in s) > 0.6 * len(s):
                out.append(s)
    return out


def _stdlib_sentences(limit: int) -> list[str]:
    """Real English prose that every container has: the standard library's docstrings."""
    import importlib
    import inspect

    out: list[str] = []
    # The first seven give the gate's sample; the rest only more distillation text.
    for name in (
        *("json", "csv", "email.message", "http.client", "logging", "argparse", "pathlib"),
        *("collections", "functools", "itertools", "subprocess", "threading", "asyncio"),
        *("unittest", "urllib.request", "sqlite3", "tarfile", "zipfile", "datetime"),
        *("decimal", "textwrap", "shutil", "typing", "inspect", "dataclasses", "enum", "socket"),
        *("configparser", "difflib", "pprint", "doctest", "tempfile", "statistics", "fractions"),
    ):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for _, obj in [(name, module), *inspect.getmembers(module)]:
            doc = inspect.getdoc(obj) if inspect.isclass(obj) or inspect.ismodule(obj) else None
            if doc:
                out.extend(_sentences(doc))
            if len(out) >= limit:
                return list(dict.fromkeys(out))[:limit]
    return list(dict.fromkeys(out))[:limit]


def sample_texts(
    channel: Path, folder: Path, text_column: str, limit: int
) -> tuple[list[str], str]:
    """Texts for the quality gate: the run folder's own data, else prose found locally."""
    from maas_training.data import DATA_SUFFIXES, _read_file

    texts: list[str] = []
    for path in sorted(channel.rglob("*")):
        if not path.is_file() or folder in path.parents or path.parent == folder:
            continue
        if path.suffix.lower() == ".txt":
            texts += [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
        elif path.suffix.lower() in DATA_SUFFIXES:
            frame = _read_file(path)
            if text_column in frame.columns:
                texts += [str(v) for v in frame[text_column].dropna().to_list()]
    texts = [t for t in dict.fromkeys(texts) if t]
    if texts:
        return texts[:limit], "run folder"
    readme = folder / "README.md"
    found = _sentences(readme.read_text(errors="replace")) if readme.is_file() else []
    found = list(dict.fromkeys(found + _stdlib_sentences(limit)))
    if not found:
        raise TrainingError("no sample text for the quality gate: add a .txt file to the run")
    return found[:limit], "model README + Python docstrings"


def _module(task: str, folder: Path) -> tuple[Any, Any, str, list[str] | None, str]:
    """(module, config, output name, labels, what it is) for the task."""
    from maas_training.bert import SentenceEmbedder, SequenceClassifier, load_encoder

    encoder, weights = load_encoder(folder)
    config = encoder.config
    if task == "embedding":
        pooling, normalize = sentence_transformers_head(folder) or ("mean", False)
        module = SentenceEmbedder(encoder, pooling, normalize).eval()
        kind = f"sentence embedding ({pooling} pooling{', normalized' if normalize else ''})"
        return module, config, contract.EMBEDDING_OUTPUT, None, kind
    if "classifier.weight" not in weights:
        raise TrainingError(
            "task text-classification with recipe import needs a sequence-classification "
            "folder (classifier weights and id2label in config.json)"
        )
    module = SequenceClassifier(encoder, weights).eval()
    n = module.classifier.out_features
    labels = [config.id2label.get(i, f"LABEL_{i}") for i in range(n)]
    return (
        module,
        config,
        contract.PROBABILITIES_OUTPUT,
        labels,
        f"sequence classifier ({n} labels)",
    )


def load(paths, hp) -> Pretrained:
    folder = find_model_folder(paths.train_channel, "train")
    log.info(f"pretrained folder: {folder.relative_to(paths.train_channel) or '.'}")
    module, config, output, labels, kind = _module(hp.task, folder)
    max_length = token_limit(folder, config.max_position_embeddings, hp.max_length)
    tokenizer_json = (folder / contract.TOKENIZER_FILE).read_text(encoding="utf-8")
    tp = textprep()
    tokenizer = tp.HFTokenizer(tokenizer_json, max_length=max_length, inputs=INPUTS)
    found, origin = sample_texts(paths.train_channel, folder, hp.text, SAMPLE_TEXTS + DISTILL_TEXTS)
    texts, extra = found[:SAMPLE_TEXTS], found[SAMPLE_TEXTS:]
    log.info(
        f"importing a {kind}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"max {max_length} tokens; gate sample: {len(texts)} texts from the {origin}"
        f"{f', {len(extra)} more to distill on' if extra else ''}"
    )
    distill = tokenizer.encode(extra) if extra and hp.compress_candidates > 0 else None
    return Pretrained(
        module=module,
        feeds=tokenizer.encode(texts),
        texts=texts,
        output_name=output,
        labels=labels,
        schema={
            "text_column": hp.text,
            "inputs": [contract.TEXT_INPUT_SPEC],
            "graph_inputs": INPUTS,
            # For the optimizer's transformer fusions (maas.optimize.quantize).
            "transformer": {
                "model_type": "bert",
                "num_heads": config.num_attention_heads,
                "hidden_size": config.hidden_size,
            },
        },
        text_spec=tp.tokenizer_spec(max_length, INPUTS, contract.TOKENIZER_FILE),
        tokenizer_json=tokenizer_json,
        kind=kind,
        distill_feeds=distill,
        metrics={
            "architecture": list(config.architectures),
            "pretrained": kind,
            "hidden_size": config.hidden_size,
            "layers": config.num_hidden_layers,
            "max_length": max_length,
            "sample_texts": len(texts),
            "sample_origin": origin,
        },
    )


# Its attention subgraph (TorchScript's) is the one ONNX Runtime fuses: see maas_training.export.
register(PretrainedRecipe("embedding", "import", load, prefer="torchscript"))
register(PretrainedRecipe("text-classification", "import", load, prefer="torchscript"))
