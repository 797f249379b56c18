"""`maas local up`: the local stack in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Any

from maas_local.stack import LocalStack, LocalStackConfig


def run(aws_port: int, api_port: int, workdir: Path, *, verbose: bool = False) -> int:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    cfg = LocalStackConfig(
        aws_port=aws_port, api_port=api_port, workdir=workdir, quiet_functions=not verbose
    )
    stack = LocalStack(cfg).start()
    print(f"maas local stack '{cfg.stack_name}' is up", flush=True)
    print(f"  AWS endpoint : {stack.aws_url}   (export AWS_ENDPOINT_URL={stack.aws_url})")
    print(f"  API          : {stack.api_url}/v2")
    print(f"  admin API    : {stack.api_url}/admin   (SigV4-signed: `maas models`, `maas promote`)")
    print(f"  data bucket  : s3://{stack.outputs['DataBucketName']}/datasets/<model>/")
    print("Ctrl-C to stop.", flush=True)
    stop = False

    def _stop(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    stack.stop()
    return 0
