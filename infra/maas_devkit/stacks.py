"""A local stack for one test or one benchmark: free ports, and the environment put back."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from maas_local.stack import LocalStack, LocalStackConfig, free_port


@contextmanager
def running_stack(workdir: Path, *, quiet: bool = True, **options: Any) -> Iterator[LocalStack]:
    """A started local stack; the process environment it set is restored when it stops.

    `quiet`: the training runner's output lines are dropped instead of printed.
    """
    saved = dict(os.environ)
    cfg = LocalStackConfig(aws_port=free_port(), api_port=free_port(), workdir=workdir, **options)
    try:
        with LocalStack(cfg) as stack:
            if quiet:
                stack.runner.on_line = lambda job, line: None
            yield stack
    finally:
        os.environ.clear()
        os.environ.update(saved)
