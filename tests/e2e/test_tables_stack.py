"""Tables through the local stack over HTTP: uploaded with plain boto3, trained, served from raw
rows, and scored in bulk by upload (batch predictions), as a user would."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import requests
from maas_devkit.stacks import running_stack
from maas_devkit.wait import wait_until_final
from maas_local.stack import LocalStack

from tests import tables

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]
TRAINING_BUDGET_S = 300  # acceptance: 50,000 rows x 10 columns, upload -> serving, 2 cores
BIG_ROWS = 100_000
HTTP_CHUNK = 1000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    with running_stack(tmp_path_factory.mktemp("stack")) as s:
        yield s


def _client(stack: LocalStack, service: str) -> Any:
    # What a user's own boto3 does: nothing but the endpoint differs from AWS.
    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=stack.aws_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _upload_run(stack: LocalStack, model: str, frame: Any, label: str, tmp: Path) -> float:
    """A run folder whose job.json names only the label; the time job.json went up."""
    s3, bucket = _client(stack, "s3"), stack.outputs["DataBucketName"]
    path = tmp / f"{model}.csv"
    frame.to_csv(path, index=False)
    s3.upload_file(str(path), bucket, f"datasets/{model}/run-1/{path.name}")
    started = time.monotonic()
    s3.put_object(
        Bucket=bucket, Key=f"datasets/{model}/run-1/job.json", Body=json.dumps({"label": label})
    )
    return started


def _serve(stack: LocalStack, model: str, frame: Any) -> dict[str, list[Any]]:
    """The rows scored over HTTP from the model's metadata alone, HTTP_CHUNK rows a request."""
    http = requests.Session()
    meta = http.get(f"{stack.api_url}/v2/models/{model}", timeout=30).json()
    outputs: dict[str, list[Any]] = {}
    for start in range(0, len(frame), HTTP_CHUNK):
        body = tables.oip_columns(frame.iloc[start : start + HTTP_CHUNK], meta["inputs"])
        r = http.post(f"{stack.api_url}/v2/models/{model}/infer", json=body, timeout=60)
        assert r.status_code == 200, r.text
        for o in r.json()["outputs"]:
            outputs.setdefault(o["name"], []).extend(o["data"])
    return outputs


def test_a_real_table_is_served_from_raw_rows_over_http(stack: LocalStack, tmp_path: Path) -> None:
    # GIVEN vega_datasets' cars (strings, gaps, a date, a numeric label), a quarter held back
    table = tables.cars()
    up, back = tables.split(table)
    _upload_run(stack, table.name, up, table.label, tmp_path)
    record = wait_until_final(stack, table.name, timeout=600)
    assert record["status"] == "READY", record.get("reason")
    # WHEN the held-back rows are sent as they are in the file (strings and nulls)
    pred = np.asarray(_serve(stack, table.name, back)["prediction"], dtype=np.float64)
    # THEN R^2 is within 2 points of the better scikit-learn baseline on the same split
    y = back[table.label].to_numpy(dtype=np.float64)
    served = 1.0 - float(np.sum((pred - y) ** 2) / np.sum((y - y.mean()) ** 2))
    reference = tables.baselines(table, up[up[table.label].notna()], back)
    print(f"{table.name} over HTTP: R^2 {served:.4f}, baselines {reference}")
    assert served >= max(reference.values()) - 0.02


@pytest.fixture(scope="module")
def churn(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> float:
    """The 50,000-row mixed table trained through the stack: upload -> serving seconds."""
    frame = tables.mixed(50_000)
    started = _upload_run(stack, "churn", frame, "churned", tmp_path_factory.mktemp("churn"))
    record = wait_until_final(stack, "churn", timeout=900)
    assert record["status"] == "READY", record.get("reason")
    probe = tables.oip_columns(frame.iloc[:1], _metadata(stack, "churn")["inputs"])
    while (
        requests.post(f"{stack.api_url}/v2/models/churn/infer", json=probe, timeout=30).status_code
        != 200
    ):
        time.sleep(0.1)
    return time.monotonic() - started


def _metadata(stack: LocalStack, model: str) -> dict[str, Any]:
    for _ in range(300):
        r = requests.get(f"{stack.api_url}/v2/models/{model}", timeout=30)
        if r.status_code == 200:
            doc: dict[str, Any] = r.json()
            return doc
        time.sleep(0.2)
    raise AssertionError(r.text)


def test_a_50k_row_mixed_table_trains_through_the_stack_in_under_5_minutes(churn: float) -> None:
    print(f"50,000 rows x 10 columns: upload -> serving {churn:.1f} s on this machine")
    assert churn < TRAINING_BUDGET_S


def _predict(stack: LocalStack, key: str, body: bytes) -> tuple[dict, list[dict], list[dict]]:
    from maas_cli.predictions import wait_summary

    s3 = _client(stack, "s3")
    started = time.time()
    s3.put_object(Bucket=stack.outputs["DataBucketName"], Key=key, Body=body)
    stem = key.rsplit(".", 1)[0]
    summary = wait_summary(stack, f"{stem}.summary.json", 900, started)
    bucket = stack.outputs["ArtifactBucketName"]

    def rows(suffix: str) -> list[dict]:
        text = s3.get_object(Bucket=bucket, Key=stem + suffix)["Body"].read().decode()
        return list(csv.DictReader(io.StringIO(text)))

    return summary, rows(".out.csv"), rows(".errors.csv")


def test_100k_rows_are_scored_by_upload_exactly_as_the_endpoint_scores_them(
    stack: LocalStack, churn: float
) -> None:
    # GIVEN 100,000 new rows of the churn table's columns
    frame = tables.mixed(BIG_ROWS, seed=11).drop(columns=["churned"])
    # WHEN they are uploaded under predictions/churn/ with plain boto3
    summary, out, errors = _predict(
        stack, "predictions/churn/may.csv", frame.to_csv(index=False).encode()
    )
    # THEN every row is scored, in chunks, and written to the artifact bucket
    print(f"100,000 rows: {summary['chunks']} chunks, {summary['seconds']:.1f} s")
    assert (summary["rows"], summary["scored"], summary["errors"]) == (BIG_ROWS, BIG_ROWS, 0)
    assert len(out) == BIG_ROWS and not errors and summary["chunks"] >= 2
    assert [r["customer_id"] for r in out] == frame["customer_id"].tolist()
    # AND each row's prediction is the online endpoint's for the same row
    online = _serve(stack, "churn", frame)
    assert [r["label"] for r in out] == online["label"]
    batch = np.array([json.loads(r["probabilities"]) for r in out])
    assert np.abs(batch.ravel() - np.asarray(online["probabilities"])).max() < 1e-6


def test_a_file_with_bad_rows_gets_an_errors_file_and_the_rest_scored(
    stack: LocalStack, churn: float
) -> None:
    frame = tables.mixed(2000, seed=5).drop(columns=["churned"])
    frame["support_calls"] = frame["support_calls"].astype(object)
    frame.loc[10, "support_calls"] = "many"
    frame.loc[1500, "signup_date"] = "last spring"
    summary, out, errors = _predict(
        stack, "predictions/churn/june.csv", frame.to_csv(index=False).encode()
    )
    assert (summary["scored"], summary["errors"]) == (1998, 2)
    assert len(out) == 1998
    assert [(e["row"], e["reason"]) for e in errors] == [
        ("11", "column 'support_calls': 'many' is not a number"),
        ("1501", "column 'signup_date': 'last spring' is not an ISO 8601 date or date-time"),
    ]
