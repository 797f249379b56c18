"""What the benchmarks share: statistics, the machine, paths, events."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
OUT = BENCH / "out"  # scratch (gitignored): the stack's workdir, models, sam build
for _path in (REPO / "tests", REPO / "functions" / "inference"):
    if str(_path) not in sys.path:  # tests/ corpora (textcorpus, pretrained) and nothing else
        sys.path.append(str(_path))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    xs = sorted(values)
    if not xs:
        return math.nan
    k = (len(xs) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median with its spread (min, quartiles, max) and the count."""
    return {
        "median": statistics.median(values) if values else math.nan,
        "min": min(values) if values else math.nan,
        "p25": percentile(values, 25),
        "p75": percentile(values, 75),
        "max": max(values) if values else math.nan,
        "n": len(values),
    }


def repeats_summary(runs: Sequence[Sequence[float]], q: float) -> dict[str, float]:
    """The q-th percentile of each repeat, then its median and spread over the repeats."""
    return summary([percentile(r, q) for r in runs])


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        mem_gib = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    versions: dict[str, str] = {"python": platform.python_version()}
    for name in ("numpy", "onnxruntime", "torch", "tokenizers", "boto3", "pydantic"):
        try:
            module = __import__(name)
            versions[name] = str(getattr(module, "__version__", "?"))
        except ImportError:
            continue
    return {
        "cpu": cpu,
        "vcpus": os.cpu_count(),
        "memory_gib": mem_gib,
        "gpu": None,
        "os": platform.platform(),
        "versions": versions,
    }


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_json(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=False, default=_default) + "\n")


def _default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def infer_event(model: str, body: dict[str, Any] | str) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) POST /v2/models/<model>/infer, as the tests build."""
    from maas_devkit.events import http_event

    return http_event("POST", f"/v2/models/{model}/infer", body)
