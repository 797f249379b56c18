"""Real gRPC-Web and Connect clients, with no project code, against the local stack's HTTP API.

connect-python's generated client (Connect with the binary and JSON codecs, and gRPC-Web) and
sonora's gRPC-Web channel under grpcio-tools' generated stub, each in its own process in the
clients' environment (`make grpc`), with KServe's grpc_predict_v2.proto copied out of the
repository for them to generate from. At batch 1 and 64 their ModelInfer predictions must be
the JSON /infer route's, model_version set; bad calls get their gRPC codes and the function
keeps serving.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from maas_devkit.models import infer_body, train_tiny_classifier
from maas_devkit.publish import publish_to_stack as publish
from maas_devkit.repo import REPO
from maas_devkit.stacks import running_stack

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:No application metrics to publish"),
]

CLIENTS = Path(__file__).resolve().parent / "clients"
GRPC_PYTHON = REPO / ".venv" / "grpc" / "bin" / "python"
PROTO = REPO / "layers" / "shared" / "maas" / "serving" / "grpc_predict_v2.proto"
MODEL = "digits"

if not GRPC_PYTHON.exists():  # a missing client environment is a failure, not a skip
    pytest.fail("the gRPC clients' environment is missing: run `make grpc`", pytrace=False)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Any:
    clf, x = train_tiny_classifier("digits")
    with running_stack(tmp_path_factory.mktemp("grpc-clients")) as stack:
        publish(stack, MODEL, 1, clf.onnx_bytes(), promote=True)
        yield stack, x


def _run(script: str, *args: str) -> dict[str, Any]:
    # A clean environment: the client sees the stack's URL and nothing of this repository.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "PYTHONNOUSERSITE": "1"}
    result = subprocess.run(
        [str(GRPC_PYTHON), "-I", str(CLIENTS / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd="/",
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _json_infer(api_url: str, rows: np.ndarray) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{api_url}/v2/models/{MODEL}/infer",
        data=json.dumps(infer_body(rows)).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        doc: dict[str, Any] = json.loads(reply.read())
    return doc


def _args(stack: Any, tmp_path: Path, x: np.ndarray, batch: int) -> tuple[np.ndarray, list[str]]:
    rows = x[:batch].astype(np.float32)
    np.save(tmp_path / "rows.npy", rows)
    proto = shutil.copy(PROTO, tmp_path / PROTO.name)
    return rows, [stack.api_url, MODEL, str(tmp_path / "rows.npy"), str(proto)]


def _assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    expected = {o["name"]: o for o in want["outputs"]}
    assert sorted(got) == sorted(expected)
    for name, tensor in got.items():
        assert tensor["shape"] == expected[name]["shape"]
        if name == "label":
            assert tensor["data"] == expected[name]["data"]
        else:  # FP32 both ways: the same floats, bit for bit after JSON's round trip
            np.testing.assert_array_equal(
                np.float32(tensor["data"]), np.float32(expected[name]["data"])
            )


@pytest.mark.parametrize("batch", [1, 64])
def test_connect_client_proto_json_and_grpc_web_match_json_infer(
    digits: Any, tmp_path: Path, batch: int
) -> None:
    # GIVEN digits in prod, and the JSON route's predictions for `batch` rows
    stack, x = digits
    rows, args = _args(stack, tmp_path, x, batch)
    want = _json_infer(stack.api_url, rows)
    # WHEN connect-python's generated client calls the service in each protocol
    report = _run("connect_check.py", *args)
    # THEN every protocol gives the same predictions, version and id, and the right codes
    for mode in ("connect-proto", "connect-json", "grpc-web"):
        entry = report[mode]
        assert entry["live"] is entry["ready"] is entry["model_ready"] is True
        assert entry["server_name"] == "serverless-maas"
        assert entry["metadata"] == {
            "name": MODEL,
            "versions": ["1"],
            "inputs": [["input", "FP32", [-1, 64]]],
        }
        assert entry["model_version"] == want["model_version"] == "1"
        assert entry["id"] == f"connect-{mode}"
        _assert_same(entry["outputs"], want)
        assert entry["errors"] == {
            "unknown_model": "not_found",
            "oversized": "resource_exhausted",
            "batch_too_large": "resource_exhausted",
        }
        assert entry["after_errors"] == "1"
    assert report["bad_protobuf"]["status"] == 400
    assert report["bad_protobuf"]["code"] == "invalid_argument"


@pytest.mark.parametrize("batch", [1, 64])
def test_sonora_grpc_web_client_matches_json_infer(digits: Any, tmp_path: Path, batch: int) -> None:
    stack, x = digits
    rows, args = _args(stack, tmp_path, x, batch)
    want = _json_infer(stack.api_url, rows)

    report = _run("grpcweb_check.py", *args)

    assert report["live"] is report["ready"] is report["model_ready"] is True
    assert report["versions"] == ["1"]
    assert report["model_version"] == "1" and report["id"] == "grpc-web"
    _assert_same(report["outputs"], want)
    assert report["errors"] == {
        "unknown_model": "not_found",
        "batch_too_large": "resource_exhausted",
        "wrong_shape": "invalid_argument",
    }
    assert report["after_errors"] == "1"
