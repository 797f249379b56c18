"""Until a run serves: its version final (maas_cli.runs.wait_for), then answering over HTTP."""

from __future__ import annotations

import time
from typing import Any

from maas_cli.runs import wait_for


def wait_until_final(
    stack: Any, model: str, *, job: str | None = None, timeout: float = 300, poll_s: float = 0.5
) -> dict[str, Any]:
    """The version record once READY (and promoted, when it asked to be), FAILED or REJECTED.

    `job`: the run's training job; None, the model's latest version."""
    return wait_for(stack, model, job=job, timeout=timeout, progress=False, poll_s=poll_s)


def wait_until_serving(
    stack: Any, model: str, probe: dict[str, Any], *, job: str | None = None, timeout: float = 300
) -> dict[str, Any]:
    """The READY version's record, returned as soon as the HTTP API answers `probe` with it.

    Raises when the version failed, or was not served within `timeout`.
    """
    import requests

    deadline = time.monotonic() + timeout
    record = wait_until_final(stack, model, job=job, timeout=timeout, poll_s=0.1)
    if record["status"] != "READY":
        raise RuntimeError(f"{model} v{record['version']} {record['status']}: {record['reason']}")
    url = f"{stack.api_url}/v2/models/{model}/infer"
    http = requests.Session()
    while time.monotonic() < deadline:
        r = http.post(url, json=probe, timeout=60)
        if r.status_code == 200 and r.json().get("model_version") == str(record["version"]):
            return record
        time.sleep(0.05)
    raise TimeoutError(f"{model} v{record['version']} was not served within {timeout} s")
