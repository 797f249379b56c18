"""A text model served by the inference handler: BYTES in, through maas.serving.textprep, to graph.

The model is a real (tiny) embedding-bag classifier over hashed n-gram ids, built with
onnx.helper; the manifest carries text.json's sha256 as the optimizer writes it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pytest
from maas_devkit.lambda_runtime import load_handler
from maas_devkit.publish import publish_model

pytestmark = pytest.mark.usefixtures("aws")

BUCKETS = 64


def _ngram_classifier() -> bytes:
    """ids [batch, n] -> mean of embedding rows -> MatMul -> Softmax "probabilities", plus
    the STRING "label" head."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(BUCKETS + 1, 4)).astype(np.float32)
    emb[BUCKETS] = 0
    w = rng.normal(size=(4, 2)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["vecs"]),
        helper.make_node("ReduceMean", ["vecs", "axes"], ["mean"], keepdims=0),
        helper.make_node("MatMul", ["mean", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["idx"], axis=1, keepdims=0),
        helper.make_node("Gather", ["names", "idx"], ["label"]),
    ]
    graph = helper.make_graph(
        nodes,
        "ngram",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "n"])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("label", TensorProto.STRING, ["batch"]),
        ],
        [
            numpy_helper.from_array(emb, "emb"),
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
            helper.make_tensor("names", TensorProto.STRING, [2], [b"ham", b"spam"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model.SerializeToString()


def _publish(aws: Any, text_json: bytes, listed_sha: str | None = None) -> None:
    from maas.serving.textprep import HashedNgrams

    spec = json.loads(text_json)
    publish_model(
        aws.registry(),
        aws.storage(),
        "spam",
        1,
        _ngram_classifier(),
        {
            "task": "text-classification",
            "text": {
                "spec": spec,
                "files": {"text.json": listed_sha or hashlib.sha256(text_json).hexdigest()},
            },
            "graph_inputs": ["ids"],
        },
        promote=True,
    )
    aws.s3.put_object(Bucket=aws.artifact_bucket, Key="models/spam/1/text.json", Body=text_json)
    assert spec == HashedNgrams(buckets=BUCKETS).spec()


def _post(handler: Any, ctx: Any, body: dict) -> tuple[int, dict]:
    from maas_devkit.events import http_event

    event = http_event("POST", "/v2/models/spam/infer", body=json.dumps(body))
    resp = handler.lambda_handler(event, ctx)
    return resp["statusCode"], json.loads(resp["body"])


def test_bytes_text_is_encoded_by_the_shared_module_and_served(aws: Any, lambda_context) -> None:
    from maas.serving.textprep import HashedNgrams

    # GIVEN a promoted text model whose manifest lists text.json
    text_json = json.dumps(HashedNgrams(buckets=BUCKETS).spec()).encode()
    _publish(aws, text_json)
    handler = load_handler("inference")
    texts = ["win a free prize now", "meeting moved to 3pm", "x"]
    # WHEN BYTES text is posted
    status, doc = _post(
        handler,
        lambda_context,
        {"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": texts}]},
    )
    # THEN the graph ran on the ids maas.serving.textprep makes, and metadata shows the text input
    assert status == 200, doc
    out = {o["name"]: o for o in doc["outputs"]}
    assert out["probabilities"]["shape"] == [3, 2]
    import onnxruntime as ort

    sess = ort.InferenceSession(_ngram_classifier(), providers=["CPUExecutionProvider"])
    want = sess.run(["probabilities"], HashedNgrams(buckets=BUCKETS).encode(texts))[0]
    np.testing.assert_allclose(
        np.asarray(out["probabilities"]["data"]).reshape(3, 2), want, rtol=1e-5
    )
    assert set(out["label"]["data"]) <= {"ham", "spam"}
    from maas_devkit.events import http_event

    meta = handler.lambda_handler(http_event("GET", "/v2/models/spam"), lambda_context)
    assert json.loads(meta["body"])["inputs"] == [
        {"name": "text", "datatype": "BYTES", "shape": [-1]}
    ]
    # AND numbers where text belongs are a 400
    status, doc = _post(
        handler,
        lambda_context,
        {"inputs": [{"name": "text", "shape": [1], "datatype": "INT64", "data": [1]}]},
    )
    assert status == 400 and "BYTES" in doc["error"]


def test_text_file_failing_its_checksum_makes_the_version_unavailable(
    aws: Any, lambda_context
) -> None:
    from maas.serving.textprep import HashedNgrams

    text_json = json.dumps(HashedNgrams(buckets=BUCKETS).spec()).encode()
    _publish(aws, text_json, listed_sha="0" * 64)
    status, doc = _post(
        load_handler("inference"),
        lambda_context,
        {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]},
    )
    assert status == 503 and "text.json failed its integrity check" in doc["error"]


def test_optimizer_publishes_text_files_and_plot_with_their_checksums(aws: Any) -> None:
    import io
    import tarfile

    from maas.core.names import job_name
    from maas.serving.textprep import HashedNgrams
    from test_optimize import _event

    # GIVEN a text model's training artifact: text.json, the sample's ids and raw text, a plot
    enc = HashedNgrams(buckets=BUCKETS)
    texts = ["win a free prize now", "meeting moved to 3pm"] * 20
    ids = enc.encode(texts)["ids"]
    buf = io.BytesIO()
    np.savez(buf, input__ids=ids, target=np.array([1, 0] * 20), text=np.array(texts))
    text_json = json.dumps(enc.spec()).encode()
    files = {
        "model.onnx": _ngram_classifier(),
        "sample.npz": buf.getvalue(),
        "metrics.json": b'{"test_accuracy": 0.5, "task": "text-classification"}',
        "labels.json": b'["ham", "spam"]',
        "schema.json": json.dumps(
            {
                "task": "text-classification",
                "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
                "graph_inputs": ["ids"],
                "outputs": [],
            }
        ).encode(),
        "text.json": text_json,
        "training.png": b"\x89PNG\r\n\x1a\nnot really",
    }
    tarball = io.BytesIO()
    with tarfile.open(fileobj=tarball, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    key = "training-output/job/output/model.tar.gz"
    aws.s3.put_object(Bucket=aws.artifact_bucket, Key=key, Body=tarball.getvalue())
    registry = aws.registry()
    name = job_name("spam", "run-1", "etag")
    claim = registry.claim_job(
        job_name=name, model="spam", run="run-1", source="s3://x/y", actor="t"
    )
    registry.update_summary("spam", claim.version, {"spec": {"task": "text-classification"}})
    registry.mark_started(name)
    # WHEN the optimizer handles the completion event
    handler = load_handler("optimize")
    from maas_devkit.lambda_runtime import LambdaContext

    out = handler.lambda_handler(
        _event(name, artifact=f"s3://{aws.artifact_bucket}/{key}"), LambdaContext()
    )
    # THEN the version is READY with text.json and the plot beside the model, sha256-listed
    assert out["action"] == "ready", out
    manifest = json.loads(
        aws.s3.get_object(Bucket=aws.artifact_bucket, Key="models/spam/1/manifest.json")[
            "Body"
        ].read()
    )
    assert manifest["text"]["spec"] == enc.spec()
    assert manifest["text"]["files"] == {"text.json": hashlib.sha256(text_json).hexdigest()}
    assert manifest["graph_inputs"] == ["ids"] and manifest["plot"] == "training.png"
    for name_ in ("text.json", "training.png"):
        body = aws.s3.get_object(Bucket=aws.artifact_bucket, Key=f"models/spam/1/{name_}")
        assert body["Body"].read() == files[name_]
    summary = registry.get_version("spam", 1).summary
    assert summary["plot"] == f"s3://{aws.artifact_bucket}/models/spam/1/training.png"
    # Gather (the embedding table) is among the quantized ops for text models
    recipes = {c["recipe"]: c for c in manifest["quantization"]["candidates"]}
    assert recipes["dynamic-int8-per-channel"]["error"] is None
