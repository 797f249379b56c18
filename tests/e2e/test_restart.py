"""`maas local up` as a user runs it: a process that keeps its state across SIGINT and SIGKILL.

Train a model, stop the stack with SIGINT, start it again: the model answers with the same
predictions, `maas models` and `maas versions` say what they said, and a new upload of the same
dataset is the next version and serves. Killed (SIGKILL), the stack comes back from its last
save. A second stack on the same work dir refuses at once, naming the first.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from maas_devkit.models import load_dataset
from maas_devkit.wait import wait_until_final
from maas_local.stack import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]
MAAS = Path(sys.executable).with_name("maas")


class Stack:
    """A running `maas local up` seen from outside: its endpoints, its CloudFormation outputs."""

    def __init__(self, proc: subprocess.Popen[str], aws_port: int, api_port: int) -> None:
        self.proc = proc
        self.aws_url = f"http://127.0.0.1:{aws_port}"
        self.api_url = f"http://127.0.0.1:{api_port}"
        cfn = self.client("cloudformation")
        stack = cfn.describe_stacks(StackName="maas")["Stacks"][0]
        self.outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}

    def client(self, service: str) -> Any:
        return boto3.client(  # type: ignore[call-overload]
            service,
            endpoint_url=self.aws_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


def _start(workdir: Path, aws_port: int, api_port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(MAAS), "local", "up", "--workdir", str(workdir), "--aws-port", str(aws_port),
         "--api-port", str(api_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "MAAS_ONNX_EXPORTER": "torchscript"},  # the faster exporter
    )  # fmt: skip


@contextmanager
def local_up(workdir: Path, aws_port: int, api_port: int) -> Iterator[Stack]:
    proc = _start(workdir, aws_port, api_port)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("Ctrl-C to stop."):
            break
    else:
        raise AssertionError("the stack did not come up:\n" + "".join(seen))
    try:
        yield Stack(proc, aws_port, api_port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _stop(stack: Stack, sig: int) -> str:
    stack.proc.send_signal(sig)
    out, _ = stack.proc.communicate(timeout=120)
    return out


def _iris_csv() -> bytes:
    x, y, classes = load_dataset("iris")
    rows = [",".join(map(str, r)) + f",{classes[t]}" for r, t in zip(x, y, strict=True)]
    return ("a,b,c,d,label\n" + "\n".join(rows) + "\n").encode()


def _predict(stack: Stack, version: int | None = None) -> tuple[int, list[str], list[float]]:
    x, _, _ = load_dataset("iris")
    rows = x[::10]
    body = {
        "inputs": [
            {"name": "input", "shape": list(rows.shape), "datatype": "FP32",
             "data": rows.ravel().tolist()}
        ]
    }  # fmt: skip
    where = f"/versions/{version}" if version else ""
    r = requests.post(f"{stack.api_url}/v2/models/iris{where}/infer", json=body, timeout=60)
    if r.status_code != 200:
        return r.status_code, [], []
    out = {o["name"]: o["data"] for o in r.json()["outputs"]}
    return r.status_code, out["label"], out["probabilities"]


def _cli(stack: Stack, *args: str) -> str:
    env = {**os.environ, "AWS_ENDPOINT_URL": stack.aws_url}
    done = subprocess.run([str(MAAS), *args], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _status(workdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MAAS), "local", "status", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _upload(stack: Stack) -> None:
    stack.client("s3").put_object(
        Bucket=stack.outputs["DataBucketName"], Key="datasets/iris/iris.csv", Body=_iris_csv()
    )


def test_a_trained_model_survives_sigint_and_sigkill_and_the_next_upload_is_the_next_version(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "local"
    aws_port, api_port = free_port(), free_port()

    # GIVEN a model trained through the stack, its answers and what the CLI says of it
    with local_up(workdir, aws_port, api_port) as stack:
        _upload(stack)
        first = wait_until_final(stack, "iris", timeout=300)
        assert first["status"] == "READY" and first["version"] == 1, first
        before = _predict(stack)
        assert before[0] == 200
        models, versions = _cli(stack, "models"), _cli(stack, "versions", "iris")

        # AND a second stack on the same work dir refuses at once, naming the first
        t0 = time.monotonic()
        second = subprocess.run(
            [str(MAAS), "local", "up", "--workdir", str(workdir), "--aws-port",
             str(free_port()), "--api-port", str(free_port())],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert time.monotonic() - t0 < 20
        assert second.returncode != 0
        assert f"pid {stack.proc.pid}" in second.stderr, second.stderr
        assert f"AWS port {aws_port}" in second.stderr and f"API port {api_port}" in second.stderr
        assert "Traceback" not in second.stderr + second.stdout

        # WHEN it is stopped with SIGINT (Ctrl-C)
        out = _stop(stack, signal.SIGINT)
        assert stack.proc.returncode == 0, out

    # THEN started again, it serves the same model the same way, and the CLI agrees
    with local_up(workdir, aws_port, api_port) as stack:
        assert _predict(stack) == before
        assert _cli(stack, "models") == models
        assert _cli(stack, "versions", "iris") == versions

        # AND a new upload of the same dataset is version 2, whose first request succeeds
        _upload(stack)
        deadline = time.monotonic() + 300
        while True:
            latest = wait_until_final(stack, "iris", timeout=300)
            if latest["version"] == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert latest["status"] == "READY" and latest["version"] == 2, latest
        status, labels, _ = _predict(stack, version=2)
        assert status == 200 and labels == before[1]

        # WHEN the stack is killed outright, once its saved state has caught up (it saves
        # after each change; a kill in the middle of a save: test_local_state)
        deadline = time.monotonic() + 60
        while "2 READY" not in _status(workdir).stdout and time.monotonic() < deadline:
            time.sleep(0.2)
        _stop(stack, signal.SIGKILL)

    # THEN it comes back from its last save: both versions, v2 in prod, still answering
    with local_up(workdir, aws_port, api_port) as stack:
        assert _predict(stack)[0] == 200
        listed = _cli(stack, "versions", "iris")
        assert re.search(r"^v1 .*READY", listed, re.M) and re.search(r"^v2 .*prod", listed, re.M)
        status = _status(workdir)
        assert status.returncode == 0, status.stdout
        assert "iris" in status.stdout and "2 READY" in status.stdout
        _stop(stack, signal.SIGTERM)
        assert stack.proc.returncode == 0

    # AND the functions' structured logs and metrics are in the log file, not the terminal
    logs = subprocess.run(
        [str(MAAS), "local", "logs", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert logs.returncode == 0
    assert '"ColdStart"' in logs.stdout and '"ingest outcome"' in logs.stdout
