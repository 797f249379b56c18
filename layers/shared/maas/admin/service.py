"""Model management: list models and versions, promote, canary, roll back.

The one place the admin API (functions/admin) and the `maas` CLI's direct mode turn registry
rows into what people read, and their requests into conditional registry writes. The pydantic
models are the admin API's wire schema (and the OpenAPI document's).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from maas.core.registry import PROD, Alias, Registry, VersionRecord

Reason = Annotated[str, Field(max_length=500)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in an admin request is an error


class PromoteRequest(_Body):
    version: Annotated[StrictInt, Field(ge=1)]
    reason: Reason = "promoted through the admin API"


class CanaryRequest(_Body):
    version: Annotated[StrictInt, Field(ge=1)] | None = Field(
        default=None, description="The canary version; may be omitted when weight is 0."
    )
    weight: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        description="Fraction of unversioned requests the canary answers; 0 removes it."
    )
    reason: Reason = "canary set through the admin API"


class RollbackRequest(_Body):
    reason: Reason = "rolled back through the admin API"


class AliasInfo(BaseModel):
    model: str
    alias: str
    version: int
    canary_version: int | None
    canary_weight: float
    previous: list[int]
    updated_at: str
    updated_by: str
    reason: str


class ModelInfo(BaseModel):
    name: str
    prod: int | None
    canary_version: int | None
    canary_weight: float
    versions: int
    latest: int | None
    latest_status: str | None


class ModelList(BaseModel):
    models: list[ModelInfo]


class VersionInfo(BaseModel):
    version: int
    status: str
    role: Literal["prod", "canary"] | None = Field(
        description="What the prod alias uses this version for, if anything."
    )
    created_at: str
    updated_at: str
    reason: str
    recipe: str | None
    metrics: dict[str, Any] = Field(
        description="Served quality (accuracy, ...), latency_ms, sizes, from the optimizer; "
        "candidates: what each optimizer candidate measured (compression candidates included); "
        "model_candidates and selection: the model families a table's training compared."
    )


class VersionList(BaseModel):
    model: str
    prod: int | None
    canary_version: int | None
    canary_weight: float
    versions: list[VersionInfo]


class AuditEntry(BaseModel):
    at: str
    actor: str
    action: str
    detail: str


class AuditLog(BaseModel):
    model: str
    entries: list[AuditEntry]


class UnknownModel(LookupError):
    status = 404


def alias_info(alias: Alias) -> AliasInfo:
    return AliasInfo(
        model=alias.model,
        alias=alias.name,
        version=alias.version,
        canary_version=alias.canary_version,
        canary_weight=alias.canary_weight,
        previous=alias.previous,
        updated_at=alias.updated_at,
        updated_by=alias.updated_by,
        reason=alias.reason,
    )


def version_info(record: VersionRecord, alias: Alias | None) -> VersionInfo:
    s = record.summary
    role: Literal["prod", "canary"] | None = None
    if alias is not None and alias.version == record.version:
        role = "prod"
    elif alias is not None and alias.canary_version == record.version:
        role = "canary"
    metrics: dict[str, Any] = dict(s.get("served_quality") or {})
    keys = ("fp32_test_accuracy", "fp32_test_r2", "latency_ms", "size_bytes", "fp32_size_bytes")
    for key in (*keys, "plot", "task", "candidates", "model_candidates", "selection"):
        if s.get(key) is not None:
            metrics[key] = s[key]
    return VersionInfo(
        version=record.version,
        status=record.status,
        role=role,
        created_at=record.created_at,
        updated_at=record.updated_at,
        reason=record.reason,
        recipe=s.get("recipe"),
        metrics=metrics,
    )


def list_models(registry: Registry) -> ModelList:
    out = []
    for name in registry.list_models():
        alias = registry.get_alias(name, PROD)
        versions = registry.list_versions(name)
        latest = versions[-1] if versions else None
        out.append(
            ModelInfo(
                name=name,
                prod=alias.version if alias else None,
                canary_version=alias.canary_version if alias else None,
                canary_weight=alias.canary_weight if alias else 0.0,
                versions=len(versions),
                latest=latest.version if latest else None,
                latest_status=latest.status if latest else None,
            )
        )
    return ModelList(models=out)


def list_versions(registry: Registry, model: str) -> VersionList:
    versions = registry.list_versions(model)
    if not versions:
        raise UnknownModel(f"model {model!r} has no versions")
    alias = registry.get_alias(model, PROD)
    return VersionList(
        model=model,
        prod=alias.version if alias else None,
        canary_version=alias.canary_version if alias else None,
        canary_weight=alias.canary_weight if alias else 0.0,
        versions=[version_info(v, alias) for v in versions],
    )


def audit_log(registry: Registry, model: str) -> AuditLog:
    entries = registry.audit_log(model)
    if not entries and not registry.list_versions(model):
        raise UnknownModel(f"model {model!r} has no versions")
    return AuditLog(model=model, entries=[AuditEntry(**e) for e in entries])


def promote(registry: Registry, model: str, body: PromoteRequest, actor: str) -> AliasInfo:
    return alias_info(registry.promote(model, body.version, actor=actor, reason=body.reason))


def set_canary(registry: Registry, model: str, body: CanaryRequest, actor: str) -> AliasInfo:
    alias = registry.set_canary(model, body.version, body.weight, actor=actor, reason=body.reason)
    return alias_info(alias)


def rollback(registry: Registry, model: str, body: RollbackRequest, actor: str) -> AliasInfo:
    return alias_info(registry.rollback(model, actor=actor, reason=body.reason))
