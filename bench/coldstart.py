"""Cold start: a fresh process per sample, three variants interleaved, the same machine.

handler  imports functions/inference/app.py and answers its first OIP request, the model
         fetched from the local stack's S3 (a fresh model cache per sample) after reading the
         alias and version from its DynamoDB, as a new Lambda sandbox does
torch    imports the SAM-PyTorch-template-style function (bench/torch_app.py), which loads the
         same trained weights at import, and answers the same request in fp32 eager mode
floor    imports onnxruntime, creates a session from the served model file, runs it once

Each sample is timed from the spawn to the answer line on the child's stdout (teardown not
counted); the child also reports its own import and first-request times. The variants take
turns (the order rotates each round) so that drift and other load fall on all of them alike.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import BENCH, REPO, loadavg, summary

PY = sys.executable


def _run(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    answer = None
    for line in proc.stdout:
        if line.startswith("ANSWER "):
            wall = (time.perf_counter() - started) * 1e3
            answer = json.loads(line[7:]) | {"wall_ms": wall}
            break
    _, err = proc.communicate(timeout=120)
    if answer is None or answer.get("status") != 200:
        raise RuntimeError(f"cold start of {cmd[1]} failed: {answer} {err[-2000:]}")
    return answer


def measure(
    case: str,
    event: dict[str, Any],
    served_onnx: Path,
    floor_feeds: dict[str, Path],
    torch_env: dict[str, str],
    handler_env: dict[str, str],
    repeats: int,
    workdir: Path,
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    event_file = workdir / f"event-{case}.json"
    event_file.write_text(json.dumps(event))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_"))}
    variants = {
        "handler": (
            [
                PY,
                str(BENCH / "cold" / "handler.py"),
                str(event_file),
                str(REPO / "functions/inference"),
            ],
            base | handler_env,
        ),
        "torch": (
            [PY, str(BENCH / "cold" / "torch_handler.py"), str(event_file), str(BENCH)],
            base | torch_env,
        ),
        "floor": (
            [
                PY,
                str(BENCH / "cold" / "floor.py"),
                str(served_onnx),
                json.dumps({k: str(v) for k, v in floor_feeds.items()}),
            ],
            base,
        ),
    }
    samples: dict[str, list[dict[str, Any]]] = {k: [] for k in variants}
    names = list(variants)
    load_before = loadavg()
    for r in range(repeats + 1):  # round 0 warms the page cache and is not counted
        order = names[r % 3 :] + names[: r % 3]
        for name in order:
            cmd, env = variants[name]
            cache = None
            if name == "handler":
                cache = Path(tempfile.mkdtemp(prefix="maas-cold-", dir=workdir))
                env = env | {"MODEL_CACHE_DIR": str(cache)}
            try:
                result = _run(cmd, env)
            finally:
                if cache is not None:
                    shutil.rmtree(cache, ignore_errors=True)
            if r:
                samples[name].append(result)
    out: dict[str, Any] = {
        "repeats": repeats,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
    }
    for name, rows in samples.items():
        out[name] = {
            "wall_ms": summary([s["wall_ms"] for s in rows]),
            "import_ms": summary([s["import_ms"] for s in rows]),
            "first_request_ms": summary([s["first_ms"] for s in rows]),
            "samples_ms": [round(s["wall_ms"], 1) for s in rows],
        }
    h, t, f = (out[k]["wall_ms"]["median"] for k in ("handler", "torch", "floor"))
    # Ratios of medians, and of each round's own samples (the spread of the ratio).
    per_round_torch = [
        a["wall_ms"] / b["wall_ms"]
        for a, b in zip(samples["handler"], samples["torch"], strict=True)
    ]
    per_round_floor = [
        a["wall_ms"] / b["wall_ms"]
        for a, b in zip(samples["handler"], samples["floor"], strict=True)
    ]
    out["ratios"] = {
        "handler_over_torch": h / t,
        "handler_over_floor": h / f,
        "handler_over_torch_per_round": summary(per_round_torch),
        "handler_over_floor_per_round": summary(per_round_floor),
    }
    return out
