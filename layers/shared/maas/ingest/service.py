"""Ingest: an S3 upload notification becomes (at most) one training job and one new version."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger

from maas.core.names import job_name
from maas.core.registry import FAILED, PROD, TRAINING, Conflict, NotFound, Registry, pad_sequencer
from maas.core.storage import ObjectMissing, Storage
from maas.ingest.deadletter import DeadLetters
from maas.ingest.jobs import TrainingBackend, TrainingRequest
from maas.ingest.jobspec import InvalidJobSpec, JobSpec, parse_job_json, parse_object_metadata
from maas.ingest.uploads import Ignored, RejectedUpload, Upload, classify, decode_key

logger = Logger(child=True)
ACTOR = "pipeline:ingest"


@dataclass(frozen=True)
class Outcome:
    key: str
    # started | duplicate | ignored | rejected (a FAILED version says why) | superseded (a
    # later upload of the key came first; audited) | dead-lettered (sent to the DLQ, reason
    # attached: nothing in the registry to record it under)
    action: str
    detail: str = ""
    model: str | None = None
    version: int | None = None
    job_name: str | None = None


class PermanentFailure(Exception):
    """Nothing to retry and nowhere in the registry to record it: goes to the dead-letter queue."""


class Ingest:
    def __init__(
        self,
        registry: Registry,
        storage: Storage,
        backend: TrainingBackend,
        *,
        dead_letters: DeadLetters | None = None,
        data_bucket: str = "",
        artifact_bucket: str = "",
    ) -> None:
        self.registry = registry
        self.storage = storage
        self.backend = backend
        # Without a dead-letter queue a permanent failure is raised instead: the message fails,
        # and SQS's redrive policy dead-letters it after its retries.
        self.dead_letters = dead_letters
        self.data_bucket = data_bucket
        self.artifact_bucket = artifact_bucket

    def handle_message(self, body: str, message_id: str = "") -> list[Outcome]:
        """One SQS message body: an S3 event notification (possibly several records)."""
        try:
            doc = json.loads(body)
        except json.JSONDecodeError as e:
            return [self._dead_letter(body, f"message body is not JSON: {e}", "", message_id)]
        if not isinstance(doc, dict):
            return [self._dead_letter(body, "message body is not a JSON object", "", message_id)]
        if doc.get("Event") == "s3:TestEvent":
            return [Outcome("", "ignored", "s3:TestEvent")]
        records = doc.get("Records")
        if not isinstance(records, list) or not records:
            reason = "message is not an S3 event notification (no Records)"
            return [self._dead_letter(body, reason, "", message_id)]
        outcomes = []
        for record in records:
            try:
                outcomes.append(self.handle_record(record))
            except PermanentFailure as e:
                # One record of the message: dead-letter it alone, as a notification of its own.
                key = _raw_key(record)
                single = json.dumps({"Records": [record]})
                outcomes.append(self._dead_letter(single, str(e), key, message_id))
        return outcomes

    def handle_record(self, record: dict[str, Any]) -> Outcome:
        """One S3 record; raises PermanentFailure for what only a dead letter can hold."""
        if not isinstance(record, dict):
            raise PermanentFailure("record is not a JSON object")
        event_name = str(record.get("eventName", ""))
        try:
            bucket = str(record["s3"]["bucket"]["name"])
            key = decode_key(str(record["s3"]["object"]["key"]))
        except (KeyError, TypeError):
            raise PermanentFailure("S3 record without bucket name or object key") from None
        if not event_name.startswith("ObjectCreated"):
            return Outcome(key, "ignored", f"event {event_name!r} is not an upload")
        if bucket == self.artifact_bucket and bucket:
            # The pipeline writes only there; a notification from it is a misconfiguration,
            # and starting a run from the pipeline's own output would loop.
            raise PermanentFailure(
                f"s3://{bucket}/{key}: the artifact bucket is written by the pipeline itself; "
                "its objects never start a run"
            )
        if self.data_bucket and bucket != self.data_bucket:
            raise PermanentFailure(
                f"s3://{bucket}/{key}: not the data bucket ({self.data_bucket}); not started"
            )
        try:
            upload = classify(bucket, key)
        except RejectedUpload as e:
            return self._reject(e.key, e.reason, e.model, record)
        if isinstance(upload, Ignored):
            if upload.misplaced:
                raise PermanentFailure(f"{key}: {upload.reason}")
            logger.info("ignored upload", extra={"key": key, "reason": upload.reason})
            return Outcome(key, "ignored", upload.reason)
        return self._start(upload, record)

    def _dead_letter(self, body: str, reason: str, key: str, message_id: str) -> Outcome:
        logger.warning("dead-lettered", extra={"key": key, "reason": reason})
        if self.dead_letters is None:
            raise PermanentFailure(reason)
        self.dead_letters.send(body, reason, source="maas-ingest", key=key, message_id=message_id)
        return Outcome(key, "dead-lettered", reason)

    def _start(self, upload: Upload, record: dict[str, Any]) -> Outcome:
        obj = record["s3"]["object"]
        superseded_by = self._later_upload(upload, obj.get("sequencer"))
        if superseded_by is not None:
            detail = (
                f"s3://{upload.bucket}/{upload.key}: event {obj.get('sequencer')} arrived after "
                f"the later upload {superseded_by}; not started"
            )
            self.registry.audit(upload.model, ACTOR, "upload-superseded", detail)
            logger.info("superseded upload event", extra={"key": upload.key, "why": detail})
            return Outcome(upload.key, "superseded", detail, upload.model)
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

    def _later_upload(self, upload: Upload, sequencer: Any) -> str | None:
        """The sequencer of a later upload of this key already handled, if any.

        Notifications without a usable sequencer (moto's, or a hand-made event) are not ordered.
        """
        if not isinstance(sequencer, str) or not sequencer:
            return None
        try:
            pad_sequencer(sequencer)
        except ValueError:
            logger.warning("unusable sequencer ignored", extra={"key": upload.key})
            return None
        return self.registry.claim_upload_sequence(upload.bucket, upload.key, sequencer)

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


def _raw_key(record: Any) -> str:
    try:
        return decode_key(str(record["s3"]["object"]["key"]))
    except (KeyError, TypeError):
        return ""
