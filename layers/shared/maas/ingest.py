"""Ingest: an S3 upload notification becomes (at most) one training job and one new version."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger

from .jobs import TrainingBackend, TrainingRequest
from .jobspec import InvalidJobSpec, JobSpec, parse_job_json, parse_object_metadata
from .names import job_name
from .registry import FAILED, PROD, TRAINING, Conflict, NotFound, Registry
from .storage import ObjectMissing, Storage
from .uploads import Ignored, RejectedUpload, Upload, classify, decode_key

logger = Logger(child=True)
ACTOR = "pipeline:ingest"


@dataclass(frozen=True)
class Outcome:
    key: str
    action: str  # started | duplicate | ignored | rejected
    detail: str = ""
    model: str | None = None
    version: int | None = None
    job_name: str | None = None


class PermanentFailure(Exception):
    """Nothing to retry and nowhere in the registry to record it: goes to the dead-letter queue."""


class Ingest:
    def __init__(self, registry: Registry, storage: Storage, backend: TrainingBackend) -> None:
        self.registry = registry
        self.storage = storage
        self.backend = backend

    def handle_message(self, body: str) -> list[Outcome]:
        """One SQS message body: an S3 event notification (possibly several records)."""
        try:
            doc = json.loads(body)
        except json.JSONDecodeError as e:
            raise PermanentFailure(f"message body is not JSON: {e}") from None
        if doc.get("Event") == "s3:TestEvent":
            return [Outcome("", "ignored", "s3:TestEvent")]
        records = doc.get("Records")
        if not isinstance(records, list):
            raise PermanentFailure("message is not an S3 event notification (no Records)")
        return [self.handle_record(r) for r in records]

    def handle_record(self, record: dict[str, Any]) -> Outcome:
        event_name = str(record.get("eventName", ""))
        try:
            bucket = record["s3"]["bucket"]["name"]
            key = decode_key(record["s3"]["object"]["key"])
        except (KeyError, TypeError):
            raise PermanentFailure("S3 record without bucket name or object key") from None
        if not event_name.startswith("ObjectCreated"):
            return Outcome(key, "ignored", f"event {event_name!r} is not an upload")
        try:
            upload = classify(bucket, key)
        except RejectedUpload as e:
            return self._reject(e.key, e.reason, e.model, record)
        if isinstance(upload, Ignored):
            logger.info("ignored upload", extra={"key": key, "reason": upload.reason})
            return Outcome(key, "ignored", upload.reason)
        return self._start(upload, record)

    def _start(self, upload: Upload, record: dict[str, Any]) -> Outcome:
        obj = record["s3"]["object"]
        try:
            info = self.storage.head(upload.bucket, upload.key, obj.get("versionId"))
        except ObjectMissing:
            return Outcome(upload.key, "ignored", "object no longer exists", upload.model)
        try:
            spec: JobSpec
            if upload.kind == "run":
                raw = self.storage.get_bytes(
                    upload.bucket, upload.key, version_id=info.version_id, max_bytes=64 * 1024
                )
                spec = parse_job_json(raw, pretrained=upload.area == "pretrained")
            else:
                spec = parse_object_metadata(info.metadata)
            channels = self._extra_channels(spec)
        except (InvalidJobSpec, ValueError) as e:
            return self._reject(upload.key, str(e), upload.model, record, identity=info.identity)

        name = job_name(upload.model, upload.run, info.identity)
        source = f"s3://{upload.bucket}/{upload.key}"
        claim = self.registry.claim_job(
            job_name=name, model=upload.model, run=upload.run, source=source, actor=ACTOR
        )
        if claim.started:
            logger.info("duplicate delivery", extra={"job": name, "version": claim.version})
            return Outcome(
                upload.key, "duplicate", "job already started", upload.model, claim.version, name
            )
        request = TrainingRequest(
            name,
            upload.model,
            claim.version,
            f"s3://{upload.bucket}/{upload.data_prefix}",
            spec,
            channels,
        )
        # The spec first: once the job is marked started, a redelivery stops at "duplicate",
        # so a spec not yet recorded would be lost and the optimizer would use defaults.
        self._record_spec(upload.model, claim.version, spec)
        self.backend.start(request)
        self.registry.mark_started(name)
        logger.info(
            "training started", extra={"job": name, "model": upload.model, "version": claim.version}
        )
        return Outcome(upload.key, "started", "", upload.model, claim.version, name)

    def _extra_channels(self, spec: JobSpec) -> dict[str, str]:
        """finetune: channel "base" is the pretrained folder base_model's prod was imported from."""
        if not spec.base_model:
            return {}
        base = spec.base_model
        alias = self.registry.get_alias(base, PROD)
        if alias is None:
            raise InvalidJobSpec(f"base_model {base!r} has no version promoted to {PROD!r}")
        try:
            source = self.registry.get_version(base, alias.version).source
        except NotFound:
            raise InvalidJobSpec(f"base_model {base!r} v{alias.version} is not found") from None
        folder = source.rsplit("/", 1)[0] + "/"
        if not folder.startswith("s3://") or "/pretrained/" not in folder:
            raise InvalidJobSpec(
                f"base_model {base!r} v{alias.version} was not imported from pretrained/ "
                f"(its source is {source}); finetune starts from an imported pretrained model"
            )
        return {"base": folder}

    def _record_spec(self, model: str, version: int, spec: JobSpec) -> None:
        self.registry.update_summary(model, version, {"spec": spec.model_dump()})

    def _reject(
        self,
        key: str,
        reason: str,
        model: str | None,
        record: dict[str, Any],
        identity: str | None = None,
    ) -> Outcome:
        """A permanent problem with the upload: record it where the user will look."""
        logger.warning("upload rejected", extra={"key": key, "reason": reason})
        if model is None:
            raise PermanentFailure(f"{key}: {reason}")
        obj = record.get("s3", {}).get("object", {})
        ident = identity or obj.get("versionId") or obj.get("eTag") or obj.get("sequencer", "")
        name = job_name(model, "rejected", f"{key}\0{ident}")
        claim = self.registry.claim_job(
            job_name=name, model=model, run="-", source=key, actor=ACTOR
        )
        if not claim.started:
            # Also on redelivery: a delivery that crashed after the claim left it TRAINING.
            # Conflict: an earlier delivery recorded the failure but crashed before marking it.
            with contextlib.suppress(Conflict):
                self.registry.transition(
                    model,
                    claim.version,
                    expected=(TRAINING,),
                    status=FAILED,
                    actor=ACTOR,
                    reason=reason,
                )
            self.registry.mark_started(name)
        return Outcome(key, "rejected", reason, model, claim.version, name)
