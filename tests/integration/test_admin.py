"""AdminFunction: model management over the HTTP API, only for IAM-authorized callers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from maas.admin import service as admin
from maas_devkit.events import event_file, http_event
from maas_devkit.lambda_runtime import load_handler
from maas_devkit.publish import publish_model

ALICE = "arn:aws:iam::123456789012:user/alice"


class Admin:
    def __init__(self, app: Any, context: Any) -> None:
        self.app = app
        self.context = context

    def __call__(
        self, method: str, path: str, body: Any = None, caller: str | None = ALICE
    ) -> tuple[int, Any]:
        event = http_event(method, path, body)
        if caller is not None:
            event["requestContext"]["authorizer"] = {
                "iam": {"accessKey": "AKIAEXAMPLE", "accountId": "123456789012", "userArn": caller}
            }
        response = self.app.lambda_handler(event, self.context)
        return response["statusCode"], json.loads(response["body"])


@pytest.fixture
def api(aws: Any, lambda_context: Any) -> Admin:
    return Admin(load_handler("admin"), lambda_context)


@pytest.fixture
def iris(registry: Any, storage: Any, iris_model: Any) -> Any:
    """v1 prod, v2 READY with metrics, v3 still TRAINING."""
    publish_model(registry, storage, "iris", 1, iris_model.onnx, promote=True)
    publish_model(registry, storage, "iris", 2, iris_model.onnx)
    registry.update_summary(
        "iris",
        2,
        {
            "recipe": "int8-dynamic-per-channel",
            "served_quality": {"accuracy": 0.96},
            "latency_ms": 0.12,
            "size_bytes": 1000,
            "fp32_size_bytes": 3000,
        },
    )
    publish_model(registry, storage, "iris", 3, iris_model.onnx, status="TRAINING")
    return iris_model


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/admin/models"),
        ("GET", "/admin/models/iris/versions"),
        ("GET", "/admin/models/iris/audit"),
        ("POST", "/admin/models/iris/promote"),
        ("POST", "/admin/models/iris/canary"),
        ("POST", "/admin/models/iris/rollback"),
    ],
)
def test_every_admin_route_refuses_a_caller_without_iam_identity(
    api: Admin, iris: Any, method: str, path: str
) -> None:
    status, body = api(method, path, {"version": 2, "weight": 0.5}, caller=None)
    assert status == 403 and "IAM" in body["error"]


def test_list_models_shows_prod_and_canary(api: Admin, iris: Any, registry: Any) -> None:
    registry.set_canary("iris", 2, 0.1, actor="t", reason="x")
    status, body = api("GET", "/admin/models")
    assert status == 200
    doc = admin.ModelList.model_validate(body)
    (m,) = doc.models
    assert (m.name, m.prod, m.canary_version, m.canary_weight) == ("iris", 1, 2, 0.1)
    assert (m.versions, m.latest, m.latest_status) == (3, 3, "TRAINING")


def test_list_versions_has_status_role_and_metrics(api: Admin, iris: Any) -> None:
    status, body = api("GET", "/admin/models/iris/versions")
    assert status == 200
    doc = admin.VersionList.model_validate(body)
    assert [(v.version, v.status, v.role) for v in doc.versions] == [
        (1, "READY", "prod"),
        (2, "READY", None),
        (3, "TRAINING", None),
    ]
    v2 = doc.versions[1]
    assert v2.recipe == "int8-dynamic-per-channel"
    assert v2.metrics == {
        "accuracy": 0.96,
        "latency_ms": 0.12,
        "size_bytes": 1000,
        "fp32_size_bytes": 3000,
    }


def test_unknown_model_is_404(api: Admin, aws: Any) -> None:
    assert api("GET", "/admin/models/nope/versions")[0] == 404
    assert api("GET", "/admin/models/nope/audit")[0] == 404
    assert api("POST", "/admin/models/nope/rollback", {})[0] == 404


def test_promote_canary_rollback_through_the_api_are_audited_as_the_caller(
    api: Admin, iris: Any
) -> None:
    # WHEN v2 is promoted, v1 becomes a 20 % canary, and it is rolled back
    status, alias = api("POST", "/admin/models/iris/promote", {"version": 2, "reason": "review"})
    assert status == 200 and (alias["version"], alias["previous"]) == (2, [1])
    assert alias["updated_by"] == ALICE
    status, alias = api("POST", "/admin/models/iris/canary", {"version": 1, "weight": 0.2})
    assert status == 200 and (alias["canary_version"], alias["canary_weight"]) == (1, 0.2)
    status, alias = api("POST", "/admin/models/iris/rollback", {"reason": "noisy"})
    assert status == 200 and (alias["version"], alias["canary_version"]) == (2, None)

    # THEN the audit trail names the caller and the reasons
    status, body = api("GET", "/admin/models/iris/audit")
    entries = admin.AuditLog.model_validate(body).entries
    ours = [(e.actor, e.action) for e in entries if e.actor == ALICE]
    assert ours == [(ALICE, "promote:prod"), (ALICE, "canary:prod"), (ALICE, "rollback:prod")]
    assert any("review" in e.detail for e in entries)


@pytest.mark.parametrize(
    "path, body, status, fragment",
    [
        ("promote", {"version": 3}, 409, "TRAINING"),
        ("promote", {"version": 9}, 404, "no version 9"),
        ("promote", {"version": "2"}, 400, "version"),
        ("promote", {"version": 2, "force": True}, 400, "force"),
        ("promote", {}, 400, "version"),
        ("canary", {"version": 2, "weight": 1.5}, 400, "weight"),
        ("canary", {"version": 1, "weight": 0.5}, 409, "already prod"),
        ("canary", {"weight": 0.5}, 400, "needs a version"),
        ("rollback", {}, 409, "no earlier READY version"),
    ],
)
def test_refused_changes_say_why(
    api: Admin, iris: Any, path: str, body: Any, status: int, fragment: str
) -> None:
    got, doc = api("POST", f"/admin/models/iris/{path}", body)
    assert got == status, doc
    assert set(doc) == {"error"} and fragment in doc["error"], doc


def test_malformed_json_body_is_400(api: Admin, iris: Any) -> None:
    status, doc = api("POST", "/admin/models/iris/promote", "{not json")
    assert status == 400 and "invalid request body" in doc["error"]


def test_promote_event_from_events_folder(api: Admin, iris: Any) -> None:
    """events/http-post-admin-promote.json, as `sam local invoke -e` replays it (for 'digits')."""
    event = event_file("http-post-admin-promote.json")
    assert event is not None
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/admin/models/iris/promote"
    response = api.app.lambda_handler(event, api.context)
    assert response["statusCode"] == 200, response["body"]
    alias = json.loads(response["body"])
    assert (alias["version"], alias["updated_by"]) == (2, "arn:aws:iam::123456789012:user/alice")
