"""The Open Inference Protocol v2 wire schema (REST, with Triton's binary tensor extension).

These pydantic models are the schema: maas.serving.oip validates every request against it (directly,
or through a check that accepts only what this schema accepts, see maas.serving.oip._plainly_valid),
they word its error messages, and the OpenAPI document (maas_devkit.openapi) is generated from
them. They live apart from the codec so that a cold inference function answers a well-formed
request without importing pydantic (bench/coldstart.py: its import costs about half of
onnxruntime's).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    WithJsonSchema,
)

Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]
Dim = Annotated[StrictInt, Field(ge=0)]
Size = Annotated[StrictInt, Field(ge=0)]
_SCALAR = {"anyOf": [{"type": "number"}, {"type": "boolean"}, {"type": "string"}, {"type": "null"}]}
# Validated as Any (numpy checks the elements against the datatype, fast); documented as
# what it is: a flat or nested array of numbers, booleans or strings.
TensorData = Annotated[
    Any,
    WithJsonSchema(
        {
            "description": "Tensor elements in row-major order, flat or nested to the shape; "
            "numbers, true/false for BOOL, UTF-8 strings for BYTES; null for a missing value "
            "(table models impute it; other models refuse it).",
            "type": "array",
            "items": {"anyOf": [_SCALAR, {"type": "array", "items": {}}]},
        }
    ),
]


class _Wire(BaseModel):
    # Unknown keys are ignored, as the protocol asks of servers.
    model_config = ConfigDict(extra="ignore")


class InputParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    binary_data_size: Size | None = Field(
        default=None,
        description="Binary tensor extension: this input's data is this many bytes of the "
        "body after the JSON header (and it has no 'data').",
    )


class OutputParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    binary_data: StrictBool | None = Field(
        default=None, description="Return this output as binary tensor data."
    )


class RequestParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    binary_data_output: StrictBool | None = Field(
        default=None,
        description="Return every output as binary tensor data unless the output says otherwise.",
    )


class RequestInput(_Wire):
    name: Annotated[StrictStr, Field(min_length=1)]
    shape: list[Dim]
    datatype: Datatype
    parameters: InputParameters | None = None
    data: TensorData = None


class RequestOutput(_Wire):
    name: StrictStr
    parameters: OutputParameters | None = None


class InferenceRequest(_Wire):
    """POST /v2/models/{model}[/versions/{version}]/infer (the JSON part of a binary request)."""

    id: StrictStr | None = None
    parameters: RequestParameters | None = None
    inputs: Annotated[list[RequestInput], Field(min_length=1)]
    outputs: list[RequestOutput] | None = None


class ResponseOutputParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    binary_data_size: Size | None = None


class ResponseOutput(_Wire):
    name: str
    datatype: Datatype
    shape: list[Dim]
    parameters: ResponseOutputParameters | None = None
    data: TensorData = Field(default=None, description="Absent for binary outputs.")


class InferenceResponse(_Wire):
    model_name: str
    model_version: str | None = Field(
        default=None, description="The version that answered (prod or the canary)."
    )
    id: str | None = Field(default=None, description="The request's id, echoed.")
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class MetadataTensor(_Wire):
    name: str
    datatype: Datatype
    shape: list[int] = Field(description="-1 for a dimension of any size.")
    parameters: dict[str, Any] | None = Field(
        default=None,
        description="Table models: the column's role (numeric, boolean, categorical, "
        "datetime, text), one input per column.",
    )


class ModelMetadataResponse(_Wire):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ServerMetadataResponse(_Wire):
    name: str
    version: str
    extensions: list[str]


class ServerLiveResponse(_Wire):
    live: bool


class ServerReadyResponse(_Wire):
    ready: bool


class ModelReadyResponse(_Wire):
    name: str
    version: str
    ready: bool


class ErrorResponse(_Wire):
    error: str
