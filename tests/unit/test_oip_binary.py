"""The binary tensor data extension in the OIP codec: every datatype both ways, and bad bodies.

Bodies here are built by hand with struct (not with the codec), as tritonclient lays them out:
a JSON header of Inference-Header-Content-Length bytes, then each tensor's bytes in order.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
from maas.serving.oip import (
    NP_DTYPES,
    OIP_TO_ORT,
    ORT_TO_OIP,
    InferRequest,
    ProtocolError,
    decode_request,
    encode_infer_response,
    from_binary,
    to_binary,
)

pytestmark = pytest.mark.usefixtures("no_network")

# datatype -> (little-endian struct code or None for BYTES, sample values of shape [2, 2])
SAMPLES: dict[str, tuple[str | None, list[Any]]] = {
    "BOOL": ("?", [True, False, False, True]),
    "UINT8": ("B", [0, 1, 254, 255]),
    "UINT16": ("H", [0, 1, 65534, 65535]),
    "UINT32": ("I", [0, 1, 2**32 - 2, 2**32 - 1]),
    "UINT64": ("Q", [0, 1, 2**63, 2**64 - 1]),
    "INT8": ("b", [-128, -1, 0, 127]),
    "INT16": ("h", [-32768, -1, 0, 32767]),
    "INT32": ("i", [-(2**31), -1, 0, 2**31 - 1]),
    "INT64": ("q", [-(2**63), -1, 0, 2**63 - 1]),
    "FP16": ("e", [-1.5, 0.0, 0.25, 65504.0]),
    "FP32": ("f", [-1.5, 0.0, 3.25, 2.0**100]),
    "FP64": ("d", [-1.5, 0.0, 3.25, 1e300]),
    "BYTES": (None, ["", "a", "héllo", "x" * 300]),
}


def raw(datatype: str, values: list[Any]) -> bytes:
    code, _ = SAMPLES[datatype]
    if code is None:
        out = b""
        for v in values:
            b = v.encode() if isinstance(v, str) else v
            out += struct.pack("<I", len(b)) + b
        return out
    return struct.pack(f"<{len(values)}{code}", *values)


def binary_body(
    tensors: list[tuple[str, str, list[int], bytes]], **extra: Any
) -> tuple[bytes, int]:
    header = {
        "inputs": [
            {"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(b)}}
            for n, d, s, b in tensors
        ],
        **extra,
    }
    head = json.dumps(header).encode()
    return head + b"".join(b for *_, b in tensors), len(head)


# --- every datatype ------------------------------------------------------------------------


def test_every_onnx_datatype_maps_both_ways() -> None:
    assert set(SAMPLES) == set(ORT_TO_OIP.values()) == set(OIP_TO_ORT)
    for oip, ort_type in OIP_TO_ORT.items():
        assert ORT_TO_OIP[ort_type] == oip


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
def test_decode_binary_input_of_every_datatype(datatype: str) -> None:
    # GIVEN a [2, 2] tensor as tritonclient would send it
    _, values = SAMPLES[datatype]
    body, length = binary_body([("x", datatype, [2, 2], raw(datatype, values))])

    # WHEN decoded with the header length
    [t] = decode_request(body, str(length)).inputs

    # THEN the values, shape and dtype are exact
    assert t.array.shape == (2, 2)
    assert t.array.reshape(-1).tolist() == values
    assert t.array.dtype == NP_DTYPES[datatype]
    if datatype == "BYTES":
        assert all(isinstance(v, str) for v in t.array.flat)


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
def test_encode_binary_output_of_every_datatype_is_the_wire_layout(datatype: str) -> None:
    _, values = SAMPLES[datatype]
    array = np.array(values, dtype=NP_DTYPES[datatype]).reshape(2, 2)
    assert to_binary(array) == raw(datatype, values)
    # AND decoding it gives the array back
    back = from_binary(to_binary(array), datatype, [2, 2])
    assert back.tolist() == array.tolist()


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
def test_json_input_of_every_datatype_matches_binary(datatype: str) -> None:
    _, values = SAMPLES[datatype]
    body, length = binary_body([("x", datatype, [2, 2], raw(datatype, values))])
    binary = decode_request(body, length).inputs[0].array
    doc = {"inputs": [{"name": "x", "datatype": datatype, "shape": [2, 2], "data": values}]}
    as_json = decode_request(json.dumps(doc)).inputs[0].array
    assert binary.dtype == as_json.dtype
    assert binary.tolist() == as_json.tolist()


def test_big_endian_arrays_go_out_little_endian() -> None:
    array = np.array([1, 2], dtype=">i4")
    assert to_binary(array) == struct.pack("<2i", 1, 2)


def test_decoded_numeric_tensor_is_aligned_after_an_odd_header() -> None:
    # A JSON header of odd length leaves the data unaligned: the codec hands over an aligned array.
    body, length = binary_body([("x", "FP64", [3], struct.pack("<3d", 1, 2, 3))], id="abc")
    body, length = b" " + body, length + 1  # leading whitespace is valid JSON
    [t] = decode_request(body, length).inputs
    assert t.array.flags.aligned and t.array.tolist() == [1.0, 2.0, 3.0]


# --- several tensors, mixed JSON and binary ---------------------------------------------------


def test_binary_and_json_inputs_mix_in_order() -> None:
    a = struct.pack("<4f", 1, 2, 3, 4)
    c = raw("BYTES", ["p", "q"])
    header = {
        "id": "req-7",
        "unknown_top_level": {"ignored": True},
        "inputs": [
            {
                "name": "a",
                "datatype": "FP32",
                "shape": [2, 2],
                "parameters": {"binary_data_size": 16},
            },
            {"name": "b", "datatype": "INT64", "shape": [2], "data": [[5], [6]]},
            {
                "name": "c",
                "datatype": "BYTES",
                "shape": [2],
                "parameters": {"binary_data_size": len(c)},
            },
        ],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}],
    }
    head = json.dumps(header).encode()
    req = decode_request(head + a + c, len(head))
    assert [t.name for t in req.inputs] == ["a", "b", "c"]
    assert req.inputs[0].array.tolist() == [[1, 2], [3, 4]]
    assert req.inputs[1].array.tolist() == [5, 6]
    assert req.inputs[2].array.tolist() == ["p", "q"]
    assert req.id == "req-7"
    assert req.outputs == ["y", "z"]
    assert req.wants_binary("y") and not req.wants_binary("z")


def test_binary_data_output_makes_every_output_binary_unless_it_says_otherwise() -> None:
    doc = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "a"}, {"name": "b", "parameters": {"binary_data": False}}],
    }
    req = decode_request(json.dumps(doc))
    assert req.wants_binary("a") and not req.wants_binary("b")
    assert req.parameters == {"binary_data_output": True}


# --- responses --------------------------------------------------------------------------------


def test_binary_response_puts_binary_outputs_after_the_header_in_order() -> None:
    outputs = {
        "probabilities": np.array([[0.25, 0.75]], dtype=np.float32),
        "label": np.array(["versicolor"], dtype=object),
        "count": np.array([3], dtype=np.int64),
    }
    request = InferRequest(
        inputs=[], id="r1", binary_data_output=True, binary_outputs={"count": False}
    )

    body, length = encode_infer_response("iris", 2, outputs, request)

    assert length is not None
    header = json.loads(body[:length])
    assert (header["model_name"], header["model_version"], header["id"]) == ("iris", "2", "r1")
    probs, label, count = header["outputs"]
    assert probs == {
        "name": "probabilities",
        "datatype": "FP32",
        "shape": [1, 2],
        "parameters": {"binary_data_size": 8},
    }
    assert label["parameters"] == {"binary_data_size": 4 + len("versicolor")}
    assert count == {"name": "count", "datatype": "INT64", "shape": [1], "data": [3]}
    assert body[length:] == struct.pack("<2f", 0.25, 0.75) + raw("BYTES", ["versicolor"])


def test_json_response_has_no_header_length_and_flat_data() -> None:
    request = InferRequest(inputs=[])
    body, length = encode_infer_response(
        "m", 1, {"y": np.arange(6, dtype=np.int32).reshape(2, 3)}, request
    )
    assert length is None
    doc = json.loads(body)
    assert doc["outputs"] == [
        {"name": "y", "datatype": "INT32", "shape": [2, 3], "data": [0, 1, 2, 3, 4, 5]}
    ]
    assert "id" not in doc


# --- bad binary bodies: 400 with a message that says what is wrong -----------------------------


def test_bytes_with_a_truncated_length_prefix_is_a_protocol_error() -> None:
    data = raw("BYTES", ["ab"]) + b"\x05\x00"  # a second element's prefix, cut after 2 of 4 bytes
    body, length = binary_body([("x", "BYTES", [2], data)])
    with pytest.raises(ProtocolError, match="BYTES element 1 has a truncated length prefix") as e:
        decode_request(body, length)
    assert e.value.status == 400


def test_bytes_element_longer_than_the_data_is_a_protocol_error() -> None:
    data = struct.pack("<I", 10) + b"abc"
    body, length = binary_body([("x", "BYTES", [1], data)])
    with pytest.raises(ProtocolError, match="declares 10 bytes but only 3 remain"):
        decode_request(body, length)


def test_bytes_element_count_mismatch_is_a_protocol_error() -> None:
    body, length = binary_body([("x", "BYTES", [3], raw("BYTES", ["a", "b"]))])
    with pytest.raises(
        ProtocolError, match=r"shape \[3\] needs 3 elements but its binary data has 2"
    ):
        decode_request(body, length)


def test_bytes_that_are_not_utf8_are_a_protocol_error() -> None:
    body, length = binary_body([("x", "BYTES", [1], raw("BYTES", [b"\xff\xfe"]))])
    with pytest.raises(ProtocolError, match="not UTF-8"):
        decode_request(body, length)


@pytest.mark.parametrize(
    "datatype, shape, data, message",
    [
        (
            "FP32",
            [2, 2],
            struct.pack("<3f", 1, 2, 3),
            r"needs 16 bytes \(4 x 4\) but binary_data_size is 12",
        ),
        (
            "INT64",
            [1],
            struct.pack("<2q", 1, 2),
            r"needs 8 bytes \(1 x 8\) but binary_data_size is 16",
        ),
        ("BOOL", [2], b"\x01", r"needs 2 bytes"),
    ],
)
def test_binary_size_that_does_not_fit_the_shape_is_a_protocol_error(
    datatype: str, shape: list[int], data: bytes, message: str
) -> None:
    body, length = binary_body([("x", datatype, shape, data)])
    with pytest.raises(ProtocolError, match=message):
        decode_request(body, length)


def test_bool_bytes_other_than_0_or_1_are_a_protocol_error() -> None:
    body, length = binary_body([("x", "BOOL", [2], b"\x01\x02")])
    with pytest.raises(ProtocolError, match="BOOL bytes must be 0 or 1"):
        decode_request(body, length)


def test_binary_data_size_past_the_end_is_a_protocol_error() -> None:
    body, length = binary_body([("x", "FP32", [2], struct.pack("<2f", 1, 2))])
    with pytest.raises(ProtocolError, match="runs past the end of the body"):
        decode_request(body[:-1], length)


def test_bytes_left_over_after_the_inputs_are_a_protocol_error() -> None:
    body, length = binary_body([("x", "FP32", [1], struct.pack("<f", 1))])
    with pytest.raises(ProtocolError, match="4 bytes of binary data that no input"):
        decode_request(body + b"\x00" * 4, length)


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "999999"])
def test_bad_header_length_is_a_protocol_error(value: str) -> None:
    body, _ = binary_body([("x", "FP32", [1], struct.pack("<f", 1))])
    with pytest.raises(ProtocolError, match="Inference-Header-Content-Length"):
        decode_request(body, value)


def test_binary_data_size_without_the_header_length_is_a_protocol_error() -> None:
    body, length = binary_body([("x", "FP32", [1], struct.pack("<f", 1))])
    with pytest.raises(ProtocolError, match="Inference-Header-Content-Length"):
        decode_request(body)  # the binary tail makes it invalid JSON: the hint says why
    with pytest.raises(ProtocolError, match="needs the Inference-Header-Content-Length header"):
        decode_request(body[:length])


def test_data_and_binary_data_size_together_are_a_protocol_error() -> None:
    doc = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [1],
                "data": [1],
                "parameters": {"binary_data_size": 4},
            }
        ]
    }
    head = json.dumps(doc).encode()
    with pytest.raises(ProtocolError, match=r"both 'data' and parameters\.binary_data_size"):
        decode_request(head + struct.pack("<f", 1), len(head))


@pytest.mark.parametrize("size", [-4, "4", 1.5, True])
def test_invalid_binary_data_size_is_a_protocol_error(size: Any) -> None:
    doc = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [1],
                "parameters": {"binary_data_size": size},
            }
        ]
    }
    head = json.dumps(doc).encode()
    with pytest.raises(ProtocolError, match=r"input 'x': parameters.binary_data_size"):
        decode_request(head + b"\x00" * 4, len(head))


@pytest.mark.parametrize("flag", ["yes", 1, [True]])
def test_invalid_binary_flags_are_protocol_errors(flag: Any) -> None:
    base = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}
    with pytest.raises(ProtocolError, match="binary_data_output"):
        decode_request(json.dumps({**base, "parameters": {"binary_data_output": flag}}))
    with pytest.raises(ProtocolError, match=r"outputs\[0\].parameters.binary_data"):
        decode_request(
            json.dumps({**base, "outputs": [{"name": "y", "parameters": {"binary_data": flag}}]})
        )
