"""SigV4-signing a request to API Gateway (execute-api): what AWS_IAM routes accept."""

from __future__ import annotations

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

SERVICE = "execute-api"


def sign(
    method: str,
    url: str,
    body: bytes,
    *,
    access_key: str,
    secret_key: str,
    region: str,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, str]:
    """Headers that SigV4-sign a request to API Gateway (execute-api)."""
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    SigV4Auth(Credentials(access_key, secret_key, token), SERVICE, region).add_auth(request)
    return dict(request.headers.items())
