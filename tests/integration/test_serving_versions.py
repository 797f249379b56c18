"""Which version answers: prod, a canary's share, a pinned version; and what stays in memory."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError
from maas.core.config import InferenceSettings
from maas.serving.oip import decode_request
from maas.serving.store import Route
from maas_devkit.events import http_event
from maas_devkit.lambda_runtime import load_handler
from maas_devkit.models import infer_body
from maas_devkit.publish import publish_model

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")
# The inference function's required settings, for building one directly.
NAMES = {"registry_table": "maas-registry", "artifact_bucket": "maas-artifacts"}


@pytest.fixture
def app(aws: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The inference handler with no alias caching, so each request sees the registry."""
    monkeypatch.setenv("ALIAS_TTL_S", "0")
    return load_handler("inference")


@pytest.fixture
def versions(registry: Any, storage: Any, iris_model: Any, iris_model_reversed: Any) -> Any:
    """iris v1 (prod), v2 (labels reversed), v3 (as v1)."""
    publish_model(registry, storage, "iris", 1, iris_model.onnx, promote=True)
    publish_model(registry, storage, "iris", 2, iris_model_reversed.onnx)
    publish_model(registry, storage, "iris", 3, iris_model.onnx)
    return iris_model


def ask(app: Any, context: Any, path: str = "/v2/models/iris/infer", body: Any = None) -> Any:
    method = "POST" if path.endswith("/infer") else "GET"
    if method == "POST" and body is None:
        body = infer_body(np.ones((1, 4)))
    response = app.lambda_handler(http_event(method, path, body), context)
    assert response["statusCode"] == 200, response["body"]
    return json.loads(response["body"])


# --- the canary draw ----------------------------------------------------------------------


def test_route_pick_sends_draws_below_the_weight_to_the_canary() -> None:
    route = Route(prod=1, canary=3, weight=0.1)
    assert [route.pick(d) for d in (0.0, 0.0999, 0.1, 0.5, 0.9999)] == [3, 3, 1, 1, 1]
    assert Route(prod=1).pick(0.0) == 1
    assert route.versions == {1, 3} and Route(prod=2).versions == {2}


def test_canary_answers_when_the_draw_falls_below_its_weight(
    app: Any, lambda_context: Any, registry: Any, versions: Any
) -> None:
    # GIVEN v3 as a 25 % canary beside prod v1
    registry.set_canary("iris", 3, 0.25, actor="bob", reason="try")
    store = app.store()

    # WHEN the draw is below, then above, the weight
    store.draw = lambda: 0.2
    low = ask(app, lambda_context)["model_version"]
    store.draw = lambda: 0.3
    high = ask(app, lambda_context)["model_version"]

    # THEN the response names the version that answered
    assert (low, high) == ("3", "1")


def test_canary_share_of_requests_follows_its_weight(
    app: Any, lambda_context: Any, registry: Any, versions: Any
) -> None:
    registry.set_canary("iris", 2, 0.25, actor="bob", reason="try")
    counts = Counter(ask(app, lambda_context)["model_version"] for _ in range(400))
    assert set(counts) == {"1", "2"}
    assert 0.13 <= counts["2"] / 400 <= 0.37, counts  # 25 % +- 5 sigma


def test_metadata_and_readiness_describe_prod_never_the_canary(
    app: Any, lambda_context: Any, registry: Any, versions: Any
) -> None:
    registry.set_canary("iris", 3, 1.0, actor="bob", reason="all traffic")
    app.store().draw = lambda: 0.0
    assert ask(app, lambda_context, "/v2/models/iris/ready")["version"] == "1"
    assert ask(app, lambda_context)["model_version"] == "3"


def test_versioned_route_ignores_prod_and_canary(
    app: Any, lambda_context: Any, registry: Any, versions: Any
) -> None:
    registry.set_canary("iris", 3, 1.0, actor="bob", reason="all traffic")
    assert ask(app, lambda_context, "/v2/models/iris/versions/2/infer")["model_version"] == "2"


# --- eviction -----------------------------------------------------------------------------


def _cached_file(store: Any, onnx: bytes) -> Any:
    """The model cache is content-addressed: a version's file is named by its sha256."""
    return store.cache_file(hashlib.sha256(onnx).hexdigest())


def test_promotion_evicts_the_replaced_version_from_memory_and_tmp(
    app: Any, lambda_context: Any, registry: Any, versions: Any
) -> None:
    # GIVEN a warm function serving v1
    store = app.store()
    assert ask(app, lambda_context)["model_version"] == "1"
    assert store.loaded_versions("iris") == [1] and _cached_file(store, versions.onnx).exists()

    # WHEN v2 is promoted and the next request sees it
    registry.promote("iris", 2, actor="bob", reason="v2")
    assert ask(app, lambda_context)["model_version"] == "2"

    # THEN v1, referenced by nothing, is gone from memory and from /tmp
    assert store.loaded_versions("iris") == [2]
    assert not _cached_file(store, versions.onnx).exists()


def test_a_version_asked_for_by_number_is_not_evicted(
    app: Any, lambda_context: Any, registry: Any, versions: Any
) -> None:
    store = app.store()
    ask(app, lambda_context)  # v1 through prod
    ask(app, lambda_context, "/v2/models/iris/versions/1/infer")  # and by number
    registry.promote("iris", 2, actor="bob", reason="v2")
    ask(app, lambda_context)
    assert store.loaded_versions("iris") == [1, 2]


def test_removing_a_canary_evicts_it(
    app: Any, lambda_context: Any, registry: Any, versions: Any
) -> None:
    store = app.store()
    registry.set_canary("iris", 3, 0.5, actor="bob", reason="try")
    store.draw = lambda: 0.0
    assert ask(app, lambda_context)["model_version"] == "3"
    assert store.loaded_versions("iris") == [3]  # prod not asked for yet
    store.draw = lambda: 0.9
    assert ask(app, lambda_context)["model_version"] == "1"
    assert store.loaded_versions("iris") == [1, 3]

    registry.rollback("iris", actor="carol", reason="v3 errors")
    assert ask(app, lambda_context)["model_version"] == "1"
    assert store.loaded_versions("iris") == [1]


def test_alias_ttl_is_bounded_to_60_seconds() -> None:
    assert InferenceSettings(**NAMES, alias_ttl_s=60).alias_ttl_s == 60
    with pytest.raises(ValueError, match="alias_ttl_s"):
        InferenceSettings(**NAMES, alias_ttl_s=61)


def test_promotion_is_served_once_the_ttl_passes(
    aws: Any, registry: Any, versions: Any, monkeypatch: pytest.MonkeyPatch, lambda_context: Any
) -> None:
    # GIVEN a warm function caching the alias for 0.3 s
    monkeypatch.setenv("ALIAS_TTL_S", "0.3")
    app = load_handler("inference")
    assert ask(app, lambda_context)["model_version"] == "1"

    # WHEN v2 is promoted: THEN it is served within the TTL (not before the cache expires)
    registry.promote("iris", 2, actor="bob", reason="v2")
    promoted = time.monotonic()
    while ask(app, lambda_context)["model_version"] != "2":
        assert time.monotonic() - promoted < 0.3 + 1.0
        time.sleep(0.02)


# --- no failures while the alias moves ------------------------------------------------------


def test_registry_outage_keeps_serving_the_last_known_route(
    app: Any, lambda_context: Any, versions: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = app.store()
    assert ask(app, lambda_context)["model_version"] == "1"

    def down(*args: Any, **kwargs: Any) -> Any:
        raise ClientError({"Error": {"Code": "ServiceUnavailable"}}, "GetItem")

    monkeypatch.setattr(store.registry, "get_alias", down)
    assert ask(app, lambda_context)["model_version"] == "1"


def test_requests_racing_promotions_and_canaries_never_fail(
    app: Any, registry: Any, versions: Any, atomic_requests: None
) -> None:
    # GIVEN four threads serving continuously from one store (alias TTL 0)
    store = app.store()
    request = decode_request(json.dumps(infer_body(np.ones((2, 4)))))
    stop = threading.Event()
    seen: Counter[int] = Counter()
    errors: list[BaseException] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                loaded = store.get("iris", None, canary=True)
                loaded.infer(request, 64)
                seen[loaded.version] += 1
            except BaseException as e:  # any failure is the test's failure
                errors.append(e)
                return

    threads = [threading.Thread(target=serve) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        # WHEN the alias moves again and again underneath them
        for _ in range(3):
            registry.promote("iris", 2, actor="bob", reason="v2")
            time.sleep(0.05)
            registry.set_canary("iris", 3, 0.5, actor="bob", reason="try v3")
            time.sleep(0.05)
            registry.rollback("iris", actor="bob", reason="undo canary")
            registry.rollback("iris", actor="bob", reason="back to v1")
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)

    # THEN no request failed, and every version took requests
    assert not errors, errors[:3]
    assert set(seen) == {1, 2, 3}, seen


# --- the model cache is keyed by content -------------------------------------------------------


def test_a_reused_model_and_version_with_other_bytes_serves_the_new_bytes(
    aws: Any, lambda_context: Any, iris_model: Any, iris_model_reversed: Any
) -> None:
    # GIVEN iris v1 served once, so its file sits in the function's model cache
    registry, storage = aws.registry(), aws.storage()
    publish_model(registry, storage, "iris", 1, iris_model.onnx, promote=True)
    setosa = infer_body([[5.1, 3.5, 1.4, 0.2]])  # the first class: reversed, it is the last
    classes = iris_model.classifier.classes
    first = load_handler("inference")
    answer = ask(first, lambda_context, body=setosa)
    assert answer["model_version"] == "1"
    assert answer["outputs"][1]["data"] == [classes[0]]

    # WHEN the stack starts over (registry and artifacts empty, the cache left as it was) and
    # a new iris v1 with other bytes (its class names reversed) is published
    for page in aws.dynamodb.get_paginator("scan").paginate(TableName=aws.table):
        for item in page["Items"]:
            aws.dynamodb.delete_item(TableName=aws.table, Key={"pk": item["pk"], "sk": item["sk"]})
    publish_model(registry, storage, "iris", 1, iris_model_reversed.onnx, promote=True)
    second = load_handler("inference")  # a new container on the same /tmp
    answer = ask(second, lambda_context, body=setosa)

    # THEN it serves the new bytes, not the old file and not a 503
    assert answer["model_version"] == "1"
    assert answer["outputs"][1]["data"] == [classes[-1]]
    store = second.store()
    assert _cached_file(store, iris_model_reversed.onnx).exists()
    assert _cached_file(store, iris_model.onnx).exists()  # the old entry, never served again


def test_a_model_too_large_for_tmp_loads_from_memory_still_checked(
    aws: Any,
    lambda_context: Any,
    iris_model: Any,
    iris_model_reversed: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a function whose threshold makes every model "too large for /tmp"
    monkeypatch.setenv("MODEL_MEMORY_LOAD_MB", "0")
    registry, storage = aws.registry(), aws.storage()
    publish_model(registry, storage, "iris", 1, iris_model.onnx, promote=True)
    publish_model(registry, storage, "iris", 2, iris_model_reversed.onnx)
    aws.s3.put_object(
        Bucket=aws.artifact_bucket,
        Key="models/iris/2/model.onnx",
        Body=iris_model_reversed.onnx + b"\x00",
    )
    app = load_handler("inference")

    # WHEN both versions are asked
    answer = ask(app, lambda_context)
    tampered = app.lambda_handler(
        http_event("POST", "/v2/models/iris/versions/2/infer", infer_body(np.ones((1, 4)))),
        lambda_context,
    )

    # THEN v1 serves from memory, nothing of it written to the model cache, and v2's bytes,
    # which differ from its manifest, are refused as they are from /tmp
    assert answer["model_version"] == "1"
    store = app.store()
    assert not _cached_file(store, iris_model.onnx).exists()
    assert not list(store.cache_dir.rglob("*.onnx"))
    assert tampered["statusCode"] == 503 and "integrity" in tampered["body"]
