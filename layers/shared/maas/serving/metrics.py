"""The inference function's metrics as CloudWatch embedded metric format (EMF) log lines.

The lines Powertools Metrics writes (ColdStart with function_name and service, latencies by
service), without importing Powertools on the cold path. Powertools' own environment
variables steer it, read at each flush as Powertools reads them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


class Metrics:
    """One function's metrics: values added during an invocation, flushed after it."""

    def __init__(self, default_service: str) -> None:
        self.default_service = default_service
        self.values: dict[str, float] = {}
        self._cold = True

    def add_latency(self, name: str, milliseconds: float) -> None:
        self.values[name] = milliseconds

    def flush(self, function_name: str) -> None:
        """This invocation's metrics as EMF lines on stdout (the first one's with ColdStart)."""
        cold, self._cold = self._cold, False
        values = dict(self.values)
        self.values.clear()
        if os.environ.get("POWERTOOLS_METRICS_DISABLED", "").lower() in ("1", "true"):
            return
        namespace = os.environ.get("POWERTOOLS_METRICS_NAMESPACE")
        if not namespace:
            return
        service = os.environ.get("POWERTOOLS_SERVICE_NAME", self.default_service)
        now = int(time.time() * 1000)
        lines = []
        if values:
            lines.append(
                emf_line(
                    namespace,
                    now,
                    ["service"],
                    dict.fromkeys(values, "Milliseconds"),
                    {"service": service, **{n: [v] for n, v in values.items()}},
                )
            )
        if cold:
            lines.append(
                emf_line(
                    namespace,
                    now,
                    ["function_name", "service"],
                    {"ColdStart": "Count"},
                    {"function_name": function_name, "service": service, "ColdStart": [1.0]},
                )
            )
        for line in lines:
            sys.stdout.write(json.dumps(line) + "\n")


def emf_line(
    namespace: str,
    timestamp_ms: int,
    dimensions: list[str],
    units: dict[str, str],
    fields: dict[str, Any],
) -> dict[str, Any]:
    """One EMF document: metric names with their units, and the values and dimensions."""
    return {
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [dimensions],
                    "Metrics": [{"Name": n, "Unit": u} for n, u in units.items()],
                }
            ],
        },
        **fields,
    }
