"""Open Inference Protocol v2 (REST) codec: the one place tensors are decoded and encoded.

Request and response shapes follow the KServe / Triton "predict protocol v2", with Triton's
binary tensor data extension: a JSON header of `Inference-Header-Content-Length` bytes, then
the raw tensors back to back in input (or output) order, each input naming its size in
`parameters.binary_data_size`. Tensors are little-endian and row-major; BOOL is one byte per
element; a BYTES element is a 4-byte little-endian length followed by that many bytes.

The wire schema is pydantic models in maas.serving.oipschema (re-exported here on first use):
requests are validated with them, and the OpenAPI document (maas_devkit.openapi) is generated
from them. This module imports only the standard library and numpy, so that a cold inference
function decodes its first well-formed request without importing pydantic (bench/coldstart.py).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from maas.serving.http import PayloadTooLarge, ProtocolError

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
OIP_TO_ORT = {oip: ort for ort, oip in ORT_TO_OIP.items()}
# Little-endian wire dtypes of the fixed-size datatypes (BYTES is length-prefixed instead).
_WIRE_DTYPES = {k: np.dtype(v).newbyteorder("<") for k, v in NP_DTYPES.items() if k != "BYTES"}
HEADER_LENGTH = "inference-header-content-length"
_U32 = struct.Struct("<I")
# One BYTES element (a text): a model reads a few hundred tokens of it; more only costs time.
MAX_BYTES_ELEMENT = 64 * 1024


# --- the wire schema (maas.serving.oipschema) -------------------------------------------

# The pydantic models, imported on first use: `oip.InferenceRequest` etc. still work.
SCHEMA_NAMES = frozenset(
    {
        "Datatype",
        "Dim",
        "Size",
        "TensorData",
        "InputParameters",
        "OutputParameters",
        "RequestParameters",
        "RequestInput",
        "RequestOutput",
        "InferenceRequest",
        "ResponseOutputParameters",
        "ResponseOutput",
        "InferenceResponse",
        "MetadataTensor",
        "ModelMetadataResponse",
        "ServerMetadataResponse",
        "ServerLiveResponse",
        "ServerReadyResponse",
        "ModelReadyResponse",
        "ErrorResponse",
    }
)


def __getattr__(name: str) -> Any:
    if name in SCHEMA_NAMES:
        from maas.serving import oipschema

        return getattr(oipschema, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- decoded requests -----------------------------------------------------------------------


@dataclass
class InferInput:
    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray
    # JSON nulls (missing values): True where the request said null; the array holds 0, False
    # or "" there. None when the data had no null.
    missing: np.ndarray | None = None


@dataclass
class InferRequest:
    inputs: list[InferInput]
    id: str | None = None
    outputs: list[str] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    binary_data_output: bool = False
    # Per requested output: its parameters.binary_data, where it said.
    binary_outputs: dict[str, bool] = field(default_factory=dict)

    def wants_binary(self, output: str) -> bool:
        return self.binary_outputs.get(output, self.binary_data_output)


def oip_datatype(ort_type: str) -> str:
    try:
        return ORT_TO_OIP[ort_type]
    except KeyError:
        raise ProtocolError(f"model uses an unsupported tensor type {ort_type}") from None


def oip_shape(shape: list[Any]) -> list[int]:
    """ONNX shapes carry names or None for dynamic dims; OIP says -1."""
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


def parse_header_length(value: str | int | None, body_size: int) -> int | None:
    """The Inference-Header-Content-Length header: where the JSON ends and tensors begin."""
    if value is None or value == "":
        return None
    try:
        length = int(value)
    except (TypeError, ValueError):
        raise ProtocolError(
            f"Inference-Header-Content-Length must be an integer, not {value!r}"
        ) from None
    if length < 0 or length > body_size:
        raise ProtocolError(
            f"Inference-Header-Content-Length {length} is outside the body's {body_size} bytes"
        )
    return length


def decode_request(body: bytes | str, header_length: str | int | None = None) -> InferRequest:
    """A JSON request, or a binary-extension one when `header_length` is given."""
    if not body:
        raise ProtocolError("request body is empty; expected an OIP inference request")
    raw = body.encode() if isinstance(body, str) else body
    length = parse_header_length(header_length, len(raw))
    view = memoryview(raw)
    header = raw if length is None or length == len(raw) else view[:length]
    binary = view[len(header) :]
    doc = _parse_json(bytes(header) if isinstance(header, memoryview) else header, raw, length)
    if not isinstance(doc, dict):
        raise ProtocolError("request body must be a JSON object with an 'inputs' list")
    wire = doc if _plainly_valid(doc) else _validated(doc)
    tensors: list[dict[str, Any]] = wire["inputs"]
    names = [t["name"] for t in tensors]
    if len(set(names)) != len(names):
        raise ProtocolError("input names must be unique")
    offset = 0
    inputs = []
    for tensor in tensors:
        name, datatype, shape = tensor["name"], tensor["datatype"], tensor["shape"]
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        where = f"input {name!r}"
        if size is None:
            if "data" not in tensor:
                raise ProtocolError(f"{where}: 'data' is missing")
            array, missing = _to_array(tensor["data"], datatype, where)
            _check_count(array.size, shape, where, "data has")
            array = array.reshape(shape)
            if missing is not None:
                missing = missing.reshape(shape)
            inputs.append(InferInput(name, datatype, shape, array, missing))
            continue
        if "data" in tensor:
            raise ProtocolError(f"{where}: has both 'data' and parameters.binary_data_size")
        if length is None:
            raise ProtocolError(
                f"{where}: binary_data_size needs the Inference-Header-Content-Length header"
            )
        if offset + size > len(binary):
            raise ProtocolError(
                f"{where}: binary_data_size {size} runs past the end of the body "
                f"({len(binary) - offset} bytes of binary data left)"
            )
        chunk = binary[offset : offset + size]
        offset += size
        array = from_binary(chunk, datatype, shape, where)
        inputs.append(InferInput(name, datatype, shape, array))
    if offset != len(binary):
        raise ProtocolError(
            f"the body has {len(binary) - offset} bytes of binary data that no input's "
            "binary_data_size accounts for"
        )
    outputs = None
    binary_outputs: dict[str, bool] = {}
    if wire.get("outputs") is not None:
        outputs = [o["name"] for o in wire["outputs"]]
        for o in wire["outputs"]:
            wants = (o.get("parameters") or {}).get("binary_data")
            if wants is not None:
                binary_outputs[o["name"]] = wants
    params = {k: v for k, v in (wire.get("parameters") or {}).items() if v is not None}
    return InferRequest(
        inputs=inputs,
        id=wire.get("id"),
        outputs=outputs,
        parameters=params,
        binary_data_output=bool(params.get("binary_data_output")),
        binary_outputs=binary_outputs,
    )


# Past this much JSON, pydantic-core's parser and serializer (~8x the standard library's on
# tensor data, bench/results.md) pay for their import (~40 ms once); below it, the standard
# library's cost nothing to import and a cold function's first small request does not wait.
LARGE_JSON_BYTES = 8192
LARGE_JSON_ELEMENTS = 1024


def _parse_json(header: bytes, raw: bytes, length: int | None) -> Any:
    """The JSON header as Python values.

    Small bodies: the standard library's parser. Large ones, and wherever the standard one
    fails or a \\u surrogate escape appears: pydantic-core's, the reference (it refuses lone
    surrogate escapes and absurd nesting with a ValueError).
    """
    if len(header) <= LARGE_JSON_BYTES and b"\\ud" not in header and b"\\uD" not in header:
        try:
            return json.loads(header)
        except (ValueError, RecursionError):
            pass
    from pydantic_core import from_json

    try:
        return from_json(header)
    except ValueError as e:
        hint = (
            "; a binary request needs the Inference-Header-Content-Length header"
            if length is None and b"binary_data_size" in raw[:4096]
            else ""
        )
        raise ProtocolError(f"request body is not valid JSON: {e}{hint}") from None


_DATATYPES = frozenset(NP_DTYPES)
_SCALARS = (str, int, float, bool, type(None))


def _flat_object(value: Any) -> bool:
    """None, or an object of scalars: what the parameters objects hold in every real client."""
    return value is None or (
        type(value) is dict and all(isinstance(v, _SCALARS) for v in value.values())
    )


def _plainly_valid(doc: dict[str, Any]) -> bool:
    """True only for a request maas.serving.oipschema.InferenceRequest accepts as it stands.

    The fast path: a well-formed request is used as parsed, without importing pydantic (a
    cold inference function's first request). Anything else, valid or not, goes through the
    schema, which decides and words the error. Conservative by construction: it may say False
    to a valid request, never True to an invalid one (tests/unit/test_oip_fastpath.py).
    """
    inputs = doc.get("inputs")
    if type(inputs) is not list or not inputs:
        return False
    for t in inputs:
        if type(t) is not dict:
            return False
        name, shape, datatype = t.get("name"), t.get("shape"), t.get("datatype")
        if type(name) is not str or not name or type(datatype) is not str:
            return False
        if datatype not in _DATATYPES or type(shape) is not list:
            return False
        if not all(type(d) is int and d >= 0 for d in shape):
            return False
        params = t.get("parameters")
        if not _flat_object(params):
            return False
        size = (params or {}).get("binary_data_size")
        if size is not None and (type(size) is not int or size < 0):
            return False
    if doc.get("id") is not None and type(doc["id"]) is not str:
        return False
    params = doc.get("parameters")
    if not _flat_object(params):
        return False
    wants = (params or {}).get("binary_data_output")
    if wants is not None and type(wants) is not bool:
        return False
    outputs = doc.get("outputs")
    if outputs is None:
        return True
    if type(outputs) is not list:
        return False
    for o in outputs:
        if type(o) is not dict or type(o.get("name")) is not str:
            return False
        params = o.get("parameters")
        if not _flat_object(params):
            return False
        wants = (params or {}).get("binary_data")
        if wants is not None and type(wants) is not bool:
            return False
    return True


def _validated(doc: dict[str, Any]) -> dict[str, Any]:
    """The request checked by the schema itself: its values, or its first error, worded."""
    from pydantic import ValidationError

    from maas.serving.oipschema import InferenceRequest

    try:
        wire = InferenceRequest.model_validate(doc)
    except ValidationError as e:
        raise ProtocolError(_explain(e, doc)) from None
    checked: dict[str, Any] = wire.model_dump(exclude_unset=True)
    return checked


def _explain(error: Any, doc: dict[str, Any]) -> str:  # a pydantic ValidationError
    """The first validation error, said the way a client author needs to read it."""
    first = error.errors()[0]
    loc = first["loc"]
    head = loc[0] if loc else ""
    if head == "inputs":
        if len(loc) == 1:
            return "'inputs' must be a non-empty list of tensors"
        i = loc[1]
        if len(loc) == 2:
            return f"inputs[{i}] must be an object with name, shape, datatype and data"
        raw = doc["inputs"][i]
        key = loc[2]
        if key == "name":
            return f"inputs[{i}].name must be a non-empty string"
        where = f"input {raw['name']!r}"
        if key == "shape":
            return f"{where}: shape must be a list of non-negative integers"
        if key == "datatype":
            return (
                f"{where}: unknown datatype {raw.get('datatype')!r}; expected one of "
                f"{', '.join(NP_DTYPES)}"
            )
        if len(loc) == 3:
            return f"{where}: 'parameters' must be an object"
        return f"{where}: parameters.{loc[3]}: {first['msg']}"
    if head == "outputs":
        if len(loc) >= 4 and loc[2] == "parameters":
            return f"outputs[{loc[1]}].parameters.{loc[3]}: {first['msg']}"
        return "'outputs' must be a list of objects with a 'name'"
    if head == "id":
        return "'id' must be a string"
    if head == "parameters":
        if len(loc) == 1:
            return "'parameters' must be an object"
        return f"parameters.{loc[1]}: {first['msg']}"
    return f"{'.'.join(str(p) for p in loc)}: {first['msg']}"


def _check_count(count: int, shape: list[int], where: str, what: str) -> None:
    needed = math.prod(shape)
    if count != needed:
        raise ProtocolError(f"{where}: shape {shape} needs {needed} elements but {what} {count}")


def _to_array(data: Any, datatype: str, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """JSON data as an array of the datatype, and where it said null (None: nowhere)."""
    if not isinstance(data, list):
        data = [data]
    missing = None
    if _has_null(data):
        flat = _flatten(data)
        missing = np.array([x is None for x in flat], dtype=np.bool_)
        fill: Any = "" if datatype == "BYTES" else False if datatype == "BOOL" else 0
        data = [fill if x is None else x for x in flat]
    array = _to_values(data, datatype, where)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ProtocolError(
            f"{where}: NaN or infinite values (NaN and Infinity are not JSON numbers, and a "
            f"value may overflow {datatype}); send null for a missing value"
        )
    return array, missing


def _has_null(data: list[Any]) -> bool:
    if None in data:
        return True
    return bool(data) and isinstance(data[0], list) and None in _flatten(data)


def _to_values(data: Any, datatype: str, where: str) -> np.ndarray:
    if datatype == "BYTES":
        flat = _flatten(data)
        if not all(isinstance(x, str) for x in flat):
            raise ProtocolError(f"{where}: BYTES data must be strings (or null for missing)")
        for i, x in enumerate(flat):
            # A str of n characters is at most 4n UTF-8 bytes: encode only the long ones.
            if len(x) * 4 > MAX_BYTES_ELEMENT and len(x.encode()) > MAX_BYTES_ELEMENT:
                raise _element_too_long(where, i, len(x.encode()))
        return np.array(flat, dtype=np.object_)
    if datatype == "BOOL":
        flat = _flatten(data)
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
        values = _flatten(data)
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


def _flatten(data: list[Any]) -> list[Any]:
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


# --- binary tensor data -----------------------------------------------------------------------


def from_binary(
    raw: bytes | memoryview, datatype: str, shape: list[int], where: str = "tensor"
) -> np.ndarray:
    """One tensor's bytes in the binary extension's layout, as an array of `shape`."""
    if datatype == "BYTES":
        elements = _deserialize_bytes(raw, where)
        _check_count(len(elements), shape, where, "its binary data has")
        return np.array(elements, dtype=np.object_).reshape(shape)
    wire = _WIRE_DTYPES[datatype]
    needed = math.prod(shape)
    if len(raw) != needed * wire.itemsize:
        raise ProtocolError(
            f"{where}: shape {shape} of {datatype} needs {needed * wire.itemsize} bytes "
            f"({needed} x {wire.itemsize}) but binary_data_size is {len(raw)}"
        )
    if datatype == "BOOL":
        octets = np.frombuffer(raw, dtype=np.uint8)
        if octets.size and octets.max() > 1:
            raise ProtocolError(f"{where}: BOOL bytes must be 0 or 1")
        return octets.astype(np.bool_).reshape(shape)
    array = np.frombuffer(raw, dtype=wire)
    # A view into the body is read-only and, after a JSON header of any length, unaligned:
    # copy only when the model could not take it as it is.
    if not array.flags.aligned or not wire.isnative:
        array = array.astype(wire.newbyteorder("="))
    return array.reshape(shape)


def _deserialize_bytes(raw: bytes | memoryview, where: str) -> list[str]:
    # ONNX Runtime's string tensors take str (it would str() a bytes object): decode here.
    out: list[str] = []
    offset, end = 0, len(raw)
    while offset < end:
        if offset + 4 > end:
            raise ProtocolError(
                f"{where}: BYTES element {len(out)} has a truncated length prefix "
                f"({end - offset} of 4 bytes)"
            )
        (size,) = _U32.unpack_from(raw, offset)
        offset += 4
        if offset + size > end:
            raise ProtocolError(
                f"{where}: BYTES element {len(out)} declares {size} bytes but only "
                f"{end - offset} remain"
            )
        if size > MAX_BYTES_ELEMENT:
            raise _element_too_long(where, len(out), size)
        try:
            out.append(bytes(raw[offset : offset + size]).decode("utf-8"))
        except UnicodeDecodeError:
            raise ProtocolError(
                f"{where}: BYTES element {len(out)} is not UTF-8 text (ONNX string tensors "
                "carry text)"
            ) from None
        offset += size
    return out


def _element_too_long(where: str, index: int, size: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"{where}: BYTES element {index} is {size} bytes; the limit is {MAX_BYTES_ELEMENT} "
        "bytes per element"
    )


def to_binary(array: np.ndarray) -> bytes:
    """An array in the binary extension's layout."""
    if _datatype_of(array) == "BYTES":
        parts = []
        for x in array.reshape(-1):
            b = x if isinstance(x, bytes) else str(x).encode("utf-8")
            parts.append(_U32.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    little = array.dtype.newbyteorder("<")
    return np.ascontiguousarray(array, dtype=little).tobytes()


# --- responses --------------------------------------------------------------------------------


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
    native = array.dtype if array.dtype.isnative else array.dtype.newbyteorder("=")
    for oip, dt in NP_DTYPES.items():
        if dt is not np.object_ and native == np.dtype(dt):
            return oip
    raise ProtocolError(f"cannot encode output dtype {array.dtype}")


def encode_response(
    model: str, version: int, outputs: dict[str, np.ndarray], request_id: str | None
) -> dict[str, Any]:
    """A JSON response (every output's data inline)."""
    doc: dict[str, Any] = {
        "model_name": model,
        "model_version": str(version),
        "outputs": [encode_output(n, a) for n, a in outputs.items()],
    }
    if request_id is not None:
        doc["id"] = request_id
    return doc


def encode_infer_response(
    model: str, version: int, outputs: dict[str, np.ndarray], request: InferRequest
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when some outputs went binary."""
    doc: dict[str, Any] = {"model_name": model, "model_version": str(version)}
    if request.id is not None:
        doc["id"] = request.id
    encoded: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, array in outputs.items():
        if request.wants_binary(name):
            blob = to_binary(array)
            blobs.append(blob)
            encoded.append(
                {
                    "name": name,
                    "datatype": _datatype_of(array),
                    "shape": list(array.shape),
                    "parameters": {"binary_data_size": len(blob)},
                }
            )
        else:
            encoded.append(encode_output(name, array))
    doc["outputs"] = encoded
    inline = sum(a.size for n, a in outputs.items() if not request.wants_binary(n))
    if inline > LARGE_JSON_ELEMENTS:
        from pydantic_core import to_json

        header = to_json(doc)
    else:
        header = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
