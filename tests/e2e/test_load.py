"""Load through the local HTTP API: 2,000 requests from 16 concurrent clients, zero errors.

Each client keeps one HTTP/1.1 connection (as a real client pool does) and sends its share
of a mix of JSON and binary requests, single rows and batches, prod and by version. The local
stack runs four inference containers; the figures go to the README's reliability table.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from typing import Any

import numpy as np
import pytest
import requests
from maas_devkit.models import infer_body
from maas_devkit.publish import publish_to_stack as publish
from maas_devkit.stacks import running_stack

pytestmark = pytest.mark.e2e

SECTION = "Load"
CLIENTS = 16
REQUESTS = 2_000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, iris_model: Any) -> Any:
    with running_stack(tmp_path_factory.mktemp("load")) as s:
        publish(s, "iris", 1, iris_model.onnx, promote=True)
        yield s


def mix(base: str, features: np.ndarray) -> list[tuple[str, bytes, dict[str, str], int]]:
    """(url, body, headers, rows) for the request kinds the clients take turns sending."""
    rows = features[:32].astype("<f4")
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [32, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": rows.nbytes},
                }
            ]
        }
    ).encode()
    binary_headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(head)),
    }
    json_headers = {"content-type": "application/json"}
    return [
        (f"{base}/iris/infer", json.dumps(infer_body(rows[:1])).encode(), json_headers, 1),
        (f"{base}/iris/infer", head + rows.tobytes(), binary_headers, 32),
        (f"{base}/iris/versions/1/infer", json.dumps(infer_body(rows)).encode(), json_headers, 32),
        (f"{base}/iris/infer", json.dumps(infer_body(rows[:8])).encode(), json_headers, 8),
    ]


def test_two_thousand_requests_from_sixteen_clients_all_succeed(
    stack: Any, iris_model: Any, reliability_report: Any
) -> None:
    kinds = mix(f"{stack.api_url}/v2/models", iris_model.features)
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(CLIENTS + 1)

    def client(index: int) -> None:
        mine: list[float] = []
        errors: list[str] = []
        with requests.Session() as session:
            start.wait()
            for i in range(REQUESTS // CLIENTS):
                url, body, headers, _ = kinds[(index + i) % len(kinds)]
                t0 = time.perf_counter()
                try:
                    r = session.post(url, data=body, headers=headers, timeout=60)
                    ok = r.status_code == 200 and r.content[:1] == b"{"
                    if not ok:
                        errors.append(f"{r.status_code} {r.text[:200]}")
                except requests.RequestException as e:
                    errors.append(repr(e))
                mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)
            failures.extend(errors)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join(timeout=300)
    seconds = time.perf_counter() - began

    assert len(latencies) == REQUESTS
    ms = sorted(x * 1000 for x in latencies)
    reliability_report.measured(
        SECTION,
        http_requests=REQUESTS,
        http_clients=CLIENTS,
        http_errors=len(failures),
        http_rps=round(REQUESTS / seconds),
        http_p50_ms=round(statistics.median(ms), 1),
        http_p99_ms=round(ms[int(len(ms) * 0.99) - 1], 1),
    )
    assert failures == [], failures[:5]
