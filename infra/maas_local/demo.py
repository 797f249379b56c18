"""`maas demo`: scikit-learn's digits, end to end through the local stack, scored over HTTP."""

from __future__ import annotations

import csv
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

from maas_local.console import console_session
from maas_local.stack import LocalStack, LocalStackConfig, free_port

MODEL = "digits"


def _write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"pixel_{i}" for i in range(x.shape[1])] + ["label"])
        for row, label in zip(x, y, strict=True):
            w.writerow([int(v) for v in row] + [int(label)])


def run_demo(timeout: float = 600) -> int:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    t0 = time.monotonic()
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.25, stratify=digits.target, random_state=0
    )
    print(
        f"digits: {len(digits.data)} real samples; {len(x_train)} uploaded for training, "
        f"{len(x_test)} kept back for scoring over HTTP"
    )
    with tempfile.TemporaryDirectory(prefix="maas-demo-") as tmp:
        cfg = LocalStackConfig(
            aws_port=free_port(),
            api_port=free_port(),
            workdir=Path(tmp) / "stack",
            quiet_functions=False,  # their logs and metrics go to the stack's log file
            console=True,
        )
        with console_session(cfg.workdir), LocalStack(cfg) as stack:
            print(f"local stack up: AWS {stack.aws_url}, API {stack.api_url}")
            data = Path(tmp) / "digits.csv"
            _write_csv(data, x_train, y_train)
            record = _train(stack, data, timeout)
            if record["status"] != "READY" or record.get("prod") != record["version"]:
                print(
                    f"demo failed: v{record['version']} is {record['status']}: {record['reason']}"
                )
                return 1
            pipeline_s = time.monotonic() - t0
            print(f"scoring          {len(x_test)} kept-back rows over HTTP, one request each")
            correct, latencies = _score(f"{stack.api_url}/v2/models/{MODEL}/infer", x_test, y_test)
    # The summary last, once the stack has stopped: nothing prints after it.
    summary = record["summary"]
    accuracy = correct / len(y_test)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print()
    print(f"test accuracy over HTTP : {accuracy:.4f} ({correct}/{len(y_test)} rows)")
    print(f"chosen recipe           : {summary.get('recipe')}")
    print(
        f"model size              : {summary.get('fp32_size_bytes', 0) / 1024:.1f} KiB "
        f"fp32 -> {summary.get('size_bytes', 0) / 1024:.1f} KiB served"
    )
    print(
        f"request latency (HTTP)  : p50 {statistics.median(latencies):.2f} ms, "
        f"p99 {p99:.2f} ms over {len(latencies)} requests"
    )
    print(f"upload -> serving       : {pipeline_s:.1f} s; demo total {time.monotonic() - t0:.1f} s")
    return 0 if accuracy >= 0.95 else 1


def _train(stack: LocalStack, data: Path, timeout: float) -> dict[str, Any]:
    """Upload as a user would (`maas upload`), and wait until the version is final."""
    import boto3
    from maas_cli.connect import StackHandle
    from maas_cli.runs import upload, wait_for

    session = boto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=stack.cfg.region
    )
    handle = StackHandle(stack.cfg.stack_name, stack.aws_url, stack.outputs, session)
    job = upload(handle, data, MODEL, label="label")
    return wait_for(handle, MODEL, job=job, timeout=timeout, progress=False)


def _score(url: str, x: np.ndarray, y: np.ndarray) -> tuple[int, list[float]]:
    """(rows labelled right, latency of each request in ms), one OIP request per row."""
    http = requests.Session()
    correct, latencies = 0, []
    for row, want in zip(x, y, strict=True):
        body = {
            "inputs": [
                {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row.tolist()}
            ]
        }
        t = time.perf_counter()
        r = http.post(url, json=body, timeout=30)
        latencies.append((time.perf_counter() - t) * 1000)
        r.raise_for_status()
        outputs = {o["name"]: o for o in r.json()["outputs"]}
        correct += outputs["label"]["data"][0] == str(int(want))
    return correct, latencies
