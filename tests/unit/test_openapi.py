"""docs/openapi.json: generated from the wire models; the same routes as handlers and template."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from maas.serving.http import Router
from maas_devkit import openapi
from maas_devkit.cfn import load_template
from maas_devkit.lambda_runtime import load_handler
from maas_devkit.repo import TEMPLATE

pytestmark = pytest.mark.usefixtures("no_network")


def _document_routes(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}


def _handler_routes(function: str) -> set[tuple[str, str]]:
    handler = load_handler(function)
    if isinstance(handler.app, Router):  # the inference function's (maas.serving.http)
        pairs = [(method, path) for method, path, *_ in handler.app.routes]
    else:  # Powertools keeps what @app.get/@app.post registered
        routes = handler.app._static_routes + handler.app._dynamic_routes
        pairs = [(route.method, route.path) for route in routes]
    # Both say <param> where the template says {param}.
    return {(method, re.sub(r"<(\w+)>", r"{\1}", path)) for method, path in pairs}


def _template_routes(function: str) -> set[tuple[str, str]]:
    events = load_template(TEMPLATE)["Resources"][function]["Properties"]["Events"]
    return {(e["Properties"]["Method"].upper(), e["Properties"]["Path"]) for e in events.values()}


def test_committed_document_is_what_the_generator_makes() -> None:
    assert openapi.DOC_PATH.read_text() == openapi.render(), "stale: run `make openapi`"


def test_document_routes_are_the_handlers_routes() -> None:
    doc = json.loads(openapi.DOC_PATH.read_text())
    handlers = _handler_routes("inference") | _handler_routes("admin")
    assert _document_routes(doc) == handlers


def test_document_routes_are_the_templates_routes() -> None:
    doc = json.loads(openapi.DOC_PATH.read_text())
    tpl = load_template(TEMPLATE)
    body = tpl["Resources"]["InferenceApi"]["Properties"]["DefinitionBody"]["paths"]
    template = _template_routes("InferenceFunction") | _template_routes("AdminFunction")
    assert _document_routes(doc) == template
    assert _document_routes({"paths": body}) == template


def test_admin_operations_require_sigv4_and_inference_ones_follow_the_parameter() -> None:
    doc = openapi.build()
    for path, ops in doc["paths"].items():
        for op in ops.values():
            if path.startswith("/admin/"):
                assert op["security"] == [{"sigv4": []}], path
            else:
                assert op["security"] == [{}, {"sigv4": []}, {"jwt": []}], path


def test_infer_operations_document_json_and_binary_bodies() -> None:
    doc = openapi.build()
    for path in ("/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer"):
        op = doc["paths"][path]["post"]
        content = op["requestBody"]["content"]
        assert content["application/json"]["schema"] == {
            "$ref": "#/components/schemas/InferenceRequest"
        }
        assert content["application/octet-stream"]["schema"]["format"] == "binary"
        assert any(p["name"] == openapi.HEADER for p in op["parameters"])
        assert set(op["responses"]) == {"200", "400", "404", "413", "503"}
    schemas = doc["components"]["schemas"]
    datatypes = schemas["RequestInput"]["properties"]["datatype"]["enum"]
    assert datatypes == [
        "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
        "FP16", "FP32", "FP64", "BYTES",
    ]  # fmt: skip
    binary_size = schemas["InputParameters"]["properties"]["binary_data_size"]
    assert binary_size["anyOf"][0] == {"minimum": 0, "type": "integer"}


def test_every_schema_reference_resolves() -> None:
    doc = openapi.build()
    text = json.dumps(doc)
    refs = set(re.findall(r'"\$ref": "#/components/schemas/(\w+)"', text))
    assert refs and refs <= set(doc["components"]["schemas"])


def test_check_mode_reports_a_stale_document(tmp_path: Any) -> None:
    stale = tmp_path / "openapi.json"
    stale.write_text("{}\n")
    assert openapi.main(["--check", "--out", str(stale)]) == 1
    assert openapi.main(["--out", str(stale)]) == 0
    assert openapi.main(["--check", "--out", str(stale)]) == 0
