"""ONNX Runtime sessions as the serving function creates them, in one place.

The optimizer times its candidates with these same sessions (maas.optimize.quantize), so a recipe is
chosen for the speed it will have when served. The options were chosen by measurement on the
served models (bench/session_options.py; figures in bench/results.md):

- ORT_ENABLE_ALL, with ONNX Runtime's SkipLayerNormalization fusion switched off. On the CPU
  kernels of onnxruntime 1.32, the fused SkipLayerNormalization ran all-MiniLM-L6-v2's twelve
  residual LayerNorms in 4.1 ms per 128-token request against 1.5 ms for the Add +
  LayerNormalization it replaces (one thread, AVX2): the served model ran ~9% faster without
  it. Graphs without LayerNorm (the MLPs, the n-gram classifier) do not change.
- Intra-op threads from the function's memory (one per vCPU Lambda gives it); one inter-op
  thread, sequential execution.
- No spinning: spinning threads burn billed CPU between requests for no gain on Lambda.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

# Graph transformers left out of every session (ONNX Runtime's optimizer names).
DISABLED_OPTIMIZERS: tuple[str, ...] = ("SkipLayerNormFusion",)


def session_options(
    threads: int,
    *,
    level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    spinning: bool = False,
) -> ort.SessionOptions:
    """Serving's options; ``level`` and ``spinning`` vary only in bench/session_options.py."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = level
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.log_severity_level = 3
    return opts


def new_session(model: Path | str | bytes, threads: int) -> ort.InferenceSession:
    """A session on a model file, or on the model's bytes (one too large for /tmp)."""
    return ort.InferenceSession(
        model if isinstance(model, bytes) else str(model),
        sess_options=session_options(threads),
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(DISABLED_OPTIMIZERS),
    )
