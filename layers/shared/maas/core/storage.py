"""The one module that talks to S3."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError


class ObjectMissing(Exception):
    pass


@dataclass(frozen=True)
class ObjectInfo:
    bucket: str
    key: str
    etag: str
    version_id: str | None
    size: int
    metadata: dict[str, str]

    @property
    def identity(self) -> str:
        """What makes this upload distinct: the version id when versioned, else the ETag."""
        return self.version_id if self.version_id and self.version_id != "null" else self.etag


# 405 MethodNotAllowed: the version asked for is a delete marker (the object was deleted).
_MISSING_CODES = ("404", "NoSuchKey", "NotFound", "NoSuchVersion", "405", "MethodNotAllowed")


def _missing_or(error: ClientError, bucket: str, key: str) -> Exception:
    """S3's several ways of saying "not there" become one exception; the rest pass through."""
    if error.response["Error"]["Code"] in _MISSING_CODES:
        return ObjectMissing(f"s3://{bucket}/{key} does not exist")
    return error


def parse_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


class Storage:
    def __init__(self, client: Any = None) -> None:
        if client is None:
            import boto3  # not at import: serving passes maas.serving.awslite's client instead

            client = boto3.client("s3")
        self.s3 = client

    def head(self, bucket: str, key: str, version_id: str | None = None) -> ObjectInfo:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        try:
            r = self.s3.head_object(**kwargs)
        except ClientError as e:
            raise _missing_or(e, bucket, key) from None
        return ObjectInfo(
            bucket,
            key,
            r["ETag"].strip('"'),
            r.get("VersionId"),
            r["ContentLength"],
            {k.lower(): v for k, v in r.get("Metadata", {}).items()},
        )

    def get_bytes(
        self, bucket: str, key: str, *, version_id: str | None = None, max_bytes: int | None = None
    ) -> bytes:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        try:
            r = self.s3.get_object(**kwargs)
        except ClientError as e:
            raise _missing_or(e, bucket, key) from None
        if max_bytes is not None and r["ContentLength"] > max_bytes:
            raise ValueError(f"s3://{bucket}/{key} is larger than {max_bytes} bytes")
        data: bytes = r["Body"].read()
        return data

    def download(self, bucket: str, key: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.s3.download_file(bucket, key, str(dest))
        except ClientError as e:
            raise _missing_or(e, bucket, key) from None
        return dest

    def put_bytes(
        self,
        bucket: str,
        key: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.s3.put_object(
            Bucket=bucket, Key=key, Body=data, ContentType=content_type, Metadata=metadata or {}
        )

    def upload(
        self, path: Path, bucket: str, key: str, *, metadata: dict[str, str] | None = None
    ) -> None:
        extra = {"Metadata": metadata} if metadata else None
        self.s3.upload_file(str(path), bucket, key, ExtraArgs=extra)

    def list_keys(self, bucket: str, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(o["Key"] for o in page.get("Contents", []))
        return keys


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
