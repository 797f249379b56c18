"""The model registry: one DynamoDB table, the only module that talks to it.

Rows (pk / sk):
  MODEL#<m> / META              next version counter
  MODEL#<m> / V#<0000000001>    one version: status, job, manifest summary
  MODEL#<m> / ALIAS#<name>      alias -> version, with the versions it replaced (for rollback),
                                and an optional canary version with its weight in [0, 1]
  MODEL#<m> / AUDIT#<time>#<id> who changed what, when and why
  JOB#<job> / JOB               idempotency claim for a training job
Every state change is a conditional write, so concurrent or duplicate events cannot race.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from maas.core.names import version_key

TRAINING = "TRAINING"
OPTIMIZING = "OPTIMIZING"
READY = "READY"
REJECTED = "REJECTED"
FAILED = "FAILED"
FINAL_STATUSES = (READY, REJECTED, FAILED)
PROD = "prod"
_MAX_HISTORY = 20
SEQUENCER_WIDTH = 64
_HEX = re.compile(rf"^[0-9A-F]{{1,{SEQUENCER_WIDTH}}}$")


class RegistryError(Exception):
    pass


class NotFound(RegistryError):
    pass


class Conflict(RegistryError):
    """A conditional write lost: the row is not in the state the caller expected."""


def pad_sequencer(sequencer: str) -> str:
    """An S3 event sequencer in a form that compares as S3 says to compare them.

    S3's documentation: sequencers of one key may differ in length; right-pad the shorter
    with zeros, then compare lexicographically. Padding every one to a fixed width does that
    for any pair, so DynamoDB's string comparison can decide in a condition expression.
    """
    value = sequencer.strip().upper()
    if not _HEX.fullmatch(value):
        raise ValueError(f"not an S3 sequencer: {sequencer[:80]!r}")
    return value.ljust(SEQUENCER_WIDTH, "0")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class VersionRecord:
    model: str
    version: int
    status: str
    job_name: str = ""
    run: str = ""
    source: str = ""
    created_at: str = ""
    updated_at: str = ""
    reason: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> VersionRecord:
        return cls(
            model=item["model"],
            version=int(item["version"]),
            status=item["status"],
            job_name=item.get("job_name", ""),
            run=item.get("run", ""),
            source=item.get("source", ""),
            created_at=item.get("created_at", ""),
            updated_at=item.get("updated_at", ""),
            reason=item.get("reason", ""),
            summary=json.loads(item.get("summary", "{}")),
            history=json.loads(item.get("history", "[]")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "status": self.status,
            "job_name": self.job_name,
            "run": self.run,
            "source": self.source,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "reason": self.reason,
            "summary": self.summary,
        }


@dataclass
class Alias:
    model: str
    name: str
    version: int
    previous: list[int] = field(default_factory=list)
    updated_at: str = ""
    updated_by: str = ""
    reason: str = ""
    canary_version: int | None = None
    canary_weight: float = 0.0
    revision: int = 0  # bumped by every write: the condition concurrent writers race on

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Alias:
        canary = item.get("canary_version")
        return cls(
            model=item["model"],
            name=item["alias"],
            version=int(item["version"]),
            previous=[int(v) for v in json.loads(item.get("previous", "[]"))],
            updated_at=item.get("updated_at", ""),
            updated_by=item.get("updated_by", ""),
            reason=item.get("reason", ""),
            canary_version=None if canary is None else int(canary),
            canary_weight=float(item.get("canary_weight", 0)) if canary is not None else 0.0,
            revision=int(item.get("revision", 0)),
        )


@dataclass
class Claim:
    job_name: str
    model: str
    version: int
    started: bool
    created: bool


def _model_pk(model: str) -> str:
    return f"MODEL#{model}"


def _version_sk(version: int) -> str:
    return f"V#{version_key(version)}"


class Registry:
    def __init__(self, table_name: str, *, client: Any = None, table: Any = None) -> None:
        """`table`: a Table-shaped reader instead of boto3's (maas.serving.awslite.LiteTable).

        Given one, the registry reads through it and never imports boto3 (a cold inference
        function's first request reads two rows); writes then need a registry built on boto3.
        """
        self.table_name = table_name
        # Any: items here are plain dicts validated by the dataclasses below, not the stubs' unions.
        self._ddb: Any = client
        if table is not None:
            self.table: Any = table
            return
        import boto3  # here, not at import: the inference function's cold path reads without it

        self._ddb = client or boto3.client("dynamodb")
        self._res: Any = boto3.resource("dynamodb", **_client_kwargs(self._ddb))
        self.table = self._res.Table(table_name)

    # --- training jobs --------------------------------------------------------------------

    def claim_job(self, *, job_name: str, model: str, run: str, source: str, actor: str) -> Claim:
        """Allocate the next version for a job exactly once, however often the event arrives."""
        for _ in range(20):
            existing = self.table.get_item(Key={"pk": f"JOB#{job_name}", "sk": "JOB"}).get("Item")
            if existing:
                return Claim(
                    job_name,
                    existing["model"],
                    int(existing["version"]),
                    bool(existing.get("started")),
                    created=False,
                )
            meta = self.table.get_item(Key={"pk": _model_pk(model), "sk": "META"}).get("Item")
            current = int(meta["next_version"]) if meta else None
            version = (current or 0) + 1
            ts = now_iso()
            try:
                self._ddb.transact_write_items(
                    TransactItems=[
                        {"Update": self._next_version_update(model, current, version, ts)},
                        {"Put": self._job_put(job_name, model, version, ts)},
                        {
                            "Put": self._version_put(
                                job_name, model, version, run, source, actor, ts
                            )
                        },
                    ]
                )
            except ClientError as e:
                if e.response["Error"]["Code"] in (
                    "TransactionCanceledException",
                    "ConditionalCheckFailedException",
                ):
                    continue  # lost a race: another delivery claimed it, or took the number
                raise
            self.audit(model, actor, "version-created", f"v{version} from {source}")
            return Claim(job_name, model, version, started=False, created=True)
        raise RegistryError(f"could not claim job {job_name}: too much contention")

    def _next_version_update(
        self, model: str, current: int | None, version: int, ts: str
    ) -> dict[str, Any]:
        """The model's version counter moves from `current` (None: no model yet) to `version`."""
        update: dict[str, Any] = {
            "TableName": self.table_name,
            "Key": {"pk": {"S": _model_pk(model)}, "sk": {"S": "META"}},
            "UpdateExpression": "SET next_version = :v, model = :m, "
            "created_at = if_not_exists(created_at, :t)",
            "ExpressionAttributeValues": {
                ":v": {"N": str(version)},
                ":m": {"S": model},
                ":t": {"S": ts},
            },
        }
        if current is not None:
            update["ConditionExpression"] = "next_version = :cur"
            update["ExpressionAttributeValues"][":cur"] = {"N": str(current)}
        else:
            update["ConditionExpression"] = "attribute_not_exists(pk)"
        return update

    def _job_put(self, job_name: str, model: str, version: int, ts: str) -> dict[str, Any]:
        """The job's claim row (not started yet), unless the job already has one."""
        return {
            "TableName": self.table_name,
            "Item": {
                "pk": {"S": f"JOB#{job_name}"},
                "sk": {"S": "JOB"},
                "model": {"S": model},
                "version": {"N": str(version)},
                "started": {"BOOL": False},
                "created_at": {"S": ts},
            },
            "ConditionExpression": "attribute_not_exists(pk)",
        }

    def _version_put(
        self,
        job_name: str,
        model: str,
        version: int,
        run: str,
        source: str,
        actor: str,
        ts: str,
    ) -> dict[str, Any]:
        """The new version's row, TRAINING, unless that number is taken."""
        history = json.dumps([{"at": ts, "by": actor, "status": TRAINING, "why": source}])
        return {
            "TableName": self.table_name,
            "Item": {
                "pk": {"S": _model_pk(model)},
                "sk": {"S": _version_sk(version)},
                "model": {"S": model},
                "version": {"N": str(version)},
                "status": {"S": TRAINING},
                "job_name": {"S": job_name},
                "run": {"S": run},
                "source": {"S": source},
                "created_at": {"S": ts},
                "updated_at": {"S": ts},
                "summary": {"S": "{}"},
                "history": {"S": history},
            },
            "ConditionExpression": "attribute_not_exists(pk)",
        }

    def claim_upload_sequence(self, bucket: str, key: str, sequencer: str) -> str | None:
        """Record an upload event's S3 `sequencer` for its key, unless a later one came first.

        S3 may deliver the events of one key out of order; the greater sequencer is the later
        event. Returns None when this event is the latest seen (or the same one again), else the
        later sequencer already recorded: this event is superseded.
        """
        padded = pad_sequencer(sequencer)
        pk = f"KEY#{hashlib.sha256(f'{bucket}/{key}'.encode()).hexdigest()}"
        try:
            self.table.update_item(
                Key={"pk": pk, "sk": "SEQUENCER"},
                UpdateExpression="SET sequencer = :s, sequencer_raw = :r, s3_bucket = :b, "
                "s3_key = :k, updated_at = :t",
                ConditionExpression="attribute_not_exists(sequencer) OR sequencer <= :s",
                ExpressionAttributeValues={
                    ":s": padded,
                    ":r": sequencer,
                    ":b": bucket,
                    ":k": key,
                    ":t": now_iso(),
                },
            )
            return None
        except ClientError as e:
            if e.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
        item = self.table.get_item(Key={"pk": pk, "sk": "SEQUENCER"}, ConsistentRead=True)
        return str(item.get("Item", {}).get("sequencer_raw") or "a later event")

    def mark_started(self, job_name: str) -> None:
        self.table.update_item(
            Key={"pk": f"JOB#{job_name}", "sk": "JOB"},
            UpdateExpression="SET started = :t",
            ExpressionAttributeValues={":t": True},
        )

    def find_job(self, job_name: str) -> Claim | None:
        item = self.table.get_item(Key={"pk": f"JOB#{job_name}", "sk": "JOB"}).get("Item")
        if not item:
            return None
        return Claim(
            job_name, item["model"], int(item["version"]), bool(item.get("started")), created=False
        )

    # --- versions -------------------------------------------------------------------------

    def get_version(self, model: str, version: int) -> VersionRecord:
        item = self.table.get_item(
            Key={"pk": _model_pk(model), "sk": _version_sk(version)}, ConsistentRead=True
        ).get("Item")
        if not item:
            raise NotFound(f"model {model!r} has no version {version}")
        return VersionRecord.from_item(item)

    def list_versions(self, model: str) -> list[VersionRecord]:
        items = self._query_prefix(model, "V#")
        return [VersionRecord.from_item(i) for i in items]

    def list_models(self) -> list[str]:
        models: list[str] = []
        kwargs: dict[str, Any] = {
            "FilterExpression": "sk = :meta",
            "ExpressionAttributeValues": {":meta": "META"},
            "ProjectionExpression": "model",
        }
        while True:
            page = self.table.scan(**kwargs)
            models.extend(i["model"] for i in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return sorted(models)
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def transition(
        self,
        model: str,
        version: int,
        *,
        expected: tuple[str, ...],
        status: str,
        actor: str,
        reason: str = "",
        summary: dict[str, Any] | None = None,
    ) -> VersionRecord:
        """Move a version to `status` only if it is in one of the `expected` states."""
        current = self.get_version(model, version)
        if current.status not in expected:
            raise Conflict(
                f"{model} v{version} is {current.status}, expected one of {', '.join(expected)}"
            )
        ts = now_iso()
        history = [*current.history, {"at": ts, "by": actor, "status": status, "why": reason}]
        names = {"#s": "status"}
        values: dict[str, Any] = {
            ":s": status,
            ":u": ts,
            ":r": reason,
            ":h": json.dumps(history[-50:]),
            ":old": current.status,
        }
        update = "SET #s = :s, updated_at = :u, reason = :r, history = :h"
        if summary is not None:
            update += ", summary = :sum"
            values[":sum"] = json.dumps(summary, default=_json_default)
        try:
            self.table.update_item(
                Key={"pk": _model_pk(model), "sk": _version_sk(version)},
                UpdateExpression=update,
                ConditionExpression="#s = :old",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as e:
            if e.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise Conflict(f"{model} v{version} changed concurrently") from None
            raise
        self.audit(model, actor, f"status:{status}", f"v{version}: {reason}")
        return self.get_version(model, version)

    def update_summary(self, model: str, version: int, fields: dict[str, Any]) -> None:
        """Merge fields into a version's summary; guarded against a concurrent status change."""
        for _ in range(5):
            record = self.get_version(model, version)
            summary = {**record.summary, **fields}
            try:
                self.table.update_item(
                    Key={"pk": _model_pk(model), "sk": _version_sk(version)},
                    UpdateExpression="SET summary = :s",
                    ConditionExpression="updated_at = :u",
                    ExpressionAttributeValues={
                        ":s": json.dumps(summary, default=_json_default),
                        ":u": record.updated_at,
                    },
                )
                return
            except ClientError as e:
                if e.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise
        raise Conflict(f"{model} v{version}: summary changed concurrently")

    # --- aliases --------------------------------------------------------------------------

    def get_alias(self, model: str, name: str = PROD) -> Alias | None:
        item = self.table.get_item(Key={"pk": _model_pk(model), "sk": f"ALIAS#{name}"}).get("Item")
        return Alias.from_item(item) if item else None

    def promote(
        self, model: str, version: int, *, actor: str, reason: str, name: str = PROD
    ) -> Alias:
        """Point the alias at a READY version; conditional on the alias not having moved.

        A canary of that same version is complete once it is prod, so it is cleared; a canary
        of another version carries on.
        """
        record = self.get_version(model, version)
        if record.status != READY:
            raise Conflict(f"{model} v{version} is {record.status}; only READY versions serve")
        current = self.get_alias(model, name)
        previous = [] if current is None else [*current.previous, current.version]
        if current is not None and current.version == version:
            return current
        canary: tuple[int | None, float] = (None, 0.0)
        if current is not None and current.canary_version not in (None, version):
            canary = (current.canary_version, current.canary_weight)
        self._write_alias(
            model, name, version, previous[-_MAX_HISTORY:], current, actor, reason, canary=canary
        )
        self.audit(model, actor, f"promote:{name}", f"v{version}: {reason}")
        alias = self.get_alias(model, name)
        assert alias is not None
        return alias

    def set_canary(
        self,
        model: str,
        version: int | None,
        weight: float,
        *,
        actor: str,
        reason: str,
        name: str = PROD,
    ) -> Alias:
        """Send `weight` (0..1) of the alias's requests to a READY `version`; 0 clears it."""
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"canary weight must be within [0, 1], not {weight}")
        current = self.get_alias(model, name)
        if current is None:
            raise NotFound(f"model {model!r} has no {name!r} alias yet: promote a version first")
        if weight == 0.0:
            if current.canary_version is None:
                return current
            canary: tuple[int | None, float] = (None, 0.0)
            detail = f"canary v{current.canary_version} cleared: {reason}"
        else:
            if version is None:
                raise ValueError("a canary with a weight above 0 needs a version")
            if version == current.version:
                raise Conflict(f"{model} v{version} is already {name}; a canary must differ")
            record = self.get_version(model, version)
            if record.status != READY:
                raise Conflict(f"{model} v{version} is {record.status}; only READY versions serve")
            canary = (version, weight)
            detail = f"v{version} at {weight:.4g} beside v{current.version}: {reason}"
        self._write_alias(
            model, name, current.version, current.previous, current, actor, reason, canary=canary
        )
        self.audit(model, actor, f"canary:{name}", detail)
        alias = self.get_alias(model, name)
        assert alias is not None
        return alias

    def rollback(self, model: str, *, actor: str, reason: str, name: str = PROD) -> Alias:
        """Undo the latest deployment: an active canary first, else the last promotion.

        As a deployment tool's rollback does: during a canary, all traffic returns to the
        version it was being compared with; otherwise the alias goes back to the most recent
        earlier version that is still READY.
        """
        current = self.get_alias(model, name)
        if current is None:
            raise NotFound(f"model {model!r} has no {name!r} alias to roll back")
        if current.canary_version is not None:
            self._write_alias(
                model, name, current.version, current.previous, current, actor, reason
            )
            self.audit(
                model,
                actor,
                f"rollback:{name}",
                f"canary v{current.canary_version} removed, v{current.version} stays: {reason}",
            )
            alias = self.get_alias(model, name)
            assert alias is not None
            return alias
        previous = list(current.previous)
        while previous:
            candidate = previous.pop()
            try:
                if self.get_version(model, candidate).status == READY:
                    self._write_alias(model, name, candidate, previous, current, actor, reason)
                    self.audit(
                        model,
                        actor,
                        f"rollback:{name}",
                        f"v{current.version} -> v{candidate}: {reason}",
                    )
                    alias = self.get_alias(model, name)
                    assert alias is not None
                    return alias
            except NotFound:
                continue
        raise Conflict(f"model {model!r} has no earlier READY version to roll back to")

    def _write_alias(
        self,
        model: str,
        name: str,
        version: int,
        previous: list[int],
        current: Alias | None,
        actor: str,
        reason: str,
        *,
        canary: tuple[int | None, float] = (None, 0.0),
    ) -> None:
        item: dict[str, Any] = {
            "pk": _model_pk(model),
            "sk": f"ALIAS#{name}",
            "model": model,
            "alias": name,
            "version": version,
            "previous": json.dumps(previous),
            "updated_at": now_iso(),
            "updated_by": actor,
            "reason": reason,
            "revision": 1 if current is None else current.revision + 1,
        }
        if canary[0] is not None:
            item["canary_version"] = canary[0]
            item["canary_weight"] = Decimal(repr(float(canary[1])))
        if current is None:
            cond: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(pk)"}
        else:
            # Rows written before revisions existed have none: they match on version + time.
            revision = "revision = :rev" if current.revision else "attribute_not_exists(revision)"
            cond = {
                "ConditionExpression": f"version = :cur AND updated_at = :ts AND {revision}",
                "ExpressionAttributeValues": {":cur": current.version, ":ts": current.updated_at},
            }
            if current.revision:
                cond["ExpressionAttributeValues"][":rev"] = current.revision
        try:
            self.table.put_item(Item=item, **cond)
        except ClientError as e:
            if e.response["Error"]["Code"] == "ConditionalCheckFailedException":
                raise Conflict(f"alias {name!r} of {model!r} moved concurrently; retry") from None
            raise

    # --- audit ----------------------------------------------------------------------------

    def audit(self, model: str, actor: str, action: str, detail: str) -> None:
        self.table.put_item(
            Item={
                "pk": _model_pk(model),
                "sk": f"AUDIT#{now_iso()}#{uuid.uuid4().hex[:8]}",
                "model": model,
                "actor": actor,
                "action": action,
                "detail": detail,
                "ttl": int(time.time()) + 400 * 24 * 3600,
            }
        )

    def audit_log(self, model: str) -> list[dict[str, Any]]:
        return [
            {k: i[k] for k in ("actor", "action", "detail")} | {"at": i["sk"].split("#")[1]}
            for i in self._query_prefix(model, "AUDIT#")
        ]

    def _query_prefix(self, model: str, prefix: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :p)",
            "ExpressionAttributeValues": {":pk": _model_pk(model), ":p": prefix},
            "ConsistentRead": True,
        }
        while True:
            page = self.table.query(**kwargs)
            items.extend(page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _client_kwargs(client: Any) -> dict[str, Any]:
    """Where `client` talks and as whom, for the resource API beside it (boto3 cannot make a
    resource from a client): its credentials too, or the resource would look them up again."""
    meta = client.meta
    kwargs = {"region_name": meta.region_name, "endpoint_url": meta.endpoint_url}
    credentials = getattr(getattr(client, "_request_signer", None), "_credentials", None)
    if credentials is not None:
        frozen = credentials.get_frozen_credentials()
        kwargs.update(
            aws_access_key_id=frozen.access_key,
            aws_secret_access_key=frozen.secret_key,
            aws_session_token=frozen.token,
        )
    return kwargs


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
