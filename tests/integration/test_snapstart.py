"""The SnapStart-friendly init: prod models loaded during init, the registry re-read after a
restore, so a promotion made after the snapshot is served at once."""

from __future__ import annotations

import json
import sys
import types
from typing import Any

import numpy as np
import pytest
from maas_devkit.cfn import load_template
from maas_devkit.events import http_event
from maas_devkit.lambda_runtime import load_handler
from maas_devkit.models import infer_body
from maas_devkit.publish import publish_model


def _ask(app: Any, context: Any) -> dict[str, Any]:
    event = http_event("POST", "/v2/models/iris/infer", infer_body(np.ones((1, 4))))
    response = app.lambda_handler(event, context)
    assert response["statusCode"] == 200, response["body"]
    return dict(json.loads(response["body"]))


@pytest.fixture
def restore_hooks(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Lambda's snapshot_restore_py, recording what registers."""
    hooks: list[Any] = []
    fake = types.ModuleType("snapshot_restore_py")
    fake.register_after_restore = hooks.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", fake)
    return hooks


def test_init_loads_prod_models_and_a_restore_rereads_the_alias(
    aws: Any,
    registry: Any,
    storage: Any,
    iris_model: Any,
    iris_model_reversed: Any,
    monkeypatch: pytest.MonkeyPatch,
    restore_hooks: list[Any],
    lambda_context: Any,
) -> None:
    # GIVEN iris v1 in prod, v2 ready, and an init that preloads every prod model
    publish_model(registry, storage, "iris", 1, iris_model.onnx, promote=True)
    publish_model(registry, storage, "iris", 2, iris_model_reversed.onnx)
    monkeypatch.setenv("PRELOAD_MODELS", "*")
    monkeypatch.setenv("ALIAS_TTL_S", "60")

    # WHEN the handler is imported (init, as the snapshot is taken)
    app = load_handler("inference")

    # THEN v1's session is there before any request, and the restore hook is registered
    assert app.store().loaded_versions("iris") == [1]
    assert restore_hooks == [app.store().after_restore]
    assert _ask(app, lambda_context)["model_version"] == "1"

    # WHEN v2 is promoted after the snapshot, and the function is restored from it
    registry.promote("iris", 2, actor="bob", reason="v2")
    assert _ask(app, lambda_context)["model_version"] == "1"  # the 60 s alias cache holds
    restore_hooks[0]()

    # THEN v2 answers at once, and v1 is no longer held
    assert _ask(app, lambda_context)["model_version"] == "2"
    assert app.store().loaded_versions("iris") == [2]


def test_preload_of_named_models_skips_those_without_prod(
    aws: Any, registry: Any, storage: Any, iris_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish_model(registry, storage, "iris", 1, iris_model.onnx, promote=True)
    publish_model(registry, storage, "draft", 1, iris_model.onnx)  # ready, never promoted
    monkeypatch.setenv("PRELOAD_MODELS", "draft,iris,absent")
    app = load_handler("inference")
    assert app.store().loaded_versions("iris") == [1]
    assert app.store().loaded_versions("draft") == []


def test_a_failing_preload_does_not_fail_init(
    aws: Any, monkeypatch: pytest.MonkeyPatch, lambda_context: Any
) -> None:
    monkeypatch.setenv("PRELOAD_MODELS", "*")
    monkeypatch.setenv("REGISTRY_TABLE", "no-such-table")
    app = load_handler("inference")  # the registry cannot be read: logged, init goes on
    response = app.lambda_handler(http_event("GET", "/v2/health/live"), lambda_context)
    assert response["statusCode"] == 200


def test_template_offers_snapstart_on_published_versions() -> None:
    tpl = load_template()
    assert tpl["Parameters"]["InferenceSnapStart"]["Default"] == "false"
    props = tpl["Resources"]["InferenceFunction"]["Properties"]
    assert props["AutoPublishAlias"] == "live"
    on, off = props["SnapStart"]["Fn::If"][1:]
    assert props["SnapStart"]["Fn::If"][0] == "InferenceSnapStartOn"
    assert on == {"ApplyOn": "PublishedVersions"} and off == {"Ref": "AWS::NoValue"}
    preload = props["Environment"]["Variables"]["PRELOAD_MODELS"]["Fn::If"]
    assert preload == ["InferenceSnapStartOn", {"Ref": "PreloadModels"}, {"Ref": "AWS::NoValue"}]
