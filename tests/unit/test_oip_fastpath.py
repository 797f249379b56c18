"""The codec's fast path accepts only what the pydantic wire schema accepts, and decodes alike.

maas.serving.oip uses a well-formed request as parsed (no pydantic import on a cold start) and sends
everything else through maas.serving.oipschema. These tests mutate real requests at random and check
that the shortcut never says yes where the schema says no, and that both roads give the same
request (or the same error).
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import numpy as np
import pytest
from maas.serving import oip
from maas.serving.oipschema import InferenceRequest
from pydantic import ValidationError

pytestmark = pytest.mark.usefixtures("no_network")

SEEDS = [
    {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
    {
        "id": "r1",
        "parameters": {"binary_data_output": True, "trace": "x"},
        "inputs": [
            {"name": "a", "shape": [2], "datatype": "INT64", "data": [1, 2]},
            {"name": "b", "shape": [2], "datatype": "BYTES", "data": ["x", "y"]},
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": False}}, {"name": "l"}],
    },
    {"inputs": [{"name": "t", "shape": [1], "datatype": "BOOL", "data": [True], "extra": 1}]},
]
ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    3,
    2.5,
    "",
    "x",
    "FP32",
    [],
    [1],
    [-1],
    [True],
    [1.0],
    ["1"],
    {},
    {"binary_data_size": 4},
    {"binary_data_size": -1},
    {"binary_data_size": True},
    {"binary_data": "yes"},
    {"binary_data_output": 1},
    {"nested": {"a": None}},
    [{"name": "o"}],
    [{"name": 1}],
    [{}],
]


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(doc: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        paths = _paths(doc)[1:]
        if not paths:
            doc["inputs"] = rng.choice(ODD_VALUES)
            continue
        path = rng.choice(paths)
        parent: Any = doc
        for step in path[:-1]:
            parent = parent[step]
        action = rng.random()
        if action < 0.2 and isinstance(parent, dict):
            del parent[path[-1]]
        elif action < 0.3 and isinstance(parent, dict):
            parent[rng.choice(["name", "shape", "datatype", "parameters", "id", "zz"])] = (
                rng.choice(ODD_VALUES)
            )
        else:
            parent[path[-1]] = copy.deepcopy(rng.choice(ODD_VALUES))
    return doc


def _schema_accepts(doc: Any) -> bool:
    try:
        InferenceRequest.model_validate(doc)
    except ValidationError:
        return False
    return True


def _decode(doc: dict[str, Any], *, fast: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(oip, "_plainly_valid", lambda doc: False)
        try:
            req = oip.decode_request(json.dumps(doc))
        except oip.ProtocolError as e:
            return ("error", str(e))
    return (
        "ok",
        [(t.name, t.datatype, t.shape, t.array.dtype.str, t.array.tolist()) for t in req.inputs],
        req.id,
        req.outputs,
        req.parameters,
        req.binary_data_output,
        req.binary_outputs,
    )


def test_fast_path_never_accepts_what_the_schema_refuses() -> None:
    rng = random.Random(5)
    accepted = refused = 0
    for i in range(3000):
        doc = _mutate(SEEDS[i % len(SEEDS)], rng)
        if oip._plainly_valid(doc):
            assert _schema_accepts(doc), doc
            accepted += 1
        else:
            refused += 1
    assert accepted > 100 and refused > 100  # both sides were exercised


def test_fast_and_schema_paths_decode_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(11)
    for i in range(1500):
        doc = _mutate(SEEDS[i % len(SEEDS)], rng) if i % 4 else SEEDS[i % len(SEEDS)]
        assert _decode(doc, fast=True, monkeypatch=monkeypatch) == _decode(
            doc, fast=False, monkeypatch=monkeypatch
        ), doc


def test_well_formed_requests_take_the_fast_path() -> None:
    for doc in SEEDS:
        assert oip._plainly_valid(doc)


def test_surrogate_escapes_are_left_to_the_reference_parser() -> None:
    # A lone surrogate: the standard library would accept it; the reference parser refuses it.
    body = '{"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["\\ud800"]}]}'
    with pytest.raises(oip.ProtocolError, match="not valid JSON"):
        oip.decode_request(body)
    # A proper pair (what json.dumps writes for an emoji) decodes.
    pair = json.dumps(
        {"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["😀"]}]}
    )
    assert "\\ud83d" in pair
    [t] = oip.decode_request(pair).inputs
    assert t.array.tolist() == ["😀"]


def test_response_json_keeps_text_as_utf8() -> None:
    req = oip.decode_request(json.dumps(SEEDS[0]))
    payload, length = oip.encode_infer_response(
        "m", 1, {"label": np.array(["é"], dtype=object)}, req
    )
    assert length is None
    assert json.loads(payload)["outputs"][0]["data"] == ["é"]
    assert "é".encode() in payload


def test_large_bodies_decode_and_encode_as_small_ones_do() -> None:
    # GIVEN a request above the size where the codec switches to pydantic-core's JSON
    rows = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [64, 64], "datatype": "FP32", "data": rows.tolist()}]}
    )
    assert len(body) > oip.LARGE_JSON_BYTES
    # WHEN decoded, and its data encoded back inline
    [t] = oip.decode_request(body).inputs
    req = oip.decode_request(json.dumps(SEEDS[0]))
    payload, _ = oip.encode_infer_response("m", 1, {"y": t.array}, req)
    # THEN the values are the standard library's, both ways
    np.testing.assert_array_equal(t.array, rows)
    assert t.array.size > oip.LARGE_JSON_ELEMENTS
    out = json.loads(payload)["outputs"][0]
    np.testing.assert_array_equal(np.asarray(out["data"], np.float32).reshape(64, 64), rows)
