"""Batch predictions as an operator drives them: upload a file to score, wait for its outputs.

The upload goes to ``predictions/<model>/`` (or ``predictions/<model>/versions/<n>/``) in the
data bucket; PredictFunction writes ``<name>.out.csv``, ``<name>.errors.csv`` and
``<name>.summary.json`` under the same path in the artifact bucket (maas/predict/rows.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from maas_cli.connect import StackHandle

SUFFIXES = (".csv", ".jsonl", ".ndjson")


def prefix_of(model: str, version: int | None) -> str:
    return f"predictions/{model}/" + (f"versions/{version}/" if version else "")


def submit(stack: StackHandle, path: Path, model: str, version: int | None = None) -> str:
    """Upload `path` to be scored; returns the summary's key in the artifact bucket."""
    from maas.core.names import check_model_name

    check_model_name(model)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{path.name}: batch predictions read .csv or .jsonl files")
    key = prefix_of(model, version) + path.name
    stack.client("s3").upload_file(str(path), stack.outputs["DataBucketName"], key)
    return prefix_of(model, version) + path.name.rsplit(".", 1)[0] + ".summary.json"


def wait_summary(stack: StackHandle, key: str, timeout: float, after: float) -> dict[str, Any]:
    """The job's summary once written after `after` (a time.time()), or TimeoutError."""
    s3 = stack.client("s3")
    bucket = stack.outputs["ArtifactBucketName"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            head = s3.head_object(Bucket=bucket, Key=key)
            if head["LastModified"].timestamp() >= after - 1:
                doc: dict[str, Any] = json.loads(
                    s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                )
                return doc
        except s3.exceptions.ClientError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no summary at s3://{bucket}/{key} after {timeout:.0f} s")


def download(stack: StackHandle, uri: str, dest: Path) -> Path:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    stack.client("s3").download_file(bucket, key, str(dest))
    return dest
