"""The optimizer's transformer candidate: ONNX Runtime's fusions, then int8 attention.

A small BERT encoder (2 layers, 4 heads, random weights) exported the way the import job
exports pretrained encoders (export.py, TorchScript first), then maas.optimize.quantize with the
``transformer`` entry the import job writes into schema.json. Serving sessions leave
SkipLayerNormalization unfused (maas.serving.ortsession); the fused candidate keeps it unfused too.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import tinybert
from maas.optimize.quantize import optimize_model
from maas.optimize.recipes import DYNAMIC_PER_CHANNEL, FUSED_DYNAMIC_PER_CHANNEL
from maas.serving.ortsession import DISABLED_OPTIMIZERS, new_session
from tinybert import ARCH

pytest.importorskip("torch")


def _export(tmp: Path, prefer: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("MAAS_ONNX_EXPORTER", raising=False)
    return tinybert.export(tmp, prefer)


def _ops(path: Path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_fused_candidate_runs_attention_as_one_int8_kernel(tmp_path, monkeypatch):
    # GIVEN the encoder exported as the import job does
    fp32 = _export(tmp_path, "torchscript", monkeypatch)
    # WHEN the optimizer searches with the transformer entry
    sel = optimize_model(
        fp32, tinybert.sample(), None, tmp_path / "cand", task="embedding", transformer=ARCH,
        timing_repeats=10, timing_budget_s=2.0,
    )  # fmt: skip
    fused = next(c for c in sel.candidates if c.recipe == FUSED_DYNAMIC_PER_CHANNEL)
    # THEN the fused candidate built, fused attention and scored like per-channel int8
    assert fused.ok, fused.error
    assert "Attention 2" in fused.note
    ops = _ops(fused.path)
    assert ops["QAttention"] == 2 and ops["Softmax"] == 0
    assert ops["SkipLayerNormalization"] == 0  # left unfused, as serving sessions do
    assert fused.quality["cosine_mean"] > 0.99
    assert fused.latency_ms["batch1_p50"] > 0
    per_channel = next(c for c in sel.candidates if c.recipe == DYNAMIC_PER_CHANNEL)
    assert abs(fused.quality["cosine_mean"] - per_channel.quality["cosine_mean"]) < 0.01
    # AND its manifest entry says what fused
    entry = next(
        c for c in sel.to_manifest()["candidates"] if c["recipe"] == FUSED_DYNAMIC_PER_CHANNEL
    )
    assert entry["note"].startswith("fused ")
    # AND the file serves through the serving function's session with the same outputs
    sess = new_session(fused.path, 1)
    feeds = {k: v[:3] for k, v in tinybert.feeds().items()}
    got = sess.run(None, feeds)[0]
    ref = new_session(fp32, 1).run(None, feeds)[0]
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.98


def test_no_fused_candidate_without_a_transformer_entry(tmp_path, monkeypatch):
    fp32 = _export(tmp_path, "torchscript", monkeypatch)
    sel = optimize_model(
        fp32, tinybert.sample(), None, tmp_path / "cand", task="embedding",
        timing_repeats=10, timing_budget_s=1.0,
    )  # fmt: skip
    assert FUSED_DYNAMIC_PER_CHANNEL not in {c.recipe for c in sel.candidates}


def test_graph_whose_attention_does_not_fuse_records_why_and_is_not_chosen(tmp_path, monkeypatch):
    # The dynamo exporter's attention subgraph is not a pattern ONNX Runtime's fusion knows.
    fp32 = _export(tmp_path, "dynamo", monkeypatch)
    sel = optimize_model(
        fp32, tinybert.sample(), None, tmp_path / "cand", task="embedding", transformer=ARCH,
        timing_repeats=10, timing_budget_s=1.0,
    )  # fmt: skip
    fused = next(c for c in sel.candidates if c.recipe == FUSED_DYNAMIC_PER_CHANNEL)
    assert not fused.ok
    assert "attention did not fuse" in (fused.error or "")
    assert sel.chosen.recipe != FUSED_DYNAMIC_PER_CHANNEL


def test_serving_sessions_leave_skip_layer_norm_unfused(tmp_path, monkeypatch):
    import onnxruntime as ort

    fp32 = _export(tmp_path, "torchscript", monkeypatch)
    assert "SkipLayerNormFusion" in DISABLED_OPTIMIZERS
    dumped = tmp_path / "optimized.onnx"
    opts = new_session(fp32, 1)._sess_options
    opts.optimized_model_filepath = str(dumped)
    ort.InferenceSession(
        str(fp32), opts, providers=["CPUExecutionProvider"],
        disabled_optimizers=list(DISABLED_OPTIMIZERS),
    )  # fmt: skip
    ops = _ops(dumped)
    assert ops["SkipLayerNormalization"] == 0 and ops["LayerNormalization"] > 0
