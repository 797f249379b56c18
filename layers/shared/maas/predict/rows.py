"""Batch predictions by upload, the serverless counterpart of SageMaker Batch Transform.

A CSV or JSONL file put under ``predictions/<model>/`` in the data bucket (or
``predictions/<model>/versions/<n>/``) is scored by that model's ``prod`` version (or version
n) and written to the artifact bucket beside a small JSON summary::

  predictions/<model>/<name>.out.csv        the input columns, then label + probabilities
                                            (classifiers) or prediction (regressors)
  predictions/<model>/<name>.errors.csv     row, reason: the rows that could not be scored
  predictions/<model>/<name>.summary.json   rows, scored, errors, version, chunks, timings

One queue, two kinds of message, one Lambda invocation each (batch size 1): the S3
notification is *planned* (the file read, the version pinned, one chunk message per
PREDICT_CHUNK_ROWS rows sent back to the queue: the fan-out), and each chunk message is
*scored* into a part under ``predictions/.parts/<job>/``. The chunk that finds every part
written assembles the outputs. The job's id comes from the object's key and version, so a
duplicate event re-sends the same chunks, which rewrite the same parts: the job is idempotent.
Rows are scored exactly as the inference function scores them (the same model store, column
transforms and session), so a row's prediction here equals the endpoint's.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from maas.core.names import InvalidName, check_model_name

log = logging.getLogger("maas.predict")
PREFIX = "predictions/"
PARTS = PREFIX + ".parts/"
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
MAX_SEND_BATCH = 10  # SQS SendMessageBatch


class BadUpload(ValueError):
    """The upload cannot be scored at all (its key, format or columns); the summary says why."""


@dataclass(frozen=True)
class Target:
    model: str
    version: int | None  # None: prod
    name: str  # the file's name without its extension
    fmt: str

    @property
    def out_prefix(self) -> str:
        where = f"{PREFIX}{self.model}/"
        return where + (f"versions/{self.version}/" if self.version is not None else "")

    def key(self, suffix: str) -> str:
        return f"{self.out_prefix}{self.name}{suffix}"


def parse_key(key: str) -> Target:
    """predictions/<model>/<file> or predictions/<model>/versions/<n>/<file>."""
    parts = key.split("/")
    if len(parts) not in (3, 5) or parts[0] + "/" != PREFIX or not parts[-1]:
        raise BadUpload(
            f"{key!r}: put the file at predictions/<model>/<file> or "
            "predictions/<model>/versions/<n>/<file>"
        )
    model = parts[1]
    try:
        check_model_name(model)
    except InvalidName as e:
        raise BadUpload(str(e)) from None
    version = None
    if len(parts) == 5:
        if parts[2] != "versions" or not parts[3].isdigit() or int(parts[3]) < 1:
            raise BadUpload(f"{key!r}: expected predictions/<model>/versions/<n>/<file>")
        version = int(parts[3])
    stem, dot, ext = parts[-1].rpartition(".")
    fmt = FORMATS.get("." + ext.lower()) if dot else None
    if fmt is None:
        raise BadUpload(f"{key!r}: the file must end in .csv or .jsonl")
    return Target(model, version, stem, fmt)


def read_rows(data: bytes, fmt: str) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows) of a CSV (cells as strings, "" empty) or JSONL file (values as given)."""
    if fmt == "parquet":
        raise BadUpload(
            "Parquet is not read by the batch function (pyarrow does not fit in Lambda's "
            "layers): upload CSV or JSONL"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadUpload("the file is not UTF-8 text") from None
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        rows = list(reader)
        return list(reader.fieldnames or []), rows
    rows = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise BadUpload(f"line {i + 1} is not JSON") from None
        if not isinstance(row, dict):
            raise BadUpload(f"line {i + 1} is not a JSON object")
        rows.append(row)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return columns, rows


def job_id(bucket: str, key: str, version: str) -> str:
    """The same object (key and version) is the same job, however often its event arrives."""
    return hashlib.sha256(f"{bucket}\x00{key}\x00{version}".encode()).hexdigest()[:24]


# --------------------------------------------------------------------------- scoring


def _cell(value: Any, role: str) -> tuple[Any, str | None]:
    """A file's cell as the column takes it (None: missing), or why it cannot be."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None, None
    if role == "numeric":
        if isinstance(value, bool):
            return None, f"{value!r} is not a number"
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None, f"{str(value)[:40]!r} is not a number"
        if not math.isfinite(number):
            return None, f"{str(value)[:40]!r} is not a finite number"
        return number, None
    return value, None


def score_rows(loaded: Any, rows: list[dict[str, Any]]) -> tuple[dict[int, dict], dict[int, str]]:
    """{row index: outputs} for the rows that score, {row index: reason} for the others."""
    from maas.serving.tableprep import TableInputError

    table = loaded.table
    if table is None:
        raise BadUpload(f"version {loaded.version} of {loaded.model!r} is not a table model")
    columns = table.encoder.columns
    absent = [c["name"] for c in columns if rows and c["name"] not in rows[0]]
    if absent:
        raise BadUpload(f"the file lacks the model's column(s) {absent}")
    errors: dict[int, str] = {}
    values: dict[str, list[Any]] = {c["name"]: [] for c in columns}
    good: list[int] = []
    for i, row in enumerate(rows):
        cells = {}
        for c in columns:
            cell, why = _cell(row.get(c["name"]), c["role"])
            if why:
                errors[i] = f"column {c['name']!r}: {why}"
                break
            cells[c["name"]] = cell
        else:
            good.append(i)
            for name, cell in cells.items():
                values[name].append(cell)
    try:
        x = _encode(table, values)
    except TableInputError:  # one bad cell among many: find the rows, score the rest
        x, good = _encode_rows(table, values, good, errors)
    return _run(loaded, x, good), errors


def _encode(table: Any, values: dict[str, list[Any]]) -> np.ndarray:
    columns = {n: (np.array(v, dtype=object), None) for n, v in values.items()}
    for c in table.encoder.columns:
        if c["role"] == "numeric":
            numbers = [np.nan if v is None else v for v in values[c["name"]]]
            columns[c["name"]] = (np.array(numbers, dtype=np.float64), None)
    x: np.ndarray = table.encoder.encode(columns)
    return x


def _encode_rows(
    table: Any, values: dict[str, list[Any]], good: list[int], errors: dict[int, str]
) -> tuple[np.ndarray, list[int]]:
    from maas.serving.tableprep import TableInputError

    kept, blocks = [], []
    for j, i in enumerate(good):
        try:
            blocks.append(_encode(table, {n: [v[j]] for n, v in values.items()}))
            kept.append(i)
        except TableInputError as e:
            errors[i] = str(e)
    width = table.encoder.n_features
    return (np.concatenate(blocks) if blocks else np.zeros((0, width), np.float32)), kept


def _run(loaded: Any, x: np.ndarray, good: list[int], batch: int = 4096) -> dict[int, dict]:
    names = [o.name for o in loaded.outputs]
    out: dict[int, dict] = {}
    for start in range(0, len(good), batch):
        results = loaded.session.run(names, {"input": x[start : start + batch]})
        for j, i in enumerate(good[start : start + batch]):
            out[i] = {n: r[j] for n, r in zip(names, results, strict=True)}
    return out


def output_fields(loaded: Any) -> list[str]:
    return (
        ["prediction"]
        if loaded.manifest.get("task") == "regression"
        else [
            "label",
            "probabilities",
        ]
    )


def format_outputs(outputs: dict[str, Any], fields: list[str]) -> list[str]:
    cells = []
    for f in fields:
        value = outputs[f]
        if f == "probabilities":
            cells.append(json.dumps([round(float(p), 7) for p in value]))
        elif f == "label":
            cells.append(value.decode() if isinstance(value, bytes) else str(value))
        else:
            cells.append(repr(float(value)))
    return cells


def csv_lines(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def now_s() -> float:
    return time.time()
