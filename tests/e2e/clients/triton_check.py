"""What a Triton user runs against the stack: tritonclient.http with its defaults, nothing else.

    python triton_check.py HOST:PORT MODEL ROWS.npy

No project code: only tritonclient and numpy. Prints one JSON document: liveness, readiness,
both metadata calls, and the predictions of the same rows sent binary in / binary out (the
client's defaults) and as JSON in / JSON out.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.http as httpclient


def infer(client: httpclient.InferenceServerClient, model: str, rows: np.ndarray, binary: bool):
    tensor = httpclient.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    outputs = None
    if not binary:
        outputs = [
            httpclient.InferRequestedOutput(name, binary_data=False)
            for name in ("probabilities", "label")
        ]
    result = client.infer(model, [tensor], outputs=outputs, request_id=f"triton-{binary}")
    response = result.get_response()
    labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label").tolist()]
    return {
        "id": response.get("id"),
        "model_version": response["model_version"],
        "binary_outputs": sorted(
            o["name"]
            for o in response["outputs"]
            if "binary_data_size" in (o.get("parameters") or {})
        ),
        "label": labels,
        "probabilities": result.as_numpy("probabilities").tolist(),
    }


def main(url: str, model: str, rows_path: str) -> None:
    rows = np.load(rows_path).astype(np.float32)
    client = httpclient.InferenceServerClient(url)
    report = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "server_metadata": client.get_server_metadata(),
        "model_metadata": client.get_model_metadata(model),
        "binary": infer(client, model, rows, binary=True),
        "json": infer(client, model, rows, binary=False),
    }
    client.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:4])
