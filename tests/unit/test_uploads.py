"""The upload contract: which keys start a run, which are ignored, which are rejected."""

from __future__ import annotations

from urllib.parse import quote_plus

import pytest
from maas.ingest.uploads import Ignored, RejectedUpload, Upload, classify, decode_key

pytestmark = pytest.mark.usefixtures("no_network")

BUCKET = "maas-data"


@pytest.mark.parametrize("filename", ["digits.csv", "digits.parquet", "digits.jsonl", "DIGITS.CSV"])
def test_classify_lone_data_file_starts_file_run(filename: str) -> None:
    # GIVEN a data file directly under datasets/<model>/
    key = f"datasets/digits/{filename}"

    # WHEN it is classified
    upload = classify(BUCKET, key)

    # THEN it starts a run whose channel is the file itself
    assert isinstance(upload, Upload)
    assert (upload.kind, upload.model, upload.data_prefix, upload.key) == (
        "file",
        "digits",
        key,
        key,
    )
    assert upload.bucket == BUCKET
    assert upload.run


def test_classify_lone_file_run_name_is_safe_for_any_file_name() -> None:
    upload = classify(BUCKET, "datasets/digits/my data (ü) v2.csv")
    assert isinstance(upload, Upload)
    assert upload.run == "my-data-----v2"


def test_classify_run_folder_job_json_starts_folder_run() -> None:
    # GIVEN a run folder's job.json
    upload = classify(BUCKET, "datasets/iris/run-1/job.json")

    # THEN the run covers the folder
    assert isinstance(upload, Upload)
    assert (upload.kind, upload.model, upload.run, upload.data_prefix) == (
        "run",
        "iris",
        "run-1",
        "datasets/iris/run-1/",
    )


@pytest.mark.parametrize("filename", ["part-0.csv", "data.parquet", "x.jsonl", "README.md"])
def test_classify_data_file_inside_run_folder_is_ignored(filename: str) -> None:
    result = classify(BUCKET, f"datasets/iris/run-1/{filename}")
    assert isinstance(result, Ignored)
    assert "job.json" in result.reason


@pytest.mark.parametrize(
    "key",
    [
        "other/digits/digits.csv",
        "digits.csv",
        "Datasets/digits/digits.csv",
        "pretrained-ish/x/y.csv",
        "datasets",
        "datasets/digits",
        "datasets/digits/",
        "datasets/iris/run-1/",
        "datasets/iris/run-1/sub/job.json",
    ],
)
def test_classify_key_outside_the_contract_is_ignored(key: str) -> None:
    assert isinstance(classify(BUCKET, key), Ignored)


@pytest.mark.parametrize(
    "key",
    [
        "datasets/Digits/digits.csv",
        "datasets/../x",
        "datasets/../x/job.json",
        "datasets/" + "a" * 64 + "/d.csv",
        "datasets/dig_its/d.csv",
        "datasets/-x/d.csv",
        "datasets/./d.csv",
    ],
)
def test_classify_bad_model_name_is_rejected_without_a_model(key: str) -> None:
    # GIVEN a key meant to start a run under an invalid model name (incl. path traversal)
    # WHEN it is classified
    with pytest.raises(RejectedUpload) as info:
        classify(BUCKET, key)

    # THEN it is rejected with a reason and no model to record it under
    assert info.value.model is None
    assert "invalid model name" in info.value.reason


@pytest.mark.parametrize("run", ["..", ".hidden", "run 1", "a..b"])
def test_classify_bad_run_name_is_rejected_under_its_model(run: str) -> None:
    with pytest.raises(RejectedUpload) as info:
        classify(BUCKET, f"datasets/iris/{run}/job.json")
    assert info.value.model == "iris"
    assert "invalid run name" in info.value.reason


def test_classify_job_json_outside_a_run_folder_is_rejected() -> None:
    with pytest.raises(RejectedUpload, match="run folder") as info:
        classify(BUCKET, "datasets/iris/job.json")
    assert info.value.model == "iris"


@pytest.mark.parametrize("filename", ["digits.txt", "digits.xlsx", "digits"])
def test_classify_unsupported_lone_file_is_rejected(filename: str) -> None:
    with pytest.raises(RejectedUpload, match="unsupported data format") as info:
        classify(BUCKET, f"datasets/digits/{filename}")
    assert info.value.model == "digits"


@pytest.mark.parametrize(
    "raw, decoded",
    [
        ("datasets/digits/my+data.csv", "datasets/digits/my data.csv"),
        ("datasets/digits/a%2Bb.csv", "datasets/digits/a+b.csv"),
        ("datasets/digits/%C3%BCber.csv", "datasets/digits/über.csv"),
        ("datasets%2Fdigits%2Fx.csv", "datasets/digits/x.csv"),
        ("datasets/iris/run-1/job.json", "datasets/iris/run-1/job.json"),
    ],
)
def test_decode_key_url_encoded_key_decodes(raw: str, decoded: str) -> None:
    assert decode_key(raw) == decoded


@pytest.mark.parametrize("key", ["datasets/digits/my data+ü €.csv", "datasets/iris/r_1.x/job.json"])
def test_decode_key_roundtrips_what_s3_encodes(key: str) -> None:
    assert decode_key(quote_plus(key, safe="/")) == key
    assert decode_key(quote_plus(key)) == key
