"""Batch predictions by upload: the real training job's model, the predict handler fanning a
CSV out over SQS chunk messages, the outputs compared row by row with the inference handler."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from maas_devkit import account
from maas_devkit.events import http_event, sqs_record_of
from maas_devkit.lambda_runtime import load_handler

from tests import tables
from tests.integration.test_tables import _publish, _train

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
MODEL = "rides"
CHUNK_ROWS = 40


def _frame(n: int, seed: int = 0) -> pd.DataFrame:
    """A small table with a number, a category, a date and gaps; a numeric target."""
    rng = np.random.default_rng(seed)
    km = rng.uniform(1, 30, n).round(2)
    city = rng.choice(["lisbon", "porto", "faro"], n)
    day = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 365, n), unit="D")
    fare = 3 + 1.2 * km + np.where(city == "lisbon", 4.0, 0.0) + rng.normal(0, 0.5, n)
    frame = pd.DataFrame(
        {"km": km, "city": city, "day": day.strftime("%Y-%m-%d"), "fare": fare.round(2)}
    )
    frame.loc[rng.random(n) < 0.1, "city"] = None
    return frame


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("rides")
    proc = _train(base, _frame(300), {"label": "fare", "recipe": "mlp", "epochs": 20})
    assert proc.wait(timeout=300) == 0, (base / "job.log").read_text()[-3000:]
    return base / "model"


@pytest.fixture
def served(aws: Any, lambda_context: Any, model_dir: Path, monkeypatch: pytest.MonkeyPatch):
    _publish(aws, MODEL, model_dir, lambda_context)
    url = aws.sqs.get_queue_url(QueueName=account.local_name("PredictQueue"))["QueueUrl"]
    monkeypatch.setenv("PREDICT_QUEUE_URL", url)
    monkeypatch.setenv("PREDICT_CHUNK_ROWS", str(CHUNK_ROWS))
    _drain(aws, url, load_handler("predict"), lambda_context)  # S3's s3:TestEvent, ignored
    return url


def _upload_event(aws: Any, key: str, body: bytes) -> None:
    """The upload; S3 (moto) notifies the predict queue of it."""
    aws.s3.put_object(Bucket=aws.data_bucket, Key=key, Body=body)


def _drain(aws: Any, url: str, handler: Any, context: Any) -> int:
    """Lambda's event source mapping, one message per invocation; the invocations made."""
    calls = 0
    while True:
        got = aws.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1).get("Messages", [])
        if not got:
            return calls
        reply = handler.lambda_handler({"Records": [sqs_record_of(got[0], "arn")]}, context)
        assert reply == {"batchItemFailures": []}, reply
        aws.sqs.delete_message(QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"])
        calls += 1


def _artifact(aws: Any, key: str) -> bytes:
    body: bytes = aws.s3.get_object(Bucket=aws.artifact_bucket, Key=key)["Body"].read()
    return body


def test_a_csv_upload_is_scored_in_chunks_like_the_endpoint_with_bad_rows_apart(
    aws: Any, lambda_context: Any, served: str
) -> None:
    # GIVEN a CSV of 150 rows (4 chunks), two of them with values the model cannot take
    frame = _frame(150, seed=7).drop(columns=["fare"])
    frame["note"] = "kept as it is"  # a column the model does not take: carried through
    frame["km"] = frame["km"].astype(object)
    frame.loc[5, "km"] = "far"
    frame.loc[77, "day"] = "someday"
    body = frame.to_csv(index=False).encode()
    handler = load_handler("predict")
    # WHEN it is uploaded under predictions/<model>/ (S3 notifies the queue) and the queue is
    # drained: the notification plans, each of the 4 chunk messages it sends scores
    _upload_event(aws, f"predictions/{MODEL}/april.csv", body)
    assert _drain(aws, served, handler, lambda_context) == 1 + 4
    # THEN the outputs sit in the artifact bucket: every good row scored, the bad ones apart
    summary = json.loads(_artifact(aws, f"predictions/{MODEL}/april.summary.json"))
    assert (summary["rows"], summary["scored"], summary["errors"]) == (150, 148, 2)
    assert summary["chunks"] == 4 and summary["version"] == 1
    out = list(
        csv.DictReader(io.StringIO(_artifact(aws, f"predictions/{MODEL}/april.out.csv").decode()))
    )
    errors = list(
        csv.DictReader(
            io.StringIO(_artifact(aws, f"predictions/{MODEL}/april.errors.csv").decode())
        )
    )
    assert [(e["row"], e["reason"]) for e in errors] == [
        ("6", "column 'km': 'far' is not a number"),
        ("78", "column 'day': 'someday' is not an ISO 8601 date or date-time"),
    ]
    assert len(out) == 148 and set(out[0]) == {"km", "city", "day", "note", "prediction"}
    assert all(r["note"] == "kept as it is" for r in out)
    # AND each prediction is the inference endpoint's for the same row
    good = frame.drop(index=[5, 77]).reset_index(drop=True)
    good["km"] = good["km"].astype(float)
    app = load_handler("inference")
    meta = json.loads(
        app.lambda_handler(http_event("GET", f"/v2/models/{MODEL}"), lambda_context)["body"]
    )
    request = tables.oip_columns(good, meta["inputs"])
    online = json.loads(
        app.lambda_handler(
            http_event("POST", f"/v2/models/{MODEL}/infer", request), lambda_context
        )["body"]
    )
    [prediction] = online["outputs"]
    assert [float(r["prediction"]) for r in out] == pytest.approx(prediction["data"], rel=0, abs=0)


def test_a_duplicate_event_rewrites_the_same_outputs(
    aws: Any, lambda_context: Any, served: str
) -> None:
    # GIVEN an upload scored once
    body = _frame(60, seed=3).drop(columns=["fare"]).to_csv(index=False).encode()
    handler = load_handler("predict")
    _upload_event(aws, f"predictions/{MODEL}/versions/1/dup.csv", body)
    [notification] = aws.sqs.receive_message(QueueUrl=served)["Messages"]  # as S3 sent it
    event = {"Records": [sqs_record_of(notification, "arn")]}
    handler.lambda_handler(event, lambda_context)
    _drain(aws, served, handler, lambda_context)
    first = _artifact(aws, f"predictions/{MODEL}/versions/1/dup.out.csv")
    job = json.loads(_artifact(aws, f"predictions/{MODEL}/versions/1/dup.summary.json"))["job"]
    # WHEN S3 delivers the same event again
    handler.lambda_handler(event, lambda_context)
    _drain(aws, served, handler, lambda_context)
    # THEN the same job rewrote the same bytes
    assert _artifact(aws, f"predictions/{MODEL}/versions/1/dup.out.csv") == first
    again = json.loads(_artifact(aws, f"predictions/{MODEL}/versions/1/dup.summary.json"))
    assert again["job"] == job and again["scored"] == 60


@pytest.mark.parametrize(
    ("key", "body", "message"),
    [
        (f"predictions/{MODEL}/x.parquet", b"PAR1", "Parquet is not read"),
        (
            f"predictions/{MODEL}/x.csv",
            b"km,city\n1,porto\n",
            "lacks the model's column(s) ['day']",
        ),
        (
            f"predictions/{MODEL}/versions/9/x.csv",
            b"km\n1\n",
            "version 9 of model 'rides' not found",
        ),
    ],
)
def test_an_upload_that_cannot_be_scored_says_why_in_its_summary(
    aws: Any, lambda_context: Any, served: str, key: str, body: bytes, message: str
) -> None:
    handler = load_handler("predict")
    _upload_event(aws, key, body)
    _drain(aws, served, handler, lambda_context)
    stem = key.rsplit(".", 1)[0]
    summary = json.loads(_artifact(aws, f"{stem}.summary.json"))
    assert message in summary.get("error", "") or any(
        message in line for line in _artifact(aws, f"{stem}.errors.csv").decode().splitlines()
    ), summary
