"""`maas local up`: the local stack in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from maas_local.console import console_session
from maas_local.stack import LocalStack, LocalStackConfig


def run(
    aws_port: int, api_port: int, workdir: Path, *, verbose: bool = False, reset: bool = False
) -> int:
    cfg = LocalStackConfig(
        aws_port=aws_port,
        api_port=api_port,
        workdir=workdir,
        quiet_functions=False,  # their logs and metrics go to the log file
        console=True,
        reset=reset,
    )
    with console_session(cfg.workdir, verbose=verbose) as log_path:
        stack = LocalStack(cfg).start()
        held = stack.restored
        print(f"maas local stack '{cfg.stack_name}' is up", flush=True)
        print(f"  AWS endpoint : {stack.aws_url}   (export AWS_ENDPOINT_URL={stack.aws_url})")
        print(f"  API          : {stack.api_url}/v2")
        print(f"  admin API    : {stack.api_url}/admin   (SigV4-signed: `maas models`)")
        print(f"  data bucket  : s3://{stack.outputs['DataBucketName']}/datasets/<model>/")
        print(f"  work dir     : {cfg.workdir}   (state kept across restarts; --reset empties it)")
        print(f"  logs         : {log_path}   (`maas local logs --follow`)")
        if held is not None:
            print(f"  restored     : the state saved at {held.saved_at}")
        print("Ctrl-C to stop.", flush=True)
        stop = False

        def _stop(*_: Any) -> None:
            nonlocal stop
            stop = True

        # Both by hand: a shell starting `maas local up &` leaves SIGINT ignored, and Ctrl-C
        # must still stop (and save) the stack.
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        while not stop:
            time.sleep(0.2)
        print("stopping: saving the state ...", flush=True)
        stack.stop()
        print("stopped.", flush=True)
    return 0
