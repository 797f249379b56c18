"""What a KServe user runs against the stack: kserve's InferenceRESTClient in v2 mode.

    python kserve_check.py BASE_URL MODEL ROWS.npy

No project code: only kserve and numpy, in KServe's own environment (`make kserve`). Prints one
JSON document: liveness, readiness, model readiness, and the predictions of the same rows sent
binary in / binary out and as JSON in / JSON out.
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput


async def infer(client: InferenceRESTClient, url: str, model: str, rows: np.ndarray, binary: bool):
    tensor = InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    request = InferRequest(
        model_name=model,
        infer_inputs=[tensor],
        request_id=f"kserve-{binary}",
        request_outputs=[
            RequestedOutput(name, parameters={"binary_data": binary})
            for name in ("probabilities", "label")
        ],
    )
    response = await client.infer(url, request, model_name=model)
    by_name = {o.name: o for o in response.outputs}
    labels = [
        x.decode() if isinstance(x, bytes) else x for x in by_name["label"].as_numpy().tolist()
    ]
    return {
        "id": response.id,  # (KServe's REST client does not keep model_version)
        "label": labels,
        "probabilities": by_name["probabilities"].as_numpy().tolist(),
    }


async def main(url: str, model: str, rows_path: str) -> None:
    rows = np.load(rows_path).astype(np.float32)
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    report = {
        "live": await client.is_server_live(url),
        "ready": await client.is_server_ready(url),
        "model_ready": await client.is_model_ready(url, model),
        "binary": await infer(client, url, model, rows, binary=True),
        "json": await infer(client, url, model, rows, binary=False),
    }
    await client.close()
    print(json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
