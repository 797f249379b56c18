"""The Open Inference Protocol v2 codec: requests decoded strictly, responses encoded per spec."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from maas.serving.oip import (
    ProtocolError,
    decode_request,
    encode_output,
    encode_response,
    oip_datatype,
    oip_shape,
)

pytestmark = pytest.mark.usefixtures("no_network")


def request(*inputs: dict[str, Any], **extra: Any) -> str:
    return json.dumps({"inputs": list(inputs), **extra})


def tensor(data: Any, shape: list[int], datatype: str = "FP32", name: str = "input") -> dict:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


# --- decoding: data layout ----------------------------------------------------------------


def test_decode_flat_data_is_reshaped_to_shape() -> None:
    req = decode_request(request(tensor([1, 2, 3, 4, 5, 6], [2, 3])))
    [t] = req.inputs
    assert (t.name, t.datatype, t.shape) == ("input", "FP32", [2, 3])
    assert t.array.dtype == np.float32
    np.testing.assert_array_equal(t.array, [[1, 2, 3], [4, 5, 6]])


def test_decode_nested_data_equals_flat_data() -> None:
    flat = decode_request(request(tensor([1.5, 2, 3, 4, 5, 6], [2, 3]))).inputs[0].array
    nested = decode_request(request(tensor([[1.5, 2, 3], [4, 5, 6]], [2, 3]))).inputs[0].array
    np.testing.assert_array_equal(flat, nested)
    assert flat.shape == nested.shape == (2, 3)


def test_decode_bytes_body_is_accepted() -> None:
    req = decode_request(request(tensor([1, 2], [1, 2])).encode())
    assert req.inputs[0].array.shape == (1, 2)


@pytest.mark.parametrize(
    "data, shape, message",
    [
        ([1, 2, 3], [2, 2], r"shape \[2, 2\] needs 4 elements but data has 3"),
        ([[1, 2], [3, 4]], [4, 2], r"needs 8 elements but data has 4"),
        ([1, 2, 3, 4, 5], [1, 4], r"needs 4 elements but data has 5"),
    ],
)
def test_decode_element_count_mismatch_raises_clear_error(
    data: list, shape: list[int], message: str
) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        decode_request(request(tensor(data, shape)))
    assert info.value.status == 400
    assert "'input'" in str(info.value)


@pytest.mark.parametrize("shape", [[-1, 4], [2, "4"], "2,4", [2.0, 4], [True, 4], None])
def test_decode_invalid_shape_raises(shape: Any) -> None:
    with pytest.raises(ProtocolError, match="shape must be a list of non-negative integers"):
        decode_request(request(tensor([1] * 8, shape)))


def test_decode_ragged_nested_data_raises() -> None:
    with pytest.raises(ProtocolError, match="list of numbers"):
        decode_request(request(tensor([[1, 2], [3]], [3])))


# --- decoding: datatypes ------------------------------------------------------------------


@pytest.mark.parametrize("datatype", ["FLOAT", "fp32", "STRING", "", None, 32])
def test_decode_unknown_datatype_lists_the_known_ones(datatype: Any) -> None:
    with pytest.raises(ProtocolError, match=r"unknown datatype .*expected one of BOOL, UINT8"):
        decode_request(request(tensor([1], [1], datatype=datatype)))


@pytest.mark.parametrize("data", [["a", "b"], [1, "2"], [{"x": 1}, 2], [[1], "x"]])
def test_decode_non_numeric_data_for_numeric_type_raises(data: list) -> None:
    with pytest.raises(ProtocolError, match="list of numbers"):
        decode_request(request(tensor(data, [2])))


@pytest.mark.parametrize("data", [["1.5", "2"], [True, False]])
def test_decode_strings_or_booleans_for_fp32_are_not_coerced(data: list) -> None:
    with pytest.raises(ProtocolError, match="list of numbers"):
        decode_request(request(tensor(data, [2])))


@pytest.mark.parametrize(
    "datatype, value",
    [
        ("INT8", 128),
        ("INT8", -129),
        ("UINT8", -1),
        ("UINT8", 256),
        ("INT16", 40000),
        ("INT32", 2**31),
        ("UINT32", -5),
        ("INT64", 2**63),
        ("UINT64", -1),
    ],
)
def test_decode_int_out_of_range_raises(datatype: str, value: int) -> None:
    with pytest.raises(ProtocolError, match=f"out of range for {datatype}"):
        decode_request(request(tensor([0, value], [2], datatype=datatype)))


@pytest.mark.parametrize(
    "datatype, value",
    [("INT8", 127), ("INT8", -128), ("UINT8", 255), ("INT64", 2**63 - 1), ("UINT64", 2**64 - 1)],
)
def test_decode_int_at_the_limit_is_exact(datatype: str, value: int) -> None:
    [t] = decode_request(request(tensor([value], [1], datatype=datatype))).inputs
    assert int(t.array[0]) == value


@pytest.mark.parametrize("datatype", ["INT32", "INT64", "UINT8"])
def test_decode_fractional_value_for_int_type_is_not_truncated(datatype: str) -> None:
    with pytest.raises(ProtocolError, match="integers"):
        decode_request(request(tensor([1, 2.5], [2], datatype=datatype)))


def test_decode_integral_float_for_int_type_is_accepted() -> None:
    [t] = decode_request(request(tensor([1.0, 2], [2], datatype="INT64"))).inputs
    assert t.array.dtype == np.int64
    assert t.array.tolist() == [1, 2]


@pytest.mark.parametrize(
    "datatype, dtype",
    [
        ("FP16", np.float16),
        ("FP32", np.float32),
        ("FP64", np.float64),
        ("INT8", np.int8),
        ("INT16", np.int16),
        ("INT32", np.int32),
        ("INT64", np.int64),
        ("UINT8", np.uint8),
        ("UINT16", np.uint16),
        ("UINT32", np.uint32),
        ("UINT64", np.uint64),
    ],
)
def test_decode_numeric_datatype_gives_matching_numpy_dtype(datatype: str, dtype: Any) -> None:
    [t] = decode_request(request(tensor([[1, 2], [3, 4]], [2, 2], datatype=datatype))).inputs
    assert t.array.dtype == dtype
    assert t.array.tolist() == [[1, 2], [3, 4]]


def test_decode_bool_tensor() -> None:
    [t] = decode_request(request(tensor([[True, False]], [1, 2], datatype="BOOL"))).inputs
    assert t.array.dtype == np.bool_
    assert t.array.tolist() == [[True, False]]


@pytest.mark.parametrize("data", [[1, 0], ["true", "false"], [True, "x"]])
def test_decode_bool_tensor_with_non_booleans_raises(data: list) -> None:
    with pytest.raises(ProtocolError, match="BOOL data must be true/false"):
        decode_request(request(tensor(data, [2], datatype="BOOL")))


def test_decode_bytes_tensor_keeps_strings() -> None:
    [t] = decode_request(request(tensor([["héllo", "world"]], [1, 2], datatype="BYTES"))).inputs
    assert t.array.dtype == np.object_
    assert t.array.tolist() == [["héllo", "world"]]


def test_decode_bytes_tensor_with_non_strings_raises() -> None:
    with pytest.raises(ProtocolError, match="BYTES data must be strings"):
        decode_request(request(tensor(["a", 1], [2], datatype="BYTES")))


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_decode_nan_literal_is_refused_pointing_at_null(literal: str) -> None:
    # JSON has no NaN, but Python's json (and some clients) accept the literal: a 400 that
    # says how to send a missing value instead.
    tensor = '{"name": "x", "shape": [2], "datatype": "FP32", "data": [' + literal + ", 1]}"
    body = '{"inputs": [' + tensor + "]}"
    with pytest.raises(ProtocolError, match=r"NaN or infinite.*send null for a missing value"):
        decode_request(body)


@pytest.mark.parametrize(
    ("datatype", "data", "filled"),
    [
        ("FP32", [1.5, None, 3], [1.5, 0.0, 3.0]),
        ("INT64", [[None, 2], [3, None]], [0, 2, 3, 0]),
        ("BOOL", [True, None], [True, False]),
        ("BYTES", ["a", None], ["a", ""]),
    ],
)
def test_decode_null_is_a_missing_value_with_its_mask(
    datatype: str, data: list, filled: list
) -> None:
    # GIVEN a JSON tensor with nulls (missing values, as the table models take them)
    n = len(filled)
    shape = [2, 2] if isinstance(data[0], list) else [n]
    [t] = decode_request(
        json.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]})
    ).inputs
    # THEN the array holds a filler there and the mask says where the nulls were
    assert t.array.reshape(-1).tolist() == filled
    assert t.missing is not None
    assert t.missing.reshape(-1).tolist() == [v is None for v in _flat(data)]
    assert t.missing.shape == t.array.shape


def _flat(data: list) -> list:
    return [x for row in data for x in row] if isinstance(data[0], list) else data


def test_decode_without_null_has_no_mask() -> None:
    [t] = decode_request(
        '{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}'
    ).inputs
    assert t.missing is None


# --- decoding: request structure ----------------------------------------------------------


def test_decode_missing_data_raises() -> None:
    body = request({"name": "input", "shape": [1], "datatype": "FP32"})
    with pytest.raises(ProtocolError, match="'data' is missing"):
        decode_request(body)


@pytest.mark.parametrize(
    "raw",
    [
        {"shape": [1], "datatype": "FP32", "data": [1]},
        {"name": "", "shape": [1], "datatype": "FP32", "data": [1]},
        {"name": 7, "shape": [1], "datatype": "FP32", "data": [1]},
    ],
)
def test_decode_input_without_name_raises(raw: dict) -> None:
    with pytest.raises(ProtocolError, match=r"inputs\[0\]\.name must be a non-empty string"):
        decode_request(request(raw))


def test_decode_input_not_an_object_raises() -> None:
    with pytest.raises(ProtocolError, match=r"inputs\[1\] must be an object"):
        decode_request(request(tensor([1], [1]), [1, 2]))


def test_decode_duplicate_input_names_raise() -> None:
    with pytest.raises(ProtocolError, match="input names must be unique"):
        decode_request(request(tensor([1], [1]), tensor([2], [1])))


@pytest.mark.parametrize("body", ['{"inputs": []}', "{}", '{"inputs": {}}', '{"inputs": "x"}'])
def test_decode_empty_or_missing_inputs_raise(body: str) -> None:
    with pytest.raises(ProtocolError, match="'inputs' must be a non-empty list"):
        decode_request(body)


@pytest.mark.parametrize("body", ["{", "inputs", '{"inputs": [}', b"\xff\xfe{}"])
def test_decode_invalid_json_raises(body: str | bytes) -> None:
    with pytest.raises(ProtocolError, match="not valid JSON"):
        decode_request(body)


def test_decode_absurdly_deep_nesting_is_a_bad_request() -> None:
    body = (
        '{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": '
        + ("[" * 200_000)
        + "1"
        + "]" * 200_000
        + "}]}"
    )
    with pytest.raises(ProtocolError, match="not valid JSON"):
        decode_request(body)


@pytest.mark.parametrize("body", ["", b""])
def test_decode_empty_body_raises(body: str | bytes) -> None:
    with pytest.raises(ProtocolError, match="body is empty"):
        decode_request(body)


@pytest.mark.parametrize("body", ["[]", "1", '"x"', "null"])
def test_decode_non_object_body_raises(body: str) -> None:
    with pytest.raises(ProtocolError, match="must be a JSON object"):
        decode_request(body)


def test_decode_requested_outputs_are_kept_in_order() -> None:
    req = decode_request(
        request(tensor([1], [1]), outputs=[{"name": "label"}, {"name": "probabilities"}])
    )
    assert req.outputs == ["label", "probabilities"]


def test_decode_no_requested_outputs_means_all() -> None:
    assert decode_request(request(tensor([1], [1]))).outputs is None


@pytest.mark.parametrize("outputs", ["label", [{"nom": "label"}], ["label"], [{"name": 1}]])
def test_decode_malformed_requested_outputs_raise(outputs: Any) -> None:
    with pytest.raises(ProtocolError, match="'outputs' must be a list of objects with a 'name'"):
        decode_request(request(tensor([1], [1]), outputs=outputs))


def test_decode_id_and_parameters_are_kept() -> None:
    req = decode_request(request(tensor([1], [1]), id="req-42", parameters={"a": 1}))
    assert req.id == "req-42"
    assert req.parameters == {"a": 1}


def test_decode_non_string_id_raises() -> None:
    with pytest.raises(ProtocolError, match="'id' must be a string"):
        decode_request(request(tensor([1], [1]), id=42))


def test_decode_non_object_parameters_raise() -> None:
    with pytest.raises(ProtocolError, match="'parameters' must be an object"):
        decode_request(request(tensor([1], [1]), parameters=[1]))


# --- encoding -----------------------------------------------------------------------------


def test_encode_response_echoes_id_and_names_the_version() -> None:
    # GIVEN model outputs
    outputs = {
        "probabilities": np.array([[0.25, 0.75]], dtype=np.float32),
        "label": np.array(["virginica"], dtype=object),
    }

    # WHEN they are encoded for request "abc"
    doc = encode_response("iris", 3, outputs, "abc")

    # THEN the response follows OIP v2 and is JSON-serialisable
    assert doc == {
        "model_name": "iris",
        "model_version": "3",
        "id": "abc",
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [1, 2], "data": [0.25, 0.75]},
            {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["virginica"]},
        ],
    }
    json.dumps(doc)


def test_encode_response_without_id_has_no_id() -> None:
    doc = encode_response("iris", 1, {"y": np.zeros((1,), dtype=np.int64)}, None)
    assert "id" not in doc


@pytest.mark.parametrize(
    "array, datatype",
    [
        (np.array([True]), "BOOL"),
        (np.array([1], dtype=np.int8), "INT8"),
        (np.array([1], dtype=np.uint64), "UINT64"),
        (np.array([1.5], dtype=np.float16), "FP16"),
        (np.array([1.5], dtype=np.float64), "FP64"),
        (np.array(["a"]), "BYTES"),
        (np.array([b"a\xff"], dtype=object), "BYTES"),
    ],
)
def test_encode_output_datatype_follows_dtype(array: np.ndarray, datatype: str) -> None:
    out = encode_output("y", array)
    assert out["datatype"] == datatype
    json.dumps(out)


def test_encode_output_flattens_row_major() -> None:
    out = encode_output("y", np.arange(6, dtype=np.int32).reshape(2, 3))
    assert (out["shape"], out["data"]) == ([2, 3], [0, 1, 2, 3, 4, 5])


def test_encode_output_unsupported_dtype_raises() -> None:
    with pytest.raises(ProtocolError):
        encode_output("y", np.array([1 + 2j]))


# --- metadata helpers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "ort_type, oip",
    [
        ("tensor(float)", "FP32"),
        ("tensor(string)", "BYTES"),
        ("tensor(int64)", "INT64"),
        ("tensor(bool)", "BOOL"),
        ("tensor(double)", "FP64"),
        ("tensor(float16)", "FP16"),
    ],
)
def test_oip_datatype_maps_onnx_runtime_types(ort_type: str, oip: str) -> None:
    assert oip_datatype(ort_type) == oip


def test_oip_datatype_unsupported_type_raises() -> None:
    with pytest.raises(ProtocolError, match="unsupported tensor type"):
        oip_datatype("seq(tensor(float))")


def test_oip_shape_dynamic_dims_become_minus_one() -> None:
    assert oip_shape(["batch", 4, None, -1, 0]) == [-1, 4, -1, -1, 0]
