"""`sam validate --lint` and `sam build` on template.yaml, then what the build holds.

Slow (the build downloads the layers' wheels: a minute or two). Skips, saying why, where the
SAM CLI or a python3.12 interpreter is missing: `make sam` installs the CLI into .venv/sam/, and
pyenv's 3.12 (found with `pyenv which`, never a fixed path) serves `sam build`.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from maas_devkit.cfn import load_template
from maas_devkit.repo import REPO, TEMPLATE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

MIB = 1024 * 1024
LAMBDA_UNZIPPED_LIMIT = 262_144_000  # bytes: function code + all its layers, unzipped
INFERENCE_BUDGET = 150 * MIB  # the performance target (bench/): 100 MB of room under the limit
FUNCTIONS = (
    "IngestFunction",
    "OptimizeFunction",
    "InferenceFunction",
    "StreamingFunction",
    "AdminFunction",
)


def find_sam() -> str | None:
    local = REPO / ".venv" / "sam" / "bin" / "sam"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("sam")


def _real_python312(candidate: str, env: dict[str, str] | None = None) -> str | None:
    """The interpreter a candidate really runs (a pyenv shim may point at no 3.12), or None."""
    try:
        out = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 12), sys.executable)"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    ok, _, executable = out.stdout.strip().partition(" ")
    if out.returncode != 0 or ok != "True" or not Path(executable).is_file():
        return None
    return executable


def find_python312() -> str | None:
    """A real python3.12: on PATH, else pyenv's (`pyenv which`, never a fixed path)."""
    found = shutil.which("python3.12")
    if found and (real := _real_python312(found)):
        return real
    pyenv = shutil.which("pyenv")
    if not pyenv:
        return None
    try:
        versions = subprocess.run(
            [pyenv, "versions", "--bare"], capture_output=True, text=True, timeout=60
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    for version in sorted((v for v in versions if v.startswith("3.12")), reverse=True):
        env = os.environ | {"PYENV_VERSION": version}
        try:
            out = subprocess.run(
                [pyenv, "which", "python3.12"], env=env, capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.SubprocessError):
            continue
        path = out.stdout.strip()
        if out.returncode == 0 and path and (real := _real_python312(path, env)):
            return real
    return None


@pytest.fixture(scope="module")
def sam_env() -> tuple[str, dict[str, str], str]:
    sam = find_sam()
    if sam is None:
        pytest.skip("the AWS SAM CLI is not installed (run `make sam`: it goes to .venv/sam/)")
    python312 = find_python312()
    if python312 is None:
        pytest.skip("no python3.12 interpreter (on PATH or through pyenv): sam build needs it")
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(python312).parent), env.get("PATH", "")])
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    env["SAM_CLI_TELEMETRY"] = "0"
    return sam, env, python312


def run(cmd: list[str], env: dict[str, str], timeout: int) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd[1:3])} failed ({result.returncode}):\n"
            f"{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
        )
    return result


@pytest.fixture(scope="module")
def build_dir(sam_env: tuple[str, dict[str, str], str], tmp_path_factory: Any) -> Path:
    sam, env, _ = sam_env
    out = tmp_path_factory.mktemp("sam") / "build"
    cache = out.parent / "cache"
    started = time.monotonic()
    run(
        [
            sam,
            "build",
            "--template-file",
            str(TEMPLATE),
            "--build-dir",
            str(out),
            "--cache-dir",
            str(cache),
            "--no-cached",  # samconfig.toml caches; a test builds from scratch
        ],
        env,
        timeout=1500,
    )
    print(f"\nsam build: {time.monotonic() - started:.0f} s")
    return out


def tree_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            file = Path(root) / name
            if not file.is_symlink():
                total += file.stat().st_size
    return total


def function_layers(template: dict[str, Any], function: str) -> list[str]:
    """Logical ids of the template's own layers a function uses (Globals first, as SAM merges)."""
    layers = list(template.get("Globals", {}).get("Function", {}).get("Layers", []))
    layers += template["Resources"][function]["Properties"].get("Layers", [])
    return [layer["Ref"] for layer in layers if isinstance(layer, dict) and "Ref" in layer]


def lambda_sys_path(build_dir: Path, function: str, runtime: Path) -> list[str]:
    """sys.path as Lambda lays out a built function: its code, its layers, then the runtime's."""
    template = load_template(TEMPLATE)
    paths = [str(build_dir / function)]
    paths += [str(build_dir / layer / "python") for layer in function_layers(template, function)]
    return [*paths, str(runtime)]


def test_sam_validate_lint(sam_env: tuple[str, dict[str, str], str]) -> None:
    sam, env, _ = sam_env
    result = run([sam, "validate", "--lint", "--template-file", str(TEMPLATE)], env, timeout=600)
    assert "is a valid SAM Template" in result.stdout + result.stderr


def test_sam_build_sizes(build_dir: Path) -> None:
    template = load_template(TEMPLATE)
    sizes: dict[str, int] = {}
    for function in FUNCTIONS:
        parts = [function, *function_layers(template, function)]
        for part in parts:
            assert (build_dir / part).is_dir(), f"sam build made no {part}/"
        sizes[function] = sum(tree_bytes(build_dir / part) for part in parts)
        detail = ", ".join(f"{p} {tree_bytes(build_dir / p) / MIB:.1f}" for p in parts)
        print(f"{function}: {sizes[function] / MIB:.1f} MiB unzipped with layers ({detail})")
    for function, size in sizes.items():
        assert size <= LAMBDA_UNZIPPED_LIMIT, f"{function} is over Lambda's 250 MB unzipped"
    assert sizes["InferenceFunction"] <= INFERENCE_BUDGET


def test_sam_build_layout(build_dir: Path) -> None:
    assert (build_dir / "SharedLayer/python/maas/__init__.py").is_file()
    assert (build_dir / "SharedLayer/python/pydantic").is_dir()
    assert (build_dir / "SharedLayer/python/aws_lambda_powertools").is_dir()
    assert (build_dir / "RuntimeLayer/python/onnxruntime").is_dir()
    assert (build_dir / "RuntimeLayer/python/numpy").is_dir()
    # boto3 and its dependencies are the Lambda runtime's, not shadowed by a copy in the layer.
    for name in ("boto3", "botocore", "s3transfer", "urllib3"):
        assert not (build_dir / "SharedLayer/python" / name).exists(), name
    # onnxruntime's offline tooling (it imports onnx, which the layer lacks) and numpy's tests.
    for name in ("transformers", "tools", "quantization"):
        assert not (build_dir / "RuntimeLayer/python/onnxruntime" / name).exists(), name
    assert not list((build_dir / "RuntimeLayer/python/numpy").glob("**/tests"))
    # Bytecode that a read-only /opt can use: compiled for 3.12, not invalidated by timestamps.
    for module in (
        "SharedLayer/python/maas/serving/store",
        "RuntimeLayer/python/onnxruntime/__init__",
    ):
        path = build_dir / module
        pyc = path.parent / "__pycache__" / f"{path.name}.cpython-312.pyc"
        assert pyc.is_file(), pyc
        flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
        assert flags == 0b01, f"{pyc}: not an unchecked-hash pyc (flags {flags})"
    # tokenizers without its Hub-download dependencies (layers/text/Makefile: --no-deps).
    assert (build_dir / "TextLayer/python/tokenizers").is_dir()
    assert not (build_dir / "TextLayer/python/huggingface_hub").exists()
    assert (build_dir / "OptimizeFunction/onnx").is_dir()
    for function in FUNCTIONS:
        assert (build_dir / function / "app.py").is_file()
    # Nothing of the training stack leaks into Lambda.
    for part in build_dir.iterdir():
        assert not list(part.glob("**/torch/__init__.py")), f"torch in {part.name}"
    # Default Architecture x86_64: onnxruntime's extension is an x86-64 ELF (e_machine 0x3e).
    (ext,) = (build_dir / "RuntimeLayer/python/onnxruntime/capi").glob(
        "onnxruntime_pybind11_state*.so"
    )
    assert ext.read_bytes()[18:20] == b"\x3e\x00"


@pytest.fixture(scope="module")
def lambda_runtime(sam_env: tuple[str, dict[str, str], str], tmp_path_factory: Any) -> Path:
    """What the Lambda python3.12 runtime adds to sys.path after the layers: boto3 and its deps.

    The layers leave boto3 to the runtime; this is the boto3 the project pins, for 3.12.
    """
    import boto3

    _, env, python312 = sam_env
    target = tmp_path_factory.mktemp("var-runtime")
    run(
        [python312, "-m", "pip", "install", "--quiet", "--only-binary=:all:", "--target",
         str(target), f"boto3=={boto3.__version__}"],
        env,
        timeout=600,
    )  # fmt: skip
    return target


# A real model through the built runtime layer: an ONNX graph written by the test process.
INFERENCE_SMOKE = """
import numpy as np, onnxruntime as ort
assert not {"boto3", "botocore.session", "pydantic"} & set(sys.modules), "cold path too heavy"
s = ort.InferenceSession(sys.argv[-1], providers=["CPUExecutionProvider"])
out = s.run(None, {"input": np.zeros((2, 4), np.float32)})
assert out[0].shape == (2, 3), out
import tokenizers, maas.serving.textserving, maas.serving.awslite
"""


# The streaming function as Lambda starts it: its exec wrapper executable in the zip, and the
# Runtime API loop it runs importable from the layers with the handler it calls.
STREAMING_SMOKE = """
import os, importlib
assert os.access(os.path.join(sys.path[0], "stream-runtime"), os.X_OK), "wrapper not executable"
loop = importlib.import_module("maas.serving.lambdastream")
assert callable(loop.main) and callable(app.stream_handler)
"""


# The optimizer's tooling from the build output: quant_pre_process (symbolic shape inference)
# on a real graph, and the transformer fusions' module (both need sympy, undeclared by ORT).
OPTIMIZE_SMOKE = """
import tempfile, onnx, onnxruntime, numpy
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.optimizer import optimize_model
out = tempfile.mkdtemp() + "/pre.onnx"
quant_pre_process(sys.argv[-1], out, skip_symbolic_shape=False)
onnx.checker.check_model(onnx.load(out))
"""


@pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or sys.platform != "linux",
    reason="the build targets x86_64 Linux; its wheels load only there",
)
@pytest.mark.parametrize("function", FUNCTIONS)
def test_built_handler_imports(
    build_dir: Path,
    sam_env: tuple[str, dict[str, str], str],
    lambda_runtime: Path,
    function: str,
    iris_model: Any,
    tmp_path: Path,
) -> None:
    """Each handler imports from its build output alone, as Lambda lays it out (-S: no site):
    the function, its layers, then the runtime's own packages (boto3)."""
    _, env, python312 = sam_env
    paths = lambda_sys_path(build_dir, function, lambda_runtime)
    model = tmp_path / "model.onnx"
    model.write_bytes(iris_model.onnx)
    heavy = {
        "InferenceFunction": INFERENCE_SMOKE,
        "OptimizeFunction": OPTIMIZE_SMOKE,
        "StreamingFunction": STREAMING_SMOKE,
    }.get(function, "pass")
    code = (
        "import sys; sys.path[:0] = sys.argv[1:-1]; import app; "
        "assert callable(app.lambda_handler)\n" + heavy
    )
    paths.append(str(model))
    env = env | {
        "POWERTOOLS_TRACE_DISABLED": "true",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    result = subprocess.run(
        [python312, "-S", "-c", code, *paths],
        cwd=build_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]


# The optimizer's fused-attention candidate built from the OptimizeFunction's build output (its
# onnxruntime tooling, onnx and sympy), on a BERT graph exported here as the import job does.
FUSION_SMOKE = """
import json, sys
from pathlib import Path
sys.path[:0] = json.loads(sys.argv[1])
from maas.optimize.recipes import EMBEDDING_OP_TYPES, RecipeInput, build_fused_dynamic
work, fp32 = Path(sys.argv[3]), Path(sys.argv[2])
inp = RecipeInput(fp32=fp32, graph=fp32, workdir=work, task="embedding",
    op_types=EMBEDDING_OP_TYPES, calibration=None, transformer=json.loads(sys.argv[4]))
note = build_fused_dynamic(inp, work / "fused.onnx")
print(note)
"""


@pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or sys.platform != "linux",
    reason="the build targets x86_64 Linux; its wheels load only there",
)
def test_built_optimizer_fuses_a_transformer(
    build_dir: Path,
    sam_env: tuple[str, dict[str, str], str],
    lambda_runtime: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("torch")
    import json

    import onnx
    import tinybert

    monkeypatch.delenv("MAAS_ONNX_EXPORTER", raising=False)
    fp32 = tinybert.export(tmp_path, "torchscript")
    _, env, python312 = sam_env
    paths = lambda_sys_path(build_dir, "OptimizeFunction", lambda_runtime)
    result = subprocess.run(
        [python312, "-S", "-c", FUSION_SMOKE, json.dumps(paths), str(fp32), str(tmp_path),
         json.dumps(tinybert.ARCH)],
        cwd=build_dir,
        env=env | {"PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Attention 2" in result.stdout
    ops = {n.op_type for n in onnx.load(str(tmp_path / "fused.onnx")).graph.node}
    assert "QAttention" in ops
