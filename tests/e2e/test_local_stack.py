"""End to end through the local stack: plain boto3 uploads in, plain HTTP requests out."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import boto3
import numpy as np
import pytest
import requests
from maas_devkit.stacks import running_stack
from maas_devkit.wait import wait_until_final
from maas_local.stack import LocalStack
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    with running_stack(tmp_path_factory.mktemp("stack")) as s:
        yield s


def _s3(stack: LocalStack):
    # What a user's own boto3 does: nothing but the endpoint differs from AWS.
    return boto3.client(
        "s3",
        endpoint_url=stack.aws_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _write_csv(path: Path, header: list[str], x: np.ndarray, y) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row, label in zip(x, y, strict=True):
            w.writerow([*row.tolist(), label])


def _infer(stack: LocalStack, model: str, x: np.ndarray, batch: int = 64) -> list[str]:
    labels: list[str] = []
    for start in range(0, len(x), batch):
        rows = x[start : start + batch]
        body = {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(rows.shape),
                    "datatype": "FP32",
                    "data": rows.astype(float).ravel().tolist(),
                }
            ]
        }
        r = requests.post(f"{stack.api_url}/v2/models/{model}/infer", json=body, timeout=30)
        assert r.status_code == 200, r.text
        out = {o["name"]: o for o in r.json()["outputs"]}
        labels.extend(out["label"]["data"])
    return labels


def test_lone_csv_upload_is_trained_quantized_promoted_and_served(stack: LocalStack, tmp_path):
    # GIVEN digits, a quarter kept back
    d = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(
        d.data, d.target, test_size=0.25, stratify=d.target, random_state=0
    )
    data = tmp_path / "digits.csv"
    _write_csv(data, [f"p{i}" for i in range(64)] + ["label"], x_tr.astype(int), y_tr)
    # WHEN the file is dropped into the data bucket with plain boto3
    _s3(stack).upload_file(str(data), stack.outputs["DataBucketName"], "datasets/digits/digits.csv")
    record = wait_until_final(stack, "digits", timeout=300)
    # THEN it is READY, promoted, and serves the held-out rows accurately over HTTP
    assert record["status"] == "READY", record.get("reason")
    summary = record["summary"]
    assert summary["recipe"]
    # AND the optimizer's table has the MLP's distilled students beside fp32, each with its
    # accuracy (against the same held-out rows as the unpruned model) and its latency
    rows = {c["name"]: c for c in summary["candidates"]}
    for c in summary["candidates"]:
        print(f"candidate {c['name']:<40} base {c['base']:<10} {c['quality']} "
              f"b1 {c['batch1_p50_ms']:.4f} ms bN {c['batchN_p50_ms']:.4f} ms "
              f"{'served' if c['served'] else ''}")  # fmt: skip
    students = [c for c in summary["candidates"] if c["base"] != "fp32"]
    assert {"hidden-64", "hidden-64+dynamic-int8-per-channel"} <= set(rows)
    assert all("accuracy" in c["quality"] and c["batch1_p50_ms"] > 0 for c in students)
    served = [c for c in summary["candidates"] if c["served"]]
    assert len(served) == 1 and served[0]["passed_gate"]  # never one that failed the gate
    predicted = _infer(stack, "digits", x_te)
    accuracy = np.mean(np.array(predicted) == y_te.astype(str))
    assert accuracy >= 0.95
    meta = requests.get(f"{stack.api_url}/v2/models/digits", timeout=10).json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    r = requests.post(f"{stack.api_url}/v2/models/nope/infer", json={"inputs": []}, timeout=10)
    assert r.status_code in (400, 404) and "error" in r.json()


def test_run_folder_with_named_label_matches_logistic_regression(stack: LocalStack, tmp_path):
    # GIVEN a different table: string labels in a column called "diagnosis"
    b = load_breast_cancer()
    names = np.array(b.target_names)[b.target]
    x_tr, x_te, y_tr, y_te = train_test_split(
        b.data, names, test_size=0.25, stratify=names, random_state=0
    )
    baseline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x_tr, y_tr)
    baseline_acc = baseline.score(x_te, y_te)
    data = tmp_path / "cancer.csv"
    header = [c.replace(" ", "_") for c in b.feature_names] + ["diagnosis"]
    _write_csv(data, header, x_tr, y_tr)
    s3 = _s3(stack)
    bucket = stack.outputs["DataBucketName"]
    # WHEN uploaded as a run folder, the data first and job.json last
    s3.upload_file(str(data), bucket, "datasets/cancer/run-1/part-0.csv")
    s3.put_object(
        Bucket=bucket,
        Key="datasets/cancer/run-1/job.json",
        Body=json.dumps({"label": "diagnosis"}).encode(),
    )
    record = wait_until_final(stack, "cancer", timeout=300)
    # THEN it serves within 2 points of the logistic-regression baseline on the same split
    assert record["status"] == "READY", record.get("reason")
    accuracy = np.mean(np.array(_infer(stack, "cancer", x_te)) == y_te)
    assert accuracy >= baseline_acc - 0.02, (accuracy, baseline_acc)


def test_cli_upload_wait_versions_promote_rollback(
    stack: LocalStack, tmp_path, monkeypatch, capsys
):
    from maas_cli.main import main
    from sklearn.datasets import load_wine

    # GIVEN the CLI pointed at the running stack by AWS_ENDPOINT_URL alone
    monkeypatch.setenv("AWS_ENDPOINT_URL", stack.aws_url)
    monkeypatch.setenv("MAAS_STATE_DIR", str(tmp_path / "state"))
    w = load_wine()
    data = tmp_path / "wine.csv"
    _write_csv(data, [*w.feature_names, "cultivar"], w.data, w.target)
    # WHEN two runs are uploaded and waited for
    for _ in range(2):
        assert (
            main(
                [
                    "upload",
                    str(data),
                    "--model",
                    "wine",
                    "--label",
                    "cultivar",
                    "--run",
                    f"run-{time.monotonic_ns()}",
                ]
            )
            == 0
        )
        assert main(["wait", "wine", "--timeout", "300"]) == 0
    capsys.readouterr()
    # THEN both versions are listed, v2 serving; promote and rollback move prod
    assert main(["versions", "wine"]) == 0
    listing = capsys.readouterr().out
    assert "v1" in listing and "v2" in listing and "prod" in listing
    assert main(["versions", "wine", "--candidates"]) == 0
    table = capsys.readouterr().out
    assert "fp32" in table and "<- served" in table and "batch1" in table
    assert main(["promote", "wine", "1"]) == 0
    assert "prod -> v1" in capsys.readouterr().out
    assert main(["rollback", "wine"]) == 0
    assert "prod -> v2" in capsys.readouterr().out
    assert main(["promote", "wine", "7"]) == 1  # no such version: a clear error, not a trace
    assert "error" in capsys.readouterr().err
    assert main(["models"]) == 0
    assert "wine" in capsys.readouterr().out
