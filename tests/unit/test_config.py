"""Each function's settings: declared once, required values required up front, errors that name
the environment variable."""

from __future__ import annotations

import pytest
from maas.core.config import (
    FUNCTION_SETTINGS,
    AdminSettings,
    InferenceSettings,
    IngestSettings,
    OptimizeSettings,
    SettingsError,
    variables,
)

pytestmark = pytest.mark.usefixtures("no_network")
INGEST_ENV = {
    "DATA_BUCKET": "data",
    "ARTIFACT_BUCKET": "artifacts",
    "REGISTRY_TABLE": "registry",
    "TRAINING_ROLE_ARN": "arn:aws:iam::123456789012:role/training",
    "TRAINING_IMAGE": "image",
    "TRAINING_CODE_S3": "s3://artifacts/code.tar.gz",
}


@pytest.mark.parametrize("cls", list(FUNCTION_SETTINGS.values()), ids=lambda c: c.__name__)
def test_a_missing_required_variable_fails_at_once_naming_it(cls: type) -> None:
    required = [name for name, needed in cls.variables().items() if needed]
    assert "REGISTRY_TABLE" in required
    for name in required:
        env = {n: INGEST_ENV.get(n, "x") for n in required if n != name}
        with pytest.raises(SettingsError, match=name):
            cls.from_env(env)
        with pytest.raises(SettingsError, match=name):  # empty is unset, not a value
            cls.from_env(env | {name: ""})


def test_strings_are_coerced_and_defaults_fill_the_rest() -> None:
    env = {
        "REGISTRY_TABLE": "t",
        "ARTIFACT_BUCKET": "b",
        "ALIAS_TTL_S": "30",
        "MAX_BATCH_SIZE": "8",
    }
    s = InferenceSettings.from_env(env)
    assert (s.registry_table, s.alias_ttl_s, s.max_batch_size) == ("t", 30.0, 8)
    assert (s.session_cache_size, s.function_memory_mb, s.preload_models) == (4, 1769, None)
    assert s.session_cache_bytes == 1769 * 1024 * 1024 // 2
    ingest = IngestSettings.from_env(INGEST_ENV | {"TRAINING_SPOT": "false"})
    assert ingest.training_spot is False and ingest.ingest_dlq_url is None
    assert (ingest.training_instance_count, ingest.stack_name) == (1, "maas")


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("ALIAS_TTL_S", "61", "ALIAS_TTL_S (alias_ttl_s): 61.0 must be <= 60"),
        ("MAX_BATCH_SIZE", "many", "MAX_BATCH_SIZE (max_batch_size): 'many' is not a valid int"),
        ("SESSION_CACHE_MB", "0", "SESSION_CACHE_MB (session_cache_mb): 0.0 must be > 0"),
    ],
)
def test_a_bad_value_names_its_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as e:
        InferenceSettings.from_env({"REGISTRY_TABLE": "t", "ARTIFACT_BUCKET": "b", name: value})
    assert str(e.value) == message


def test_the_local_training_backend_needs_its_queue() -> None:
    with pytest.raises(SettingsError, match="LOCAL_TRAINING_QUEUE_URL"):
        IngestSettings.from_env(INGEST_ENV | {"TRAINING_BACKEND": "local"})
    with pytest.raises(SettingsError, match="TRAINING_BACKEND"):
        IngestSettings.from_env(INGEST_ENV | {"TRAINING_BACKEND": "laptop"})
    queued = INGEST_ENV | {"TRAINING_BACKEND": "local", "LOCAL_TRAINING_QUEUE_URL": "http://q"}
    assert IngestSettings.from_env(queued).local_training_queue_url == "http://q"


def test_each_function_declares_only_what_it_reads() -> None:
    assert set(AdminSettings.variables()) == {"REGISTRY_TABLE"}
    assert set(OptimizeSettings.variables()) == {"REGISTRY_TABLE", "ARTIFACT_BUCKET"}
    assert "DATA_BUCKET" not in InferenceSettings.variables()
    assert "PRELOAD_MODELS" not in IngestSettings.variables()
    assert variables() == {n for cls in FUNCTION_SETTINGS.values() for n in cls.variables()}
