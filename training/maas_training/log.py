"""Flushed, line-oriented logging: CloudWatch and SageMaker metric regexes read stdout."""

from __future__ import annotations

import sys


def info(msg: str) -> None:
    print(f"[maas] {msg}", flush=True)


def warn(msg: str) -> None:
    print(f"[maas] WARNING: {msg}", flush=True)


def metric_line(**values: object) -> None:
    """`name=value name=value`, one line, flushed (SageMaker metric definitions scrape these)."""
    parts = []
    for k, v in values.items():
        parts.append(f"{k}={v:.6f}" if isinstance(v, float) else f"{k}={v}")
    sys.stdout.write(" ".join(parts) + "\n")
    sys.stdout.flush()
