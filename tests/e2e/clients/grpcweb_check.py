"""What a gRPC-Web user runs against the stack: sonora's gRPC-Web channel under the stub that
grpcio-tools generates from KServe's grpc_predict_v2.proto (the stub a grpcio user already has).

    python grpcweb_check.py BASE_URL MODEL ROWS.npy GRPC_PREDICT_V2.proto

No project code: sonora, grpcio-tools and numpy, in their own environment (`make grpc`). Prints
one JSON document: health, ModelInfer's predictions (binary raw_input_contents) with
model_version, and the status codes of bad calls.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def main(url: str, model: str, rows_path: str, proto: str) -> None:
    rows = np.load(rows_path).astype(np.float32)
    gen = Path(tempfile.mkdtemp())
    source = Path(proto)
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{source.parent}", f"--python_out={gen}",
         f"--grpc_python_out={gen}", source.name],
        check=True,
        cwd=source.parent,
    )  # fmt: skip
    sys.path.insert(0, str(gen))
    import grpc
    import grpc_predict_v2_pb2 as pb
    import grpc_predict_v2_pb2_grpc as services
    import sonora.client

    def request(batch: np.ndarray, name: str = model) -> pb.ModelInferRequest:
        tensor = pb.ModelInferRequest.InferInputTensor(
            name="input", datatype="FP32", shape=list(batch.shape)
        )
        return pb.ModelInferRequest(
            model_name=name,
            id="grpc-web",
            inputs=[tensor],
            raw_input_contents=[batch.astype("<f4").tobytes()],
        )

    class WebChannel(sonora.client.WebChannel):
        """sonora 0.2.3 predates the `_registered_method` argument of grpcio >= 1.62's stubs."""

        def unary_unary(self, path, request_serializer, response_deserializer, **_):
            return super().unary_unary(path, request_serializer, response_deserializer)

    with WebChannel(url) as channel:
        stub = services.GRPCInferenceServiceStub(channel)
        report = {
            "live": stub.ServerLive(pb.ServerLiveRequest()).live,
            "ready": stub.ServerReady(pb.ServerReadyRequest()).ready,
            "model_ready": stub.ModelReady(pb.ModelReadyRequest(name=model)).ready,
            "versions": list(stub.ModelMetadata(pb.ModelMetadataRequest(name=model)).versions),
        }
        reply = stub.ModelInfer(request(rows))
        out = {}
        for tensor, raw in zip(reply.outputs, reply.raw_output_contents, strict=True):
            if tensor.datatype == "BYTES":
                values, offset = [], 0
                while offset < len(raw):
                    n = int.from_bytes(raw[offset : offset + 4], "little")
                    values.append(raw[offset + 4 : offset + 4 + n].decode())
                    offset += 4 + n
            else:
                values = np.frombuffer(raw, "<f4").tolist()
            out[tensor.name] = {"shape": list(tensor.shape), "data": values}
        report.update(model_version=reply.model_version, id=reply.id, outputs=out)
        errors = {}
        for case, bad in (
            ("unknown_model", request(rows, name="no-such-model")),
            # 1,025 rows: above the stack's MaxBatchSize (1,024). A body beyond Lambda's payload
            # (6 MB, base64-encoded: ~4.5 MB of protobuf) is refused by the platform with HTTP
            # 413 before the function runs; sonora does not read HTTP statuses.
            ("batch_too_large", request(np.zeros((1025, 64), np.float32))),
            ("wrong_shape", request(np.zeros((2, 5), np.float32))),
        ):
            try:
                stub.ModelInfer(bad)
                errors[case] = "ok"
            except grpc.RpcError as e:
                errors[case] = e.code().name.lower()
        report["errors"] = errors
        report["after_errors"] = stub.ModelInfer(request(rows[:1])).model_version
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:5])
