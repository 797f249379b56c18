"""The local stack's AWS state on disk: buckets, the registry table and the queues' messages.

moto keeps its state in memory only and offers no persistence of its own (its recorder replays
every request, reads and deliveries included, and would re-send S3's notifications), so the
state is copied out and back in through the public AWS APIs, the same calls a user could make:
it cannot drift from moto's internals.

    state/blobs/<sha256>           object bodies, content-addressed (saved once, however often)
    state/snapshots/<n>.json       one snapshot: every object version in order, every item,
                                   and, when the stack stopped cleanly, every queued message
    state/CURRENT                  the name of the last complete snapshot

Each file is written beside its target and renamed over it (fsync'd first), and CURRENT moves
only after the snapshot it names is on disk: a stack killed in the middle of a save restarts
from the snapshot before, losing at most the changes since it.

Queued messages are read by receiving them, which only a stopped stack may do; a running
stack's snapshots leave them out and say so (``queues_saved``). S3 gives restored objects new
version ids; notifications restored onto a queue are rewritten to name the new ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from maas_devkit.account import Resources

FORMAT = 1
KEEP_SNAPSHOTS = 2
Client = Callable[[str], Any]
VersionMap = dict[tuple[str, str, str], str]  # (bucket, key, saved version id) -> restored id


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass
class Snapshot:
    saved_at: str
    buckets: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    queues: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    queues_saved: bool = False

    def to_json(self) -> bytes:
        doc = {"format": FORMAT, **self.__dict__}
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Snapshot:
        doc = json.loads(raw)
        if doc.pop("format", None) != FORMAT:
            raise ValueError("unknown snapshot format")
        return cls(**doc)


class StateStore:
    """Snapshots of one stack's resources under `root`, saved and restored through `client`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.snapshots = root / "snapshots"
        self._lock = threading.Lock()
        # Object versions already copied out (this process's version ids): saved once.
        self._known: dict[tuple[str, str, str], dict[str, Any]] = {}

    # --- reading --------------------------------------------------------------------------

    def latest(self) -> Snapshot | None:
        """The last complete snapshot, or None when there is none (or it cannot be read)."""
        try:
            name = (self.root / "CURRENT").read_text().strip()
            return Snapshot.from_json((self.snapshots / name).read_bytes())
        except (OSError, ValueError, TypeError):
            return None

    def blob_size(self, digest: str) -> int:
        return (self.blobs / digest).stat().st_size

    # --- saving ---------------------------------------------------------------------------

    def save(self, client: Client, res: Resources, *, queues: bool = False) -> Snapshot:
        """Copy the resources' state out; `queues` receives (consumes) every queued message."""
        with self._lock:
            snap = Snapshot(saved_at=datetime.now(UTC).isoformat(timespec="milliseconds"))
            for logical, bucket in _of_kind(res, "arn:aws:s3:::"):
                snap.buckets[logical] = self._save_bucket(client("s3"), bucket)
            for logical, table in _of_kind(res, "arn:aws:dynamodb:"):
                snap.tables[logical] = _scan(client("dynamodb"), table)
            if queues:
                for logical, url in res.urls.items():
                    snap.queues[logical] = _drain(client("sqs"), url)
                snap.queues_saved = True
            self._commit(snap)
            return snap

    def _save_bucket(self, s3: Any, bucket: str) -> list[dict[str, Any]]:
        entries = []
        for v in _versions(s3, bucket):
            ident = (bucket, v["Key"], v["VersionId"])
            entry = self._known.get(ident)
            if entry is None:
                entry = {"key": v["Key"], "version_id": v["VersionId"], "delete_marker": True}
                if not v["delete_marker"]:
                    entry = self._save_object(s3, bucket, v["Key"], v["VersionId"])
                self._known[ident] = entry
            entries.append(entry)
        return entries

    def _save_object(self, s3: Any, bucket: str, key: str, version_id: str) -> dict[str, Any]:
        obj = s3.get_object(Bucket=bucket, Key=key, VersionId=version_id)
        body = obj["Body"].read()
        digest = hashlib.sha256(body).hexdigest()
        if not (self.blobs / digest).exists():
            write_atomic(self.blobs / digest, body)
        return {
            "key": key,
            "version_id": version_id,
            "delete_marker": False,
            "blob": digest,
            "size": len(body),
            "metadata": obj.get("Metadata") or {},
            "content_type": obj.get("ContentType") or "binary/octet-stream",
        }

    def _commit(self, snap: Snapshot) -> None:
        self.snapshots.mkdir(parents=True, exist_ok=True)
        number = 1 + max((int(p.stem) for p in self.snapshots.glob("*.json")), default=0)
        name = f"{number:08d}.json"
        write_atomic(self.snapshots / name, snap.to_json())
        write_atomic(self.root / "CURRENT", name.encode())
        self._prune(keep={name})

    def _prune(self, keep: set[str]) -> None:
        """Older snapshots beyond the last few, and blobs no kept snapshot names."""
        names = sorted(p.name for p in self.snapshots.glob("*.json"))
        kept = set(names[-KEEP_SNAPSHOTS:]) | keep
        for name in names:
            if name not in kept:
                (self.snapshots / name).unlink(missing_ok=True)
        used: set[str] = set()
        for name in kept:
            try:
                snap = Snapshot.from_json((self.snapshots / name).read_bytes())
            except (OSError, ValueError):
                continue
            used |= {e["blob"] for es in snap.buckets.values() for e in es if e.get("blob")}
        for blob in self.blobs.glob("*"):
            if blob.name not in used and not blob.name.startswith("."):
                blob.unlink(missing_ok=True)

    # --- restoring ------------------------------------------------------------------------

    def restore(self, client: Client, res: Resources, snap: Snapshot) -> VersionMap:
        """Objects, items and (from a clean stop) messages back into fresh resources.

        Run before the buckets' notifications are configured: restored objects must not look
        like new uploads. Returns the saved -> restored version ids of the objects.
        """
        versions: VersionMap = {}
        s3 = client("s3")
        for logical, entries in snap.buckets.items():
            bucket = res.names[logical]
            for entry in entries:
                new_id = self._restore_entry(s3, bucket, entry)
                versions[(bucket, entry["key"], entry["version_id"])] = new_id
                self._known[(bucket, entry["key"], new_id)] = {**entry, "version_id": new_id}
        for logical, items in snap.tables.items():
            _put_items(client("dynamodb"), res.names[logical], items)
        for logical, messages in snap.queues.items():
            for message in messages:
                _send(client("sqs"), res.urls[logical], message, versions)
        return versions

    def _restore_entry(self, s3: Any, bucket: str, entry: dict[str, Any]) -> str:
        if entry["delete_marker"]:
            return str(s3.delete_object(Bucket=bucket, Key=entry["key"]).get("VersionId", ""))
        body = (self.blobs / entry["blob"]).read_bytes()
        put = s3.put_object(
            Bucket=bucket,
            Key=entry["key"],
            Body=body,
            Metadata=entry["metadata"],
            ContentType=entry["content_type"],
        )
        return str(put.get("VersionId", ""))

    def reset(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# --- the AWS calls ----------------------------------------------------------------------------


def _of_kind(res: Resources, arn_prefix: str) -> list[tuple[str, str]]:
    return [(lg, res.names[lg]) for lg, arn in res.arns.items() if arn.startswith(arn_prefix)]


def _versions(s3: Any, bucket: str) -> list[dict[str, Any]]:
    """Every version and delete marker, oldest first per key."""
    found = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in page.get("Versions", []):
            found.append({**v, "delete_marker": False})
        for m in page.get("DeleteMarkers", []):
            found.append({**m, "delete_marker": True})
    # S3 lists a key's versions newest first; reversed, a stable sort keeps them oldest first
    # among equal times, and the current one (a version or a delete marker) goes last.
    found.reverse()
    found.sort(key=lambda v: (v["Key"], v["LastModified"], bool(v.get("IsLatest"))))
    return found


def _scan(ddb: Any, table: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for page in ddb.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        items.extend(page.get("Items", []))
    return items


def _put_items(ddb: Any, table: str, items: list[dict[str, Any]]) -> None:
    for start in range(0, len(items), 25):
        pending = {table: [{"PutRequest": {"Item": i}} for i in items[start : start + 25]]}
        while pending:
            pending = ddb.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
            if pending:
                time.sleep(0.05)


def _drain(sqs: Any, url: str) -> list[dict[str, Any]]:
    """Receive every visible message (a stopped stack's queue: nobody else reads it)."""
    messages: list[dict[str, Any]] = []
    empty = 0
    while empty < 2:  # SQS may answer empty once while messages remain
        batch = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=600,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        empty = 0 if batch else empty + 1
        for m in batch:
            messages.append({"body": m["Body"], "attributes": m.get("MessageAttributes") or {}})
    return messages


def _send(sqs: Any, url: str, message: dict[str, Any], versions: VersionMap) -> None:
    attributes = {
        name: {"DataType": a["DataType"], "StringValue": a["StringValue"]}
        for name, a in message["attributes"].items()
        if "StringValue" in a
    }
    sqs.send_message(
        QueueUrl=url,
        MessageBody=_renamed_versions(message["body"], versions),
        MessageAttributes=attributes,
    )


def _renamed_versions(body: str, versions: VersionMap) -> str:
    """An S3 notification naming the restored object versions instead of the saved ones."""
    try:
        doc = json.loads(body)
        records = doc["Records"]
    except (ValueError, KeyError, TypeError):
        return body
    from urllib.parse import unquote_plus

    changed = False
    for record in records if isinstance(records, list) else []:
        try:
            bucket = record["s3"]["bucket"]["name"]
            obj = record["s3"]["object"]
            new = versions.get((bucket, unquote_plus(obj["key"]), obj["versionId"]))
        except (KeyError, TypeError):
            continue
        if new:
            obj["versionId"] = new
            changed = True
    return json.dumps(doc) if changed else body
