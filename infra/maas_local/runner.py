"""A SageMaker-style runner: executes training/ under the SageMaker training contract.

It takes the CreateTrainingJob request the ingest function sent, lays out /opt/ml in a temp
dir (channels, hyperparameters.json, resourceconfig.json), runs the entry point in a
subprocess, packs model.tar.gz to the job's output path, and delivers the
"SageMaker Training Job State Change" event to the optimize function, as EventBridge would.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maas_devkit.events import training_state_change

from maas_local.lambda_runtime import FunctionPool

if TYPE_CHECKING:
    from maas_local.stack import LocalStack

log = logging.getLogger("maas.local.runner")
HOST = "algo-1"


class TrainingRunner:
    def __init__(self, stack: LocalStack, optimize: FunctionPool) -> None:
        self.stack = stack
        self.optimize = optimize
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self.completed: list[dict[str, Any]] = []
        self.on_line = lambda job, line: print(f"[{job}] {line}", flush=True)

    def serve(self, stop: threading.Event) -> None:
        sqs = self.stack.client("sqs")
        url = self.stack.urls["LocalTrainingQueue"]
        while not stop.is_set():
            try:
                resp = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=1)
            except Exception:
                if stop.is_set():
                    return
                log.exception("training queue poll failed")
                time.sleep(1)
                continue
            for message in resp.get("Messages", []):
                try:
                    request = json.loads(message["Body"])
                    name = request["TrainingJobName"]
                    with self._lock:
                        duplicate = name in self._seen
                        self._seen.add(name)
                    if duplicate:
                        log.info("job %s already ran; duplicate request dropped", name)
                    else:
                        self.run(request)
                except Exception:
                    log.exception("training run crashed")
                finally:
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

    # --- one job ------------------------------------------------------------------------

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        name = request["TrainingJobName"]
        base = self.stack.cfg.workdir / "jobs" / name
        shutil.rmtree(base, ignore_errors=True)
        opt_ml = base / "opt-ml"
        started = datetime.now(UTC)
        status, reason, artifact = "Failed", "", None
        try:
            self._lay_out(request, opt_ml)
            code, reason = self._execute(request, opt_ml)
            if code == 0:
                artifact = self._pack_and_upload(request, opt_ml)
                status, reason = "Completed", ""
        except Exception as e:  # the platform itself failed: still a recorded outcome
            log.exception("runner failed for %s", name)
            reason = f"InternalServerError: {e}"
        event = training_state_change(
            request,
            status,
            reason=reason,
            artifact=artifact,
            started=started,
            region=self.stack.cfg.region,
        )
        result = self.optimize.invoke(event)
        self.completed.append({"job": name, "status": status, "result": result})
        return {"status": status, "reason": reason, "artifact": artifact, "result": result}

    def _lay_out(self, request: dict[str, Any], opt_ml: Path) -> None:
        s3 = self.stack.client("s3")
        channels = []
        for channel in request.get("InputDataConfig", []):
            cname = channel["ChannelName"]
            uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
            bucket, _, prefix = uri[5:].partition("/")
            dest = opt_ml / "input" / "data" / cname
            dest.mkdir(parents=True, exist_ok=True)
            # SageMaker keeps paths relative to the prefix's last "/".
            root = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(root) :]
                    if not rel or rel.endswith("/") or ".." in Path(rel).parts:
                        continue
                    target = dest / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    s3.download_file(bucket, obj["Key"], str(target))
            channels.append(cname)
        config = opt_ml / "input" / "config"
        config.mkdir(parents=True, exist_ok=True)
        (config / "hyperparameters.json").write_text(json.dumps(request.get("HyperParameters", {})))
        (config / "resourceconfig.json").write_text(
            json.dumps({"current_host": HOST, "hosts": [HOST], "network_interface_name": "lo"})
        )
        (config / "inputdataconfig.json").write_text(
            json.dumps(
                {
                    c["ChannelName"]: {"TrainingInputMode": "File"}
                    for c in request.get("InputDataConfig", [])
                }
            )
        )
        for sub in ("model", "output/data", "checkpoints"):
            (opt_ml / sub).mkdir(parents=True, exist_ok=True)

    def _execute(self, request: dict[str, Any], opt_ml: Path) -> tuple[int, str]:
        name = request["TrainingJobName"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_"))}
        channels = [c["ChannelName"] for c in request.get("InputDataConfig", [])]
        env.update(
            {
                "MAAS_OPT_ML": str(opt_ml),
                "SM_MODEL_DIR": str(opt_ml / "model"),
                "SM_OUTPUT_DATA_DIR": str(opt_ml / "output" / "data"),
                "SM_INPUT_CONFIG_DIR": str(opt_ml / "input" / "config"),
                "SM_HOSTS": json.dumps([HOST]),
                "SM_CURRENT_HOST": HOST,
                "SM_NUM_GPUS": "0",
                "SM_HPS": json.dumps(request.get("HyperParameters", {})),
                "SM_CHANNELS": json.dumps(channels),
                "TRAINING_JOB_NAME": name,
                "PYTHONUNBUFFERED": "1",
            }
        )
        for c in channels:
            env[f"SM_CHANNEL_{c.upper()}"] = str(opt_ml / "input" / "data" / c)
        timeout = int(request.get("StoppingCondition", {}).get("MaxRuntimeInSeconds", 3600))
        entry = self.stack.cfg.training_entry
        proc = subprocess.Popen(
            [sys.executable, str(entry)],
            cwd=entry.parent,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.on_line(name, line.rstrip())
            code = proc.wait()
        finally:
            timed_out = not timer.is_alive()
            timer.cancel()
        failure = opt_ml / "output" / "failure"
        if timed_out and code != 0:
            return code, f"MaxRuntimeExceeded: the job ran past {timeout} s"
        if code != 0:
            detail = failure.read_text(errors="replace").strip()[:1024] if failure.exists() else ""
            return code, f"AlgorithmError: {detail or f'the entry point exited with {code}'}"
        return 0, ""

    def _pack_and_upload(self, request: dict[str, Any], opt_ml: Path) -> str:
        name = request["TrainingJobName"]
        tarball = opt_ml.parent / "model.tar.gz"
        with tarfile.open(tarball, "w:gz") as tar:
            for item in sorted((opt_ml / "model").iterdir()):
                tar.add(item, arcname=item.name)
        out = request["OutputDataConfig"]["S3OutputPath"].rstrip("/")
        uri = f"{out}/{name}/output/model.tar.gz"
        bucket, _, key = uri[5:].partition("/")
        self.stack.client("s3").upload_file(str(tarball), bucket, key)
        return uri
