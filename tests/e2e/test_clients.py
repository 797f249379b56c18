"""Real Open Inference Protocol clients, unchanged, against the local stack's HTTP API.

Each client runs as its own process with nothing of this project importable: tritonclient.http
with its defaults (binary tensors both ways) and as JSON; KServe's InferenceRESTClient in v2
mode, in KServe's own environment (`make kserve`). Both at batch 1 and 64, on a model published
to the registry, and both must agree with ONNX Runtime on the same file.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from maas_devkit.models import train_tiny_classifier
from maas_devkit.publish import publish_to_stack as publish
from maas_devkit.repo import REPO
from maas_devkit.stacks import running_stack

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:No application metrics to publish"),
]

CLIENTS = Path(__file__).resolve().parent / "clients"
TRITON_PYTHON = REPO / ".venv" / "bin" / "python"
KSERVE_PYTHON = REPO / ".venv" / "kserve" / "bin" / "python"
MODEL = "digits"


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Any:
    clf, x = train_tiny_classifier("digits")
    onnx = clf.onnx_bytes()
    with running_stack(tmp_path_factory.mktemp("clients")) as stack:
        publish(stack, MODEL, 1, onnx, promote=True)
        yield stack, onnx, x


def _expected(onnx: bytes, rows: np.ndarray) -> dict[str, Any]:
    session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    probabilities, labels = session.run(["probabilities", "label"], {"input": rows})
    return {"label": [str(x) for x in labels], "probabilities": probabilities}


def _run(python: Path, script: str, *args: str) -> dict[str, Any]:
    # A clean environment: the client sees the stack's URL and nothing of this repository.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "PYTHONNOUSERSITE": "1"}
    result = subprocess.run(
        [str(python), "-I", str(CLIENTS / script), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd="/",
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _rows(tmp_path: Path, x: np.ndarray, batch: int) -> tuple[np.ndarray, str]:
    rows = x[:batch].astype(np.float32)
    path = tmp_path / f"rows-{batch}.npy"
    np.save(path, rows)
    return rows, str(path)


def _assert_predictions(got: dict[str, Any], want: dict[str, Any], batch: int) -> None:
    assert got["label"] == want["label"]
    np.testing.assert_allclose(
        np.array(got["probabilities"]).reshape(batch, -1), want["probabilities"], rtol=1e-6
    )


@pytest.mark.parametrize("batch", [1, 64])
def test_tritonclient_defaults_binary_and_json_agree_with_onnx_runtime(
    digits: Any, tmp_path: Path, batch: int
) -> None:
    # GIVEN a model served from the registry and rows of digits
    stack, onnx, x = digits
    rows, path = _rows(tmp_path, x, batch)

    # WHEN tritonclient.http, with its defaults, talks to the stack's HTTP API
    report = _run(
        TRITON_PYTHON, "triton_check.py", stack.api_url.removeprefix("http://"), MODEL, path
    )

    # THEN health and both metadata calls answer as Triton's would
    assert report["live"] is report["ready"] is report["model_ready"] is True
    assert report["server_metadata"]["name"] == "serverless-maas"
    assert "binary_tensor_data" in report["server_metadata"]["extensions"]
    meta = report["model_metadata"]
    assert (meta["name"], meta["versions"], meta["platform"]) == (MODEL, ["1"], "onnxruntime_onnx")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    # AND binary in / binary out (the default) and JSON give ONNX Runtime's predictions
    want = _expected(onnx, rows)
    assert report["binary"]["binary_outputs"] == ["label", "probabilities"]
    assert report["json"]["binary_outputs"] == []
    for mode in ("binary", "json"):
        _assert_predictions(report[mode], want, batch)
        assert report[mode]["id"] == f"triton-{mode == 'binary'}"
        assert report[mode]["model_version"] == "1"
    assert report["binary"]["label"] == report["json"]["label"]


@pytest.mark.skipif(
    not KSERVE_PYTHON.exists(), reason="KServe's environment is missing: run `make kserve`"
)
@pytest.mark.parametrize("batch", [1, 64])
def test_kserve_rest_client_v2_binary_and_json_agree_with_onnx_runtime(
    digits: Any, tmp_path: Path, batch: int
) -> None:
    stack, onnx, x = digits
    rows, path = _rows(tmp_path, x, batch)

    report = _run(KSERVE_PYTHON, "kserve_check.py", stack.api_url, MODEL, path)

    assert report["live"] is report["ready"] is report["model_ready"] is True
    want = _expected(onnx, rows)
    for mode in ("binary", "json"):
        _assert_predictions(report[mode], want, batch)
        assert report[mode]["id"] == f"kserve-{mode == 'binary'}"
