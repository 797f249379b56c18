"""The comparator: a torch-based inference function, written the way the SAM PyTorch template is.

`sam init`'s "Machine Learning / PyTorch" quick start loads its model at import (a model class
and `torch.load` of the trained weights, module scope, so a warm container reuses it) and runs
it per request in fp32 eager mode under `torch.no_grad()`, answering the API Gateway event with
JSON. This is that function for our two models, answering the same OIP requests:

  digits  the training job's TabularMLP (maas_training.model) with its trained state dict
  minilm  all-MiniLM-L6-v2 as the import job builds it (maas_training.bert: safetensors into
          a plain-torch BERT, mean pooling, L2 normalisation), its tokenizer.json run by the
          same `tokenizers` library serving uses

Benchmark only: Lambda code never imports torch. Set TORCH_MODEL (digits|minilm) and
TORCH_MODEL_DIR before importing; TORCH_THREADS (default 1: the 1 vCPU a 1769 MB function gets,
as the served function uses) sets torch's intra-op threads.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))

KIND = os.environ.get("TORCH_MODEL", "digits")
MODEL_DIR = Path(os.environ.get("TORCH_MODEL_DIR", "/opt/ml/model"))
torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "1")))


def _load() -> tuple[torch.nn.Module, Any, list[str]]:
    if KIND == "digits":
        from maas_training.model import TabularMLP

        arch = json.loads((MODEL_DIR / "arch.json").read_text())
        net = TabularMLP(
            arch["n_features"],
            arch["n_classes"],
            hidden_units=arch["hidden_units"],
            hidden_layers=arch["hidden_layers"],
            dropout=arch["dropout"],
        )
        net.load_state_dict(torch.load(MODEL_DIR / "model.pt", weights_only=True))
        return net.eval(), None, arch["labels"]
    from maas_training.bert import SentenceEmbedder, load_encoder
    from tokenizers import Tokenizer

    encoder, _ = load_encoder(MODEL_DIR)
    tokenizer = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    tokenizer.enable_truncation(256)  # sentence_bert_config.json max_seq_length
    tokenizer.enable_padding()
    return SentenceEmbedder(encoder, "mean", True).eval(), tokenizer, []


model, tokenizer, labels = _load()


@torch.no_grad()
def _predict(inputs: dict[str, Any]) -> list[dict[str, Any]]:
    if KIND == "digits":
        x = torch.tensor(inputs["data"], dtype=torch.float32).reshape(inputs["shape"])
        probs = torch.softmax(model(x), dim=1)
        names = [labels[i] for i in probs.argmax(dim=1).tolist()]
        return [
            {"name": "probabilities", "datatype": "FP32", "shape": list(probs.shape),
             "data": probs.reshape(-1).tolist()},
            {"name": "label", "datatype": "BYTES", "shape": [len(names)], "data": names},
        ]  # fmt: skip
    encs = tokenizer.encode_batch(list(inputs["data"]))
    ids = torch.tensor(np.array([e.ids for e in encs], dtype=np.int64))
    mask = torch.tensor(np.array([e.attention_mask for e in encs], dtype=np.int64))
    emb = model(ids, mask)
    return [
        {"name": "embedding", "datatype": "FP32", "shape": list(emb.shape),
         "data": emb.reshape(-1).tolist()}
    ]  # fmt: skip


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    body = json.loads(event["body"])
    outputs = _predict(body["inputs"][0])
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"model_name": KIND, "outputs": outputs}),
    }
