"""Package size: each function's unzipped deployment with its layers, from `sam build`.

Needs the SAM CLI (`make sam`) and a python3.12 (on PATH or pyenv's), as `make build` does.
Also measures what the layers' bytecode is worth: the inference handler imported from the
build output as Lambda lays it out (python3.12 -S, function + layers + the runtime's boto3),
with the layers' .pyc files and with them removed (Lambda's /opt is read-only, so without them
every cold start compiles from source).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from .common import REPO

MIB = 1024 * 1024
LIMIT_BYTES = 262_144_000  # Lambda: function + layers unzipped, 250 MB (MiB)
TARGET_BYTES = 150 * MIB
FUNCTIONS = ("InferenceFunction", "IngestFunction", "OptimizeFunction", "AdminFunction")


def find_sam() -> str | None:
    local = REPO / ".venv" / "sam" / "bin" / "sam"
    return str(local) if local.is_file() else shutil.which("sam")


def find_python312() -> str | None:
    found = shutil.which("python3.12")
    candidates = [found] if found else []
    pyenv = shutil.which("pyenv")
    if pyenv:
        versions = subprocess.run(
            [pyenv, "versions", "--bare"], capture_output=True, text=True, check=False
        ).stdout.split()
        for v in sorted((v for v in versions if v.startswith("3.12")), reverse=True):
            out = subprocess.run(
                [pyenv, "which", "python3.12"],
                env=os.environ | {"PYENV_VERSION": v},
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            if out:
                candidates.append(out)
    for c in candidates:
        ok = subprocess.run(
            [c, "-c", "import sys; print(sys.version_info[:2] == (3, 12), sys.executable)"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if ok and ok[0] == "True":
            return ok[1]
    return None


def tree_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            f = Path(root) / name
            if not f.is_symlink():
                total += f.stat().st_size
    return total


def function_layers(template: dict[str, Any], function: str) -> list[str]:
    layers = list(template.get("Globals", {}).get("Function", {}).get("Layers", []))
    layers += template["Resources"][function]["Properties"].get("Layers", [])
    return [layer["Ref"] for layer in layers if isinstance(layer, dict) and "Ref" in layer]


def build(out: Path) -> tuple[Path, float, str]:
    sam, python312 = find_sam(), find_python312()
    if sam is None or python312 is None:
        raise RuntimeError("sam build needs the SAM CLI (`make sam`) and a python3.12")
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(python312).parent), env.get("PATH", "")])
    env["SAM_CLI_TELEMETRY"] = "0"
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    started = time.perf_counter()
    cmd = [sam, "build", "--template-file", str(REPO / "template.yaml"), "--build-dir",
           str(out / "build"), "--cache-dir", str(out / "cache"), "--cached"]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return out / "build", time.perf_counter() - started, python312


def sizes(build_dir: Path) -> dict[str, Any]:
    from maas_devkit.cfn import load_template

    template = load_template(REPO / "template.yaml")
    out: dict[str, Any] = {
        "limit_bytes": LIMIT_BYTES,
        "target_bytes": TARGET_BYTES,
        "functions": {},
    }
    for function in FUNCTIONS:
        parts = [function, *function_layers(template, function)]
        detail = {p: tree_bytes(build_dir / p) for p in parts}
        out["functions"][function] = {"total_bytes": sum(detail.values()), "parts": detail}
    layers: dict[str, Any] = {}
    for layer in ("SharedLayer", "RuntimeLayer", "TextLayer"):
        base = build_dir / layer / "python"
        entries = sorted(
            ((tree_bytes(p) if p.is_dir() else p.stat().st_size, p.name) for p in base.iterdir()),
            reverse=True,
        )
        pyc = sum(f.stat().st_size for f in base.rglob("*.pyc"))
        layers[layer] = {"top": [{"name": n, "bytes": b} for b, n in entries[:8]], "pyc_bytes": pyc}
    out["layers"] = layers
    return out


def runtime_boto3(python312: str, dest: Path) -> Path:
    """The boto3 the Lambda runtime provides (after the layers on sys.path): pinned as ours."""
    import boto3

    marker = dest / f".boto3-{boto3.__version__}"
    if not marker.exists():
        shutil.rmtree(dest, ignore_errors=True)
        subprocess.run(
            [python312, "-m", "pip", "install", "--quiet", "--only-binary=:all:", "--target",
             str(dest), f"boto3=={boto3.__version__}"],
            check=True, capture_output=True,
        )  # fmt: skip
        marker.touch()
    return dest


def bytecode_effect(build_dir: Path, python312: str, work: Path, repeats: int = 7) -> dict:
    """`import app` (the inference handler, which imports numpy and onnxruntime) from the build
    output under python3.12 -S, with the layers' .pyc files and without them."""
    from maas_devkit.cfn import load_template

    template = load_template(REPO / "template.yaml")
    layers = function_layers(template, "InferenceFunction")
    runtime = runtime_boto3(python312, work / "var-runtime")
    bare = work / "nopyc"
    shutil.rmtree(bare, ignore_errors=True)
    for layer in layers:
        shutil.copytree(build_dir / layer, bare / layer, ignore=shutil.ignore_patterns("*.pyc"))
    variants = {
        "with_pyc": [str(build_dir / "InferenceFunction")]
        + [str(build_dir / l / "python") for l in layers],  # noqa: E741
        "without_pyc": [str(build_dir / "InferenceFunction")]
        + [str(bare / l / "python") for l in layers],  # noqa: E741
    }
    code = "import sys; sys.path[:0] = sys.argv[1:]; import app"
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "AWS_REGION": "us-east-1"}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(repeats + 1):
        for name in list(variants) if r % 2 else list(variants)[::-1]:
            t0 = time.perf_counter()
            subprocess.run(
                [python312, "-S", "-c", code, *variants[name], str(runtime)],
                env=env, check=True, capture_output=True,
            )  # fmt: skip
            if r:
                times[name].append((time.perf_counter() - t0) * 1e3)
    shutil.rmtree(bare, ignore_errors=True)
    return {k: {"median_ms": statistics.median(v), "samples_ms": v} for k, v in times.items()}
