"""Promote -> canary 10 % -> rollback through the `maas` CLI while a client sends non-stop.

The CLI goes through the admin API (SigV4-signed, as AWS_IAM asks) of a running local stack;
the stack's alias TTL is short so each change shows within a second. Not one request may fail,
and the version that answers (the response's model_version) must follow each change.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from maas_devkit.models import infer_body
from maas_devkit.publish import publish_to_stack as publish
from maas_devkit.stacks import running_stack

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:No application metrics to publish"),
]

MODEL = "flowers"
ALIAS_TTL_S = 0.5


@dataclass
class Traffic:
    """A client sending one request after another, recording every answer."""

    url: str
    body: dict[str, Any]
    answers: list[tuple[float, int, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with requests.Session() as session:
            deadline = time.monotonic() + 300  # bounded, whatever happens to the test
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    r = session.post(self.url, json=self.body, timeout=30)
                    version = r.json().get("model_version", "") if r.status_code == 200 else r.text
                    self.answers.append((time.monotonic(), r.status_code, version))
                except requests.RequestException as e:
                    self.answers.append((time.monotonic(), 0, repr(e)))

    def since(self, t: float) -> list[str]:
        return [v for at, status, v in list(self.answers) if at > t and status == 200]

    def wait_for(self, version: str, timeout: float = 15) -> float:
        """Until `version` alone has answered for a while; returns when that run began."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            time.sleep(0.25)
            recent = self.since(time.monotonic() - 0.5)
            if len(recent) >= 5 and set(recent) == {version}:
                return time.monotonic()
        raise AssertionError(f"v{version} did not take over: {Counter(self.since(t0))}")

    def collect(self, n: int, timeout: float = 60) -> Counter[str]:
        t0 = time.monotonic()
        while len(self.since(t0)) < n and time.monotonic() - t0 < timeout:
            time.sleep(0.1)
        return Counter(self.since(t0)[:n])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, iris_model: Any, iris_model_reversed: Any):
    with running_stack(tmp_path_factory.mktemp("canary"), alias_ttl_s=ALIAS_TTL_S) as s:
        publish(s, MODEL, 1, iris_model.onnx, promote=True)
        publish(s, MODEL, 2, iris_model_reversed.onnx)
        publish(s, MODEL, 3, iris_model.onnx)
        yield s


def test_promote_canary_rollback_via_cli_under_load_fails_no_request(
    stack: Any, iris_model: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: Any
) -> None:
    from maas_cli.main import main

    # GIVEN the CLI pointed at the stack, and a client sending continuously to the plain route
    monkeypatch.setenv("AWS_ENDPOINT_URL", stack.aws_url)
    monkeypatch.setenv("MAAS_STATE_DIR", str(tmp_path))
    traffic = Traffic(
        f"{stack.api_url}/v2/models/{MODEL}/infer", infer_body(iris_model.features[:4])
    )
    client = threading.Thread(target=traffic.run, daemon=True)
    client.start()
    try:
        traffic.wait_for("1")

        # WHEN v2 is promoted: THEN v2 answers everything
        assert main(["promote", MODEL, "2", "--reason", "e2e"]) == 0
        assert "prod -> v2" in capsys.readouterr().out
        traffic.wait_for("2")

        # WHEN v3 gets a 10 % canary: THEN about a tenth of the answers are v3, the rest v2
        assert main(["canary", MODEL, "3", "--weight", "0.1"]) == 0
        assert "canary v3 at 10%" in capsys.readouterr().out
        time.sleep(2 * ALIAS_TTL_S + 0.5)  # every container has refreshed its alias
        mix = traffic.collect(400)
        assert set(mix) == {"2", "3"}, mix
        assert 0.04 <= mix["3"] / 400 <= 0.18, mix  # 10 % +- 4 sigma at n=400

        assert main(["versions", MODEL]) == 0
        listing = capsys.readouterr().out
        assert "prod" in listing and "canary 10%" in listing

        # WHEN rolled back during the canary: THEN the canary goes, v2 alone answers
        assert main(["rollback", MODEL]) == 0
        out = capsys.readouterr().out
        assert "prod -> v2" in out and "canary" not in out
        traffic.wait_for("2")

        # WHEN rolled back again: THEN prod returns to v1
        assert main(["rollback", MODEL]) == 0
        assert "prod -> v1" in capsys.readouterr().out
        traffic.wait_for("1")
    finally:
        traffic.stop.set()
        client.join(timeout=60)

    # THEN not one request failed, over every change
    failures = [a for a in traffic.answers if a[1] != 200]
    assert not failures, failures[:5]
    assert len(traffic.answers) > 500
    # AND the audit trail names each change
    assert main(["audit", MODEL]) == 0
    audit = capsys.readouterr().out
    for action in ("promote:prod", "canary:prod", "rollback:prod"):
        assert action in audit


def test_admin_api_refuses_unsigned_and_wrongly_signed_requests(stack: Any) -> None:
    from maas_cli.sigv4 import sign

    url = f"{stack.api_url}/admin/models"
    # Unsigned: refused as API Gateway's AWS_IAM would
    r = requests.get(url, timeout=10)
    assert r.status_code == 403 and "SigV4" in r.json()["error"]
    # Signed with a key the stack does not know, or a wrong secret: refused
    for key, secret in (("stranger", "testing"), ("testing", "wrong")):
        headers = sign("GET", url, b"", access_key=key, secret_key=secret, region="us-east-1")
        assert requests.get(url, headers=headers, timeout=10).status_code == 403
    # Signed by the stack's credentials: served, the caller named
    headers = sign("GET", url, b"", access_key="testing", secret_key="testing", region="us-east-1")
    r = requests.get(url, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert MODEL in [m["name"] for m in r.json()["models"]]
    # A signed body that was altered on the way: refused
    promote = f"{stack.api_url}/admin/models/{MODEL}/promote"
    body = b'{"version": 3}'
    headers = sign(
        "POST",
        promote,
        body,
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        headers={"content-type": "application/json"},
    )
    r = requests.post(promote, data=b'{"version": 2}', headers=headers, timeout=10)
    assert r.status_code == 403
    # The inference routes stay open (InferenceAuth=NONE)
    assert requests.get(f"{stack.api_url}/v2/health/live", timeout=10).status_code == 200
