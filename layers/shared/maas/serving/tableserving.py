"""Serving tables: raw columns in, through maas/serving/tableprep.py, to the graph's features.

A tabular model's manifest carries ``table`` (the training job's table.json). The OIP inputs
are one per column, named after it (MLServer's pandas-codec convention: BYTES for strings and
dates, numbers as numbers, shape ``[-1]``), or, for an all-numeric table, today's one FP32
``[-1, F]`` matrix. A JSON ``null`` (the codec's mask), NaN in a binary float tensor and an
empty BYTES element are missing values; tableprep imputes them as training did.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from maas.core.contract import FEATURES_INPUT
from maas.serving.http import PayloadTooLarge, ProtocolError
from maas.serving.oip import InferInput
from maas.serving.tableprep import (
    BOOLEAN,
    CATEGORICAL,
    MATRIX_INPUT,
    NUMERIC,
    TEXT,
    TableEncoder,
    TableInputError,
)

NUMBERS = frozenset(
    {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}
    | {"FP16", "FP32", "FP64"}
)
INTEGERS = frozenset(d for d in NUMBERS if "INT" in d)
# Which OIP datatypes a column of each role takes (its metadata names the one it was trained on).
ACCEPTS: dict[str, frozenset[str]] = {
    NUMERIC: NUMBERS,
    BOOLEAN: NUMBERS | {"BOOL"},
    CATEGORICAL: INTEGERS | {"BYTES", "BOOL"},
}
STRINGS = frozenset({"BYTES"})


class TableServing:
    """One version's column transforms, and the checks a request's columns pass first."""

    def __init__(self, spec: dict[str, Any]) -> None:
        factory = None
        if any(c["role"] == TEXT for c in spec["columns"]):
            from maas.serving.textprep import HashedNgrams

            factory = HashedNgrams
        self.encoder = TableEncoder(spec, factory)
        self.columns = {c["name"]: c for c in self.encoder.columns}

    def inputs(self) -> list[tuple[str, str, list[int], dict[str, Any] | None]]:
        """(name, datatype, shape, parameters) of each OIP input, in the model's order."""
        if self.encoder.matrix:
            return [(MATRIX_INPUT, "FP32", [-1, len(self.columns)], None)]
        return [(c["name"], c["datatype"], [-1], {"role": c["role"]}) for c in self.encoder.columns]

    def feeds(self, inputs: list[InferInput], max_batch: int) -> dict[str, np.ndarray]:
        by_name = {t.name: t for t in inputs}
        wanted = [name for name, *_ in self.inputs()]
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise ProtocolError(f"missing input(s) {_names(missing)}; the model takes {wanted}")
        extra = [n for n in by_name if n not in wanted]
        if extra:
            raise ProtocolError(f"unknown input(s) {_names(extra)}; the model takes {wanted}")
        try:
            if self.encoder.matrix:
                x = self._matrix(by_name[MATRIX_INPUT], max_batch)
            else:
                x = self.encoder.encode(self._columns(by_name, max_batch))
        except TableInputError as e:
            raise ProtocolError(str(e)) from None
        return {FEATURES_INPUT: x}

    def _matrix(self, t: InferInput, max_batch: int) -> np.ndarray:
        width = len(self.columns)
        if t.datatype != "FP32":
            raise ProtocolError(
                f"input {t.name!r}: datatype {t.datatype} does not match the model's FP32"
            )
        if len(t.shape) != 2 or t.shape[1] != width:
            raise ProtocolError(
                f"input {t.name!r}: shape {t.shape} does not match the model's [-1, {width}]"
            )
        _check_batch(t.name, t.shape[0], max_batch)
        x = np.asarray(t.array, dtype=np.float64)
        if t.missing is not None:
            x = np.where(t.missing, np.nan, x)
        return self.encoder.encode_matrix(x)

    def _columns(
        self, by_name: dict[str, InferInput], max_batch: int
    ) -> dict[str, tuple[Any, np.ndarray | None]]:
        rows: int | None = None
        out: dict[str, tuple[Any, np.ndarray | None]] = {}
        for name, col in self.columns.items():
            t = by_name[name]
            if t.datatype not in ACCEPTS.get(col["role"], STRINGS):
                raise ProtocolError(
                    f"input {name!r}: datatype {t.datatype} does not fit a {col['role']} column "
                    f"({col['datatype']}, shape [-1])"
                )
            if len(t.shape) not in (1, 2) or (len(t.shape) == 2 and t.shape[1] != 1):
                raise ProtocolError(
                    f"input {name!r}: shape {t.shape} does not match the model's [-1] "
                    "(one value per row)"
                )
            if rows is None:
                rows = t.shape[0]
                _check_batch(name, rows, max_batch)
            elif t.shape[0] != rows:
                raise ProtocolError(
                    f"input {name!r} has {t.shape[0]} rows; the other columns have {rows}"
                )
            values = t.array.reshape(-1)
            if t.datatype == "BYTES" and col["role"] != TEXT:
                values = np.array([str(v) for v in values], dtype=object)
            missing = None if t.missing is None else t.missing.reshape(-1)
            out[name] = (values, missing)
        return out


def _names(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names[:20]) + (" ..." if len(names) > 20 else "")


def _check_batch(name: str, rows: int, max_batch: int) -> None:
    if rows == 0:
        raise ProtocolError(f"input {name!r}: empty batch")
    if rows > max_batch:
        raise PayloadTooLarge(f"input {name!r}: batch {rows} exceeds the limit of {max_batch}")
