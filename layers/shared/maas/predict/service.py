"""The batch-prediction job: plan an upload into chunks, score each chunk, assemble the outputs.

What goes where, and why a duplicate event is harmless: maas.predict.rows (its docstring).
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any
from urllib.parse import unquote_plus

from maas.core.config import PredictSettings
from maas.core.storage import ObjectMissing, Storage
from maas.predict.rows import (
    MAX_SEND_BATCH,
    PARTS,
    BadUpload,
    Target,
    csv_lines,
    format_outputs,
    job_id,
    output_fields,
    parse_key,
    read_rows,
    score_rows,
)
from maas.serving.store import ModelNotFound, ModelStore, ModelUnavailable

log = logging.getLogger("maas.predict")
OUT, ERRORS, SUMMARY = ".out.csv", ".errors.csv", ".summary.json"


class BatchPredictor:
    def __init__(
        self, settings: PredictSettings, store: ModelStore, storage: Storage, sqs: Any
    ) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.sqs = sqs

    # --- the SQS batch ------------------------------------------------------------------

    def handle(self, event: dict[str, Any]) -> dict[str, Any]:
        """Each record on its own; a failure a retry may cure fails that record alone."""
        failures = []
        for record in event.get("Records", []):
            try:
                self.handle_message(json.loads(record["body"]))
            except (ModelUnavailable, ObjectMissing) as e:  # not ready yet: SQS retries
                log.warning("batch message %s will be retried: %s", record.get("messageId"), e)
                failures.append({"itemIdentifier": record["messageId"]})
        return {"batchItemFailures": failures}

    def handle_message(self, body: dict[str, Any]) -> None:
        if body.get("kind") == "chunk":
            self.score_chunk(body)
            return
        for r in body.get("Records", []):
            if str(r.get("eventName", "")).startswith("ObjectCreated"):
                obj = r["s3"]["object"]
                key = unquote_plus(obj["key"])
                version_id = obj.get("versionId") or None
                tag = version_id or str(obj.get("eTag") or "")
                self.plan(r["s3"]["bucket"]["name"], key, version_id, tag)

    # --- planning -----------------------------------------------------------------------

    def plan(self, bucket: str, key: str, version_id: str | None, tag: str) -> int:
        """Pin the version, count the rows, send one chunk message per chunk; chunks sent.

        `version_id`: the object's S3 version (the data bucket is versioned), read by every
        chunk, so a later upload of the same key cannot mix into this job; `tag` names it."""
        job = job_id(bucket, key, tag)
        try:
            target = parse_key(key)
        except BadUpload as e:
            log.warning("not a batch prediction upload: %s", e)
            return 0
        started = time.time()
        try:
            _, rows = read_rows(self._read(bucket, key, version_id), target.fmt)
            number = self.store.resolve_version(target.model, _str(target.version))
            self.store.get(target.model, str(number))  # READY and loadable, or say why now
        except (BadUpload, ModelNotFound, ModelUnavailable, ValueError) as e:
            self._summary(target, {"job": job, "source": f"s3://{bucket}/{key}", "error": str(e)})
            return 0
        chunks = max(1, math.ceil(len(rows) / self.settings.chunk_rows))
        base = {
            "kind": "chunk",
            "job": job,
            "bucket": bucket,
            "key": key,
            "object_version": version_id,
            "version": number,
            "rows": len(rows),
            "chunks": chunks,
            "started": started,
        }
        messages = [
            {**base, "chunk": i, "start": i * self.settings.chunk_rows} for i in range(chunks)
        ]
        for i in range(0, len(messages), MAX_SEND_BATCH):
            entries = [
                {"Id": str(m["chunk"]), "MessageBody": json.dumps(m)}
                for m in messages[i : i + MAX_SEND_BATCH]
            ]
            self.sqs.send_message_batch(QueueUrl=self.settings.predict_queue_url, Entries=entries)
        log.info("planned %s: %d rows in %d chunk(s), v%d", key, len(rows), chunks, number)
        return chunks

    def _read(self, bucket: str, key: str, version_id: str | None) -> bytes:
        limit = int(self.settings.max_input_mb * 1024 * 1024)
        try:
            return self.storage.get_bytes(bucket, key, max_bytes=limit, version_id=version_id)
        except ValueError as e:
            raise BadUpload(str(e)) from None

    # --- scoring ------------------------------------------------------------------------

    def score_chunk(self, m: dict[str, Any]) -> None:
        target = parse_key(m["key"])
        columns, rows = read_rows(
            self._read(m["bucket"], m["key"], m["object_version"]), target.fmt
        )
        start = m["start"]
        mine = rows[start : start + self.settings.chunk_rows]
        loaded = self.store.get(target.model, str(m["version"]))
        fields = output_fields(loaded)
        try:
            scored, errors = score_rows(loaded, mine)
        except BadUpload as e:
            scored, errors = {}, {i: str(e) for i in range(len(mine))}
        lines = [
            [_text(row.get(c)) for c in columns] + format_outputs(scored[i], fields)
            for i, row in enumerate(mine)
            if i in scored
        ]
        bad = [[str(start + i + 1), why] for i, why in sorted(errors.items())]
        part = f"{PARTS}{m['job']}/{m['chunk']:06d}"
        bucket = self.settings.artifact_bucket
        self.storage.put_bytes(bucket, part + ERRORS, csv_lines(bad).encode())
        self.storage.put_bytes(bucket, part + OUT, csv_lines(lines).encode())  # last: "done"
        done = [k for k in self.storage.list_keys(bucket, f"{PARTS}{m['job']}/") if k.endswith(OUT)]
        if len(done) >= m["chunks"]:
            self.assemble(target, m, columns + fields, sorted(done))

    def assemble(
        self, target: Target, m: dict[str, Any], header: list[str], parts: list[str]
    ) -> None:
        """Every part in chunk order under one header; the same bytes however often it runs."""
        bucket = self.settings.artifact_bucket
        out = [csv_lines([header]).encode()]
        errors = [csv_lines([["row", "reason"]]).encode()]
        scored = failed = 0
        for key in parts:
            body = self.storage.get_bytes(bucket, key)
            scored += body.count(b"\n")
            out.append(body)
            bad = self.storage.get_bytes(bucket, key[: -len(OUT)] + ERRORS)
            failed += bad.count(b"\n")
            errors.append(bad)
        self.storage.put_bytes(bucket, target.key(OUT), b"".join(out), content_type="text/csv")
        self.storage.put_bytes(
            bucket, target.key(ERRORS), b"".join(errors), content_type="text/csv"
        )
        self._summary(
            target,
            {
                "job": m["job"],
                "source": f"s3://{m['bucket']}/{m['key']}",
                "model": target.model,
                "version": m["version"],
                "rows": m["rows"],
                "scored": scored,
                "errors": failed,
                "chunks": m["chunks"],
                "output": f"s3://{bucket}/{target.key(OUT)}",
                "errors_file": f"s3://{bucket}/{target.key(ERRORS)}",
                "seconds": round(time.time() - m["started"], 3),
            },
        )
        log.info("assembled %s: %d scored, %d errors", target.key(OUT), scored, failed)

    def _summary(self, target: Target, doc: dict[str, Any]) -> None:
        self.storage.put_bytes(
            self.settings.artifact_bucket,
            target.key(SUMMARY),
            json.dumps(doc, indent=2).encode(),
            content_type="application/json",
        )


def _str(version: int | None) -> str | None:
    return None if version is None else str(version)


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)
