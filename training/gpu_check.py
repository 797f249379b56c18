"""GPU check for the training job, for a machine with NVIDIA GPUs (not run by the test suite).

    python training/gpu_check.py            # from the repository root, torch with CUDA installed

1. One process: CUDA and bf16 autocast (metrics.json says device cuda:0, bf16 true), tabular
   and text (ngram) recipes.
2. Data parallel: SM_NUM_GPUS=<GPU count> (at least 2) relaunches under torchrun with NCCL;
   world_size in metrics.json. With one GPU this step is reported as skipped.
3. Resume: the data-parallel job is run again on the same /opt/ml and must resume from its
   checkpoints.
Exits non-zero when a check fails; prints one line per check.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TRAIN = HERE / "train.py"


def _layout(base: Path, csv: str, hp: dict[str, object]) -> None:
    channel = base / "input" / "data" / "train"
    channel.mkdir(parents=True)
    (channel / "data.csv").write_text(csv)
    config = base / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(
        json.dumps({k: json.dumps(v) for k, v in hp.items()})
    )


def _blobs_csv(n: int = 20_000) -> str:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=n)
    x = np.array([[0, 0, 0], [3, 3, 0], [0, 3, 3]])[y] + rng.normal(scale=0.8, size=(n, 3))
    rows = [
        "f1,f2,f3,label",
        *(f"{a:.4f},{b:.4f},{c:.4f},{k}" for (a, b, c), k in zip(x, y, strict=True)),
    ]
    return "\n".join(rows) + "\n"


def _text_csv() -> str:
    import csv
    import io
    import re

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["text", "label"])
    for name in ("json", "csv", "logging", "argparse", "pathlib", "threading", "email.message"):
        doc = __import__(name, fromlist=["_"]).__doc__ or ""
        for s in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
            if len(s) > 20:
                w.writerow([s, name.split(".")[0]])
    return buf.getvalue()


def _run(base: Path, **env: str) -> tuple[int, str, dict]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "MAAS_"))}
    e.update({"MAAS_OPT_ML": str(base), **env})
    proc = subprocess.run([sys.executable, str(TRAIN)], env=e, capture_output=True, text=True)
    metrics_path = base / "model" / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    return proc.returncode, proc.stdout + proc.stderr, metrics


def main() -> int:
    import torch

    failures = 0

    def report(name: str, ok: bool, detail: str) -> None:
        nonlocal failures
        failures += 0 if ok else 1
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)

    gpus = torch.cuda.device_count()
    report("cuda", gpus > 0, f"{gpus} GPU(s), torch {torch.__version__}")
    if gpus == 0:
        return 1
    work = Path(tempfile.mkdtemp(prefix="maas-gpu-check-"))
    try:
        for name, csv, hp in (
            ("tabular", _blobs_csv(), {"recipe": "mlp", "epochs": 5}),
            ("text ngram", _text_csv(), {"task": "text-classification", "epochs": 5}),
        ):
            base = work / name.replace(" ", "-")
            _layout(base, csv, hp)
            rc, out, m = _run(base, SM_NUM_GPUS="1")
            ok = rc == 0 and str(m.get("device", "")).startswith("cuda") and m.get("bf16") is True
            report(f"{name} on one GPU, bf16", ok, f"device={m.get('device')} bf16={m.get('bf16')}"
                   + ("" if rc == 0 else f"\n{out[-2000:]}"))  # fmt: skip
        if gpus < 2:
            print("SKIP  data parallel: needs 2 GPUs (NCCL cannot share one GPU between ranks)")
            return 1 if failures else 0
        base = work / "ddp"
        _layout(base, _blobs_csv(), {"recipe": "mlp", "epochs": 8, "patience": 100})
        env = {"SM_NUM_GPUS": str(gpus), "SM_HOSTS": '["algo-1"]', "SM_CURRENT_HOST": "algo-1"}
        rc, out, m = _run(base, **env)
        ok = rc == 0 and m.get("world_size") == gpus and "nccl" in out
        report(f"torchrun x{gpus} (NCCL)", ok, f"world_size={m.get('world_size')}"
               + ("" if rc == 0 else f"\n{out[-2000:]}"))  # fmt: skip
        (base / "model" / "metrics.json").unlink(missing_ok=True)
        rc, out, m = _run(base, **env)
        ok = rc == 0 and "resuming from checkpoint" in out
        report(
            "resume from /opt/ml/checkpoints",
            ok,
            f"resumed_from_epoch={m.get('resumed_from_epoch')}",
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
