"""ONNX Runtime session options, chosen by measurement on the served models.

For each served model: graph optimisation level (BASIC, EXTENDED, ALL, and ALL with ONNX
Runtime's SkipLayerNormalization fusion disabled, "ALL-noSkipLN") x intra-op threads (1, 2) x
spinning (on, off). Per configuration: the session's creation time (a cold start
pays it), latency p50 at batch 1 and batch 32 (interleaved round-robin across configurations),
and the CPU time per batch-1 run (spinning threads burn CPU between runs, and on a 1-vCPU
function that CPU is the request's own).

maas.serving.ortsession holds what this chose (its docstring cites the run).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import percentile

LEVELS = ("BASIC", "EXTENDED", "ALL", "ALL-noSkipLN")
NO_SKIP_LN = "-noSkipLN"


def _session(path: Path, level: str, threads: int, spin: bool) -> Any:
    """Serving's session (maas.serving.ortsession) with this configuration's level and spinning."""
    import onnxruntime as ort
    from maas.serving.ortsession import DISABLED_OPTIMIZERS, session_options

    base = level.removesuffix(NO_SKIP_LN)
    return ort.InferenceSession(
        str(path),
        session_options(
            threads,
            level=getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{base}"),
            spinning=spin,
        ),
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(DISABLED_OPTIMIZERS) if level.endswith(NO_SKIP_LN) else [],
    )


def measure(
    path: Path, feeds1: dict[str, np.ndarray], feeds32: dict[str, np.ndarray], budget_s: float
) -> list[dict[str, Any]]:
    # One thread has no workers to spin: only two threads try spinning.
    configs = [(lvl, t, spin) for lvl in LEVELS for t, spin in ((1, False), (2, False), (2, True))]
    sessions = {}
    rows: dict[tuple[str, int, bool], dict[str, Any]] = {}
    for cfg in configs:
        creates = []
        for _ in range(5):
            t0 = time.perf_counter()
            sess = _session(path, *cfg)
            creates.append((time.perf_counter() - t0) * 1e3)
        sessions[cfg] = sess
        for _ in range(3):
            sess.run(None, feeds1)
            sess.run(None, feeds32)
        rows[cfg] = {"create": sorted(creates)[2], "b1": [], "b32": [], "cpu1": []}
    deadline = time.perf_counter() + budget_s
    r = 0
    while r < 10 or time.perf_counter() < deadline:
        k = r % len(configs)
        for cfg in configs[k:] + configs[:k]:
            sess = sessions[cfg]
            c0, t0 = time.process_time(), time.perf_counter()
            sess.run(None, feeds1)
            t1, c1 = time.perf_counter(), time.process_time()
            sess.run(None, feeds32)
            t2 = time.perf_counter()
            rows[cfg]["b1"].append((t1 - t0) * 1e3)
            rows[cfg]["cpu1"].append((c1 - c0) * 1e3)
            rows[cfg]["b32"].append((t2 - t1) * 1e3)
        r += 1
    out = []
    for (level, threads, spin), row in rows.items():
        out.append(
            {
                "level": level,
                "threads": threads,
                "spinning": spin,
                "create_ms": row["create"],
                "b1_p50_ms": percentile(row["b1"], 50),
                "b32_p50_ms": percentile(row["b32"], 50),
                "b1_cpu_ms": sum(row["cpu1"]) / len(row["cpu1"]),
                "rounds": r,
            }
        )
    return out


def best(rows: list[dict[str, Any]], threads: int = 1) -> dict[str, Any]:
    """The choice for a function with `threads` vCPUs, without spinning: the fastest batch-1
    p50; within 3% of it (the noise of these medians) the higher optimisation level wins,
    since its fusions are what other graphs gain from."""
    candidates = [r for r in rows if r["threads"] == threads and not r["spinning"]]
    fastest = min(r["b1_p50_ms"] for r in candidates)
    close = [r for r in candidates if r["b1_p50_ms"] <= fastest * 1.03]
    return max(close, key=lambda r: LEVELS.index(r["level"]))
