"""Where a served version lives in the ArtifactBucket (its file names are maas.core.contract)."""

from __future__ import annotations

from maas.core.names import InvalidName, check_model_name


def model_prefix(model: str, version: int) -> str:
    """models/<model>/<version>/ (names checked: no key escapes it)."""
    check_model_name(model)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidName(f"invalid version {version!r}: a positive integer")
    return f"models/{model}/{version}/"
