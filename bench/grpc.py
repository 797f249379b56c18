"""The OIP gRPC routes beside REST: request size, handler time, and what they cost a cold start.

    python -m bench.grpc [--pairs N] [--cold N]

Warm, in one process on one published digits model (64 FP32 features, 10 classes, moto in
process): the same rows sent as OIP JSON, with the binary tensor extension, over Connect
(protobuf and JSON codecs) and gRPC-Web, at batch 1 and 64, through the inference handler.
The formats take turns call by call, so drift falls on all alike; figures are medians.

Cold, a fresh process per sample against moto's server (the model read from its S3 and the
alias from its DynamoDB, as a new sandbox does), the variants interleaved:
- rest:      this tree's handler answering its first JSON /infer
- rest-base: the same request on the tree before the gRPC routes existed (git archive of the
             parent of the commit that added maas/serving/grpcweb.py): "unchanged" is the
             ratio of the two, and each child reports whether protobuf got imported
- grpc:      this tree's handler answering its first Connect ModelInfer (protobuf's cost)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import OUT, REPO, summary, write_json

SERVICE = "/inference.GRPCInferenceService"
FORMATS = ("json", "binary", "connect-proto", "connect-json", "grpc-web")


def bodies(rows: np.ndarray) -> dict[str, tuple[dict[str, str], bytes]]:
    """(headers, body) of one infer request per format, as each client puts it on the wire."""
    from google.protobuf import json_format
    from maas.serving import grpc_predict_v2_pb2 as pb
    from maas_devkit.models import infer_body

    x = rows.astype("<f4")
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=x.shape)
    message = pb.ModelInferRequest(
        model_name="digits", inputs=[tensor], raw_input_contents=[x.tobytes()]
    )
    proto = message.SerializeToString()
    return {
        "json": ({"content-type": "application/json"}, json.dumps(infer_body(rows)).encode()),
        "binary": (
            {
                "content-type": "application/octet-stream",
                "inference-header-content-length": str(len(header)),
            },
            header + x.tobytes(),
        ),
        "connect-proto": ({"content-type": "application/proto"}, proto),
        "connect-json": (
            {"content-type": "application/json"},
            json_format.MessageToJson(message, indent=None).encode(),
        ),
        "grpc-web": (
            {"content-type": "application/grpc-web+proto"},
            struct.pack(">BI", 0, len(proto)) + proto,
        ),
    }


def _path(fmt: str) -> str:
    return "/v2/models/digits/infer" if fmt in ("json", "binary") else f"{SERVICE}/ModelInfer"


def _publish_digits() -> np.ndarray:
    """The stack's resources, and a tiny digits classifier published as prod; its rows."""
    import boto3
    from maas.core.registry import Registry
    from maas.core.storage import Storage
    from maas_devkit import account, models, publish

    account.create_resources(boto3.client)
    clf, x = models.train_tiny_classifier("digits")
    publish.publish_model(
        Registry(account.REGISTRY_TABLE), Storage(), "digits", 1, clf.onnx_bytes(), promote=True
    )
    return x


def warm(pairs: int) -> dict[str, Any]:
    """Handler time per format at batch 1 and 64, with request and response sizes."""
    import moto
    from maas.serving.http import ClientResponse
    from maas_devkit import lambda_runtime
    from maas_devkit.events import http_api_event

    saved = dict(os.environ)
    os.environ.update(_env(tempfile.mkdtemp(prefix="maas-grpc-")))
    try:
        with moto.mock_aws():
            x = _publish_digits()
            app = lambda_runtime.load_handler("inference")
            out: dict[str, Any] = {}
            for batch in (1, 64):
                rows = np.resize(x, (batch, x.shape[1]))
                requests = bodies(rows)
                events = {
                    f: http_api_event("POST", _path(f), h, b) for f, (h, b) in requests.items()
                }
                sizes = {}
                for f, event in events.items():
                    reply = ClientResponse.of(app.lambda_handler(event, None))
                    assert reply.status == 200 and "grpc-status" not in reply.headers, reply
                    sizes[f] = {
                        "request_bytes": len(requests[f][1]),
                        "response_bytes": len(reply.body),
                    }
                times: dict[str, list[float]] = {f: [] for f in FORMATS}
                perf = time.perf_counter
                for i in range(pairs):
                    order = FORMATS[i % len(FORMATS) :] + FORMATS[: i % len(FORMATS)]
                    for f in order:
                        t0 = perf()
                        app.lambda_handler(events[f], None)
                        times[f].append(perf() - t0)
                medians = {f: statistics.median(t) * 1e3 for f, t in times.items()}
                out[f"batch_{batch}"] = {
                    f: sizes[f]
                    | {
                        "handler_p50_ms": medians[f],
                        "handler_vs_json": medians[f] / medians["json"],
                        "request_vs_json": sizes[f]["request_bytes"]
                        / sizes["json"]["request_bytes"],
                    }
                    for f in FORMATS
                }
            out["pairs"] = pairs
            return out
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _env(cache: str) -> dict[str, str]:
    from maas_devkit import account

    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "REGISTRY_TABLE": account.REGISTRY_TABLE,
        "ARTIFACT_BUCKET": account.ARTIFACT_BUCKET,
        "MODEL_CACHE_DIR": cache,
        "POWERTOOLS_METRICS_DISABLED": "true",
    }


# --- cold start -----------------------------------------------------------------------------

CHILD = """
import time
t0 = time.perf_counter()
import json, sys
sys.path.insert(0, sys.argv[2])
import app
t1 = time.perf_counter()
event = json.load(open(sys.argv[1]))
response = app.lambda_handler(event, None)
t2 = time.perf_counter()
import maas
print("ANSWER", json.dumps({
    "status": response["statusCode"],
    "grpc_status": (response.get("headers") or {}).get("grpc-status"),
    "import_ms": (t1 - t0) * 1e3, "first_ms": (t2 - t1) * 1e3,
    "protobuf": "google.protobuf" in sys.modules, "maas": maas.__file__,
}), flush=True)
"""


def base_tree(dest: Path) -> tuple[str, Path]:
    """The tree before the gRPC routes: the parent of the commit that added grpcweb.py."""
    module = "layers/shared/maas/serving/grpcweb.py"
    added = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "--", module],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()[-1]  # fmt: skip
    rev = f"{added}^"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", rev, "layers/shared/maas", "functions/inference"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout  # fmt: skip
    tar = dest / "base.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as t:
        t.extractall(dest, filter="data")
    return subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip(), dest


def cold(repeats: int) -> dict[str, Any]:
    from maas_devkit.events import http_api_event
    from maas_local.stack import free_port
    from moto.server import ThreadedMotoServer

    work = OUT / "grpc-cold"
    work.mkdir(parents=True, exist_ok=True)
    rev, base = base_tree(work / "base")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    saved = dict(os.environ)
    endpoint = f"http://127.0.0.1:{port}"
    env = _env("") | {"AWS_ENDPOINT_URL": endpoint}
    os.environ.update(env)
    try:
        x = _publish_digits()
        requests = bodies(x[:1])
        files = {}
        for fmt in ("json", "connect-proto"):
            headers, body = requests[fmt]
            event = http_api_event("POST", _path(fmt), headers, body)
            files[fmt] = work / f"{fmt}.json"
            files[fmt].write_text(json.dumps(event))
        child = work / "child.py"
        child.write_text(CHILD)
        clean = {k: v for k, v in saved.items() if not k.startswith(("AWS_", "POWERTOOLS_"))}
        clean.pop("PYTHONPATH", None)
        variants = {
            "rest": (files["json"], REPO / "functions/inference", {}),
            "rest-base": (
                files["json"],
                base / "functions/inference",
                {"PYTHONPATH": str(base / "layers/shared")},
            ),
            "grpc": (files["connect-proto"], REPO / "functions/inference", {}),
        }
        samples: dict[str, list[dict[str, Any]]] = {k: [] for k in variants}
        names = list(variants)
        for r in range(repeats + 1):  # round 0 warms the page cache and is not counted
            for name in names[r % 3 :] + names[: r % 3]:
                event_file, root, extra = variants[name]
                cache = tempfile.mkdtemp(prefix="maas-cold-", dir=work)
                child_env = clean | env | extra | {"MODEL_CACHE_DIR": cache}
                started = time.perf_counter()
                proc = subprocess.run(
                    [sys.executable, str(child), str(event_file), str(root)],
                    env=child_env, capture_output=True, text=True, timeout=120, check=False,
                )  # fmt: skip
                wall = (time.perf_counter() - started) * 1e3
                shutil.rmtree(cache, ignore_errors=True)
                line = next((s for s in proc.stdout.splitlines() if s.startswith("ANSWER ")), None)
                if line is None:
                    raise RuntimeError(f"{name} cold start failed: {proc.stderr[-2000:]}")
                answer = json.loads(line[7:]) | {"wall_ms": wall}
                if answer["status"] != 200 or answer["grpc_status"] not in (None, "0"):
                    raise RuntimeError(f"{name} cold start answered {answer}")
                if r:
                    samples[name].append(answer)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        server.stop()
    out: dict[str, Any] = {"repeats": repeats, "base_revision": rev}
    for name, rows in samples.items():
        out[name] = {
            "wall_ms": summary([s["wall_ms"] for s in rows]),
            "import_ms": summary([s["import_ms"] for s in rows]),
            "first_request_ms": summary([s["first_ms"] for s in rows]),
            "protobuf_imported": sorted({s["protobuf"] for s in rows}),
            "maas_from": sorted({str(Path(s["maas"]).parents[1]) for s in rows}),
        }
    wall = {k: out[k]["wall_ms"]["median"] for k in variants}
    out["ratios"] = {
        "rest_over_rest_base": wall["rest"] / wall["rest-base"],
        "rest_over_rest_base_per_round": summary(
            [
                a["wall_ms"] / b["wall_ms"]
                for a, b in zip(samples["rest"], samples["rest-base"], strict=True)
            ]
        ),
        "grpc_over_rest": wall["grpc"] / wall["rest"],
        "grpc_minus_rest_ms": wall["grpc"] - wall["rest"],
    }
    return out


def protobuf_size() -> dict[str, Any]:
    """What the runtime layer adds for protobuf: google/protobuf without its test data, + upb."""
    import google.protobuf

    root = Path(google.protobuf.__file__).parent.parent
    total = 0
    for sub in ("protobuf", "_upb"):
        for f in (root / sub).rglob("*"):
            if f.is_file() and "__pycache__" not in f.parts and "testdata" not in f.parts:
                total += f.stat().st_size
    return {"version": google.protobuf.__version__, "source_and_library_mib": total / 2**20}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.grpc", description=__doc__)
    p.add_argument("--pairs", type=int, default=400, help="warm calls per format and batch")
    p.add_argument("--cold", type=int, default=12, help="cold samples per variant")
    p.add_argument("--out", type=Path, default=OUT / "grpc.json")
    args = p.parse_args(argv)
    doc = {"warm": warm(args.pairs), "cold": cold(args.cold), "protobuf": protobuf_size()}
    write_json(args.out, doc)
    print(json.dumps(doc, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
