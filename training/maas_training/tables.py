"""A user's table as it comes: type its columns, read its label, decide its task.

The transforms themselves (medians, categories, datetime parts, hashed text, and the encoding
to the graph's features) are maas/serving/tableprep.py, which serving runs too; this module
only decides, with pandas, what each column is, and says why in the job's log.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from maas_training import log
from maas_training.errors import TrainingError
from maas_training.shared import tableprep

tp = tableprep()
MIN_ROWS = 10
# Integral labels with at most this many distinct values are classes; more are a quantity.
MAX_CLASSES_FOR_INTEGERS = 20
# Strings this long on average, in this many words, are prose: the hashed n-gram encoder.
TEXT_MEAN_CHARS = 30
TEXT_MEAN_WORDS = 4
# ISO 8601 strings: this share of the non-missing values must parse for a datetime column.
DATETIME_SHARE = 0.95
ID_NAME = re.compile(r"(^|[_\W])(id|uuid|guid|key|index)$|^(id|uuid|guid|idx)([_\W]|$)|Id$", re.I)


@dataclass(frozen=True)
class Column:
    name: str
    role: str
    why: str
    datatype: str = ""  # the OIP datatype it is served as ("" when ignored)


def _short(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def parse_overrides(raw: str) -> dict[str, str]:
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as e:
        raise TrainingError(f"hyperparameter columns is not a JSON object: {e}") from None
    if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
        raise TrainingError('columns must map column names to roles, e.g. {"zip": "categorical"}')
    bad = {k: v for k, v in doc.items() if v not in tp.ROLES or v == tp.BOOLEAN}
    if bad:
        raise TrainingError(
            f"columns: unknown role(s) {bad}; choose numeric, categorical, datetime, text or ignore"
        )
    return {str(k): str(v) for k, v in doc.items()}


def _datatype(role: str, series: Any) -> str:
    import pandas as pd

    if role == tp.NUMERIC:
        return "INT64" if pd.api.types.is_integer_dtype(series) else "FP64"
    if role == tp.BOOLEAN:
        return "BOOL"
    if role == tp.CATEGORICAL and pd.api.types.is_integer_dtype(series):
        return "INT64"
    return "BYTES"


def _strings(series: Any) -> list[str]:
    return [str(v) for v in series.dropna().to_list() if str(v) != ""]


def _looks_datetime(values: list[str]) -> bool:
    sample = values[:2000]
    ok = 0
    for v in sample:
        if len(v) >= 10 and v[4:5] == "-":
            try:
                tp.parse_datetime(v)
                ok += 1
            except ValueError:
                pass
    return bool(sample) and ok >= DATETIME_SHARE * len(sample)


def _auto_role(name: str, series: Any, n: int) -> tuple[str, str]:
    """(role, why) for a column no override names."""
    import pandas as pd

    present = series.dropna()
    distinct = int(present.nunique())
    if pd.api.types.is_bool_dtype(series):
        return tp.BOOLEAN, "true/false values"
    if pd.api.types.is_datetime64_any_dtype(series):
        return tp.DATETIME, "date-time values"
    if pd.api.types.is_numeric_dtype(series):
        if pd.api.types.is_complex_dtype(series):
            raise TrainingError(f"column {name!r} holds complex numbers, which no model takes")
        unique = distinct == len(present) and len(present) == n
        if pd.api.types.is_integer_dtype(series) and unique and ID_NAME.search(name):
            return tp.IGNORE, "an identifier: named like one and unique per row"
        return tp.NUMERIC, "numbers"
    values = _strings(series)
    if tp.is_boolean_text(values):
        return tp.BOOLEAN, "true/false or yes/no values"
    if _looks_datetime(values):
        return tp.DATETIME, "ISO 8601 dates"
    mean_chars = sum(len(v) for v in values) / max(1, len(values))
    mean_words = sum(len(v.split()) for v in values) / max(1, len(values))
    if mean_chars >= TEXT_MEAN_CHARS and mean_words >= TEXT_MEAN_WORDS:
        return tp.TEXT, f"free text ({mean_chars:.0f} characters on average)"
    if distinct == len(values) == n and n >= MIN_ROWS:
        return tp.IGNORE, "an identifier: a different value in every row"
    if ID_NAME.search(name) and distinct > 0.5 * len(values):
        return tp.IGNORE, "an identifier: named like one, nearly unique per row"
    return tp.CATEGORICAL, f"strings, {distinct} distinct"


def _forced_role(name: str, role: str, series: Any, n: int) -> tuple[str, str]:
    import pandas as pd

    if role == tp.NUMERIC and not pd.api.types.is_numeric_dtype(series):
        numbers = pd.to_numeric(series, errors="coerce")
        bad = series.notna() & numbers.isna()
        if bad.any():
            example = str(series[bad].iloc[0])[:40]
            raise TrainingError(
                f"column {name!r} is set to numeric in job.json but holds {int(bad.sum())} "
                f"value(s) that are not numbers (e.g. {example!r})"
            )
    if role == tp.CATEGORICAL:
        present = series.dropna()
        distinct = int(present.nunique())
        if distinct == len(present) and len(present) >= MIN_ROWS:
            raise TrainingError(
                f"column {name!r} is set to categorical in job.json but has a different value "
                f"in every row ({distinct} distinct in {len(present)} rows): no category repeats, "
                "so there is nothing to learn from it; set it to 'ignore' or 'text'"
            )
    if role == tp.DATETIME:
        values = _strings(series)
        if not pd.api.types.is_datetime64_any_dtype(series) and not _looks_datetime(values):
            raise TrainingError(
                f"column {name!r} is set to datetime in job.json but its values are not "
                f"ISO 8601 dates (e.g. {values[0][:40] if values else ''!r})"
            )
    return role, "set in job.json"


def type_columns(frame: Any, label: str, overrides: dict[str, str], max_columns: int):
    """Every column but the label: its role and why (list[Column])."""
    names = [c for c in frame.columns if c != label]
    if not names:
        raise TrainingError(f"no feature columns: the data has only the label column {label!r}")
    unknown = sorted(set(overrides) - set(frame.columns))
    if unknown:
        raise TrainingError(f"columns in job.json names columns the data lacks: {_short(unknown)}")
    if label in overrides:
        raise TrainingError(f"columns in job.json sets the label column {label!r}")
    if len(names) > max_columns:
        raise TrainingError(
            f"the table has {len(names)} feature columns, more than max_columns={max_columns}; "
            "raise the hyperparameter max_columns if that is what you meant"
        )
    n = len(frame)
    columns: list[Column] = []
    empty: list[str] = []
    for name in names:
        series = frame[name]
        if name in overrides:
            role, why = _forced_role(name, overrides[name], series, n)
        elif series.isna().all() or not _strings(series):
            empty.append(name)
            continue
        else:
            role, why = _auto_role(name, series, n)
        datatype = "" if role == tp.IGNORE else _datatype(role, series)
        columns.append(Column(name, role, why, datatype))
    if empty:
        raise TrainingError(
            f"column(s) {_short([repr(e) for e in empty])} are empty throughout: no value to "
            "learn from; drop them or set them to 'ignore' in job.json's columns"
        )
    if not any(c.role != tp.IGNORE for c in columns):
        raise TrainingError("no usable feature columns: every column is ignored")
    return columns


def log_columns(columns: list[Column]) -> None:
    for c in columns:
        served = f", served as {c.datatype}" if c.datatype else ", dropped"
        log.info(f"column {c.name!r}: {c.role} ({c.why}{served})")


# --------------------------------------------------------------------------- label and task


@dataclass(frozen=True)
class Label:
    task: str
    why: str
    values: Any  # pandas.Series without the rows whose label is missing
    dropped: int


def read_label(frame: Any, label: str, task: str) -> Label:
    """Rows with a missing label dropped (and counted); the task, asked for or detected."""
    import pandas as pd

    series = frame[label]
    keep = series.notna() & (series.astype(str) != "")
    dropped = int((~keep).sum())
    if keep.sum() < MIN_ROWS:
        raise TrainingError(
            f"only {int(keep.sum())} rows have a label in column {label!r} "
            f"({dropped} have none); need at least {MIN_ROWS}"
        )
    values = series[keep]
    if task:
        why = "set in job.json"
    elif pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        task, why = "classification", "the label holds strings or true/false"
    else:
        x = values.to_numpy(dtype=np.float64)
        distinct = len(np.unique(x))
        if not np.all(x == np.round(x)):
            task, why = "regression", "the label holds non-integral numbers"
        elif distinct > MAX_CLASSES_FOR_INTEGERS:
            task, why = "regression", f"the label holds {distinct} distinct integers"
        else:
            task, why = "classification", f"the label holds {distinct} distinct integers"
    if task == "regression":
        numbers = pd.to_numeric(values, errors="coerce")
        if numbers.isna().any() or not np.isfinite(numbers.to_numpy(dtype=np.float64)).all():
            raise TrainingError(f"regression needs numbers in the label column {label!r}")
    return Label(task, why, values, dropped)


def column_values(series: Any, role: str) -> list[Any] | np.ndarray:
    """A column as tableprep takes it: floats with NaN, or Python objects with None."""
    import pandas as pd

    if role in (tp.NUMERIC,) and pd.api.types.is_numeric_dtype(series):
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    if role == tp.NUMERIC:
        return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    if pd.api.types.is_datetime64_any_dtype(series):
        return [None if pd.isna(v) else v.isoformat() for v in series.to_list()]
    return [None if _missing(v) else v for v in series.to_list()]


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    try:
        import pandas as pd

        return bool(pd.isna(value)) if not isinstance(value, str) else value == ""
    except (TypeError, ValueError):
        return False
