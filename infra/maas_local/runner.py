"""A SageMaker-style runner: executes training/ under the SageMaker training contract.

It takes the CreateTrainingJob request the ingest function sent, lays out /opt/ml in a temp
dir (channels, hyperparameters.json, resourceconfig.json), runs the entry point in a
subprocess, packs model.tar.gz to the job's output path, and delivers the
"SageMaker Training Job State Change" event to the optimize function, as EventBridge would.

Each job is journaled under <workdir>/jobs/<name>/: request.json when it starts, DONE when its
outcome was delivered. A job the stack stopped (or was killed) in the middle of is resumed when
the stack starts again, from its checkpoints, as SageMaker resumes an interrupted spot job.
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
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maas_devkit.events import training_state_change

from maas_local.console import Console
from maas_local.lambda_runtime import FunctionPool
from maas_local.state import write_atomic

if TYPE_CHECKING:
    from maas_local.stack import LocalStack

log = logging.getLogger("maas.local.runner")
HOST = "algo-1"


class Interrupted(Exception):
    """The stack is stopping: the job stays journaled, to resume at the next start."""


class TrainingRunner:
    def __init__(
        self, stack: LocalStack, optimize: FunctionPool, console: Console | None = None
    ) -> None:
        self.stack = stack
        self.optimize = optimize
        self.console = console or Console(quiet=True)
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._backlog: list[dict[str, Any]] = []  # interrupted jobs, resumed first
        self._running: set[subprocess.Popen[str]] = set()
        self._stopping = threading.Event()
        self.completed: list[dict[str, Any]] = []
        # Every line the job prints (besides the console's progress); a test may watch them.
        self.on_line: Callable[[str, str], None] | None = None

    @property
    def jobs_dir(self) -> Path:
        return self.stack.cfg.workdir / "jobs"

    def unfinished(self) -> list[dict[str, Any]]:
        """The requests of journaled jobs whose outcome was never delivered."""
        found = []
        for request_file in sorted(self.jobs_dir.glob("*/request.json")):
            if not (request_file.parent / "DONE").exists():
                try:
                    found.append(json.loads(request_file.read_text()))
                except ValueError:
                    log.warning("unreadable job journal %s", request_file)
        return found

    def resume_unfinished(self) -> list[str]:
        """Queue the interrupted jobs ahead of new requests; returns their names."""
        with self._lock:
            self._backlog = self.unfinished()
            return [r["TrainingJobName"] for r in self._backlog]

    def interrupt(self) -> None:
        """Stop the running jobs (they resume at the next start), and take no new ones."""
        self._stopping.set()
        with self._lock:
            running = list(self._running)
        for proc in running:
            proc.terminate()
        for proc in running:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def _next_resumed(self) -> dict[str, Any] | None:
        with self._lock:
            return self._backlog.pop(0) if self._backlog else None

    def _done(self, name: str) -> bool:
        with self._lock:
            seen = name in self._seen
            self._seen.add(name)
        return seen or (self.jobs_dir / name / "DONE").exists()

    def serve(self, stop: threading.Event) -> None:
        sqs = self.stack.client("sqs")
        url = self.stack.urls["LocalTrainingQueue"]
        while not stop.is_set():
            resumed = self._next_resumed()
            if resumed is not None:
                self._run_logged(resumed, resume=True)
                continue
            try:
                resp = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=1)
            except Exception:
                if stop.is_set():
                    return
                log.exception("training queue poll failed")
                time.sleep(1)
                continue
            for message in resp.get("Messages", []):
                receipt = message["ReceiptHandle"]
                try:
                    request = json.loads(message["Body"])
                    if self._done(request["TrainingJobName"]):
                        log.info("job %s already ran; duplicate request dropped", request)
                    else:
                        # Journaled before the message goes: from here the job is the
                        # journal's, to finish or to resume.
                        self._journal(request)
                        sqs.delete_message(QueueUrl=url, ReceiptHandle=receipt)
                        self._run_logged(request)
                        continue
                except Exception:
                    log.exception("training request unusable: %s", message.get("Body", "")[:200])
                sqs.delete_message(QueueUrl=url, ReceiptHandle=receipt)

    def _run_logged(self, request: dict[str, Any], *, resume: bool = False) -> None:
        try:
            self.run(request, resume=resume)
        except Interrupted:
            log.info("job %s interrupted; it resumes when the stack starts again", request)
        except Exception:
            log.exception("training run crashed")

    def _journal(self, request: dict[str, Any]) -> Path:
        base = self.jobs_dir / request["TrainingJobName"]
        base.mkdir(parents=True, exist_ok=True)
        write_atomic(base / "request.json", json.dumps(request).encode())
        return base

    # --- one job ------------------------------------------------------------------------

    def run(self, request: dict[str, Any], *, resume: bool = False) -> dict[str, Any]:
        """Run one job and deliver its outcome; `resume` keeps its checkpoints from before."""
        name = request["TrainingJobName"]
        base = self.jobs_dir / name
        if not resume:
            shutil.rmtree(base, ignore_errors=True)
        self._journal(request)
        opt_ml = base / "opt-ml"
        started = datetime.now(UTC)
        status, reason, artifact = "Failed", "", None
        self.console.job_started(request)
        try:
            self._lay_out(request, opt_ml)
            code, reason = self._execute(request, opt_ml)
            if code == 0:
                artifact = self._pack_and_upload(request, opt_ml)
                status, reason = "Completed", ""
                self.console.optimizing(request)
        except Interrupted:
            raise
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
        write_atomic(base / "DONE", json.dumps({"status": status, "reason": reason}).encode())
        self._report(result)
        self.completed.append({"job": name, "status": status, "result": result})
        return {"status": status, "reason": reason, "artifact": artifact, "result": result}

    def _report(self, result: Any) -> None:
        if self.console.quiet or not isinstance(result, dict):
            return
        manifest = None
        if result.get("action") == "ready":
            from maas.core.artifacts import model_prefix
            from maas.core.contract import MANIFEST_FILE

            key = model_prefix(result["model"], result["version"]) + MANIFEST_FILE
            body = self.stack.client("s3").get_object(
                Bucket=self.stack.outputs["ArtifactBucketName"], Key=key
            )["Body"]
            manifest = json.loads(body.read())
        self.console.optimized(result, manifest)
        if result.get("promoted"):
            self.console.serving(self.stack.api_url, result["model"])

    def fail(self, name: str, reason: str) -> Any:
        """Deliver a Failed outcome for a job that can neither run nor resume."""
        event = training_state_change(
            {"TrainingJobName": name}, "Failed", reason=reason, region=self.stack.cfg.region
        )
        return self.optimize.invoke(event)

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
        if self._stopping.is_set():
            raise Interrupted(name)
        proc = subprocess.Popen(
            [sys.executable, str(entry)],
            cwd=entry.parent,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        with self._lock:
            self._running.add(proc)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            assert proc.stdout is not None
            with (opt_ml.parent / "output.log").open("a", encoding="utf-8") as log_file:
                for line in proc.stdout:
                    log_file.write(line)
                    self.console.training_line(request, line.rstrip())
                    if self.on_line is not None:
                        self.on_line(name, line.rstrip())
            code = proc.wait()
        finally:
            timed_out = not timer.is_alive()
            timer.cancel()
            with self._lock:
                self._running.discard(proc)
        if self._stopping.is_set():
            raise Interrupted(name)
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
