"""The local stack's AWS_IAM check: botocore-signed requests pass, anything else is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from maas_cli.sigv4 import sign
from maas_local.sigv4 import Unauthorized, verify

pytestmark = pytest.mark.usefixtures("no_network")

URL = "http://127.0.0.1:8080/admin/models/iris/promote?dry=1"
BODY = b'{"version": 2}'
KEYS = {"testing": "testing"}


def signed(url: str = URL, body: bytes = BODY, **kw: str) -> dict[str, str]:
    return sign(
        "POST",
        url,
        body,
        access_key=kw.get("key", "testing"),
        secret_key=kw.get("secret", "testing"),
        region=kw.get("region", "us-east-1"),
        headers={"content-type": "application/json"},
    )


def check(
    headers: dict[str, str],
    body: bytes = BODY,
    method: str = "POST",
    path: str | None = None,
    **kw: object,
) -> object:
    parts = urlsplit(URL)
    headers = {"Host": parts.netloc, **headers}
    return verify(
        method,
        path or f"{parts.path}?{parts.query}",
        headers,
        body,
        credentials=KEYS,
        region="us-east-1",
        account="123456789012",
        **kw,  # type: ignore[arg-type]
    )


def test_botocore_signed_request_passes_and_names_the_caller() -> None:
    caller = check(signed())
    authorizer = caller.authorizer()  # type: ignore[attr-defined]
    assert authorizer["iam"]["userArn"] == "arn:aws:iam::123456789012:user/testing"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda h: {k: v for k, v in h.items() if k != "Authorization"}, "missing Authorization"),
        (lambda h: h | {"Authorization": "Bearer abc"}, "not an AWS4-HMAC-SHA256"),
        (lambda h: h | {"X-Amz-Date": "20200101T000000Z"}, "differ"),
    ],
)
def test_missing_or_foreign_authorization_is_refused(change: object, message: str) -> None:
    with pytest.raises(Unauthorized, match=message):
        check(change(signed()))  # type: ignore[operator]


def test_unknown_key_wrong_secret_and_wrong_region_are_refused() -> None:
    with pytest.raises(Unauthorized, match="unknown access key"):
        check(signed(key="AKIAOTHER"))
    with pytest.raises(Unauthorized, match="does not match"):
        check(signed(secret="guess"))
    with pytest.raises(Unauthorized, match="credential scope"):
        check(signed(region="eu-west-1"))


def test_tampered_body_method_or_path_is_refused() -> None:
    headers = signed()
    with pytest.raises(Unauthorized, match="does not match"):
        check(headers, body=b'{"version": 3}')
    with pytest.raises(Unauthorized, match="does not match"):
        check(headers, method="PUT")
    with pytest.raises(Unauthorized, match="does not match"):
        check(headers, path="/admin/models/wine/promote?dry=1")


def test_old_signature_is_refused() -> None:
    with pytest.raises(Unauthorized, match="expired"):
        check(signed(), now=datetime.now(UTC) + timedelta(minutes=16))
