"""A causal LM to ONNX with its KV cache, checked against torch fp32 logits before it is written.

Graph (the names maas/core/contract.py gives and maas/serving/generation.py feeds):
``input_ids`` int64 [batch, sequence] and, per layer i, ``past_key_values.i.key`` / ``.value``
float32 [batch, kv_heads, past_sequence, head_dim] in; ``logits`` float32 [batch, sequence,
vocab] and ``present.i.key`` / ``.value`` [batch, kv_heads, past_sequence + sequence, head_dim]
out. The prompt runs with empty pasts (past_sequence 0), each decode step with the last
presents.

Exporter: TorchScript (``dynamo=False``): it exports the test models and the lm recipe's model
in under a second here, matches torch within 3e-6 on them, and its MatMul nodes carry the
weights as plain initializers, which ``MatMulNBits`` quantization (maas.optimize.recipes)
rewrites. The dynamo exporter and ``onnxruntime-genai``'s model builder were not timed against
it. The builder was left out because it needs ``transformers`` and the Hub client in the job,
writes its own graph layout and genai_config.json, and would put the onnxruntime-genai wheel
beside onnxruntime in Lambda.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from maas_training import log
from maas_training.decoder import CausalLM
from maas_training.errors import TrainingError
from maas_training.shared import contract

OPSET = 18
MAX_IR_VERSION = 10


@dataclass(frozen=True)
class LMExportInfo:
    exporter: str
    opset: int
    max_abs_diff: float  # over every checked logit: whole sequences and cached decode steps
    max_abs_diff_prompt: float
    max_abs_diff_decode: float
    checked_sequences: int
    checked_tokens: int


def io_names(layers: int) -> tuple[list[str], list[str]]:
    past = [contract.past_name(i, kv) for i in range(layers) for kv in ("key", "value")]
    present = [contract.present_name(i, kv) for i in range(layers) for kv in ("key", "value")]
    return [contract.INPUT_IDS, *past], [contract.LOGITS_OUTPUT, *present]


def _export(model: CausalLM, path: Path) -> None:
    c = model.config
    inputs, outputs = io_names(c.layers)
    ids = torch.randint(0, c.vocab_size, (1, 3))
    past = [torch.randn(1, c.kv_heads, 2, c.head_dim) for _ in range(2 * c.layers)]
    axes: dict[str, dict[int, str]] = {
        contract.INPUT_IDS: {0: "batch", 1: "sequence"},
        contract.LOGITS_OUTPUT: {0: "batch", 1: "sequence"},
    }
    for name in inputs[1:]:
        axes[name] = {0: "batch", 2: "past_sequence"}
    for name in outputs[1:]:
        axes[name] = {0: "batch", 2: "total_sequence"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (ids, *past),
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )


def _finish(src: Path, dst: Path, metadata: dict[str, str]) -> int:
    import onnx

    proto = onnx.load(str(src))
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    proto.producer_name = "maas_training"
    del proto.metadata_props[:]
    for key, value in metadata.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    dst.parent.mkdir(parents=True, exist_ok=True)
    big = proto.ByteSize() > 1_800_000_000
    onnx.save(proto, str(dst), save_as_external_data=big)
    onnx.checker.check_model(str(dst))
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


@torch.no_grad()
def check(model: CausalLM, path: Path, sequences: list[np.ndarray], limit: float) -> LMExportInfo:
    """onnxruntime vs torch fp32 on held-out sequences: the whole sequence from empty pasts,
    then its second half again one cached step at a time from the first half's presents."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs, _ = io_names(model.config.layers)
    prompt_diff = decode_diff = 0.0
    tokens = 0
    for seq in sequences:
        ids = np.ascontiguousarray(seq.reshape(1, -1).astype(np.int64))
        want = model(torch.from_numpy(ids))[0].numpy()
        empty = {n: p.numpy() for n, p in zip(inputs[1:], model.empty_past(), strict=True)}
        got = sess.run([contract.LOGITS_OUTPUT], {contract.INPUT_IDS: ids, **empty})[0]
        prompt_diff = max(prompt_diff, float(np.abs(got - want).max()))
        half = max(1, ids.shape[1] // 2)
        run = sess.run(None, {contract.INPUT_IDS: ids[:, :half], **empty})
        for t in range(half, ids.shape[1]):
            feeds = dict(zip(inputs[1:], run[1:], strict=True))
            run = sess.run(None, {contract.INPUT_IDS: ids[:, t : t + 1], **feeds})
            decode_diff = max(decode_diff, float(np.abs(run[0][0, -1] - want[0, t]).max()))
        tokens += ids.shape[1]
    diff = max(prompt_diff, decode_diff)
    if not diff < limit:
        raise TrainingError(
            f"ONNX export check failed: onnxruntime logits differ from torch fp32 by {diff:.3g} "
            f"(limit {limit:g}; whole sequences {prompt_diff:.3g}, cached decode {decode_diff:.3g})"
        )
    return LMExportInfo("torchscript", 0, diff, prompt_diff, decode_diff, len(sequences), tokens)


def export_lm(
    model: CausalLM,
    path: Path,
    sequences: list[np.ndarray],
    metadata: dict[str, str],
    limit: float = 1e-3,
) -> LMExportInfo:
    """Export model to path (fp32, KV cache) and check it on sequences (see ``check``)."""
    model = model.to("cpu").float().eval()
    with tempfile.TemporaryDirectory(prefix="maas-lm-export-") as tmp:
        raw = Path(tmp) / "raw.onnx"
        try:
            _export(model, raw)
        except Exception as e:
            raise TrainingError(f"ONNX export failed: {type(e).__name__}: {e}"[:900]) from None
        opset = _finish(raw, path, metadata)
    info = check(model, path, sequences, limit)
    log.info(
        f"exported {path.name} with the KV cache (opset {opset}); onnxruntime matches torch fp32 "
        f"logits: max abs diff {info.max_abs_diff:.3g} over {info.checked_tokens} tokens "
        f"(whole sequences {info.max_abs_diff_prompt:.3g}, cached decode "
        f"{info.max_abs_diff_decode:.3g})"
    )
    return LMExportInfo(
        info.exporter,
        opset,
        info.max_abs_diff,
        info.max_abs_diff_prompt,
        info.max_abs_diff_decode,
        info.checked_sequences,
        info.checked_tokens,
    )
