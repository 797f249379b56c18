"""AdminFunction: model management over the HTTP API (/admin/...), IAM-authorized.

API Gateway lets only SigV4-signed requests through (AWS_IAM on every /admin route; the local
stack applies the same check); the caller's ARN, from the authorizer context, is the actor in
the registry's audit trail. Powertools validates the path, the body and the response against
the typed route signatures (enable_validation), and the same signatures give the operations of
docs/openapi.json (`app.get_openapi_schema()`, read by infra/maas_devkit/openapi.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from aws_lambda_powertools.event_handler.openapi.params import Body
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError
from maas.admin import service as admin
from maas.core.config import AdminSettings
from maas.core.registry import Conflict, NotFound, Registry
from maas.serving.http import ERRORS, error_body, error_response
from maas.serving.oipschema import ErrorResponse

logger = Logger()
tracer = Tracer()
app = APIGatewayHttpResolver(enable_validation=True)
_registry: Registry | None = None
NO_CALLER = "admin routes need an IAM (SigV4-signed) caller"
NO_BODY = admin.RollbackRequest()  # a rollback needs no body: every field has its default


def registry() -> Registry:
    global _registry
    if _registry is None:
        _registry = Registry(AdminSettings.from_env().registry_table)
    return _registry


def _doc(operation_id: str, summary: str, *errors: int) -> dict[str, Any]:
    """What docs/openapi.json says of a route beside its signature: always IAM (SigV4)."""
    content = {"application/json": {"model": ErrorResponse}}
    responses: dict[int, Any] = {200: {"description": "OK"}}  # its content: the return type
    responses.update({code: {"description": ERRORS[code], "content": content} for code in errors})
    return {
        "operation_id": operation_id,
        "summary": summary,
        "tags": ["admin"],
        "security": [{"sigv4": []}],
        "responses": responses,
    }


def _error(status: int, message: str) -> Response:
    return Response(status_code=status, content_type="application/json", body=error_body(message))


def caller_arn(event: dict[str, Any]) -> str | None:
    """The IAM identity API Gateway verified; none means the route was left unauthorized."""
    iam = ((event.get("requestContext") or {}).get("authorizer") or {}).get("iam") or {}
    arn = iam.get("userArn") or iam.get("callerId")
    return str(arn) if arn else None


def _actor() -> str:
    arn = caller_arn(app.current_event.raw_event)
    if arn is None:  # lambda_handler refuses such events before routing
        raise RuntimeError("no IAM caller")
    return arn


@app.get(
    "/admin/models",
    **_doc("listModels", "Models with their prod and canary versions", 403),
)
def list_models() -> admin.ModelList:
    return admin.list_models(registry())


@app.get(
    "/admin/models/<model>/versions",
    **_doc("listVersions", "A model's versions with status and metrics", 403, 404),
)
def list_versions(model: str) -> admin.VersionList:
    return admin.list_versions(registry(), model)


@app.get(
    "/admin/models/<model>/audit",
    **_doc("auditLog", "Who changed the model's aliases and versions, when and why", 403, 404),
)
def audit(model: str) -> admin.AuditLog:
    return admin.audit_log(registry(), model)


@app.post(
    "/admin/models/<model>/promote",
    **_doc(
        "promote", "Point prod at a READY version (conditional write, audited)", 400, 403, 404, 409
    ),
)
def promote(model: str, body: Annotated[admin.PromoteRequest, Body()]) -> admin.AliasInfo:
    return admin.promote(registry(), model, body, _actor())


@app.post(
    "/admin/models/<model>/canary",
    **_doc(
        "setCanary",
        "Send a fraction of unversioned requests to a READY version; weight 0 removes it",
        400,
        403,
        404,
        409,
    ),
)
def canary(model: str, body: Annotated[admin.CanaryRequest, Body()]) -> admin.AliasInfo:
    return admin.set_canary(registry(), model, body, _actor())


@app.post(
    "/admin/models/<model>/rollback",
    **_doc(
        "rollback",
        "Undo the latest deployment: an active canary, else the last promotion",
        400,
        403,
        404,
        409,
    ),
)
def rollback(
    model: str, body: Annotated[admin.RollbackRequest, Body()] = NO_BODY
) -> admin.AliasInfo:
    return admin.rollback(registry(), model, body, _actor())


@app.exception_handler([RequestValidationError, RequestUnsupportedContentType])
def _invalid(e: RequestValidationError | RequestUnsupportedContentType) -> Response:
    """Powertools answers 422; this API says 400, with its error shape and what was wrong."""
    errors = list(e.errors())
    if any(tuple(err.get("loc") or ())[:1] == ("response",) for err in errors):
        # Powertools reports a route's answer that fails its model the same way: our bug.
        logger.error("response failed its model", extra={"errors": str(errors)})
        return _error(500, "internal error; see the function's logs")
    return _error(400, f"invalid request body: {'; '.join(map(_problem, errors))}")


def _problem(err: dict[str, Any]) -> str:
    loc = [str(p) for p in err.get("loc") or ()]
    if err.get("type") == "json_invalid":
        return f"not JSON ({(err.get('ctx') or {}).get('error', err['msg'])})"
    where = ".".join(loc[1:]) if loc[:1] == ["body"] and len(loc) > 1 else ".".join(loc) or "body"
    return f"{where}: {err['msg']}"


@app.exception_handler(ValueError)
def _bad_request(e: ValueError) -> Response:
    return _error(400, str(e))


@app.exception_handler([NotFound, admin.UnknownModel])
def _not_found(e: Exception) -> Response:
    return _error(404, str(e))


@app.exception_handler(Conflict)
def _conflict(e: Conflict) -> Response:
    return _error(409, str(e))


@app.exception_handler([ClientError, BotoCoreError])
def _aws_unavailable(e: Exception) -> Response:
    logger.exception("registry unavailable")
    return _error(503, "registry unavailable, retry later")


@app.exception_handler(Exception)
def _internal(e: Exception) -> Response:
    logger.exception("unhandled error")
    return _error(500, "internal error; see the function's logs")


@app.not_found
def _no_route(_: Exception) -> Response:
    event = app.current_event
    return _error(404, f"no route for {event.request_context.http.method} {event.path}")


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # Before routing: Powertools validates a body before the route runs, and an unsigned
    # caller must learn nothing about its request but that it is refused.
    if caller_arn(event) is None:
        return error_response(403, NO_CALLER).to_event()
    return app.resolve(event, context)
