"""The job spec: job.json and object metadata validated before anything starts."""

from __future__ import annotations

import json

import pytest
from maas.ingest.jobspec import InvalidJobSpec, JobSpec, parse_job_json, parse_object_metadata

pytestmark = pytest.mark.usefixtures("no_network")


def test_parse_job_json_empty_object_gives_defaults() -> None:
    spec = parse_job_json(b"{}")
    assert spec == JobSpec()
    # no task: a table, whose label decides classification or regression
    assert (spec.task, spec.effective_task) == (None, "classification")
    assert (spec.label, spec.auto_promote) == ("label", True)
    assert spec.instance_type is None and spec.spot is None


def test_parse_job_json_full_spec_is_kept() -> None:
    # GIVEN a job.json using every key
    doc = {
        "task": "classification",
        "label": "species",
        "text": "body",
        "recipe": "mlp",
        "hyperparameters": {"epochs": 5, "batch_size": 32, "learning_rate": 0.01},
        "instance_type": "ml.g5.2xlarge",
        "instance_count": 2,
        "spot": False,
        "max_runtime_s": 7200,
        "auto_promote": False,
        "quality_gate": {"max_accuracy_drop": 0.02, "min_accuracy": 0.9},
    }

    # WHEN it is parsed
    spec = parse_job_json(json.dumps(doc).encode())

    # THEN every value is kept
    assert spec.label == "species"
    assert spec.hyperparameters.epochs == 5
    assert spec.instance_count == 2
    assert spec.spot is False
    assert spec.quality_gate.min_accuracy == 0.9
    assert spec.quality_gate.min_cosine == 0.99


def test_parse_job_json_unknown_key_names_the_key() -> None:
    with pytest.raises(InvalidJobSpec, match=r"lable: Extra inputs are not permitted"):
        parse_job_json(b'{"lable": "species"}')


def test_parse_job_json_unknown_hyperparameter_names_its_path() -> None:
    with pytest.raises(InvalidJobSpec, match=r"hyperparameters\.epoch:"):
        parse_job_json(b'{"hyperparameters": {"epoch": 3}}')


@pytest.mark.parametrize(
    "doc, where",
    [
        ({"hyperparameters": {"epochs": 0}}, "hyperparameters.epochs"),
        ({"hyperparameters": {"batch_size": 10**9}}, "hyperparameters.batch_size"),
        ({"hyperparameters": {"learning_rate": 0}}, "hyperparameters.learning_rate"),
        ({"hyperparameters": {"dropout": 1.0}}, "hyperparameters.dropout"),
        ({"instance_count": 0}, "instance_count"),
        ({"instance_count": 17}, "instance_count"),
        ({"max_runtime_s": 59}, "max_runtime_s"),
        ({"quality_gate": {"max_accuracy_drop": 2}}, "quality_gate.max_accuracy_drop"),
        ({"instance_type": "g5.xlarge"}, "instance_type"),
        ({"label": ""}, "label"),
        ({"label": "a\nb"}, "label"),
        ({"recipe": "Bad Recipe"}, "recipe"),
        ({"task": "forecasting"}, "task"),
    ],
)
def test_parse_job_json_out_of_bounds_value_is_rejected(doc: dict, where: str) -> None:
    with pytest.raises(InvalidJobSpec) as info:
        parse_job_json(json.dumps(doc).encode())
    assert f"{where}:" in str(info.value)


def test_parse_job_json_text_task_defaults_to_ngram_with_its_hyperparameters() -> None:
    spec = parse_job_json(b'{"task": "text-classification", "text": "sentence"}')
    assert spec.effective_recipe == "ngram"
    hyper = {k: json.loads(v) for k, v in spec.hyperparameters_for_sagemaker().items()}
    assert hyper["task"] == "text-classification" and hyper["text"] == "sentence"
    assert hyper["epochs"] == 30 and hyper["patience"] == 3  # the recipe's, not tabular 200
    assert "buckets" not in hyper  # unset optional knobs are left to the training job
    given = parse_job_json(b'{"task": "text-classification", "hyperparameters": {"epochs": 9}}')
    assert json.loads(given.hyperparameters_for_sagemaker()["epochs"]) == 9


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"task": "classification", "recipe": "ngram"}, "does not apply to task"),
        ({"task": "embedding", "recipe": "auto"}, "does not apply to task"),
        ({"task": "text-classification", "recipe": "finetune"}, "needs base_model"),
        ({"task": "text-classification", "base_model": "minilm"}, "applies to recipe"),
        ({"task": "text-classification", "recipe": "finetune", "base_model": "Bad_Name"}, "base"),
    ],
)
def test_parse_job_json_recipe_must_fit_the_task(doc: dict, message: str) -> None:
    with pytest.raises(InvalidJobSpec, match=message):
        parse_job_json(json.dumps(doc).encode())


def test_pretrained_job_json_is_an_import_of_an_embedding_model_by_default() -> None:
    spec = parse_job_json(b"{}", pretrained=True)
    assert (spec.task, spec.effective_recipe) == ("embedding", "import")
    seq = parse_job_json(b'{"task": "text-classification"}', pretrained=True)
    assert seq.effective_recipe == "import"
    with pytest.raises(InvalidJobSpec, match="is imported"):
        parse_job_json(b'{"task": "text-classification", "recipe": "ngram"}', pretrained=True)
    with pytest.raises(InvalidJobSpec, match="does not apply"):
        parse_job_json(b'{"task": "classification"}', pretrained=True)


@pytest.mark.parametrize("raw", [b"[]", b'"classification"', b"42", b"null", b"true"])
def test_parse_job_json_non_object_is_rejected(raw: bytes) -> None:
    with pytest.raises(InvalidJobSpec, match="must be a JSON object"):
        parse_job_json(raw)


@pytest.mark.parametrize("raw", [b"", b"{", b"{'label': 'x'}", b'{"label": "x",}'])
def test_parse_job_json_malformed_json_is_rejected(raw: bytes) -> None:
    with pytest.raises(InvalidJobSpec, match="not valid JSON"):
        parse_job_json(raw)


def test_parse_job_json_invalid_utf8_is_rejected() -> None:
    with pytest.raises(InvalidJobSpec, match="not valid JSON"):
        parse_job_json(b'{"label": "\xff\xfe"}')


def test_parse_job_json_over_64_kib_is_rejected_before_parsing() -> None:
    raw = json.dumps({"label": "x" * (64 * 1024)}).encode()
    with pytest.raises(InvalidJobSpec, match="64 KiB"):
        parse_job_json(raw)


def test_parse_job_json_error_never_echoes_a_traceback() -> None:
    with pytest.raises(InvalidJobSpec) as info:
        parse_job_json(b'{"hyperparameters": {"epochs": "many"}}')
    assert "Traceback" not in str(info.value)
    assert str(info.value).startswith("invalid job spec: ")


def test_parse_object_metadata_reads_known_keys_and_ignores_others() -> None:
    # GIVEN S3 user metadata (keys arrive lower-cased without x-amz-meta-)
    metadata = {
        "label": "digit",
        "auto-promote": "false",
        "instance-type": "ml.g4dn.xlarge",
        "owner": "alice",
    }

    # WHEN it is parsed
    spec = parse_object_metadata(metadata)

    # THEN the known keys set the spec and unknown ones are ignored
    assert spec.label == "digit"
    assert spec.auto_promote is False
    assert spec.instance_type == "ml.g4dn.xlarge"


@pytest.mark.parametrize(
    "value, expected",
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("no", False), ("0", False)],
)
def test_parse_object_metadata_auto_promote_flag(value: str, expected: bool) -> None:
    assert parse_object_metadata({"auto-promote": value}).auto_promote is expected


def test_parse_object_metadata_mixed_case_keys_are_read() -> None:
    assert parse_object_metadata({"Label": "digit"}).label == "digit"


def test_parse_object_metadata_empty_gives_defaults() -> None:
    assert parse_object_metadata({}) == JobSpec()


def test_parse_object_metadata_bad_value_is_rejected() -> None:
    with pytest.raises(InvalidJobSpec, match="instance_type"):
        parse_object_metadata({"instance-type": "huge"})


def test_hyperparameters_for_sagemaker_are_json_encoded_strings() -> None:
    # GIVEN a spec with a recipe
    spec = parse_job_json(
        b'{"label": "species", "recipe": "mlp", "hyperparameters": {"epochs": 7}}'
    )

    # WHEN it is turned into SageMaker hyperparameters
    hyper = spec.hyperparameters_for_sagemaker()

    # THEN every value is a string that decodes back to the value
    assert all(isinstance(v, str) for v in hyper.values())
    decoded = {k: json.loads(v) for k, v in hyper.items()}
    assert decoded["epochs"] == 7
    assert decoded["label"] == "species"
    assert decoded["recipe"] == "mlp"
    # no task in job.json: not sent, so the training job lets the label decide
    assert "task" not in decoded
