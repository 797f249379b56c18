"""The unit tier is pure: no subprocess, no network (loopback included), every test."""

from __future__ import annotations

import socket
import subprocess
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def pure(monkeypatch: pytest.MonkeyPatch) -> None:
    """A subprocess or a connection fails the test: it belongs in tests/integration."""

    def no_subprocess(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("unit tests start no subprocess: move this test to integration")

    def no_connect(self: socket.socket, address: Any) -> Any:
        raise RuntimeError(f"unit tests use no network (tried {address!r}): integration")

    monkeypatch.setattr(subprocess.Popen, "__init__", no_subprocess)
    monkeypatch.setattr(socket.socket, "connect", no_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", no_connect)
