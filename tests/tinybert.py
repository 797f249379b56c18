"""A small BERT encoder (2 layers, 4 heads, random weights) exported as the import job exports.

A plain module (tests/ is on sys.path). Needs torch: callers skip without it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

HEADS, HIDDEN = 4, 64
# The schema.json "transformer" entry the import job writes (maas_training.recipes.pretrained).
ARCH = {"model_type": "bert", "num_heads": HEADS, "hidden_size": HIDDEN}


def encoder() -> Any:
    import torch
    from maas_training.bert import BertConfig, BertEncoder, SentenceEmbedder

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=300,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        intermediate_size=4 * HIDDEN,
        max_position_embeddings=64,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        hidden_act="gelu",
        architectures=("BertModel",),
        id2label={},
    )
    return SentenceEmbedder(BertEncoder(config), "mean", True).eval()


def feeds(n: int = 48, seq: int = 24) -> dict[str, np.ndarray]:
    """Token ids with padded tails, as the tokenizer pads a batch."""
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 300, size=(n, seq)).astype(np.int64)
    mask = np.ones_like(ids)
    for i, length in enumerate(rng.integers(6, seq + 1, size=n)):
        mask[i, length:] = 0
        ids[i, length:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def sample() -> dict[str, np.ndarray]:
    """feeds() as the optimizer reads sample.npz."""
    return {f"input__{k}": v for k, v in feeds().items()}


def export(folder: Path, prefer: str) -> Path:
    """fp32 ONNX as the import job exports, ``prefer`` first (MAAS_ONNX_EXPORTER must be unset)."""
    from maas_training.export import export_model

    assert "MAAS_ONNX_EXPORTER" not in os.environ
    path = folder / f"{prefer}.onnx"
    info = export_model(
        encoder(),
        path,
        feeds=feeds(),
        output_name="embedding",
        class_names=None,
        metadata={},
        prefer=prefer,
        sequence=True,
    )
    assert info.exporter == prefer
    return path
