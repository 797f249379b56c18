"""Serving when things break: a tampered artifact, AWS down at cold start, a model too large.

The outage tests run two moto servers sharing one in-process state, one answering for
DynamoDB and one for S3 (AWS_ENDPOINT_URL_DYNAMODB / AWS_ENDPOINT_URL_S3), and stop and
start one of them: the function reaches them over real sockets, with whichever AWS client
serving uses (both are tried), and sees the connection refused, as in an outage.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from maas.core.config import InferenceSettings
from maas.serving.http import ClientResponse
from maas.serving.store import ModelStore, ModelUnavailable
from maas_devkit.account import ARTIFACT_BUCKET, create_resources, stack_template
from maas_devkit.events import http_event
from maas_devkit.lambda_runtime import load_handler
from maas_devkit.models import infer_body
from maas_devkit.publish import publish_model
from maas_devkit.repo import REGION

SECTION = "Serving faults"


def call(app: Any, context: Any, path: str, body: Any = None) -> tuple[int, Any]:
    event = http_event("POST" if body is not None else "GET", path, body)
    reply = ClientResponse.of(app.lambda_handler(event, context))
    return reply.status, reply.json()


# --- integrity and memory (moto in process) -----------------------------------------------


def test_version_failing_its_checksum_is_never_loaded_and_the_others_serve(
    aws: Any, registry: Any, storage: Any, iris_model: Any, iris_model_reversed: Any,
    lambda_context: Any, reliability_report: Any,
) -> None:  # fmt: skip
    # GIVEN iris v1 in prod and v2 READY whose model.onnx was replaced after its manifest
    # (v2's own bytes: the model cache is keyed by content, and v1's verified file would
    # otherwise serve v2's manifest)
    publish_model(registry, storage, "iris", 1, iris_model.onnx, promote=True)
    publish_model(registry, storage, "iris", 2, iris_model_reversed.onnx)
    aws.s3.put_object(
        Bucket=ARTIFACT_BUCKET,
        Key="models/iris/2/model.onnx",
        Body=iris_model_reversed.onnx + b"\x00",
    )
    app = load_handler("inference")
    body = infer_body(iris_model.features[:2])

    # WHEN both versions are asked, again and again
    replies = [
        call(app, lambda_context, f"/v2/models/iris/versions/{v}/infer", body) for v in (2, 1) * 3
    ]

    # THEN v2 is refused each time, never loaded; v1 and prod answer throughout
    for status, answer in replies[0::2]:
        assert status == 503 and "integrity" in answer["error"]
    assert all(status == 200 for status, _ in replies[1::2])
    assert call(app, lambda_context, "/v2/models/iris/infer", body)[1]["model_version"] == "1"
    assert ("iris", 2) not in app.store()._sessions
    reliability_report.tried(
        SECTION, "artifact sha256 differs from its manifest", "503 for that version, others 200"
    )


def padded_model(iris_model: Any, extra_floats: int) -> bytes:
    """iris's graph carrying an unused initializer: a bigger file, the same answers."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(iris_model.onnx)
    model.graph.initializer.append(
        numpy_helper.from_array(np.zeros(extra_floats, dtype=np.float32), "padding")
    )
    return model.SerializeToString()


def test_model_larger_than_the_session_cache_evicts_the_others_instead_of_crashing(
    aws: Any, registry: Any, storage: Any, iris_model: Any, lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch, reliability_report: Any,
) -> None:  # fmt: skip
    # GIVEN a function whose session cache may hold 256 KiB of models, two small models and
    # one of ~1 MiB (more than the whole budget)
    monkeypatch.setenv("SESSION_CACHE_MB", "0.25")
    for name in ("small-a", "small-b"):
        publish_model(registry, storage, name, 1, iris_model.onnx, promote=True)
    publish_model(registry, storage, "large", 1, padded_model(iris_model, 256 * 1024), promote=True)
    app = load_handler("inference")
    body = infer_body(iris_model.features[:2])

    # WHEN small, small, large, small are asked in turn
    order = ("small-a", "small-b", "large", "small-a", "large")
    replies = {}
    for name in order:
        replies[name] = call(app, lambda_context, f"/v2/models/{name}/infer", body)
        assert replies[name][0] == 200, replies[name]
        loaded = sorted(m for m, _ in app.store()._sessions)
        # THEN each is served; the large one alone, the small ones evicting it
        if name == "large":
            assert loaded == ["large"]
        else:
            assert "large" not in loaded
    store = app.store()
    assert sorted(m for m, _ in store._sessions) == ["large"]  # alone again
    reliability_report.tried(
        SECTION,
        "model larger than the session cache",
        "served alone, the others evicted; no crash",
    )


def test_model_too_large_for_the_functions_memory_is_refused_not_loaded() -> None:
    settings = InferenceSettings(registry_table="t", artifact_bucket="b", function_memory_mb=128)
    store = ModelStore(settings, registry=None, storage=None)  # type: ignore[arg-type]
    with pytest.raises(ModelUnavailable, match="more memory"):
        store._make_room("huge", 1, 200 * 1024 * 1024)


# --- AWS down at cold start (two moto servers, stopped and started) ------------------------


@dataclass
class Service:
    name: str
    port: int
    server: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def down(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@dataclass
class SplitAws:
    dynamodb: Service
    s3: Service


@pytest.fixture(params=["lite", "boto3"])
def split_aws(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    iris_model: Any,
) -> Iterator[SplitAws]:
    from maas.core.registry import Registry
    from maas.core.storage import Storage
    from maas_local.stack import free_port

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    split = SplitAws(Service("dynamodb", free_port()), Service("s3", free_port()))
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN", "ALIAS_TTL_S"):
        monkeypatch.delenv(name, raising=False)
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL_DYNAMODB": split.dynamodb.url,
        "AWS_ENDPOINT_URL_S3": split.s3.url,
        "AWS_MAX_ATTEMPTS": "2",
        "REGISTRY_TABLE": "maas-registry",
        "ARTIFACT_BUCKET": ARTIFACT_BUCKET,
        "MODEL_CACHE_DIR": str(tmp_path / "model-cache"),
        "MAAS_AWS_CLIENT": request.param,
        "POWERTOOLS_METRICS_DISABLED": "true",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    split.dynamodb.up()
    split.s3.up()
    try:
        ddb = boto3.client("dynamodb", region_name=REGION, endpoint_url=split.dynamodb.url)
        s3 = boto3.client("s3", region_name=REGION, endpoint_url=split.s3.url)
        sqs = boto3.client("sqs", region_name=REGION, endpoint_url=split.dynamodb.url)
        create_resources({"dynamodb": ddb, "s3": s3, "sqs": sqs}.__getitem__, stack_template())
        publish_model(
            Registry("maas-registry", client=ddb), Storage(s3), "iris", 1, iris_model.onnx,
            promote=True,
        )  # fmt: skip
        yield split
    finally:
        import requests

        if split.dynamodb.server is None:
            split.dynamodb.up()

        requests.post(f"{split.dynamodb.url}/moto-api/reset", timeout=10)  # moto is per process
        split.dynamodb.down()
        split.s3.down()


@pytest.mark.parametrize("outage", ["dynamodb", "s3"])
def test_aws_down_at_cold_start_is_503_with_a_clear_error_then_recovers(
    split_aws: SplitAws, outage: str, iris_model: Any, lambda_context: Any,
    reliability_report: Any,
) -> None:  # fmt: skip
    # GIVEN the registry (or S3) refuses connections when a fresh function takes its first request
    service = getattr(split_aws, outage)
    service.down()
    app = load_handler("inference")
    body = infer_body(iris_model.features[:2])

    # WHEN requests arrive during the outage
    during = [call(app, lambda_context, "/v2/models/iris/infer", body) for _ in range(2)]

    # THEN each is a 503 naming what is unavailable, without AWS's details
    what = {"dynamodb": "model registry", "s3": "model artifact store"}[outage]
    for status, answer in during:
        assert status == 503, answer
        assert answer == {"error": f"{what} unavailable, retry later"}

    # AND once it is back, the same warm function serves the next request
    service.up()
    status, answer = call(app, lambda_context, "/v2/models/iris/infer", body)
    assert status == 200, answer
    assert answer["model_version"] == "1"
    reliability_report.tried(
        SECTION,
        f"{'DynamoDB' if outage == 'dynamodb' else 'S3'} down at cold start",
        "503 naming it; 200 on the next request once back",
    )
