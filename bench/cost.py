"""Cost per million requests on Lambda (+ the HTTP API) from measured durations, and the
request rate at which an always-on SageMaker real-time endpoint would cost the same.

Duration: the warm handler's measured p50 per request on this machine, with one ONNX Runtime
thread, which is what a function of `memory_mb` = 1769 MB (one vCPU) gets; billed rounded up to
the next millisecond. Cold starts are left out (a small fraction at steady traffic; since
August 2025 Lambda bills the init phase too, which makes a cold start cost its init duration).
"""

from __future__ import annotations

import math
from typing import Any

from . import prices

HOURS_PER_MONTH = 730


def per_million(duration_ms: float, memory_mb: int, arch: str) -> dict[str, float]:
    billed_ms = max(1, math.ceil(duration_ms))
    compute = 1e6 * billed_ms / 1000 * memory_mb / 1024 * prices.LAMBDA_GB_SECOND[arch]
    requests = prices.LAMBDA_PER_MILLION_REQUESTS
    api = prices.HTTP_API_PER_MILLION_REQUESTS
    return {
        "billed_ms": billed_ms,
        "lambda_compute": compute,
        "lambda_requests": requests,
        "http_api": api,
        "total": compute + requests + api,
    }


def break_even_rps(total_per_million: float, instance: str) -> float:
    """Requests per second at which Lambda + the HTTP API cost what the endpoint costs."""
    per_second = prices.SAGEMAKER_REALTIME_PER_HOUR[instance] / 3600
    return per_second / (total_per_million / 1e6)


def model(
    name: str, duration_ms: float, memory_mb: int, suitable: str, note: str = ""
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": name,
        "duration_ms": duration_ms,
        "memory_mb": memory_mb,
        "sagemaker_instance": suitable,
        "sagemaker_note": note,
        "per_million": {},
        "break_even_rps": {},
        "break_even_requests_per_month": {},
    }
    for arch in ("x86_64", "arm64"):
        cost = per_million(duration_ms, memory_mb, arch)
        out["per_million"][arch] = cost
        rps = break_even_rps(cost["total"], suitable)
        out["break_even_rps"][arch] = rps
        out["break_even_requests_per_month"][arch] = rps * 3600 * HOURS_PER_MONTH
    out["sagemaker_per_month"] = prices.SAGEMAKER_REALTIME_PER_HOUR[suitable] * HOURS_PER_MONTH
    return out


def table(durations: dict[str, float], memory_mb: int = 1769) -> dict[str, Any]:
    """`durations`: model -> measured warm handler p50 (ms) at batch 1."""
    suitable = {
        # The smallest real-time instance runs a 64-feature MLP at a fraction of its capacity.
        "digits": ("ml.t2.medium", "smallest real-time instance; the MLP needs a fraction of it"),
        # A transformer keeps the CPU busy: a burstable t2 runs out of CPU credits under load.
        "minilm": ("ml.c5.large", "smallest non-burstable instance: sustained transformer load"),
    }
    return {
        "prices_as_of": prices.PRICES_AS_OF,
        "region": prices.REGION,
        "assumptions": (
            f"{memory_mb} MB functions (1 vCPU, one ONNX Runtime thread, as measured); "
            "billed duration = measured warm p50 rounded up to 1 ms; cold starts excluded; "
            "HTTP API first-tier price; one always-on endpoint instance, no autoscaling"
        ),
        "models": [
            model(name, ms, memory_mb, *suitable.get(name, ("ml.m5.large", "")))
            for name, ms in durations.items()
        ],
    }
