"""Table columns to model features: the one implementation training and serving share.

Like ``textprep.py``: serving imports it from the shared layer (``maas.serving.tableprep``), the
training job loads this same file by path (``maas_training.shared``; ``maas push-training-code``
copies it into the code tarball, byte for byte, which a test checks). Hence standard library +
numpy only, and no imports from ``maas``: the hashed n-gram encoder of text columns is handed in
(``textprep.HashedNgrams``, which the caller loads the same way).

The training job types the columns (``maas_training.tables``) and fits each one here on its
training split (``fit_column``): medians, the categories it keeps, the text hashing. The fitted
spec (``table.json``, carried in the manifest) then turns raw columns into the float matrix the
graph takes, in the training job and in the inference function alike (``TableEncoder.encode``):

=============  ==============================  ===========================================
role           OIP input (one per column)      features
=============  ==============================  ===========================================
numeric        FP64 / INT64 (any number)       value (missing: the training median),
                                               + a missing indicator if training had gaps
boolean        BOOL (or numbers 0/1)           0/1 (missing: the training median) + indicator
categorical    BYTES (INT64 when codes)        one-hot over the kept categories, + "missing"
                                               and "unknown" (never seen in training) slots
datetime       BYTES, ISO 8601                 year, month, day of week, hour, days since
                                               1970 (missing: medians) + indicator
text           BYTES                           hashed word/char n-gram counts, normalised
=============  ==============================  ===========================================

A table whose features are all numeric keeps one FP32 ``[-1, F]`` input, ``input``, one column
per feature (NaN = missing). Missing is a JSON ``null`` or, in binary tensors, NaN for floats
and the empty string for BYTES: the OIP codec hands a mask beside each column.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

FORMAT = 1
NUMERIC, BOOLEAN, CATEGORICAL, DATETIME, TEXT, IGNORE = (
    "numeric",
    "boolean",
    "categorical",
    "datetime",
    "text",
    "ignore",
)
ROLES = (NUMERIC, BOOLEAN, CATEGORICAL, DATETIME, TEXT, IGNORE)
MATRIX_INPUT = "input"  # the single FP32 [-1, F] input of an all-numeric table
MISSING = "<missing>"
UNKNOWN = "<unknown>"
DATETIME_PARTS = ("year", "month", "weekday", "hour", "days")
MAX_CATEGORIES = 100  # kept per column, most frequent first; the rest go to "unknown"
MIN_CATEGORY_ROWS = 2  # a category seen once in training teaches nothing: "unknown"
TEXT_BUCKETS = 64
_EPOCH = datetime(1970, 1, 1)
_TRUE = frozenset({"true", "yes", "y", "t", "1"})
_FALSE = frozenset({"false", "no", "n", "f", "0"})

TextFactory = Callable[..., Any]  # textprep.HashedNgrams


class TableInputError(ValueError):
    """A value a column cannot take; the message names the column."""


# --------------------------------------------------------------------------- values


def category_key(value: Any) -> str | None:
    """The category a cell stands for (None: missing): 3, 3.0 and "3" are one category."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | np.bytes_):
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return None
        if float(value).is_integer():
            return str(int(value))
        return repr(float(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    text = str(value)
    return text if text != "" else None


def parse_datetime(value: Any) -> datetime | None:
    """An ISO 8601 date or date-time (None: missing); time zones are converted to UTC."""
    if value is None:
        return None
    if isinstance(value, datetime):
        stamp = value
    else:
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        text = text.strip()
        if not text:
            return None
        try:
            stamp = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{text[:40]!r} is not an ISO 8601 date or date-time") from None
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(UTC).replace(tzinfo=None)
    return stamp


def datetime_parts(stamp: datetime) -> list[float]:
    days = (stamp - _EPOCH).total_seconds() / 86400.0
    return [float(stamp.year), float(stamp.month), float(stamp.weekday()), float(stamp.hour), days]


def as_bool(value: Any) -> float | None:
    """1.0 / 0.0 for a boolean cell (None: missing); raises on anything else."""
    if value is None:
        return None
    if isinstance(value, bool | np.bool_):
        return 1.0 if value else 0.0
    if isinstance(value, int | float | np.integer | np.floating):
        if isinstance(value, float | np.floating) and math.isnan(value):
            return None
        if value in (0, 1):
            return float(value)
        raise ValueError(f"{value!r} is not a boolean (true/false, or 0/1)")
    text = str(value).strip().lower()
    if text == "":
        return None
    if text in _TRUE:
        return 1.0
    if text in _FALSE:
        return 0.0
    raise ValueError(f"{str(value)[:40]!r} is not a boolean (true/false, yes/no, 0/1)")


def is_boolean_text(values: Sequence[Any]) -> bool:
    """Every non-missing value reads as a boolean (both kinds need not appear)."""
    seen = False
    for v in values:
        if v is None:
            continue
        text = str(v).strip().lower()
        if text == "":
            continue
        if (text not in _TRUE and text not in _FALSE) or text in ("0", "1"):
            return False
        seen = True
    return seen


def _floats(values: Any, missing: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """A numeric column as float64 with its missing mask (NaN or masked)."""
    arr = np.asarray(values)
    if arr.dtype.kind in "biuf":
        x = arr.astype(np.float64).reshape(-1)
    else:
        x = np.array([np.nan if v is None else v for v in arr.reshape(-1)], dtype=np.float64)
    gone = np.isnan(x)
    if missing is not None:
        gone = gone | np.asarray(missing, dtype=bool).reshape(-1)
    return np.where(gone, 0.0, x), gone


def _cells(values: Any, missing: np.ndarray | None) -> list[Any]:
    flat = list(np.asarray(values, dtype=object).reshape(-1))
    if missing is not None:
        mask = np.asarray(missing).reshape(-1)
        flat = [None if m else v for v, m in zip(flat, mask, strict=True)]
    return flat


# --------------------------------------------------------------------------- fitting


def fit_column(
    name: str,
    role: str,
    values: Any,
    datatype: str,
    text_factory: TextFactory | None = None,
) -> dict[str, Any]:
    """One column's spec, fitted on the training split's values (None/NaN = missing)."""
    col: dict[str, Any] = {"name": name, "role": role, "datatype": datatype}
    if role in (NUMERIC, BOOLEAN):
        x, gone = _column_numbers(col, values, None)
        kept = x[~gone]
        col["median"] = float(np.median(kept)) if kept.size else 0.0
        col["indicator"] = bool(gone.any())
    elif role == CATEGORICAL:
        counts: dict[str, int] = {}
        for v in _cells(values, None):
            key = category_key(v)
            if key is not None:
                counts[key] = counts.get(key, 0) + 1
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        col["categories"] = [k for k, c in ranked[:MAX_CATEGORIES] if c >= MIN_CATEGORY_ROWS]
    elif role == DATETIME:
        parts, gone = _column_datetimes(col, values, None)
        kept = parts[~gone]
        col["medians"] = np.median(kept, axis=0).tolist() if len(kept) else [0.0] * 5
        col["indicator"] = bool(gone.any())
    elif role == TEXT:
        if text_factory is None:
            raise ValueError("a text column needs the hashed n-gram encoder")
        col["buckets"] = TEXT_BUCKETS
    else:
        raise ValueError(f"cannot fit a column of role {role!r}")
    return col


def feature_names(col: dict[str, Any]) -> list[str]:
    name, role = col["name"], col["role"]
    if role in (NUMERIC, BOOLEAN):
        return [name] + ([f"{name}__missing"] if col["indicator"] else [])
    if role == CATEGORICAL:
        return [f"{name}={c}" for c in [*col["categories"], MISSING, UNKNOWN]]
    if role == DATETIME:
        parts = [f"{name}__{p}" for p in DATETIME_PARTS]
        return parts + ([f"{name}__missing"] if col["indicator"] else [])
    return [f"{name}__ngram{i}" for i in range(col["buckets"])]


def make_spec(columns: list[dict[str, Any]], ignored: list[dict[str, str]]) -> dict[str, Any]:
    """table.json: the fitted columns, in input order, and what was left out and why."""
    matrix = all(c["role"] == NUMERIC for c in columns)
    return {"format": FORMAT, "matrix": matrix, "columns": columns, "ignored": ignored}


# --------------------------------------------------------------------------- encoding


def _column_numbers(
    col: dict[str, Any], values: Any, missing: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    if col["role"] == BOOLEAN and np.asarray(values).dtype.kind not in "biuf":
        out: list[float] = []
        for v in _cells(values, missing):
            try:
                b = as_bool(v)
            except ValueError as e:
                raise TableInputError(f"column {col['name']!r}: {e}") from None
            out.append(np.nan if b is None else b)
        values, missing = np.asarray(out, dtype=np.float64), None
    try:
        x, gone = _floats(values, missing)
    except (TypeError, ValueError):
        raise TableInputError(f"column {col['name']!r}: values must be numbers") from None
    if not np.isfinite(x).all():
        raise TableInputError(f"column {col['name']!r}: infinite values")
    if col["role"] == BOOLEAN and not np.isin(x[~gone], (0.0, 1.0)).all():
        raise TableInputError(f"column {col['name']!r}: a boolean column takes true/false or 0/1")
    return x, gone


def _column_datetimes(
    col: dict[str, Any], values: Any, missing: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    cells = _cells(values, missing)
    parts = np.zeros((len(cells), len(DATETIME_PARTS)), dtype=np.float64)
    gone = np.zeros(len(cells), dtype=bool)
    for i, v in enumerate(cells):
        try:
            stamp = parse_datetime(v)
        except ValueError as e:
            raise TableInputError(f"column {col['name']!r}: {e}") from None
        if stamp is None:
            gone[i] = True
        else:
            parts[i] = datetime_parts(stamp)
    return parts, gone


class TableEncoder:
    """A fitted table.json: raw columns -> the float32 feature matrix the graph takes."""

    def __init__(self, spec: dict[str, Any], text_factory: TextFactory | None = None) -> None:
        if spec.get("format") != FORMAT:
            raise ValueError(f"unknown table spec format {spec.get('format')!r}")
        self.spec = spec
        self.columns: list[dict[str, Any]] = list(spec["columns"])
        self.matrix = bool(spec.get("matrix"))
        self.names = [c["name"] for c in self.columns]
        self.feature_names = [f for c in self.columns for f in feature_names(c)]
        self._slots = {
            c["name"]: {k: i for i, k in enumerate(c["categories"])}
            for c in self.columns
            if c["role"] == CATEGORICAL
        }
        self._text: dict[str, Any] = {}
        for c in self.columns:
            if c["role"] == TEXT:
                if text_factory is None:
                    raise ValueError("a table with text columns needs the hashed n-gram encoder")
                self._text[c["name"]] = text_factory(buckets=c["buckets"], max_ids=4096)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def encode(self, columns: dict[str, tuple[Any, np.ndarray | None]]) -> np.ndarray:
        """{column: (values, missing mask or None)} -> float32 [n, n_features]."""
        n = len(np.asarray(columns[self.names[0]][0]).reshape(-1)) if self.names else 0
        blocks = []
        for col in self.columns:
            values, missing = columns[col["name"]]
            block = self._encode_column(col, values, missing)
            if block.shape[0] != n:
                raise TableInputError(
                    f"column {col['name']!r} has {block.shape[0]} rows; "
                    f"column {self.names[0]!r} has {n}"
                )
            blocks.append(block)
        if not blocks:
            return np.zeros((n, 0), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(blocks, axis=1), dtype=np.float32)

    def encode_matrix(self, x: np.ndarray) -> np.ndarray:
        """An all-numeric table's [n, F] matrix (NaN = missing) -> features."""
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        return self.encode({name: (x[:, i], None) for i, name in enumerate(self.names)})

    def _encode_column(self, col: dict[str, Any], values: Any, missing: Any) -> np.ndarray:
        role = col["role"]
        if role in (NUMERIC, BOOLEAN):
            x, gone = _column_numbers(col, values, missing)
            value = np.where(gone, col["median"], x)
            return _with_indicator(value[:, None], gone, col["indicator"])
        if role == CATEGORICAL:
            return self._one_hot(col, values, missing)
        if role == DATETIME:
            parts, gone = _column_datetimes(col, values, missing)
            parts[gone] = np.asarray(col["medians"], dtype=np.float64)
            return _with_indicator(parts, gone, col["indicator"])
        return self._hashed(col, values, missing)

    def _one_hot(self, col: dict[str, Any], values: Any, missing: Any) -> np.ndarray:
        slots = self._slots[col["name"]]
        k = len(slots)
        cells = _cells(values, missing)
        index = np.empty(len(cells), dtype=np.int64)
        for i, v in enumerate(cells):
            key = category_key(v)
            index[i] = k if key is None else slots.get(key, k + 1)
        out = np.zeros((len(cells), k + 2), dtype=np.float64)
        out[np.arange(len(cells)), index] = 1.0
        return out

    def _hashed(self, col: dict[str, Any], values: Any, missing: Any) -> np.ndarray:
        encoder = self._text[col["name"]]
        cells = _cells(values, missing)
        out = np.zeros((len(cells), col["buckets"]), dtype=np.float64)
        for i, v in enumerate(cells):
            if v is None:
                continue
            text = bytes(v).decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            ids = encoder.ids(text)
            if ids:
                counts = np.bincount(ids, minlength=col["buckets"]).astype(np.float64)
                out[i] = counts / math.sqrt(float(np.dot(counts, counts)))
        return out


def _with_indicator(values: np.ndarray, gone: np.ndarray, indicator: bool) -> np.ndarray:
    if not indicator:
        return values
    return np.concatenate([values, gone[:, None].astype(np.float64)], axis=1)
