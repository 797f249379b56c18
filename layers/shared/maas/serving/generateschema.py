"""The wire models of the text-generation routes, for the OpenAPI document (docs/openapi.json)
and the fuzzing that reads it. Serving parses these bodies with maas.serving.openaiwire (no
pydantic on the cold path); the models here say the same constraints."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    seed: int | None = Field(default=None, ge=0)
    repetition_penalty: float | None = Field(default=None, ge=0.01, le=10)
    stop: str | list[str] | None = Field(default=None, max_length=4)


class GenerateParameters(_Sampling):
    stream: Literal[False] | None = None


class GenerateRequest(BaseModel):
    """OIP generate extension: text in, parameters; greedy unless temperature says otherwise."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    text_input: str
    parameters: GenerateParameters | None = None


class TokenUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GenerateResponse(BaseModel):
    model_name: str
    model_version: str
    text_output: str
    finish_reason: Literal["stop", "length"]
    usage: TokenUsage


class CompletionRequest(_Sampling):
    model: str
    prompt: str | list[str]
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: Literal[1] | None = None
    stream: Literal[False] | None = None
    user: str | None = None


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatCompletionRequest(_Sampling):
    model: str
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: Literal[1] | None = None
    stream: Literal[False] | None = None
    user: str | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: TokenUsage


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: TokenUsage


class OpenAIModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class OpenAIModelList(BaseModel):
    object: Literal["list"]
    data: list[OpenAIModelCard]


class OpenAIError(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorResponse(BaseModel):
    """The OpenAI error shape of every /v1 route."""

    error: OpenAIError
