"""A small AWS client for the inference function's cold path: S3 GetObject, DynamoDB reads.

Why it exists: in a fresh process, importing botocore and building its S3 and DynamoDB clients
(plus the boto3 resource the registry reads through) costs about as much CPU as importing
onnxruntime itself (bench/coldstart.py measures the whole cold path). The first request of a
cold inference function needs four reads: the prod alias and the version row (DynamoDB), the
manifest and the model (S3). This module makes those reads with the standard library:
SigV4-signed HTTP/1.1 over keep-alive connections.

It stands in for the boto3 objects the registry and storage already use, with the same shapes:
``LiteTable`` answers ``get_item``/``query``/``scan`` like boto3's DynamoDB ``Table`` resource
(Python values in and out, numbers as Decimal), ``LiteS3`` answers ``get_object`` and
``download_file`` like botocore's S3 client, and failures are botocore's own ``ClientError``
(with the service's error code) and ``EndpointConnectionError``, so the code above cannot tell.

It is used only where the environment holds static credentials and a region (Lambda puts
AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN and AWS_REGION there; so does the
local stack); anything else (container credentials as SnapStart uses, profiles, SSO, FIPS or
dual-stack endpoints) returns None from ``from_env`` and the caller uses boto3.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import os
import random
import re
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_ATTEMPTS = 3  # botocore's standard retry mode: three attempts in all
TIMEOUT_S = 10.0
CHUNK = 1 << 20
_RETRY_STATUS = (500, 502, 503, 504)
_RETRY_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "SlowDown",
        "InternalError",
        "InternalServerError",
        "ServiceUnavailable",
    }
)
_S3_CODE = re.compile(rb"<Code>([^<]{1,200})</Code>")
_S3_MESSAGE = re.compile(rb"<Message>([^<]{0,2000})</Message>")
_PLAIN_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


def wanted(env: dict[str, str] | None = None) -> bool:
    """Whether serving should read through this client: MAAS_AWS_CLIENT=lite|boto3|auto.

    auto (the default): in Lambda (LAMBDA_TASK_ROOT), and where an endpoint URL points the
    SDK elsewhere (the local stack, `sam local`). Elsewhere (a laptop with AWS profiles,
    tests that mock boto3 in process) boto3.
    """
    e = os.environ if env is None else env
    choice = (e.get("MAAS_AWS_CLIENT") or "auto").strip().lower()
    if choice in ("lite", "boto3"):
        return choice == "lite"
    return bool(
        e.get("LAMBDA_TASK_ROOT")
        or e.get("AWS_ENDPOINT_URL")
        or e.get("AWS_ENDPOINT_URL_S3")
        or e.get("AWS_ENDPOINT_URL_DYNAMODB")
    )


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None


@dataclass(frozen=True)
class Session:
    """Credentials, region and endpoints for the light clients, read from the environment."""

    credentials: Credentials
    region: str
    endpoints: dict[str, str]  # service -> base URL

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Session | None:
        e = os.environ if env is None else env
        key, secret = e.get("AWS_ACCESS_KEY_ID"), e.get("AWS_SECRET_ACCESS_KEY")
        region = e.get("AWS_REGION") or e.get("AWS_DEFAULT_REGION")
        if not key or not secret or not region:
            return None
        if any(_truthy(e.get(v)) for v in ("AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT")):
            return None
        suffix = _dns_suffix(region)
        if suffix is None:
            return None
        custom = not _truthy(e.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"))
        endpoints = {}
        for service, env_name in (("s3", "S3"), ("dynamodb", "DYNAMODB")):
            url = (
                (e.get(f"AWS_ENDPOINT_URL_{env_name}") or e.get("AWS_ENDPOINT_URL"))
                if custom
                else None
            )
            endpoints[service] = (url or f"https://{service}.{region}.{suffix}").rstrip("/")
        return cls(Credentials(key, secret, e.get("AWS_SESSION_TOKEN") or None), region, endpoints)

    def table(self, name: str) -> LiteTable:
        return LiteTable(name, _Transport(self, "dynamodb"))

    def s3(self) -> LiteS3:
        return LiteS3(_Transport(self, "s3"))


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _dns_suffix(region: str) -> str | None:
    if re.fullmatch(r"(us|eu|ap|sa|ca|me|af|il|mx)-[a-z]+-\d", region) or region.startswith(
        "us-gov-"
    ):
        return "amazonaws.com"
    if region.startswith("cn-"):
        return "amazonaws.com.cn"
    return None  # other partitions: leave them to botocore's endpoint rules


# --------------------------------------------------------------------------- SigV4


def sign(
    method: str,
    url: str,
    headers: dict[str, str],
    payload_sha256: str,
    *,
    service: str,
    region: str,
    credentials: Credentials,
    now: datetime | None = None,
) -> dict[str, str]:
    """`headers` plus x-amz-date, the session token and the SigV4 Authorization header.

    `url` must already be percent-encoded the way the request goes out (S3 signs that path
    as it is; the other services' paths here never need encoding).
    """
    when = (now or datetime.now(UTC)).astimezone(UTC)
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    parts = urlsplit(url)
    out = dict(headers)
    out["host"] = parts.netloc
    out["x-amz-date"] = amz_date
    if credentials.token:
        out["x-amz-security-token"] = credentials.token
    canonical_headers = {k.lower().strip(): " ".join(str(v).split()) for k, v in out.items()}
    names = sorted(canonical_headers)
    query = "&".join(
        sorted(
            f"{quote(unquote(k), safe='-_.~')}={quote(unquote(v), safe='-_.~')}"
            for k, _, v in (p.partition("=") for p in parts.query.split("&") if p)
        )
    )
    canonical = "\n".join(
        [
            method,
            parts.path or "/",
            query,
            "".join(f"{n}:{canonical_headers[n]}\n" for n in names),
            ";".join(names),
            payload_sha256,
        ]
    )
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = _signing_key(credentials.secret_key, date, region, service)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return out


_KEYS: dict[tuple[str, str, str, str], bytes] = {}


def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    cache_key = (secret, date, region, service)
    key = _KEYS.get(cache_key)
    if key is None:
        key = ("AWS4" + secret).encode()
        for part in (date, region, service, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        _KEYS.clear()  # one date at a time is all a function needs
        _KEYS[cache_key] = key
    return key


# --------------------------------------------------------------------------- HTTP


def _client_error(status: int, code: str, message: str, operation: str) -> Exception:
    from botocore.exceptions import ClientError

    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, operation)


def _connection_error(url: str, error: Exception) -> Exception:
    from botocore.exceptions import EndpointConnectionError

    return EndpointConnectionError(endpoint_url=url, error=error)


class _Connection:
    """One HTTP/1.1 keep-alive connection: just what AWS's JSON and S3 APIs answer with.

    Not http.client: that module imports the email package to parse headers, which costs a
    fresh process about ten times what the socket module does (bench/coldstart.py).
    """

    def __init__(self, scheme: str, netloc: str) -> None:
        self.scheme = scheme
        self.netloc = netloc
        where = urlsplit(f"{scheme}://{netloc}")
        self.host = where.hostname or netloc
        self.port = where.port or (443 if scheme == "https" else 80)
        self.sock: Any = None
        self.rfile: Any = None

    def close(self) -> None:
        for thing in (self.rfile, self.sock):
            if thing is not None:
                with contextlib.suppress(OSError):
                    thing.close()
        self.sock = self.rfile = None

    def _open(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.scheme == "https":
            sock = _tls_context().wrap_socket(sock, server_hostname=self.host)
        self.sock = sock
        self.rfile = sock.makefile("rb")

    def exchange(
        self, method: str, target: str, headers: dict[str, str], body: bytes, sink: Any
    ) -> tuple[int, dict[str, str], bytes]:
        if self.sock is None:
            self._open()
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.netloc}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        status_line = self.rfile.readline(65537)
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise ConnectionError(f"bad HTTP status line {status_line[:100]!r}")
        status = int(parts[1])
        reply: dict[str, str] = {}
        while True:
            line = self.rfile.readline(65537)
            if line in (b"\r\n", b"\n"):
                break
            if not line:
                raise ConnectionError("connection closed in the response headers")
            name, _, value = line.decode("latin-1").partition(":")
            reply[name.strip().lower()] = value.strip()
        out = sink if status == 200 and sink is not None else io.BytesIO()
        if method == "HEAD" or status in (204, 304):
            pass
        elif reply.get("transfer-encoding", "").lower() == "chunked":
            while size := int(self.rfile.readline(65537).split(b";")[0].strip() or b"0", 16):
                self._copy(size, out)
                self.rfile.readline(65537)  # the CRLF after each chunk
            while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                pass  # trailers
        elif "content-length" in reply:
            self._copy(int(reply["content-length"]), out)
        else:  # the body runs to the end of the connection
            while chunk := self.rfile.read(CHUNK):
                out.write(chunk)
            reply["connection"] = "close"
        if reply.get("connection", "").lower() == "close" or parts[0] == b"HTTP/1.0":
            self.close()
        return status, reply, b"" if out is sink else out.getvalue()

    def _copy(self, size: int, out: Any) -> None:
        while size > 0:
            chunk = self.rfile.read(min(size, CHUNK))
            if not chunk:
                raise ConnectionError("connection closed in the response body")
            out.write(chunk)
            size -= len(chunk)


_TLS: Any = None


def _tls_context() -> Any:
    global _TLS
    if _TLS is None:
        import ssl  # only for https (AWS itself): the local stack speaks http

        _TLS = ssl.create_default_context()
    return _TLS


class _Transport:
    """Signed requests to one service, one keep-alive connection per thread and host."""

    def __init__(self, session: Session, service: str) -> None:
        self.session = session
        self.service = service
        self.base = session.endpoints[service]
        self._local = threading.local()

    def reset(self) -> None:
        """Forget this thread's connections (after a SnapStart restore they are dead)."""
        for conn in getattr(self._local, "conns", {}).values():
            conn.close()
        self._local.conns = {}

    def _connection(self, scheme: str, netloc: str) -> _Connection:
        conns: dict[tuple[str, str], _Connection] = getattr(self._local, "conns", None) or {}
        self._local.conns = conns
        conn = conns.get((scheme, netloc))
        if conn is None:
            conn = conns[(scheme, netloc)] = _Connection(scheme, netloc)
        return conn

    def request(
        self,
        method: str,
        url: str,
        operation: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        sink: Any = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """The response's status, headers and body (streamed into `sink` when given, on 200).

        Retries connection failures, 5xx and throttling like botocore's standard mode; an
        error response becomes ClientError with the service's code.
        """
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        payload_hash = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        base_headers = dict(headers or {})
        if self.service == "s3":
            base_headers["x-amz-content-sha256"] = payload_hash
        start = sink.tell() if sink is not None else 0
        for attempt in range(MAX_ATTEMPTS):
            if attempt:
                time.sleep(min(1.0, 0.05 * 2**attempt) * random.random())
                if sink is not None:  # a retry rewrites what a broken attempt wrote
                    sink.seek(start)
                    sink.truncate()
            signed = sign(
                method,
                url,
                base_headers,
                payload_hash,
                service=self.service,
                region=self.session.region,
                credentials=self.session.credentials,
            )
            signed.pop("host")  # the connection writes Host itself
            conn = self._connection(parts.scheme, parts.netloc)
            try:
                status, reply_headers, data = conn.exchange(method, target, signed, body, sink)
            except (OSError, ValueError) as e:
                conn.close()  # a stale keep-alive socket, or the network: reconnect and retry
                if attempt + 1 == MAX_ATTEMPTS:
                    raise _connection_error(url, e) from None
                continue
            if 200 <= status < 300:
                return status, reply_headers, data
            code, message = self._error(status, data)
            retryable = status in _RETRY_STATUS or code in _RETRY_CODES
            if not retryable or attempt + 1 == MAX_ATTEMPTS:
                raise _client_error(status, code, message, operation)
        raise AssertionError("unreachable")  # pragma: no cover

    def _error(self, status: int, data: bytes) -> tuple[str, str]:
        if self.service == "dynamodb":
            try:
                doc = json.loads(data or b"{}")
            except ValueError:
                doc = {}
            kind = str(doc.get("__type") or status)
            return kind.rsplit("#", 1)[-1], str(doc.get("message") or doc.get("Message") or "")
        code = _S3_CODE.search(data or b"")
        message = _S3_MESSAGE.search(data or b"")
        default = {404: "404", 403: "403"}.get(status, str(status))  # HEAD-like: no body
        return (
            code.group(1).decode(errors="replace") if code else default,
            message.group(1).decode(errors="replace") if message else "",
        )


# --------------------------------------------------------------------------- S3


class LiteS3:
    """The two S3 reads serving makes, shaped like botocore's client methods."""

    def __init__(self, transport: _Transport) -> None:
        self._t = transport

    def _url(self, bucket: str, key: str, version_id: str | None = None) -> str:
        path = quote(key, safe="/-_.~")
        base = self._t.base
        default = (
            base == f"https://s3.{self._t.session.region}.{_dns_suffix(self._t.session.region)}"
        )
        if default and _PLAIN_BUCKET.match(bucket):
            url = f"https://{bucket}.{base[len('https://') :]}/{path}"  # virtual-hosted style
        else:
            url = f"{base}/{quote(bucket, safe='')}/{path}"  # custom endpoints: path style
        if version_id:
            url += f"?versionId={quote(version_id, safe='-_.~')}"
        return url

    def get_object(self, *, Bucket: str, Key: str, VersionId: str | None = None) -> dict[str, Any]:
        _, headers, data = self._t.request("GET", self._url(Bucket, Key, VersionId), "GetObject")
        return {
            "Body": io.BytesIO(data),
            "ContentLength": len(data),
            "ETag": headers.get("etag", ""),
            "VersionId": headers.get("x-amz-version-id"),
        }

    def download_file(self, Bucket: str, Key: str, Filename: str) -> None:
        with Path(Filename).open("wb") as f:
            self._t.request("GET", self._url(Bucket, Key), "GetObject", sink=f)

    def reset(self) -> None:
        self._t.reset()


# --------------------------------------------------------------------------- DynamoDB


def _to_attr(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, int | Decimal):
        return {"N": str(value)}
    if value is None:
        return {"NULL": True}
    if isinstance(value, dict):
        return {"M": {k: _to_attr(v) for k, v in value.items()}}
    if isinstance(value, list):
        return {"L": [_to_attr(v) for v in value]}
    raise TypeError(f"unsupported DynamoDB value {type(value).__name__}")


def _from_attr(attr: dict[str, Any]) -> Any:
    (kind, value), *_ = attr.items()
    if kind == "S":
        return value
    if kind == "N":
        return Decimal(value)
    if kind == "BOOL":
        return bool(value)
    if kind == "NULL":
        return None
    if kind == "M":
        return {k: _from_attr(v) for k, v in value.items()}
    if kind == "L":
        return [_from_attr(v) for v in value]
    if kind == "SS":
        return set(value)
    if kind == "NS":
        return {Decimal(v) for v in value}
    if kind == "B":
        import base64

        return base64.b64decode(value)
    raise TypeError(f"unsupported DynamoDB attribute type {kind}")


def _item(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: _from_attr(v) for k, v in raw.items()}


class LiteTable:
    """The reads serving makes, shaped like boto3's DynamoDB Table resource."""

    def __init__(self, name: str, transport: _Transport) -> None:
        self.name = name
        self._t = transport

    def _call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        _, _, data = self._t.request(
            "POST",
            self._t.base + "/",
            operation,
            headers={
                "content-type": "application/x-amz-json-1.0",
                "x-amz-target": f"DynamoDB_20120810.{operation}",
            },
            body=json.dumps(params).encode(),
        )
        doc: dict[str, Any] = json.loads(data)
        return doc

    def get_item(self, *, Key: dict[str, Any], ConsistentRead: bool = False) -> dict[str, Any]:
        doc = self._call(
            "GetItem",
            {
                "TableName": self.name,
                "Key": {k: _to_attr(v) for k, v in Key.items()},
                "ConsistentRead": ConsistentRead,
            },
        )
        return {"Item": _item(doc["Item"])} if "Item" in doc else {}

    def query(self, **kwargs: Any) -> dict[str, Any]:
        return self._page("Query", kwargs)

    def scan(self, **kwargs: Any) -> dict[str, Any]:
        return self._page("Scan", kwargs)

    def _page(self, operation: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        params: dict[str, Any] = {"TableName": self.name}
        for name, value in kwargs.items():
            if name in ("ExpressionAttributeValues", "ExclusiveStartKey"):
                params[name] = {k: _to_attr(v) for k, v in value.items()}
            elif isinstance(value, str | bool | int | dict):
                params[name] = value  # expressions as strings, as the registry writes them
            else:
                raise TypeError(f"{name}: pass expressions as strings to the light client")
        doc = self._call(operation, params)
        out: dict[str, Any] = {"Items": [_item(i) for i in doc.get("Items", [])]}
        if "LastEvaluatedKey" in doc:
            out["LastEvaluatedKey"] = _item(doc["LastEvaluatedKey"])
        return out

    def reset(self) -> None:
        self._t.reset()
