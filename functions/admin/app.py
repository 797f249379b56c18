"""AdminFunction: model management over the HTTP API (/admin/...), IAM-authorized.

API Gateway lets only SigV4-signed requests through (AWS_IAM on every /admin route; the local
stack applies the same check); the caller's ARN, from the authorizer context, is the actor in
the registry's audit trail.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError
from maas.admin import service as admin
from maas.core.registry import Conflict, NotFound, Registry
from pydantic import BaseModel, ValidationError

logger = Logger()
tracer = Tracer()
app = APIGatewayHttpResolver()
_registry: Registry | None = None


class Forbidden(PermissionError):
    pass


def registry() -> Registry:
    global _registry
    if _registry is None:
        from maas.core.config import AdminSettings

        _registry = Registry(AdminSettings.from_env().registry_table)
    return _registry


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(status_code=status, content_type="application/json", body=json.dumps(body))


def _ok(model: BaseModel) -> Response:
    return Response(200, "application/json", model.model_dump_json())


def _caller() -> str:
    """The IAM identity API Gateway verified; none means the route was left unauthorized."""
    context = app.current_event.raw_event.get("requestContext") or {}
    iam = (context.get("authorizer") or {}).get("iam") or {}
    arn = iam.get("userArn") or iam.get("callerId")
    if not arn:
        raise Forbidden("admin routes need an IAM (SigV4-signed) caller")
    return str(arn)


def _body(model: type[admin._Body]) -> Any:
    raw = app.current_event.decoded_body or "{}"
    return model.model_validate_json(raw)


@app.get("/admin/models")
def list_models() -> Response:
    _caller()
    return _ok(admin.list_models(registry()))


@app.get("/admin/models/<model>/versions")
def list_versions(model: str) -> Response:
    _caller()
    return _ok(admin.list_versions(registry(), model))


@app.get("/admin/models/<model>/audit")
def audit(model: str) -> Response:
    _caller()
    return _ok(admin.audit_log(registry(), model))


@app.post("/admin/models/<model>/promote")
def promote(model: str) -> Response:
    actor = _caller()
    return _ok(admin.promote(registry(), model, _body(admin.PromoteRequest), actor))


@app.post("/admin/models/<model>/canary")
def canary(model: str) -> Response:
    actor = _caller()
    return _ok(admin.set_canary(registry(), model, _body(admin.CanaryRequest), actor))


@app.post("/admin/models/<model>/rollback")
def rollback(model: str) -> Response:
    actor = _caller()
    return _ok(admin.rollback(registry(), model, _body(admin.RollbackRequest), actor))


@app.exception_handler(Forbidden)
def _forbidden(e: Forbidden) -> Response:
    return _json(403, {"error": str(e)})


@app.exception_handler(ValidationError)
def _invalid(e: ValidationError) -> Response:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors()
    )
    return _json(400, {"error": f"invalid request body: {problems}"})


@app.exception_handler(ValueError)
def _bad_request(e: ValueError) -> Response:
    return _json(400, {"error": str(e)})


@app.exception_handler([NotFound, admin.UnknownModel])
def _not_found(e: Exception) -> Response:
    return _json(404, {"error": str(e)})


@app.exception_handler(Conflict)
def _conflict(e: Conflict) -> Response:
    return _json(409, {"error": str(e)})


@app.exception_handler([ClientError, BotoCoreError])
def _aws_unavailable(e: Exception) -> Response:
    logger.exception("registry unavailable")
    return _json(503, {"error": "registry unavailable, retry later"})


@app.exception_handler(Exception)
def _internal(e: Exception) -> Response:
    logger.exception("unhandled error")
    return _json(500, {"error": "internal error; see the function's logs"})


@app.not_found
def _no_route(_: Exception) -> Response:
    event = app.current_event
    return _json(404, {"error": f"no route for {event.request_context.http.method} {event.path}"})


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
