"""The CLI's side of model management: the admin API over SigV4, or the registry directly.

Through the API whenever the stack publishes its ApiUrl (a deployed stack, the local stack),
so what the CLI does is exactly what the API allows and audits; straight to the registry
table only for a stack without one. Both return the admin API's documents (maas.admin.service).
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote

from maas_cli.connect import StackHandle


class AdminError(RuntimeError):
    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class HttpAdmin:
    """The /admin routes, each request SigV4-signed with the session's credentials."""

    def __init__(self, stack: StackHandle, timeout: float = 30) -> None:
        self.base = stack.outputs["ApiUrl"].rstrip("/")
        self.session = stack.session
        self.region = stack.session.region_name or "us-east-1"
        self.timeout = timeout

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import requests

        from maas_cli.sigv4 import sign

        credentials = self.session.get_credentials()
        if credentials is None:
            raise AdminError("no AWS credentials to sign the admin request with")
        frozen = credentials.get_frozen_credentials()
        url = self.base + path
        data = b"" if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"} if body is not None else {}
        headers = sign(
            method,
            url,
            data,
            access_key=frozen.access_key,
            secret_key=frozen.secret_key,
            token=frozen.token,
            region=self.region,
            headers=headers,
        )
        try:
            r = requests.request(method, url, data=data, headers=headers, timeout=self.timeout)
        except requests.RequestException as e:
            raise AdminError(f"admin API at {self.base} unreachable: {e}") from None
        try:
            doc = r.json()
        except ValueError:
            doc = {}
        if r.status_code != 200:
            message = doc.get("error") or doc.get("message") or r.text or r.reason
            raise AdminError(f"{message} (HTTP {r.status_code})", r.status_code)
        return doc

    def models(self) -> dict[str, Any]:
        return dict(self._call("GET", "/admin/models"))

    def versions(self, model: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/admin/models/{quote(model)}/versions"))

    def audit(self, model: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/admin/models/{quote(model)}/audit"))

    def promote(self, model: str, version: int, reason: str) -> dict[str, Any]:
        body = {"version": version, "reason": reason}
        return dict(self._call("POST", f"/admin/models/{quote(model)}/promote", body))

    def canary(self, model: str, version: int | None, weight: float, reason: str) -> dict[str, Any]:
        body = {"version": version, "weight": weight, "reason": reason}
        return dict(self._call("POST", f"/admin/models/{quote(model)}/canary", body))

    def rollback(self, model: str, reason: str) -> dict[str, Any]:
        return dict(
            self._call("POST", f"/admin/models/{quote(model)}/rollback", {"reason": reason})
        )


class DirectAdmin:
    """The same operations on the registry table, for a stack that has no API URL."""

    def __init__(self, stack: StackHandle) -> None:
        from maas.core.registry import Registry

        self.registry = Registry(
            stack.outputs["RegistryTableName"], client=stack.client("dynamodb")
        )
        self.stack = stack

    def _actor(self) -> str:
        try:
            return str(self.stack.client("sts").get_caller_identity()["Arn"])
        except Exception:
            return f"user:{os.environ.get('USER', 'unknown')}"

    def _run(self, fn: Any, *args: Any) -> dict[str, Any]:
        from maas.admin import service as admin
        from maas.core.registry import Conflict, NotFound

        try:
            result = fn(self.registry, *args)
        except (NotFound, admin.UnknownModel) as e:
            raise AdminError(str(e), 404) from None
        except Conflict as e:
            raise AdminError(str(e), 409) from None
        except ValueError as e:
            raise AdminError(str(e), 400) from None
        return dict(result.model_dump())

    def models(self) -> dict[str, Any]:
        from maas.admin import service as admin

        return self._run(admin.list_models)

    def versions(self, model: str) -> dict[str, Any]:
        from maas.admin import service as admin

        return self._run(admin.list_versions, model)

    def audit(self, model: str) -> dict[str, Any]:
        from maas.admin import service as admin

        return self._run(admin.audit_log, model)

    def promote(self, model: str, version: int, reason: str) -> dict[str, Any]:
        from maas.admin import service as admin

        body = admin.PromoteRequest(version=version, reason=reason)
        return self._run(admin.promote, model, body, self._actor())

    def canary(self, model: str, version: int | None, weight: float, reason: str) -> dict[str, Any]:
        from maas.admin import service as admin

        body = admin.CanaryRequest(version=version, weight=weight, reason=reason)
        return self._run(admin.set_canary, model, body, self._actor())

    def rollback(self, model: str, reason: str) -> dict[str, Any]:
        from maas.admin import service as admin

        body = admin.RollbackRequest(reason=reason)
        return self._run(admin.rollback, model, body, self._actor())


def admin_for(stack: StackHandle) -> HttpAdmin | DirectAdmin:
    if stack.outputs.get("ApiUrl"):
        return HttpAdmin(stack)
    return DirectAdmin(stack)
