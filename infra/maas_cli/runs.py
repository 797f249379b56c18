"""A run, as an operator sees it: upload a dataset, then wait until its version is final.

Against any stack (`maas_cli.connect`): the local one or a deployed one. `wait_for` is the one
wait-until-final loop; `maas wait`, `maas demo`, the e2e tests and the bench all use it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from maas_cli.connect import StackHandle

PROMOTION_GRACE_S = 15.0


def registry_of(stack: Any) -> Any:
    """The stack's registry, read through the stack's own endpoint and credentials."""
    from maas.core.registry import Registry

    return Registry(stack.outputs["RegistryTableName"], client=stack.client("dynamodb"))


def upload(
    stack: StackHandle,
    path: Path,
    model: str,
    *,
    label: str | None = None,
    run: str | None = None,
    job: dict[str, Any] | None = None,
) -> str:
    """Upload a dataset; returns the training job name the upload maps to."""
    from maas.core.names import check_model_name, check_run_name

    check_model_name(model)
    s3 = stack.client("s3")
    bucket = stack.outputs["DataBucketName"]
    if run is None and job is None:
        key = f"datasets/{model}/{path.name}"
        extra = {"Metadata": {"label": label}} if label else {}
        s3.upload_file(str(path), bucket, key, ExtraArgs=extra or None)
        trigger = key
    else:
        run = check_run_name(run or time.strftime("run-%Y%m%d-%H%M%S"))
        s3.upload_file(str(path), bucket, f"datasets/{model}/{run}/{path.name}")
        spec = dict(job or {})
        if label:
            spec.setdefault("label", label)
        trigger = f"datasets/{model}/{run}/job.json"
        s3.put_object(
            Bucket=bucket,
            Key=trigger,
            Body=json.dumps(spec).encode(),
            ContentType="application/json",
        )
    name = job_of(stack, trigger)
    state = _last_job_file(stack, model)
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(name)
    return name


def job_of(stack: Any, trigger: str) -> str:
    """The training job an object that starts a run maps to, derived as the ingest function
    derives it (model, run, and the object's version id or ETag)."""
    from maas.core.names import job_name
    from maas.core.storage import Storage
    from maas.ingest.uploads import Upload, classify

    bucket = stack.outputs["DataBucketName"]
    upload_ = classify(bucket, trigger)
    if not isinstance(upload_, Upload):
        raise ValueError(f"{trigger} does not start a run: {upload_.reason}")
    info = Storage(stack.client("s3")).head(bucket, trigger)
    return str(job_name(upload_.model, upload_.run, info.identity))


def last_job(stack: StackHandle, model: str) -> str | None:
    """The training job of this user's last `upload` of `model` to `stack`, if any."""
    state = _last_job_file(stack, model)
    return state.read_text().strip() if state.exists() else None


def _last_job_file(stack: StackHandle, model: str) -> Path:
    state_dir = Path(os.environ.get("MAAS_STATE_DIR") or Path.home() / ".cache" / "maas")
    return state_dir / f"last-job-{stack.name}-{model}"


def wait_for(
    stack: Any,
    model: str,
    *,
    job: str | None = None,
    timeout: float = 900,
    progress: bool = True,
    poll_s: float = 0.5,
) -> dict[str, Any]:
    """Wait until the version of `job` (None: the model's latest) is final, and promoted when
    it asked to be; returns the version record (as a dict) with "prod" added.

    `stack`: anything with .client() and .outputs (a StackHandle, the local stack).
    """
    from maas.core.registry import FINAL_STATUSES

    registry = registry_of(stack)
    deadline = time.monotonic() + timeout
    last = None
    started = time.monotonic()
    ready_since: float | None = None
    while time.monotonic() < deadline:
        record = None
        if job is not None:
            claim = registry.find_job(job)
            if claim is not None:
                record = registry.get_version(model, claim.version)
        else:
            versions = registry.list_versions(model)
            record = versions[-1] if versions else None
        status = record.status if record else "WAITING-FOR-INGEST"
        if progress and status != last:
            where = f" v{record.version}" if record else ""
            print(f"  [{time.monotonic() - started:5.1f}s] {model}{where}: {status}", flush=True)
        last = status
        if record is not None and record.status in FINAL_STATUSES:
            out = record.to_dict()
            alias = registry.get_alias(model)
            out["prod"] = alias.version if alias else None
            # READY comes a moment before auto-promotion: "done" means promoted, when asked for.
            promoting = record.status == "READY" and (record.summary.get("spec") or {}).get(
                "auto_promote", True
            )
            if ready_since is None:
                ready_since = time.monotonic()
            settled = time.monotonic() - ready_since > PROMOTION_GRACE_S
            if not promoting or out["prod"] == record.version or settled:
                return out
        time.sleep(poll_s)
    raise TimeoutError(f"{model}: no final status after {timeout:.0f} s (last: {last})")
