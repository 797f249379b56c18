"""The quantization table: what the optimizer measured for each model family, from the
served versions' manifests (every candidate built, gated and timed side by side in the
optimizer's own run: size, quality, batch-1 and batch-N latency)."""

from __future__ import annotations

from typing import Any


def table(manifests: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for family, manifest in manifests.items():
        q = manifest.get("quantization") or {}
        chosen = q.get("recipe") or manifest.get("recipe")
        for c in q.get("candidates", []):
            quality = c.get("quality") or {}
            metric = "cosine_mean" if "cosine_mean" in quality else "accuracy"
            if metric not in quality and "agreement" in quality:
                metric = "agreement"
            latency = c.get("latency_ms") or {}
            rows.append(
                {
                    "family": family,
                    "recipe": c["recipe"],
                    "chosen": c["recipe"] == chosen,
                    "size_bytes": c.get("size_bytes"),
                    "metric": metric,
                    "quality": quality.get(metric),
                    "batch1_p50_ms": latency.get("batch1_p50"),
                    "batchN_p50_ms": latency.get("batchN_p50"),
                    "batchN_rows": latency.get("batchN_rows"),
                    "passed_gate": c.get("passed_gate"),
                    "error": c.get("error"),
                    "reason": c.get("reason"),
                }
            )
    return rows
