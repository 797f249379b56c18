"""Shared by the e2e tests (tests/e2e is on sys.path for them): a local stack, publishing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from helpers import publish_model
from maas_local.stack import LocalStack, LocalStackConfig, free_port


@contextmanager
def running_stack(workdir: Path, **options: Any) -> Iterator[LocalStack]:
    """A local stack on free ports; the process environment it set is put back afterwards."""
    saved = dict(os.environ)
    cfg = LocalStackConfig(aws_port=free_port(), api_port=free_port(), workdir=workdir, **options)
    try:
        with LocalStack(cfg) as stack:
            stack.runner.on_line = lambda job, line: None
            yield stack
    finally:
        os.environ.clear()
        os.environ.update(saved)


def publish(
    stack: LocalStack, model: str, version: int, onnx_bytes: bytes, *, promote: bool = False
) -> None:
    """What the optimizer leaves behind, written into the stack's bucket and table."""
    from maas.core.registry import Registry
    from maas.core.storage import Storage

    registry = Registry(stack.outputs["RegistryTableName"], client=stack.client("dynamodb"))
    publish_model(
        registry,
        Storage(stack.client("s3")),
        model,
        version,
        onnx_bytes,
        promote=promote,
        bucket=stack.outputs["ArtifactBucketName"],
    )
