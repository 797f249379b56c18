"""The handler's own cost per request: the inference handler and bare `session.run`, side by side.

Both run in one process on the same ONNX Runtime session (the one the handler loaded) and the
same inputs, interleaved pair by pair, so that what differs is only the handler's work: the API
Gateway event, the OIP decode and checks, the alias lookup (cached), the response encode.

`probe()` is the regression check's measurement (tests/integration/test_handler_overhead.py):
a digits softmax regression (64 features, 10 classes, maas_devkit.models) published into moto,
batch 1 over JSON. `make bench` records its result in bench/baseline.json; the test fails when
a run's overhead ratio is more than twice that.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .common import infer_event

BASELINE = Path(__file__).with_name("baseline.json")


def interleaved(
    a: Callable[[], Any], b: Callable[[], Any], pairs: int, warmup: int = 50
) -> tuple[list[float], list[float]]:
    """Time a() and b() alternately (the first of each pair alternating): seconds each."""
    for _ in range(warmup):
        a()
        b()
    ta: list[float] = []
    tb: list[float] = []
    perf = time.perf_counter
    enabled = gc.isenabled()
    gc.disable()  # a collection lands on whichever call is running: keep it out of the pairs
    try:
        for i in range(pairs):
            first, second, t_first, t_second = (a, b, ta, tb) if i % 2 == 0 else (b, a, tb, ta)
            t0 = perf()
            first()
            t1 = perf()
            second()
            t2 = perf()
            t_first.append(t1 - t0)
            t_second.append(t2 - t1)
            if i % 500 == 499:
                gc.collect()
    finally:
        if enabled:
            gc.enable()
    return ta, tb


def measure(handler: Any, event: dict[str, Any], session: Any, feeds: Any, pairs: int) -> dict:
    """Handler vs bare session.run: medians (ms), the overhead (ms) and its ratio to bare."""
    ctx = None

    def call_handler() -> None:
        response = handler.lambda_handler(event, ctx)
        assert response["statusCode"] == 200, response["body"]

    def call_bare() -> None:
        session.run(None, feeds)

    th, tb = interleaved(call_handler, call_bare, pairs)
    h = statistics.median(th) * 1e3
    b = statistics.median(tb) * 1e3
    return {
        "handler_p50_ms": h,
        "bare_p50_ms": b,
        "overhead_ms": h - b,
        "overhead_ratio": (h - b) / b,
        "pairs": pairs,
    }


@contextmanager
def moto_account() -> Iterator[None]:
    """moto with the stack's bucket and table, and the inference handler's environment."""
    import os
    import tempfile

    import boto3
    import moto
    from maas_devkit import account

    saved = dict(os.environ)
    tmp = tempfile.mkdtemp(prefix="maas-overhead-")
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "REGISTRY_TABLE": account.REGISTRY_TABLE,
            "ARTIFACT_BUCKET": account.ARTIFACT_BUCKET,
            "MODEL_CACHE_DIR": tmp,
            "POWERTOOLS_METRICS_DISABLED": "true",
            "MAAS_AWS_CLIENT": "boto3",
        }
    )
    for name in ("AWS_ENDPOINT_URL", "ALIAS_TTL_S", "PRELOAD_MODELS"):
        os.environ.pop(name, None)
    try:
        with moto.mock_aws():
            account.create_resources(boto3.client)  # the stack's bucket and table, as tests do
            yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def probe(pairs: int = 3000) -> dict[str, Any]:
    """The regression check's measurement, in moto (no server): see the module docstring."""
    import numpy as np
    from maas_devkit import account, lambda_runtime, models, publish

    with moto_account():
        clf, x = models.train_tiny_classifier("digits")
        from maas.core.registry import Registry
        from maas.core.storage import Storage

        publish.publish_model(
            Registry(account.REGISTRY_TABLE),
            Storage(),
            "digits",
            1,
            clf.onnx_bytes(),
            promote=True,
        )
        app = lambda_runtime.load_handler("inference")
        row = x[:1].astype(np.float32)
        event = infer_event("digits", models.infer_body(row))
        first = app.lambda_handler(event, None)
        assert first["statusCode"] == 200, first["body"]
        session = app.store().get("digits", None).session
        return measure(app, event, session, {"input": row}, pairs)


def baseline() -> dict[str, Any]:
    """What the last `make bench` recorded (committed: the regression check compares with it)."""
    doc: dict[str, Any] = json.loads(BASELINE.read_text())
    return doc


if __name__ == "__main__":
    print(json.dumps(probe(), indent=2))
