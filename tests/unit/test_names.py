"""Model, run and job names: strict validation and deterministic, SageMaker-valid job names."""

from __future__ import annotations

import re

import pytest
from maas.core.names import InvalidName, check_model_name, check_run_name, job_name, version_key

pytestmark = pytest.mark.usefixtures("no_network")

SAGEMAKER_JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


@pytest.mark.parametrize("name", ["a", "iris", "digits-v2", "0abc", "a" * 63, "a--b"])
def test_check_model_name_valid_name_is_returned(name: str) -> None:
    assert check_model_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "Iris", "-iris", "iris_v2", "iris.v2", "a" * 64, "..", "ir is", "iris/x", "ïris"],
)
def test_check_model_name_invalid_name_raises_with_rule(name: str) -> None:
    with pytest.raises(InvalidName, match="a-z, 0-9 and '-'"):
        check_model_name(name)


@pytest.mark.parametrize("name", ["run-1", "Run_2024.01", "a", "x" * 128])
def test_check_run_name_valid_name_is_returned(name: str) -> None:
    assert check_run_name(name) == name


@pytest.mark.parametrize("name", ["", ".hidden", "a..b", "-run", "run 1", "x" * 129, "r/1"])
def test_check_run_name_invalid_name_raises(name: str) -> None:
    with pytest.raises(InvalidName):
        check_run_name(name)


def test_job_name_same_inputs_give_same_name() -> None:
    assert job_name("iris", "run-1", "v123") == job_name("iris", "run-1", "v123")


@pytest.mark.parametrize(
    "other", [("iris", "run-2", "v123"), ("iris", "run-1", "v124"), ("wine", "run-1", "v123")]
)
def test_job_name_any_different_input_gives_different_name(other: tuple[str, str, str]) -> None:
    assert job_name(*other) != job_name("iris", "run-1", "v123")


@pytest.mark.parametrize(
    "model", ["a", "iris", "a" * 63, "x-" * 31 + "y", "m" + "-" * 61 + "z", "abc-"]
)
def test_job_name_any_valid_model_gives_sagemaker_valid_name(model: str) -> None:
    # GIVEN any valid model name, up to the longest
    check_model_name(model)

    # WHEN a job name is derived
    name = job_name(model, "run-" + "9" * 100, "3fdc8a2b1c0e4f5a6b7c8d9e0f1a2b3c")

    # THEN SageMaker accepts it
    assert len(name) <= 63
    assert SAGEMAKER_JOB_NAME.fullmatch(name), name
    assert name.startswith("maas-")


def test_job_name_short_model_keeps_whole_model_in_name() -> None:
    assert job_name("digits", "digits", "etag").startswith("maas-digits-")


def test_version_key_sorts_as_numbers() -> None:
    keys = [version_key(v) for v in (1, 2, 10, 100, 9)]
    assert sorted(keys) == [version_key(v) for v in (1, 2, 9, 10, 100)]
