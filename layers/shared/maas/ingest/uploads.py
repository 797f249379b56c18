"""The upload contract: which S3 keys start a run, and what the run is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote_plus

from maas.core.names import InvalidName, check_model_name, check_run_name

DATA_SUFFIXES = (".csv", ".parquet", ".jsonl")
JOB_FILE = "job.json"
DATASETS = "datasets"
PRETRAINED = "pretrained"  # pretrained/<model>/<run>/ (a model folder) + job.json: an import
TRAVERSAL = {".", ".."}
TRAVERSAL_REASON = "'.' and '..' are not allowed as key segments (path traversal)"


@dataclass(frozen=True)
class Upload:
    """An upload that starts a run."""

    kind: Literal["file", "run"]
    bucket: str
    key: str
    model: str
    run: str
    # The data channel: the lone file's key, or the run folder's prefix.
    data_prefix: str
    area: Literal["datasets", "pretrained"] = "datasets"


@dataclass(frozen=True)
class Ignored:
    key: str
    reason: str
    # True when no correct upload has this key (the notification filters would not deliver
    # it): worth a dead letter, unlike the run folder's data files that wait for job.json.
    misplaced: bool = False


class RejectedUpload(ValueError):
    """The key is meant to start a run but cannot: a reason to record, not to retry."""

    def __init__(self, key: str, reason: str, model: str | None = None) -> None:
        super().__init__(reason)
        self.key = key
        self.reason = reason
        self.model = model


def decode_key(raw_key: str) -> str:
    """S3 event keys arrive URL-encoded with '+' for spaces."""
    return unquote_plus(raw_key)


def classify(bucket: str, key: str) -> Upload | Ignored:
    """Map a (decoded) key to the run it starts, or say why it starts none."""
    parts = key.split("/")
    if parts[0] == PRETRAINED:
        return _classify_pretrained(bucket, key, parts)
    if parts[0] != DATASETS:
        return Ignored(key, "outside datasets/ and pretrained/: not a training upload", True)
    if not parts[-1]:
        return Ignored(key, "folder marker or incomplete key")
    if len(parts) < 3:
        return Ignored(key, "not inside a model folder: data goes in datasets/<model>/", True)
    model_raw = parts[1]
    try:
        model = check_model_name(model_raw)
    except InvalidName as e:
        raise RejectedUpload(key, str(e)) from None
    if len(parts) == 3:
        filename = parts[2]
        if filename == JOB_FILE:
            raise RejectedUpload(
                key, "job.json belongs in a run folder: datasets/<model>/<run>/job.json", model
            )
        if not filename.lower().endswith(DATA_SUFFIXES):
            raise RejectedUpload(
                key, f"unsupported data format {filename!r}: use .csv, .parquet or .jsonl", model
            )
        stem = filename.rsplit(".", 1)[0]
        run = "".join(c if (c.isalnum() and c.isascii()) or c in "._-" else "-" for c in stem)
        run = run.strip("-._")[:128] or "data"
        return Upload("file", bucket, key, model, run, key)
    if len(parts) == 4:
        run_raw, filename = parts[2], parts[3]
        if filename != JOB_FILE:
            return Ignored(key, "data file inside a run folder: the run starts with its job.json")
        try:
            run = check_run_name(run_raw)
        except InvalidName as e:
            raise RejectedUpload(key, str(e), model) from None
        return Upload("run", bucket, key, model, run, f"datasets/{model}/{run}/")
    if TRAVERSAL & set(parts):
        raise RejectedUpload(key, TRAVERSAL_REASON, model)
    return Ignored(key, "nested deeper than datasets/<model>/<run>/<file>")


def _classify_pretrained(bucket: str, key: str, parts: list[str]) -> Upload | Ignored:
    """pretrained/<model>/<run>/job.json starts an import of the folder; nothing else does."""
    if len(parts) < 4 or not parts[-1]:
        if len(parts) == 3 and parts[2] == JOB_FILE:
            raise RejectedUpload(
                key,
                "job.json belongs in a run folder: pretrained/<model>/<run>/job.json",
                _model_or_none(parts[1]),
            )
        return Ignored(key, "folder marker or incomplete key")
    model_raw = parts[1]
    try:
        model = check_model_name(model_raw)
    except InvalidName as e:
        raise RejectedUpload(key, str(e)) from None
    if len(parts) == 4 and parts[3] == JOB_FILE:
        try:
            run = check_run_name(parts[2])
        except InvalidName as e:
            raise RejectedUpload(key, str(e), model) from None
        return Upload("run", bucket, key, model, run, f"{PRETRAINED}/{model}/{run}/", "pretrained")
    if TRAVERSAL & set(parts):
        raise RejectedUpload(key, TRAVERSAL_REASON, model)
    return Ignored(key, "file of a pretrained model folder: the import starts with its job.json")


def _model_or_none(raw: str) -> str | None:
    try:
        return check_model_name(raw)
    except InvalidName:
        return None
