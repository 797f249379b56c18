"""Names that end up in S3 keys and job names: validated strictly, derived deterministically."""

from __future__ import annotations

import hashlib
import re

MODEL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# SageMaker: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$
JOB_NAME_MAX = 63


class InvalidName(ValueError):
    pass


def check_model_name(name: str) -> str:
    if not MODEL_NAME_RE.fullmatch(name or ""):
        raise InvalidName(
            f"invalid model name {name!r}: use 1-63 characters from a-z, 0-9 and '-', "
            "starting with a letter or digit"
        )
    return name


def check_run_name(name: str) -> str:
    if not RUN_NAME_RE.fullmatch(name or "") or ".." in name:
        raise InvalidName(
            f"invalid run name {name!r}: use 1-128 characters from A-Z, a-z, 0-9, '.', '_' "
            "and '-', starting with a letter or digit"
        )
    return name


def job_name(model: str, run: str, object_identity: str) -> str:
    """Deterministic SageMaker job name: the same upload always maps to the same job."""
    digest = hashlib.sha256(f"{model}\0{run}\0{object_identity}".encode()).hexdigest()[:12]
    prefix = f"maas-{model}"[: JOB_NAME_MAX - len(digest) - 1].rstrip("-")
    return f"{prefix}-{digest}"


def version_key(version: int) -> str:
    return f"{version:010d}"
