"""InferenceFunction end to end: HTTP API events -> OIP v2 responses from a real ONNX model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from maas.serving.http import ClientResponse
from maas_devkit.events import event_file, http_event
from maas_devkit.lambda_runtime import load_handler
from maas_devkit.models import infer_body, train_tiny_classifier
from maas_devkit.publish import publish_model
from maas_devkit.repo import REPO

# Powertools warns on every request that adds no metric (health, errors): expected here.
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")

N_FEATURES = 4  # iris
N_CLASSES = 3


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


class Api:
    """Calls the handler the way API Gateway's HTTP API does."""

    def __init__(self, app: Any, context: Any) -> None:
        self.app = app
        self.context = context

    def __call__(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Reply:
        return self.invoke(http_event(method, path, body, **kwargs))

    def invoke(self, event: dict[str, Any]) -> Reply:
        reply = ClientResponse.of(self.app.lambda_handler(event, self.context))
        return Reply(reply.status, reply.json(), reply.headers)

    def infer(self, model: str, body: Any, version: str | None = None, **kwargs: Any) -> Reply:
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        return self("POST", path, body, **kwargs)


@pytest.fixture
def api(aws: Any, lambda_context: Any) -> Api:
    return Api(load_handler("inference"), lambda_context)


@pytest.fixture
def iris(aws: Any, registry: Any, storage: Any, iris_model: Any) -> Any:
    """iris v1 READY and promoted to prod."""
    publish_model(
        registry,
        storage,
        "iris",
        1,
        iris_model.onnx,
        {"labels": iris_model.classifier.classes},
        promote=True,
    )
    return iris_model


def run_onnx(onnx_bytes: bytes, rows: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": rows.astype(np.float32)}), strict=True))


def assert_error(reply: Reply, status: int, *fragments: str) -> None:
    """Errors are {"error": "<message>"} and nothing else: no traceback, no stack frames."""
    assert reply.status == status, reply.body
    assert isinstance(reply.body, dict) and set(reply.body) == {"error"}, reply.body
    message = reply.body["error"]
    assert isinstance(message, str) and message
    assert "Traceback" not in message and 'File "' not in message
    assert reply.headers.get("content-type", "").startswith("application/json")
    for fragment in fragments:
        assert fragment in message, message


# --- health and metadata ------------------------------------------------------------------


def test_health_live_and_ready_answer_without_touching_aws(api: Api) -> None:
    assert api("GET", "/v2/health/live").body == {"live": True}
    assert api("GET", "/v2/health/ready").body == {"ready": True}


def test_server_metadata_names_the_server(api: Api) -> None:
    reply = api("GET", "/v2")
    assert reply.status == 200
    assert reply.body["name"] == "serverless-maas"
    assert isinstance(reply.body["version"], str)
    assert isinstance(reply.body["extensions"], list)


def test_model_metadata_comes_from_the_onnx_graph(api: Api, iris: Any) -> None:
    # WHEN the model's metadata is asked for
    reply = api("GET", "/v2/models/iris")

    # THEN it describes the graph's tensors in OIP terms, and lists the servable versions
    assert reply.status == 200
    assert reply.body == {
        "name": "iris",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, N_FEATURES]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, N_CLASSES]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ],
    }


def test_version_metadata_names_that_version(
    api: Api, iris: Any, registry: Any, storage: Any
) -> None:
    publish_model(registry, storage, "iris", 2, iris.onnx)
    reply = api("GET", "/v2/models/iris/versions/2")
    assert reply.status == 200
    assert reply.body["versions"] == ["2"]
    assert api("GET", "/v2/models/iris").body["versions"] == ["1", "2"]


def test_model_ready_and_version_ready_say_ready(api: Api, iris: Any) -> None:
    assert api("GET", "/v2/models/iris/ready").body == {
        "name": "iris",
        "version": "1",
        "ready": True,
    }
    reply = api("GET", "/v2/models/iris/versions/1/ready")
    assert (reply.status, reply.body["ready"], reply.body["version"]) == (200, True, "1")


# --- inference ----------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 5])
def test_infer_matches_onnx_runtime_on_the_same_model(api: Api, iris: Any, batch: int) -> None:
    # GIVEN rows from the dataset
    rows = iris.features[::30][:batch]

    # WHEN they are sent for inference
    reply = api.infer("iris", infer_body(rows, request_id=f"req-{batch}"))

    # THEN the answer is what ONNX Runtime gives on the same file, in OIP form
    assert reply.status == 200, reply.body
    expected = run_onnx(iris.onnx, rows)
    assert reply.body["model_name"] == "iris"
    assert reply.body["model_version"] == "1"
    assert reply.body["id"] == f"req-{batch}"
    outputs = {o["name"]: o for o in reply.body["outputs"]}
    assert set(outputs) == {"probabilities", "label"}
    probs = outputs["probabilities"]
    assert (probs["datatype"], probs["shape"]) == ("FP32", [batch, N_CLASSES])
    np.testing.assert_allclose(
        np.array(probs["data"]).reshape(batch, N_CLASSES), expected["probabilities"], rtol=1e-6
    )
    label = outputs["label"]
    assert (label["datatype"], label["shape"]) == ("BYTES", [batch])
    assert label["data"] == [str(x) for x in expected["label"]]
    assert set(label["data"]) <= set(iris.classifier.classes)


def test_infer_predicts_the_known_classes(api: Api, iris: Any) -> None:
    # GIVEN one row of each iris species (rows 0, 50 and 100 of the dataset)
    rows = iris.features[[0, 50, 100]]

    # WHEN they are classified
    reply = api.infer("iris", infer_body(rows, outputs=["label"]))

    # THEN the labels are the species names
    assert reply.body["outputs"][0]["data"] == ["setosa", "versicolor", "virginica"]


def test_infer_nested_and_flat_data_give_the_same_answer(api: Api, iris: Any) -> None:
    rows = iris.features[:3]
    flat = api.infer("iris", infer_body(rows))
    nested = api.infer("iris", infer_body(rows, nested=True))
    assert flat.status == nested.status == 200
    assert flat.body["outputs"] == nested.body["outputs"]


def test_infer_requested_outputs_returns_only_those(api: Api, iris: Any) -> None:
    reply = api.infer("iris", infer_body(iris.features[:2], outputs=["label"]))
    assert reply.status == 200
    assert [o["name"] for o in reply.body["outputs"]] == ["label"]


def test_infer_without_id_has_no_id(api: Api, iris: Any) -> None:
    reply = api.infer("iris", infer_body(iris.features[:1]))
    assert "id" not in reply.body


def test_infer_base64_encoded_body_is_decoded(api: Api, iris: Any) -> None:
    reply = api.infer("iris", infer_body(iris.features[:2]), base64=True)
    assert reply.status == 200, reply.body


def test_infer_base64_body_that_is_not_utf8_json_is_400(api: Api, iris: Any) -> None:
    # GIVEN a binary body (as the binary tensor extension sends), base64-encoded by API Gateway
    raw = b'{"inputs": []}' + bytes(range(128, 256))
    reply = api.infer(
        "iris",
        raw,
        base64=True,
        headers={
            "content-type": "application/octet-stream",
            "inference-header-content-length": "14",
        },
    )

    # THEN it is refused as a bad request, not a crash
    assert_error(reply, 400)


def test_infer_invalid_base64_body_is_400(api: Api, iris: Any) -> None:
    event = http_event("POST", "/v2/models/iris/infer", "x")
    event.update({"body": "not*base64!", "isBase64Encoded": True})
    assert_error(api.invoke(event), 400, "base64")


def test_infer_versioned_route_serves_that_version_and_unversioned_follows_prod(
    aws: Any,
    registry: Any,
    storage: Any,
    iris: Any,
    iris_model_reversed: Any,
    monkeypatch: pytest.MonkeyPatch,
    lambda_context: Any,
) -> None:
    # GIVEN v1 in prod and a v2 that labels differently, not yet promoted; no alias caching
    monkeypatch.setenv("ALIAS_TTL_S", "0")
    api = Api(load_handler("inference"), lambda_context)
    publish_model(registry, storage, "iris", 2, iris_model_reversed.onnx)
    body = infer_body(iris.features[:1], outputs=["label"])

    # WHEN each route is asked
    prod = api.infer("iris", body)
    v1 = api.infer("iris", body, version="1")
    v2 = api.infer("iris", body, version="2")

    # THEN versioned routes serve their version, and the plain route serves prod (v1)
    assert (prod.body["model_version"], v1.body["model_version"]) == ("1", "1")
    assert v2.body["model_version"] == "2"
    assert prod.body["outputs"] == v1.body["outputs"] != v2.body["outputs"]

    # WHEN v2 is promoted
    registry.promote("iris", 2, actor="alice", reason="v2 is better")
    after = api.infer("iris", body)

    # THEN the plain route switches to v2
    assert after.body["model_version"] == "2"
    assert after.body["outputs"] == v2.body["outputs"]


def test_infer_alias_is_cached_for_its_ttl(
    api: Api, registry: Any, storage: Any, iris: Any
) -> None:
    # GIVEN a warm function that resolved prod -> v1 (default TTL of seconds)
    publish_model(registry, storage, "iris", 2, iris.onnx)
    body = infer_body(iris.features[:1])
    assert api.infer("iris", body).body["model_version"] == "1"

    # WHEN v2 is promoted and the cached alias cleared, as after the TTL
    registry.promote("iris", 2, actor="alice", reason="v2")
    stale = api.infer("iris", body)
    api.app.store()._aliases.clear()
    fresh = api.infer("iris", body)

    # THEN within the TTL it still serves v1, and after it v2
    assert stale.body["model_version"] == "1"
    assert fresh.body["model_version"] == "2"


def test_infer_loaded_session_is_reused_across_requests(api: Api, aws: Any, iris: Any) -> None:
    # GIVEN a first request that loaded v1
    body = infer_body(iris.features[:1])
    assert api.infer("iris", body).status == 200

    # WHEN the artifact disappears from S3
    listing = aws.s3.list_object_versions(Bucket="maas-artifacts", Prefix="models/iris/1/")
    for v in listing.get("Versions", []):
        aws.s3.delete_object(Bucket="maas-artifacts", Key=v["Key"], VersionId=v["VersionId"])

    # THEN the warm function keeps serving from its loaded session
    assert api.infer("iris", body).status == 200


# --- errors -------------------------------------------------------------------------------


def test_unknown_model_is_404(api: Api, aws: Any) -> None:
    assert_error(api.infer("nope", infer_body([[1, 2, 3, 4]])), 404, "nope")
    assert_error(api("GET", "/v2/models/nope"), 404, "not found")
    assert_error(api("GET", "/v2/models/nope/ready"), 404)


@pytest.mark.parametrize("version", ["9", "0", "-1", "abc", "1.0"])
def test_unknown_version_is_404(api: Api, iris: Any, version: str) -> None:
    assert_error(
        api.infer("iris", infer_body(iris.features[:1]), version=version), 404, "not found"
    )


def test_wrong_datatype_is_400(api: Api, iris: Any) -> None:
    body = {
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]}]
    }
    assert_error(api.infer("iris", body), 400, "INT64", "FP32")


@pytest.mark.parametrize("shape", [[1, 3], [4], [1, 1, 4], [1, 5]])
def test_wrong_shape_is_400(api: Api, iris: Any, shape: list[int]) -> None:
    count = int(np.prod(shape))
    body = {
        "inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": [0.5] * count}]
    }
    assert_error(api.infer("iris", body), 400, "shape")


def test_wrong_element_count_is_400(api: Api, iris: Any) -> None:
    body = {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [0.5] * 7}]}
    assert_error(api.infer("iris", body), 400, "needs 8 elements but data has 7")


@pytest.mark.parametrize("raw", ["{", "not json", '{"inputs": [1,]}', ""])
def test_malformed_body_is_400(api: Api, iris: Any, raw: str) -> None:
    assert_error(api.infer("iris", raw), 400)


def test_missing_input_is_400(api: Api, iris: Any) -> None:
    body = infer_body(iris.features[:1], name="features")
    assert_error(api.infer("iris", body), 400, "missing input 'input'")


def test_extra_input_is_400(api: Api, iris: Any) -> None:
    body = infer_body(iris.features[:1])
    body["inputs"].append({"name": "extra", "shape": [1], "datatype": "FP32", "data": [1]})
    assert_error(api.infer("iris", body), 400, "unknown input")


def test_unknown_requested_output_is_400(api: Api, iris: Any) -> None:
    assert_error(
        api.infer("iris", infer_body(iris.features[:1], outputs=["logits"])), 400, "unknown output"
    )


def test_empty_batch_is_400(api: Api, iris: Any) -> None:
    body = {"inputs": [{"name": "input", "shape": [0, 4], "datatype": "FP32", "data": []}]}
    assert_error(api.infer("iris", body), 400, "empty batch")


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_input_is_400(api: Api, iris: Any, value: str) -> None:
    raw = (
        '{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", '
        f'"data": [1, 2, 3, {value}]}}]}}'
    )
    assert_error(api.infer("iris", raw), 400, "NaN or infinite")


def test_batch_above_max_batch_size_is_413(
    aws: Any, iris: Any, monkeypatch: pytest.MonkeyPatch, lambda_context: Any
) -> None:
    # GIVEN a function configured for batches of at most 4
    monkeypatch.setenv("MAX_BATCH_SIZE", "4")
    api = Api(load_handler("inference"), lambda_context)

    # THEN 4 rows pass and 5 are refused as too large
    assert api.infer("iris", infer_body(iris.features[:4])).status == 200
    assert_error(api.infer("iris", infer_body(iris.features[:5])), 413, "exceeds the limit of 4")


def test_body_over_6_mb_is_413(api: Api, iris: Any) -> None:
    body = json.dumps(infer_body(iris.features[:1])) + " " * (6 * 1024 * 1024)
    assert_error(api.infer("iris", body), 413, "exceeds")


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/v3"),
        ("GET", "/v2/models"),
        ("POST", "/v2/models/iris/explain"),
        ("GET", "/"),
        ("DELETE", "/v2/models/iris"),
    ],
)
def test_unknown_route_is_404(api: Api, method: str, path: str) -> None:
    assert_error(api(method, path), 404, "no route")


def test_get_on_infer_route_is_404_not_a_crash(api: Api, iris: Any) -> None:
    assert_error(api("GET", "/v2/models/iris/infer"), 404)


def test_model_with_tampered_artifact_is_503_and_other_models_keep_serving(
    api: Api, registry: Any, storage: Any, iris: Any, aws: Any, iris_model_reversed: Any
) -> None:
    # GIVEN a second model whose stored model.onnx no longer matches its manifest's sha256
    # (bytes of its own: the model cache is keyed by content, see test_serving_versions)
    publish_model(registry, storage, "tampered", 1, iris_model_reversed.onnx, promote=True)
    aws.s3.put_object(
        Bucket="maas-artifacts",
        Key="models/tampered/1/model.onnx",
        Body=iris_model_reversed.onnx + b"\x00",
    )

    # WHEN both are asked, twice
    replies = [api.infer(m, infer_body(iris.features[:1])) for m in ("tampered", "iris") * 2]

    # THEN the tampered one is refused every time (never loaded) and iris still serves
    for reply in replies[0::2]:
        assert_error(reply, 503, "integrity")
    assert all(r.status == 200 for r in replies[1::2])
    assert ("tampered", 1) not in api.app.store()._sessions


def test_model_whose_artifact_is_missing_is_503(
    api: Api, registry: Any, storage: Any, iris: Any, aws: Any
) -> None:
    # GIVEN a READY version whose model.onnx was deleted from the artifact bucket
    publish_model(registry, storage, "lost", 1, iris.onnx, promote=True)
    listing = aws.s3.list_object_versions(
        Bucket="maas-artifacts", Prefix="models/lost/1/model.onnx"
    )
    for v in listing["Versions"]:
        aws.s3.delete_object(Bucket="maas-artifacts", Key=v["Key"], VersionId=v["VersionId"])

    # THEN it cannot serve now (503), which is not a server crash (500)
    assert_error(api.infer("lost", infer_body(iris.features[:1])), 503, "lost")


def test_model_whose_manifest_is_corrupt_is_503(
    api: Api, registry: Any, storage: Any, iris: Any, aws: Any
) -> None:
    publish_model(registry, storage, "garbled", 1, iris.onnx, promote=True)
    aws.s3.put_object(
        Bucket="maas-artifacts", Key="models/garbled/1/manifest.json", Body=b"{not json"
    )
    assert_error(api.infer("garbled", infer_body(iris.features[:1])), 503, "manifest")


def test_version_still_training_is_503(api: Api, registry: Any, storage: Any, iris: Any) -> None:
    publish_model(registry, storage, "iris", 2, iris.onnx, status="TRAINING")
    assert_error(api.infer("iris", infer_body(iris.features[:1]), version="2"), 503, "TRAINING")


def test_model_with_no_prod_version_yet_is_503(
    api: Api, registry: Any, storage: Any, iris_model: Any
) -> None:
    publish_model(registry, storage, "fresh", 1, iris_model.onnx)  # READY, not promoted
    assert_error(api.infer("fresh", infer_body(iris_model.features[:1])), 503, "prod")
    assert api.infer("fresh", infer_body(iris_model.features[:1]), version="1").status == 200


def test_registry_unreachable_is_503_without_details(api: Api, aws: Any, iris: Any) -> None:
    # GIVEN the registry table is gone (an AWS dependency failing)
    aws.dynamodb.delete_table(TableName=aws.table)

    # THEN requests fail as unavailable, without leaking the AWS error
    assert_error(api.infer("iris", infer_body(iris.features[:1])), 503, "retry later")


# --- the replayable event files ------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_onnx() -> bytes:
    """A digits classifier (64 pixel features, classes "0".."9"), as events/ assumes."""
    classifier, _ = train_tiny_classifier("digits")
    return classifier.onnx_bytes()


def test_built_http_events_have_the_shape_of_the_events_files() -> None:
    real = event_file("http-post-infer.json")
    built = http_event("POST", "/v2/models/digits/infer", {"inputs": []})
    assert set(real) - {"pathParameters"} <= set(built)
    assert set(real["requestContext"]) <= set(built["requestContext"])
    assert set(real["requestContext"]["http"]) == set(built["requestContext"]["http"])


def test_events_file_health_live_replayed_is_200(api: Api) -> None:
    event = event_file("http-get-health-live.json")
    response = api.app.lambda_handler(event, api.context)
    assert (response["statusCode"], json.loads(response["body"])) == (200, {"live": True})


@pytest.mark.parametrize("name", ["http-get-model-metadata.json", "http-post-infer.json"])
def test_events_file_for_digits_replayed_is_200(
    api: Api, registry: Any, storage: Any, digits_onnx: bytes, name: str
) -> None:
    # GIVEN a digits model in prod and the event file as `sam local invoke -e` sends it
    event = event_file(name)
    publish_model(registry, storage, "digits", 1, digits_onnx, promote=True)

    # WHEN it is replayed unchanged
    response = api.app.lambda_handler(event, api.context)

    # THEN it is answered: metadata for 64 features, or the digit the event draws (a zero)
    assert response["statusCode"] == 200, response["body"]
    body = json.loads(response["body"])
    if "model_name" in body:
        label = next(o for o in body["outputs"] if o["name"] == "label")
        assert label["data"] == ["0"]
    else:
        assert body["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]


# --- what Lambda imports ------------------------------------------------------------------


def test_inference_handler_never_imports_torch(tmp_path: Any, iris_model: Any) -> None:
    # GIVEN a fresh interpreter that only loads the inference handler and serves a request
    model_file = tmp_path / "model.onnx"
    model_file.write_bytes(iris_model.onnx)
    script = textwrap.dedent(f"""
        import json, sys
        import boto3, moto
        from maas_devkit.events import http_event
        from maas_devkit.lambda_runtime import LambdaContext, load_handler
        from maas_devkit.models import infer_body
        with moto.mock_aws():
            boto3.client("s3").create_bucket(Bucket="maas-artifacts")
            boto3.client("dynamodb").create_table(
                TableName="maas-registry", BillingMode="PAY_PER_REQUEST",
                KeySchema=[{{"AttributeName": "pk", "KeyType": "HASH"}},
                           {{"AttributeName": "sk", "KeyType": "RANGE"}}],
                AttributeDefinitions=[{{"AttributeName": "pk", "AttributeType": "S"}},
                                      {{"AttributeName": "sk", "AttributeType": "S"}}])
            app = load_handler("inference")
            from maas_devkit.publish import publish_model
            from maas.core.registry import Registry
            from maas.core.storage import Storage
            publish_model(Registry("maas-registry"), Storage(), "iris", 1,
                          open({str(model_file)!r}, "rb").read(), promote=True)
            ctx = LambdaContext()
            live = app.lambda_handler(http_event("GET", "/v2/health/live"), ctx)
            body = infer_body([[5.1, 3.5, 1.4, 0.2]])
            infer = app.lambda_handler(http_event("POST", "/v2/models/iris/infer", body), ctx)
        heavy = sorted(m for m in ("torch", "sklearn", "onnx") if m in sys.modules)
        print(json.dumps({{"live": live["statusCode"], "infer": infer["statusCode"],
                          "heavy": heavy}}))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "REGISTRY_TABLE": "maas-registry",
            "ARTIFACT_BUCKET": "maas-artifacts",
            "MODEL_CACHE_DIR": str(tmp_path / "cache"),
            "POWERTOOLS_METRICS_NAMESPACE": "maas",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "ERROR",
        }
    )

    # WHEN it runs
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )

    # THEN it served, and neither torch nor the training/optimizer libraries were imported
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["live"], result["infer"]) == (200, 200)
    assert "torch" not in result["heavy"]
    assert result["heavy"] == []
