"""Find a stack: the local one (AWS_ENDPOINT_URL, or 127.0.0.1:4566 when it answers) or AWS.

Either way the stack's names come from its CloudFormation outputs, so nothing else is set.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import boto3

DEFAULT_LOCAL = ("127.0.0.1", 4566)


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


class StackNotFound(RuntimeError):
    pass


@dataclass
class StackHandle:
    name: str
    endpoint: str | None
    outputs: dict[str, str]
    session: Any

    def client(self, service: str) -> Any:
        return self.session.client(service, endpoint_url=self.endpoint)

    @property
    def local(self) -> bool:
        return self.endpoint is not None


def connect(stack_name: str | None = None) -> StackHandle:
    name = stack_name or os.environ.get("MAAS_STACK", "maas")
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint and port_open(*DEFAULT_LOCAL):
        endpoint = f"http://{DEFAULT_LOCAL[0]}:{DEFAULT_LOCAL[1]}"
    if endpoint:
        # moto accepts any credentials; don't make a laptop user configure fake ones.
        session = boto3.Session(
            aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
            region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        )
    else:
        session = boto3.Session()
        if session.region_name is None or session.get_credentials() is None:
            missing = "region" if session.region_name is None else "credentials"
            raise StackNotFound(
                f"no local stack on {DEFAULT_LOCAL[0]}:{DEFAULT_LOCAL[1]} and no AWS {missing}: "
                "start one with `maas local up`, or configure AWS (AWS_REGION and credentials) "
                "for a deployed stack"
            )
    try:
        cfn = session.client("cloudformation", endpoint_url=endpoint)
        stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    except Exception as e:
        where = endpoint or f"AWS ({session.region_name})"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StackNotFound(
            f"no stack {name!r} at {where} ({first}): start one with `maas local up`, "
            "deploy with `sam deploy`, or set AWS_ENDPOINT_URL / MAAS_STACK"
        ) from None
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    return StackHandle(name, endpoint, outputs, session)
