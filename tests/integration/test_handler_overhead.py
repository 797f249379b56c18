"""The benchmark's regression check: the inference handler's own cost per request.

The handler and bare `session.run` (on the session the handler loaded, the same inputs) run
side by side in this process, interleaved, a few thousand pairs; the overhead ratio
(handler - bare) / bare is compared with the one `make bench` recorded on the development
machine (bench/baseline.json). A ratio, not a time: it holds across machines about as well as
Python's speed relative to ONNX Runtime's does. The test fails when the overhead has doubled;
noise on a busy 2-core machine gets three tries (a real regression fails all of them).
"""

from __future__ import annotations

import sys

import pytest
from maas_devkit.repo import REPO

# A timing probe: slow, and its figure is a ratio measured side by side (never a fixed time).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the bench package, at the repository root


def test_handler_overhead_has_not_doubled_against_bare_session_run() -> None:
    from bench import overhead

    recorded = overhead.baseline()
    limit = 2 * recorded["overhead_ratio"]
    tries = []
    for _ in range(3):
        result = overhead.probe(pairs=2000)
        tries.append(result)
        if result["overhead_ratio"] <= limit:
            break
    detail = ", ".join(
        f"{t['overhead_ratio']:.2f} ({t['handler_p50_ms']:.3f} ms vs {t['bare_p50_ms']:.3f} ms)"
        for t in tries
    )
    assert tries[-1]["overhead_ratio"] <= limit, (
        f"handler overhead ratio {detail} is above twice the recorded "
        f"{recorded['overhead_ratio']:.2f} (bench/baseline.json, {recorded.get('measured_at')})"
    )
