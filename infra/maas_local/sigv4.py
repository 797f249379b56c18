"""SigV4 on the local stack's HTTP API: what API Gateway's AWS_IAM authorization checks.

A request passes when its Authorization header is an AWS4-HMAC-SHA256 signature, for the
execute-api service in the stack's region, by an access key the stack knows, recomputed here
with botocore's own signer over the signed headers and the body, and no more than 15 minutes
off the clock. The identity then goes into the event as API Gateway puts it
(requestContext.authorizer.iam).
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "execute-api"
MAX_SKEW_S = 15 * 60
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)


class Unauthorized(PermissionError):
    pass


@dataclass(frozen=True)
class Caller:
    access_key: str
    account: str

    def authorizer(self) -> dict[str, object]:
        """requestContext.authorizer as API Gateway's IAM authorization fills it."""
        arn = f"arn:aws:iam::{self.account}:user/{self.access_key}"
        return {
            "iam": {
                "accessKey": self.access_key,
                "accountId": self.account,
                "callerId": self.access_key,
                "cognitoIdentity": None,
                "principalOrgId": None,
                "userArn": arn,
                "userId": self.access_key,
            }
        }


def verify(
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    *,
    credentials: dict[str, str],
    region: str,
    account: str,
    now: datetime | None = None,
) -> Caller:
    """The caller a correctly signed request comes from; Unauthorized otherwise."""
    lowered = {k.lower(): v for k, v in headers.items()}
    header = lowered.get("authorization", "")
    if not header:
        raise Unauthorized("missing Authorization header: sign the request with SigV4")
    match = _AUTH.match(header.strip())
    if not match:
        raise Unauthorized(f"Authorization is not an {ALGORITHM} signature")
    try:
        access_key, date, scope_region, service, terminal = match["credential"].split("/")
    except ValueError:
        raise Unauthorized("malformed credential scope") from None
    if terminal != "aws4_request" or service != SERVICE or scope_region != region:
        raise Unauthorized(f"credential scope must be <date>/{region}/{SERVICE}/aws4_request")
    secret = credentials.get(access_key)
    if secret is None:
        raise Unauthorized(f"unknown access key {access_key!r}")
    signed = match["signed"].split(";")
    if "host" not in signed:
        raise Unauthorized("the host header must be signed")
    missing = [h for h in signed if h not in lowered]
    if missing:
        raise Unauthorized(f"signed headers missing from the request: {missing}")
    stamp = lowered.get("x-amz-date", "")
    try:
        when = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise Unauthorized("missing or malformed X-Amz-Date") from None
    if not stamp.startswith(date):
        raise Unauthorized("X-Amz-Date and the credential scope's date differ")
    skew = abs(((now or datetime.now(UTC)) - when).total_seconds())
    if skew > MAX_SKEW_S:
        raise Unauthorized("signature expired (X-Amz-Date is more than 15 minutes off)")
    request = AWSRequest(
        method=method,
        url=f"http://{lowered['host']}{path}",
        headers={h: lowered[h] for h in signed},
        data=body,
    )
    request.context["timestamp"] = stamp
    signer = SigV4Auth(Credentials(access_key, secret), SERVICE, region)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, match["signature"]):
        raise Unauthorized("signature does not match")
    return Caller(access_key, account)
