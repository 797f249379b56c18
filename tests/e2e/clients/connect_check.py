"""What a Connect user runs against the stack: connect-python's generated client for KServe's
grpc_predict_v2.proto, over the Connect protocol (binary and JSON codecs) and gRPC-Web.

    python connect_check.py BASE_URL MODEL ROWS.npy GRPC_PREDICT_V2.proto

No project code: connect-python, its code generator (protoc-gen-connect-python), protoc from
grpcio-tools and numpy, in their own environment (`make grpc`). The stubs are generated here,
from the .proto, as a user would. Prints one JSON document: health and metadata, each
protocol's ModelInfer predictions (binary raw_input_contents), and the codes of bad calls.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np


def generate(proto: Path, out: Path) -> None:
    plugin = Path(sys.executable).parent / "protoc-gen-connect-python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{proto.parent}",
            f"--python_out={out}",
            f"--plugin=protoc-gen-connect-python={plugin}",
            f"--connect-python_out={out}",
            proto.name,
        ],
        check=True,
        cwd=proto.parent,
    )
    sys.path.insert(0, str(out))


def outputs(reply) -> dict:
    """raw_output_contents as the OIP lays tensors out (little-endian, BYTES length-prefixed)."""
    result = {}
    for tensor, raw in zip(reply.outputs, reply.raw_output_contents, strict=True):
        if tensor.datatype == "BYTES":
            values, offset = [], 0
            while offset < len(raw):
                n = int.from_bytes(raw[offset : offset + 4], "little")
                values.append(raw[offset + 4 : offset + 4 + n].decode())
                offset += 4 + n
        else:
            dtype = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8", "INT32": "<i4"}[tensor.datatype]
            values = np.frombuffer(raw, dtype).tolist()
        shape = list(tensor.shape)
        result[tensor.name] = {"datatype": tensor.datatype, "shape": shape, "data": values}
    return result


def main(url: str, model: str, rows_path: str, proto: str) -> None:
    rows = np.load(rows_path).astype(np.float32)
    gen = Path(tempfile.mkdtemp())
    generate(Path(proto), gen)
    import grpc_predict_v2_pb2 as pb
    from connectrpc.errors import ConnectError
    from connectrpc.protocol import ProtocolType
    from grpc_predict_v2_connect import GRPCInferenceServiceClientSync

    def request(batch: np.ndarray, name: str = model, request_id: str = "") -> pb.ModelInferRequest:
        tensor = pb.ModelInferRequest.InferInputTensor(
            name="input", datatype="FP32", shape=list(batch.shape)
        )
        return pb.ModelInferRequest(
            model_name=name,
            id=request_id,
            inputs=[tensor],
            raw_input_contents=[batch.astype("<f4").tobytes()],
        )

    report: dict = {}
    modes = {
        "connect-proto": {"protocol": ProtocolType.CONNECT},
        "connect-json": {"protocol": ProtocolType.CONNECT, "proto_json": True},
        "grpc-web": {"protocol": ProtocolType.GRPC_WEB},
    }
    for mode, options in modes.items():
        with GRPCInferenceServiceClientSync(url, **options) as client:
            entry = {
                "live": client.server_live(pb.ServerLiveRequest()).live,
                "ready": client.server_ready(pb.ServerReadyRequest()).ready,
                "model_ready": client.model_ready(pb.ModelReadyRequest(name=model)).ready,
                "server_name": client.server_metadata(pb.ServerMetadataRequest()).name,
            }
            meta = client.model_metadata(pb.ModelMetadataRequest(name=model))
            entry["metadata"] = {
                "name": meta.name,
                "versions": list(meta.versions),
                "inputs": [[t.name, t.datatype, list(t.shape)] for t in meta.inputs],
            }
            reply = client.model_infer(request(rows, request_id=f"connect-{mode}"))
            entry.update(model_version=reply.model_version, id=reply.id, outputs=outputs(reply))
            errors = {}
            for case, bad in (
                ("unknown_model", request(rows, name="no-such-model")),
                # 7 MB of zeros, gzip-compressed by the client: past 6 MB once inflated.
                ("oversized", request(np.zeros((7 * 1024 * 1024 // 256, 64), np.float32))),
                ("batch_too_large", request(np.zeros((1025, 64), np.float32))),
            ):
                try:
                    client.model_infer(bad)
                    errors[case] = "ok"
                except ConnectError as e:
                    errors[case] = e.code.name.lower()
            entry["errors"] = errors
            entry["after_errors"] = client.model_infer(request(rows[:1])).model_version
            report[mode] = entry
    # Bad protobuf: no generated client sends it, so a plain HTTP POST does (Connect's wire).
    garbage = urllib.request.Request(
        f"{url}/inference.GRPCInferenceService/ModelInfer",
        data=b"\xff\xff\xff\xff\x0f",
        headers={"content-type": "application/proto", "connect-protocol-version": "1"},
    )
    try:
        urllib.request.urlopen(garbage, timeout=30)
        report["bad_protobuf"] = {"status": 200}
    except urllib.error.HTTPError as e:
        report["bad_protobuf"] = {"status": e.code, **json.loads(e.read())}
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:5])
