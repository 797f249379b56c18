"""The steps every text-generation recipe ends with: held-out windows, the KV-cache export
checked against torch, and the model dir (maas/core/contract.py lists its files).

import, lm and finetune differ in where the model comes from (a folder, trained from scratch,
tuned from a base); all three write the same model dir through ``write_lm_dir``.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maas_training import log
from maas_training.config import Paths
from maas_training.decoder import CausalLM
from maas_training.lmexport import export_lm
from maas_training.lmtrain import IGNORE, Rows, evaluate_lm
from maas_training.modeldir import ModelDir, Sample, write_json, write_model_dir
from maas_training.shared import contract, textprep

SAMPLE_WINDOWS = 24  # held-out windows the optimizer scores perplexity and agreement on
SAMPLE_LENGTH = 64  # tokens per window (capped by the context)
CHECK_SEQUENCES = 4  # of them, checked through the exported graph against torch
EXPORT_LIMIT = 1e-3  # max abs logit difference, onnxruntime vs torch fp32


@dataclass(frozen=True)
class LMOut:
    """What a text-generation recipe hands to ``write_lm_dir``."""

    model: CausalLM
    tokenizer_json: str
    spec: dict[str, Any]  # generation.json
    heldout: list[str]  # held-out texts (the sample)
    metrics: dict[str, Any]
    kind: str  # for the log
    hf_folder: Path | None = None  # the Hugging Face folder to ship in the model dir (hf/)


def prompt_tokenizer(tokenizer_json: str, spec: dict[str, Any]) -> Any:
    return textprep().PromptTokenizer.from_spec(tokenizer_json, spec)


def token_stream(tok: Any, texts: list[str], eos: int | None) -> list[int]:
    """Texts as one token stream, each followed by EOS (documents kept apart)."""
    out: list[int] = []
    for t in texts:
        out += tok.encode(t, special=False)
        if eos is not None:
            out.append(eos)
    return out


def windows(stream: list[int], length: int, limit: int | None = None) -> np.ndarray:
    """Consecutive, non-overlapping windows of length tokens, [n, length] int64."""
    n = len(stream) // length
    if limit is not None:
        n = min(n, limit)
    return np.asarray(stream[: n * length], dtype=np.int64).reshape(n, length)


def heldout_windows(tokenizer_json: str, spec: dict[str, Any], texts: list[str]) -> np.ndarray:
    tok = prompt_tokenizer(tokenizer_json, spec)
    eos = (spec.get("eos_token_ids") or [None])[0]
    stream = token_stream(tok, texts, eos)
    length = min(SAMPLE_LENGTH, int(spec["context_length"]))
    rows = windows(stream, length, SAMPLE_WINDOWS)
    if len(rows) == 0:
        raise ValueError(f"the held-out text gives {len(stream)} tokens: under one window")
    return rows


def perplexity(model: CausalLM, rows: np.ndarray) -> tuple[float, float]:
    """(perplexity, top-1 next-token accuracy) of model on token windows (fp32, CPU)."""
    loss, accuracy = evaluate_lm(model.float().eval(), Rows(rows, rows), 8, "cpu")
    return float(math.exp(min(loss, 50.0))), float(accuracy)


def schema(hp: Any, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "task": contract.TEXT_GENERATION,
        "labels": [],
        "text_column": hp.text,
        "inputs": [contract.TEXT_INPUT_SPEC],
        "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [-1]}],
        "graph_inputs": [contract.INPUT_IDS],
        "context_length": spec["context_length"],
    }


def write_lm_dir(paths: Paths, hp: Any, out: LMOut, t_start: float) -> dict[str, Any]:
    """Export (checked against torch fp32 first) and write the model dir; the metrics."""
    rows = heldout_windows(out.tokenizer_json, out.spec, out.heldout)
    info = export_lm(
        out.model,
        paths.model_dir / contract.MODEL_FILE,
        [r for r in rows[:CHECK_SEQUENCES]],
        {"maas.task": hp.task, "maas.recipe": hp.recipe},
        EXPORT_LIMIT,
    )
    ppl, acc = perplexity(out.model, rows)
    log.metric_line(heldout_perplexity=ppl, heldout_accuracy=acc)
    metrics = {
        "task": hp.task,
        "recipe": hp.recipe,
        **out.metrics,
        "heldout_perplexity": ppl,
        "heldout_next_token_accuracy": acc,
        "heldout_windows": len(rows),
        "heldout_window_tokens": int(rows.shape[1]),
        "exporter": info.exporter,
        "onnx_opset": info.opset,
        "onnx_max_abs_diff": info.max_abs_diff,
        "onnx_max_abs_diff_prompt": info.max_abs_diff_prompt,
        "onnx_max_abs_diff_decode": info.max_abs_diff_decode,
        "onnx_checked_tokens": info.checked_tokens,
        "torch_version": torch.__version__,
        "total_seconds": round(time.perf_counter() - t_start, 3),
        "hyperparameters": hp.as_dict(),
    }
    spec = out.spec
    model_dir = ModelDir(
        schema=schema(hp, spec),
        labels=[],
        metrics=metrics,
        sample=Sample({contract.INPUT_IDS: rows}, out.heldout[: len(rows)]),
        text_spec=textprep().tokenizer_spec(
            spec["context_length"], [contract.INPUT_IDS], contract.TOKENIZER_FILE
        ),
        tokenizer_json=out.tokenizer_json,
    )
    write_model_dir(paths, model_dir)
    write_json(paths.model_dir / contract.GENERATION_SPEC_FILE, spec)
    if out.hf_folder is not None:
        shutil.copytree(out.hf_folder, paths.model_dir / contract.HF_FOLDER, dirs_exist_ok=True)
    log.info(
        f"done: {out.kind}; held-out perplexity {ppl:.3f}, next-token accuracy {acc:.3f}; "
        f"{metrics['total_seconds']:.1f}s; wrote {paths.model_dir}"
    )
    return metrics


def masked(ids: list[list[int]], labels: list[list[int]], width: int, pad: int) -> Rows:
    """Variable-length rows, right-padded to width (labels IGNORE there), cut at width."""
    n = len(ids)
    out_ids = np.full((n, width), pad, dtype=np.int64)
    out_labels = np.full((n, width), IGNORE, dtype=np.int64)
    for i, (a, b) in enumerate(zip(ids, labels, strict=True)):
        k = min(width, len(a))
        out_ids[i, :k] = a[:k]
        out_labels[i, :k] = b[:k]
    return Rows(out_ids, out_labels)
