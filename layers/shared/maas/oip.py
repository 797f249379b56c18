"""Open Inference Protocol v2 (REST) codec: the one place tensors are decoded and encoded.

Request and response shapes follow the KServe / Triton "predict protocol v2".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# OIP datatype -> numpy dtype; and the ONNX Runtime type string for each.
NP_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
ORT_TO_OIP = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


class ProtocolError(ValueError):
    """A malformed or inconsistent request: HTTP 400."""

    status = 400


class PayloadTooLarge(ProtocolError):
    status = 413


@dataclass
class InferInput:
    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray


@dataclass
class InferRequest:
    inputs: list[InferInput]
    id: str | None = None
    outputs: list[str] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def oip_datatype(ort_type: str) -> str:
    try:
        return ORT_TO_OIP[ort_type]
    except KeyError:
        raise ProtocolError(f"model uses an unsupported tensor type {ort_type}") from None


def oip_shape(shape: list[Any]) -> list[int]:
    """ONNX shapes carry names or None for dynamic dims; OIP says -1."""
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


def decode_request(body: bytes | str) -> InferRequest:
    if not body:
        raise ProtocolError("request body is empty; expected an OIP inference request")
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        # RecursionError: absurdly deep nesting is a bad request, not a server error.
        detail = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
        raise ProtocolError(f"request body is not valid JSON: {detail}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("request body must be a JSON object with an 'inputs' list")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("'inputs' must be a non-empty list of tensors")
    inputs = [_decode_input(i, raw) for i, raw in enumerate(raw_inputs)]
    names = [t.name for t in inputs]
    if len(set(names)) != len(names):
        raise ProtocolError("input names must be unique")
    outputs = None
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw_outputs
        ):
            raise ProtocolError("'outputs' must be a list of objects with a 'name'")
        outputs = [o["name"] for o in raw_outputs]
    req_id = doc.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise ProtocolError("'id' must be a string")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("'parameters' must be an object")
    return InferRequest(inputs=inputs, id=req_id, outputs=outputs, parameters=params)


def _decode_input(index: int, raw: Any) -> InferInput:
    where = f"inputs[{index}]"
    if not isinstance(raw, dict):
        raise ProtocolError(f"{where} must be an object with name, shape, datatype and data")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"{where}.name must be a non-empty string")
    where = f"input {name!r}"
    datatype = raw.get("datatype")
    if datatype not in NP_DTYPES:
        raise ProtocolError(
            f"{where}: unknown datatype {datatype!r}; expected one of {', '.join(NP_DTYPES)}"
        )
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ProtocolError(f"{where}: shape must be a list of non-negative integers")
    if "data" not in raw:
        raise ProtocolError(f"{where}: 'data' is missing")
    count = math.prod(shape)
    array = _to_array(raw["data"], datatype, where)
    if array.size != count:
        raise ProtocolError(
            f"{where}: shape {shape} needs {count} elements but data has {array.size}"
        )
    return InferInput(name, datatype, shape, array.reshape(shape))


def _to_array(data: Any, datatype: str, where: str) -> np.ndarray:
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        flat = _flatten(data, where)
        if not all(isinstance(x, str) for x in flat):
            raise ProtocolError(f"{where}: BYTES data must be strings")
        return np.array(flat, dtype=np.object_)
    if datatype == "BOOL":
        flat = _flatten(data, where)
        if not all(isinstance(x, bool) for x in flat):
            raise ProtocolError(f"{where}: BOOL data must be true/false")
        return np.array(flat, dtype=np.bool_)
    not_numbers = ProtocolError(
        f"{where}: data must be a flat or nested list of numbers for datatype {datatype}"
    )
    # Let numpy infer first: casting straight to the target dtype would silently parse "1.5"
    # strings, turn None into NaN, truncate 2.5 to 2 and overflow on large integers.
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise not_numbers from None
    target = NP_DTYPES[datatype]
    if array.size == 0:
        return array.astype(target).reshape(-1)
    if datatype.startswith("FP"):
        if array.dtype.kind not in "iuf":
            raise not_numbers
        with np.errstate(all="ignore"):
            return array.astype(target).reshape(-1)
    info = np.iinfo(target)
    if array.dtype.kind not in "iu":
        # Floats, or integers no single numpy dtype holds (e.g. -1 with 2**63): check exactly.
        values = _flatten(data, where)
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in values):
            raise not_numbers
        if not all(isinstance(x, int) or x.is_integer() for x in values):
            raise ProtocolError(f"{where}: {datatype} data must be integers")
        ints = [int(x) for x in values]
        if min(ints) < info.min or max(ints) > info.max:
            raise ProtocolError(f"{where}: value out of range for {datatype}")
        return np.array(ints, dtype=target)
    if array.min() < info.min or array.max() > info.max:
        raise ProtocolError(f"{where}: value out of range for {datatype}")
    return array.astype(target).reshape(-1)


def _flatten(data: list[Any], where: str) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def encode_output(name: str, array: np.ndarray) -> dict[str, Any]:
    datatype = _datatype_of(array)
    if datatype == "BYTES":
        data: list[Any] = [
            x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
            for x in array.reshape(-1)
        ]
    else:
        data = array.reshape(-1).tolist()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def _datatype_of(array: np.ndarray) -> str:
    if array.dtype == np.object_ or array.dtype.kind in ("U", "S"):
        return "BYTES"
    for oip, dt in NP_DTYPES.items():
        if dt is not np.object_ and array.dtype == np.dtype(dt):
            return oip
    raise ProtocolError(f"cannot encode output dtype {array.dtype}")


def encode_response(
    model: str, version: int, outputs: dict[str, np.ndarray], request_id: str | None
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "model_name": model,
        "model_version": str(version),
        "outputs": [encode_output(n, a) for n, a in outputs.items()],
    }
    if request_id is not None:
        doc["id"] = request_id
    return doc
