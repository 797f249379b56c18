"""The HTTP API's OpenAPI document: the OIP operations from their pydantic wire models, the
admin operations from the admin function's own Powertools resolver.

    python -m maas_devkit.openapi          # (re)write docs/openapi.json  (`make openapi`)
    python -m maas_devkit.openapi --check  # exit 1 when docs/openapi.json is stale

The OIP operations are listed below with maas.serving.oip's models (the inference function
routes without Powertools, for its cold start). The admin operations are what
functions/admin/app.py's APIGatewayHttpResolver(enable_validation=True) generates from its
typed routes (`get_openapi_schema()`), less the 422 Powertools documents: the function answers
a validation error 400, as every operation here does. tests/unit/test_openapi.py fails when the
committed document is stale, or when it, the handlers' routes and template.yaml's routes
disagree.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maas import __version__
from maas.serving import generateschema as gen
from maas.serving import oip
from maas.serving.api import GRPC_METHODS, GRPC_SERVICE
from maas.serving.http import ERRORS
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from maas_devkit.lambda_runtime import load_handler
from maas_devkit.repo import REPO

DOC_PATH = REPO / "docs" / "openapi.json"
HEADER = "Inference-Header-Content-Length"
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "sigv4": {
        "type": "apiKey",
        "name": "Authorization",
        "in": "header",
        "description": "AWS SigV4 (service execute-api): API Gateway AWS_IAM.",
    },
    "jwt": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "InferenceAuth=JWT: a token from JwtIssuer for JwtAudience.",
    },
}
# What Powertools adds for its own 422 answer, which the admin function does not give.
_POWERTOOLS_VALIDATION = ("HTTPValidationError", "ValidationError", "ResponseValidationError")


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    response: type[BaseModel] | None  # None: server-sent events only
    request: type[BaseModel] | None = None
    errors: tuple[int, ...] = (404,)
    error_model: type[BaseModel] = oip.ErrorResponse
    events: str = ""  # what a 200 text/event-stream carries, where the operation streams

    @property
    def binary(self) -> bool:
        return self.path.endswith("/infer")


_V = "/v2/models/{model}/versions/{version}"
OPENAI_EVENTS = (
    '"stream": true: one `data: {...}` chunk per piece of text (text_completion or '
    "chat.completion.chunk with a delta), a chunk with the finish_reason, with "
    "stream_options.include_usage a usage chunk, then `data: [DONE]`; an error after the "
    'start is a last `data: {"error": {...}}` event.'
)
OIP_EVENTS = (
    '`data: {"model_name", "model_version", "text_output"}` per piece of text, the last with '
    'finish_reason and usage; an error after the start is a last `data: {"error": "..."}`.'
)
OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/v2", "serverMetadata", "Server metadata", oip.ServerMetadataResponse,
              None, ()),
    Operation("GET", "/v2/health/live", "serverLive", "Server liveness", oip.ServerLiveResponse,
              None, ()),
    Operation("GET", "/v2/health/ready", "serverReady", "Server readiness",
              oip.ServerReadyResponse, None, ()),
    Operation(
        "GET", "/v2/models/{model}", "modelMetadata",
        "Model metadata (the prod version's tensors)", oip.ModelMetadataResponse, None, (404, 503),
    ),
    Operation(
        "GET", "/v2/models/{model}/ready", "modelReady",
        "Model readiness (prod)", oip.ModelReadyResponse, None, (404, 503),
    ),
    Operation(
        "POST", "/v2/models/{model}/infer", "modelInfer",
        "Inference on prod, or on the canary for its share of requests",
        oip.InferenceResponse, oip.InferenceRequest, (400, 404, 413, 503),
    ),
    Operation(
        "GET", _V, "modelVersionMetadata", "Metadata of one version",
        oip.ModelMetadataResponse, None, (404, 503),
    ),
    Operation(
        "GET", f"{_V}/ready", "modelVersionReady", "Readiness of one version",
        oip.ModelReadyResponse, None, (404, 503),
    ),
    Operation(
        "POST", f"{_V}/infer", "modelVersionInfer", "Inference on one version",
        oip.InferenceResponse, oip.InferenceRequest, (400, 404, 413, 503),
    ),
    Operation(
        "POST", "/v2/models/{model}/generate", "modelGenerate",
        "OIP generate extension (text generation, buffered) on prod or the canary",
        gen.GenerateResponse, gen.GenerateRequest, (400, 404, 503),
    ),
    Operation(
        "POST", f"{_V}/generate", "modelVersionGenerate", "OIP generate on one version",
        gen.GenerateResponse, gen.GenerateRequest, (400, 404, 503),
    ),
    Operation(
        "POST", "/v2/models/{model}/generate_stream", "modelGenerateStream",
        "OIP generate extension, streamed: server-sent events as the text is produced (here "
        "sent whole at the end; StreamingApiUrl streams them)",
        None, gen.GenerateStreamRequest, (400, 404, 503), events=OIP_EVENTS,
    ),
    Operation(
        "POST", f"{_V}/generate_stream", "modelVersionGenerateStream",
        "OIP generate_stream on one version", None, gen.GenerateStreamRequest, (400, 404, 503),
        events=OIP_EVENTS,
    ),
    Operation(
        "GET", "/v1/models", "openaiListModels", "OpenAI: the text-generation models in prod",
        gen.OpenAIModelList, None, (503,), gen.OpenAIErrorResponse,
    ),
    Operation(
        "POST", "/v1/completions", "openaiCompletions",
        "OpenAI completions (\"stream\": true: server-sent events)",
        gen.CompletionResponse, gen.CompletionRequest, (400, 404, 503), gen.OpenAIErrorResponse,
        OPENAI_EVENTS,
    ),
    Operation(
        "POST", "/v1/chat/completions", "openaiChatCompletions",
        "OpenAI chat completions, rendered with the model's chat template (\"stream\": true: "
        "server-sent events)",
        gen.ChatCompletionResponse, gen.ChatCompletionRequest, (400, 404, 503),
        gen.OpenAIErrorResponse, OPENAI_EVENTS,
    ),
)  # fmt: skip


# --- the OIP gRPC service over Connect and gRPC-Web (maas.serving.grpcweb) ------------------

# Connect's HTTP status per code, and what each means here (maas.serving.grpcweb.CONNECT_HTTP).
CONNECT_ERRORS = {
    400: "invalid_argument: malformed message (protobuf or JSON), or an inconsistent request",
    404: "not_found: no such model or version",
    429: "resource_exhausted: message above Lambda's 6 MB, batch above the configured maximum, "
    "or a BYTES element above 64 KiB",
    503: "unavailable: the model cannot serve now, or the model store cannot be reached",
}
_BINARY = {"type": "string", "format": "binary"}
CONNECT_ERROR_REF = {"$ref": "#/components/schemas/ConnectError"}


def _proto_json_schema(descriptor: Any) -> dict[str, Any]:
    """A message in protobuf's JSON mapping, as far as a schema can say what parsers accept.

    Field names in both spellings (lowerCamelCase and the .proto's), no other keys, and the
    types protobuf's parser holds to: strings, booleans, arrays, objects. Numbers and nested
    messages are left open (the parser takes numbers as strings too, floats as booleans).
    """
    from google.protobuf.descriptor import FieldDescriptor as F

    def scalar(field: Any) -> dict[str, Any]:
        if field.type in (F.TYPE_STRING, F.TYPE_BYTES):
            return {"type": "string"}
        if field.type == F.TYPE_BOOL:
            return {"type": "boolean"}
        return {}

    props: dict[str, Any] = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            schema: dict[str, Any] = {"type": "object"}
        elif field.is_repeated:
            schema = {"type": ["array", "null"], "items": scalar(field)}
        elif field.message_type is not None:
            schema = {}
        else:
            base = scalar(field)
            schema = {"type": [base["type"], "null"]} if base else {}
        for name in dict.fromkeys((field.json_name, field.name)):
            props[name] = schema
    return {
        "type": "object",
        "title": descriptor.full_name,
        "properties": props,
        "additionalProperties": False,
    }


def grpc_operations() -> dict[str, dict[str, Any]]:
    """`POST /inference.GRPCInferenceService/<Method>`: its messages, both protocols' bodies."""
    from maas.serving.grpcweb import METHODS

    paths: dict[str, dict[str, Any]] = {}
    for method in GRPC_METHODS:
        spec = METHODS[method]
        request, out = spec.request.DESCRIPTOR, spec.reply.DESCRIPTOR
        errors = {
            str(code): {
                "description": text,
                "content": {"application/json": {"schema": CONNECT_ERROR_REF}},
            }
            for code, text in CONNECT_ERRORS.items()
        }
        errors["415"] = {
            "description": "Not a Connect or gRPC-Web content type",
            "content": {"application/json": {"schema": _ref(oip.ErrorResponse)}},
        }
        paths[f"/{GRPC_SERVICE}/{method}"] = {
            "post": {
                "operationId": f"grpc{method}",
                "summary": f"{GRPC_SERVICE}/{method} (KServe grpc_predict_v2.proto), unary over "
                "Connect (application/proto, application/json) or gRPC-Web "
                "(application/grpc-web+proto: one length-prefixed frame; errors in grpc-status)",
                "tags": ["grpc"],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": _proto_json_schema(request)},
                        "application/proto": {"schema": _BINARY},
                        "application/grpc-web+proto": {"schema": _BINARY},
                    },
                },
                "responses": {
                    "200": {
                        "description": f"{out.full_name}; gRPC-Web: a message frame and a trailer "
                        "frame, or, on an error, grpc-status and grpc-message headers alone",
                        "content": {
                            "application/json": {"schema": _proto_json_response(out)},
                            "application/proto": {"schema": _BINARY},
                            "application/grpc-web+proto": {"schema": _BINARY},
                        },
                    },
                    **errors,
                },
                "security": [{}, {"sigv4": []}, {"jwt": []}],
            }
        }
    return paths


def _proto_json_response(descriptor: Any) -> dict[str, Any]:
    """What the function writes: lowerCamelCase names only (protobuf's JSON printer)."""
    schema = _proto_json_schema(descriptor)
    names = {f.json_name for f in descriptor.fields}
    schema["properties"] = {k: v for k, v in schema["properties"].items() if k in names}
    return schema


CONNECT_ERROR_SCHEMA = {
    "type": "object",
    "title": "ConnectError",
    "description": "The Connect protocol's error body",
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
    "required": ["code", "message"],
}


def admin_document() -> dict[str, Any]:
    """The admin function's operations and schemas, as its resolver documents them."""
    from aws_lambda_powertools.event_handler.openapi.models import APIKey

    handler = load_handler("admin")
    doc: dict[str, Any] = json.loads(
        handler.app.get_openapi_json_schema(
            security_schemes={"sigv4": APIKey.model_validate(SECURITY_SCHEMES["sigv4"])}
        )
    )
    for ops in doc["paths"].values():
        for op in ops.values():
            op["responses"].pop("422", None)
    schemas = doc.get("components", {}).get("schemas", {})
    for name in _POWERTOOLS_VALIDATION:
        schemas.pop(name, None)
    return doc


def _schemas() -> dict[str, Any]:
    models: list[type[BaseModel]] = [oip.ErrorResponse]
    for op in OPERATIONS:
        models.extend(m for m in (op.response, op.request, op.error_model) if m is not None)
    unique = list(dict.fromkeys(models))
    _, doc = models_json_schema(
        [(m, "validation") for m in unique], ref_template="#/components/schemas/{model}"
    )
    return dict(doc["$defs"])


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _name(model: type[BaseModel] | None) -> str:
    return model.__name__ if model is not None else ""


def _operation(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": ["inference"],
    }
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in ("model", "version")
        if "{" + name + "}" in op.path
    ]
    if op.binary:
        params.append(
            {
                "name": HEADER,
                "in": "header",
                "required": False,
                "description": "Binary tensor extension: the length of the JSON header that "
                "starts the body; the input tensors follow it.",
                "schema": {"type": "integer", "minimum": 0},
            }
        )
    if params:
        out["parameters"] = params
    if op.request is not None:
        content: dict[str, Any] = {"application/json": {"schema": _ref(op.request)}}
        if op.binary:
            content["application/octet-stream"] = {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": f"An {op.request.__name__} JSON header of {HEADER} bytes, "
                    "then each input with parameters.binary_data_size, back to back: "
                    "little-endian, BOOL one byte, BYTES as a 4-byte length + bytes each.",
                }
            }
        out["requestBody"] = {"required": True, "content": content}
    ok: dict[str, Any] = {"description": "OK", "content": {}}
    if op.response is not None:
        ok["content"]["application/json"] = {"schema": _ref(op.response)}
    if op.events:
        ok["content"]["text/event-stream"] = {
            "schema": {"type": "string", "description": op.events}
        }
    if op.binary:
        ok["content"]["application/octet-stream"] = {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": f"Some outputs binary: an {_name(op.response)} JSON header of "
                f"{HEADER} bytes, then those outputs' data in order.",
            }
        }
        ok["headers"] = {
            HEADER: {
                "description": "Present when some outputs are binary: the JSON header's length.",
                "schema": {"type": "integer"},
            }
        }
    responses: dict[str, Any] = {"200": ok}
    for code in op.errors:
        responses[str(code)] = {
            "description": ERRORS[code],
            "content": {"application/json": {"schema": _ref(op.error_model)}},
        }
    out["responses"] = responses
    # What the stack's InferenceAuth parameter chose (admin operations are always IAM).
    out["security"] = [{}, {"sigv4": []}, {"jwt": []}]
    return out


def build() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    paths.update(grpc_operations())
    admin = admin_document()
    paths.update(admin["paths"])
    schemas = _schemas()
    schemas["ConnectError"] = CONNECT_ERROR_SCHEMA
    for name, schema in admin["components"]["schemas"].items():
        schemas.setdefault(name, schema)  # ErrorResponse: the one the OIP models define
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "serverless-maas",
            "version": __version__,
            "description": "Open Inference Protocol v2 (REST, with the binary tensor data "
            "extension) under /v2, model management under /admin. Generated by "
            "infra/maas_devkit/openapi.py (`make openapi`) from the pydantic models the "
            "handlers validate with (the admin function's Powertools resolver for /admin); "
            "do not edit by hand.",
        },
        "servers": [
            {
                "url": "https://{apiId}.execute-api.{region}.amazonaws.com",
                "variables": {"apiId": {"default": "abc123"}, "region": {"default": "us-east-1"}},
            },
            {"url": "http://127.0.0.1:8080", "description": "the local stack (maas local up)"},
        ],
        "tags": [
            {"name": "inference", "description": "Open Inference Protocol v2"},
            {
                "name": "grpc",
                "description": "The Open Inference Protocol's gRPC service over Connect and "
                "gRPC-Web (native gRPC over HTTP/2 cannot reach Lambda)",
            },
            {"name": "admin", "description": "Model management, IAM (SigV4) only"},
        ],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m maas_devkit.openapi", description=__doc__)
    p.add_argument("--check", action="store_true", help="exit 1 if the document is stale")
    p.add_argument("--out", type=Path, default=DOC_PATH)
    args = p.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run `make openapi`", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
