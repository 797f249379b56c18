"""One warm inference function, 10,000 requests: memory stays flat.

A Lambda container lives for thousands of requests; anything a request leaves behind (a
cached event, a lock per unknown version, a session per bad request) adds up. After a warm-up
the test sends 10,000 requests — good ones (JSON and binary, prod and by version) mixed with
bad ones (unknown models and ever new version numbers, malformed bodies) — and fails when the
process's resident memory or its count of live Python objects grows beyond a bound.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import resource
import struct
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from maas_devkit.events import http_event
from maas_devkit.lambda_runtime import load_handler
from maas_devkit.models import infer_body
from maas_devkit.publish import publish_model

SECTION = "Load"
REQUESTS = 10_000
WARMUP = 1_000
RSS_BOUND_MB = 24  # allocator noise is a few MiB; a leak of 1 KiB per request would be 10
OBJECTS_BOUND = 5_000  # a leak of one object per request would be 10,000


def rss_mb() -> float:
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # macOS: bytes; peak only
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def live_objects() -> int:
    """Live Python objects, less moto's (its DynamoDB keeps rows of the queries it answers)."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if not str(type(o).__module__).startswith("moto."))


def requests(features: np.ndarray) -> list[dict[str, Any]]:
    """A repeating mix: 8 good requests of 4 kinds, 2 bad ones of changing kinds."""
    rows = features[:8].astype(np.float32)
    tensor = rows.astype("<f4").tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [8, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(tensor)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    binary = http_event(
        "POST",
        "/v2/models/iris/infer",
        head + tensor,
        headers={
            "inference-header-content-length": str(len(head)),
            "content-type": "application/octet-stream",
        },
        base64=True,
    )
    good = [
        http_event("POST", "/v2/models/iris/infer", infer_body(rows[:1])),
        http_event("POST", "/v2/models/iris/infer", infer_body(rows)),
        http_event("POST", "/v2/models/iris/versions/1/infer", infer_body(rows[:2])),
        binary,
        http_event("GET", "/v2/models/iris"),
        http_event("GET", "/v2/models/iris/ready"),
        http_event("POST", "/v2/models/iris/infer", infer_body(rows[:4], nested=True)),
        http_event("GET", "/v2/health/ready"),
    ]
    return good


def bad(i: int) -> dict[str, Any]:
    kind = i % 4
    if kind == 0:  # a version number never seen before, every time
        return http_event("GET", f"/v2/models/iris/versions/{1000 + i}/ready")
    if kind == 1:  # a model that does not exist, a new name every time
        return http_event("POST", f"/v2/models/nope-{i}/infer", infer_body([[1, 2, 3, 4]]))
    if kind == 2:
        return http_event("POST", "/v2/models/iris/infer", '{"inputs": [' + "1," * (i % 50))
    body = struct.pack("<I", 10) + b"abc"
    return http_event(
        "POST",
        "/v2/models/iris/infer",
        body,
        headers={"inference-header-content-length": "2"},
        base64=True,
    )


@pytest.mark.slow
def test_ten_thousand_requests_leave_memory_flat(
    aws: Any,
    registry: Any,
    storage: Any,
    iris_model: Any,
    lambda_context: Any,
    reliability_report: Any,
) -> None:
    publish_model(registry, storage, "iris", 1, iris_model.onnx, promote=True)
    app = load_handler("inference")
    good = requests(iris_model.features)
    errors = 0

    def run(count: int, offset: int) -> None:
        nonlocal errors
        for i in range(offset, offset + count):
            if i % 5 == 4:
                status = app.lambda_handler(bad(i), lambda_context)["statusCode"]
                errors += not 400 <= status < 500
            else:
                status = app.lambda_handler(good[i % len(good)], lambda_context)["statusCode"]
                errors += status != 200

    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):  # EMF metric lines
        run(WARMUP, 0)
        before_rss, before_objects = rss_mb(), live_objects()
        started = time.perf_counter()
        run(REQUESTS, WARMUP)
        seconds = time.perf_counter() - started
        after_rss, after_objects = rss_mb(), live_objects()

    store = app.store()
    rss_growth = after_rss - before_rss
    objects_growth = after_objects - before_objects
    reliability_report.measured(
        SECTION,
        inproc_requests=REQUESTS,
        inproc_errors=errors,
        inproc_rps=round(REQUESTS / seconds),
        inproc_rss_growth_mb=round(rss_growth, 1),
        inproc_rss_bound_mb=RSS_BOUND_MB,
        inproc_objects_growth=objects_growth,
        inproc_objects_bound=OBJECTS_BOUND,
    )
    assert errors == 0
    assert rss_growth < RSS_BOUND_MB, f"RSS grew {rss_growth:.1f} MiB over {REQUESTS} requests"
    assert objects_growth < OBJECTS_BOUND, f"{objects_growth} more live objects"
    # Per-request state that must not grow with what clients ask for
    assert len(store._sessions) == 1
    assert len(store._load_locks) <= 2
    assert len(store._aliases) <= 1
