"""The CLI's model management against a stack without an API URL: straight to the registry."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from maas_cli import main as cli
from maas_cli.admin_client import AdminError, DirectAdmin, HttpAdmin, admin_for
from maas_cli.connect import StackHandle
from maas_devkit.publish import publish_model


@pytest.fixture
def stack(aws: Any, registry: Any, storage: Any, iris_model: Any, monkeypatch: Any) -> Any:
    publish_model(registry, storage, "iris", 1, iris_model.onnx, promote=True)
    publish_model(registry, storage, "iris", 2, iris_model.onnx)
    handle = StackHandle("maas", None, {"RegistryTableName": aws.table}, boto3.Session())
    monkeypatch.setattr(cli, "connect", lambda: handle)
    return handle


def test_admin_for_goes_through_the_api_when_the_stack_has_one(stack: StackHandle) -> None:
    assert isinstance(admin_for(stack), DirectAdmin)
    with_api = StackHandle("maas", None, {"ApiUrl": "https://x.example/"}, stack.session)
    assert isinstance(admin_for(with_api), HttpAdmin)


def test_cli_promote_canary_rollback_without_an_api(stack: StackHandle, capsys: Any) -> None:
    assert cli.main(["promote", "iris", "2"]) == 0
    assert "iris: prod -> v2" in capsys.readouterr().out
    assert cli.main(["canary", "iris", "1", "--weight", "0.3"]) == 0
    assert "canary v1 at 30%" in capsys.readouterr().out
    assert cli.main(["versions", "iris"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert "canary 30%" in listing[0] and "prod" in listing[1]
    assert cli.main(["models"]) == 0
    assert "prod=v2  canary=v1@30%" in capsys.readouterr().out
    assert cli.main(["rollback", "iris"]) == 0
    assert capsys.readouterr().out.strip() == "iris: prod -> v2"
    assert cli.main(["audit", "iris"]) == 0
    assert "rollback:prod" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["promote", "iris", "7"], "no version 7"),
        (["canary", "iris", "1", "--weight", "0.5"], "already prod"),
        (["canary", "iris", "--weight", "0.5"], "needs a VERSION"),
        (["versions", "nope"], "no versions"),
    ],
)
def test_cli_refusals_are_one_line_errors(
    stack: StackHandle, capsys: Any, argv: list[str], message: str
) -> None:
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err


def test_cli_weight_outside_0_1_is_refused_by_the_parser(stack: StackHandle, capsys: Any) -> None:
    with pytest.raises(SystemExit):
        cli.main(["canary", "iris", "2", "--weight", "10"])
    assert "within [0, 1]" in capsys.readouterr().err


def test_direct_admin_errors_carry_http_like_statuses(stack: StackHandle) -> None:
    admin = DirectAdmin(stack)
    with pytest.raises(AdminError) as e:
        admin.promote("iris", 9, "x")
    assert e.value.status == 404
