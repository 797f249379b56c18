"""A BERT encoder in plain torch, loaded from a Hugging Face folder (config.json + safetensors).

No `transformers`: the training container needs torch and safetensors only, and the module is
small enough to export to ONNX with either exporter. Covers model_type "bert" (BERT, MiniLM,
the all-MiniLM / multi-qa / paraphrase sentence-transformers built on it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from maas_training.errors import TrainingError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.safetensors")


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_act: str
    architectures: tuple[str, ...]
    id2label: dict[int, str]

    @classmethod
    def load(cls, folder: Path) -> BertConfig:
        try:
            doc = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise TrainingError(f"cannot read config.json of the pretrained model: {e}") from None
        kind = doc.get("model_type")
        if kind != "bert":
            raise TrainingError(
                f"pretrained model_type {kind!r} is not supported; this importer handles BERT "
                "encoders (model_type 'bert': BERT, MiniLM, sentence-transformers built on them)"
            )
        act = doc.get("hidden_act", "gelu")
        if act not in ("gelu", "gelu_new", "relu"):
            raise TrainingError(f"hidden_act {act!r} is not supported (gelu, gelu_new, relu)")
        try:
            return cls(
                vocab_size=int(doc["vocab_size"]),
                hidden_size=int(doc["hidden_size"]),
                num_hidden_layers=int(doc["num_hidden_layers"]),
                num_attention_heads=int(doc["num_attention_heads"]),
                intermediate_size=int(doc["intermediate_size"]),
                max_position_embeddings=int(doc.get("max_position_embeddings", 512)),
                type_vocab_size=int(doc.get("type_vocab_size", 2)),
                layer_norm_eps=float(doc.get("layer_norm_eps", 1e-12)),
                hidden_act=act,
                architectures=tuple(doc.get("architectures") or ()),
                id2label={int(k): str(v) for k, v in (doc.get("id2label") or {}).items()},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise TrainingError(f"config.json lacks or mistypes a BERT setting: {e}") from None


class Embeddings(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        positions = torch.arange(seq, device=input_ids.device).unsqueeze(0)
        # Single-segment inputs only: token type 0 everywhere (a row of the table, no lookup).
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings.weight[0]
        )
        return self.LayerNorm(x)


class Layer(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        h = c.hidden_size
        self.heads = c.num_attention_heads
        self.head_dim = h // c.num_attention_heads
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)
        self.attn_out = nn.Linear(h, h)
        self.attn_norm = nn.LayerNorm(h, eps=c.layer_norm_eps)
        self.intermediate = nn.Linear(h, c.intermediate_size)
        self.output = nn.Linear(c.intermediate_size, h)
        self.out_norm = nn.LayerNorm(h, eps=c.layer_norm_eps)
        self.act = c.hidden_act

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        return x.view(b, s, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + bias
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(b, s, h)
        x = self.attn_norm(x + self.attn_out(ctx))
        inner = self.intermediate(x)
        if self.act == "gelu":
            inner = F.gelu(inner)
        elif self.act == "gelu_new":
            inner = F.gelu(inner, approximate="tanh")
        else:
            inner = F.relu(inner)
        return self.out_norm(x + self.output(inner))


class BertEncoder(nn.Module):
    """input_ids + attention_mask -> last hidden states [batch, seq, hidden]."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(input_ids)
        # Additive mask: 0 where attended, a large negative where padded.
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -1e4
        for layer in self.layers:
            x = layer(x, bias)
        return x


# Hugging Face parameter names (after the "bert." prefix is dropped) -> ours.
_LAYER_NAMES = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "intermediate",
    "output.dense": "output",
    "output.LayerNorm": "out_norm",
}


def _rename(name: str) -> str | None:
    if name.startswith("bert."):
        name = name[5:]
    if name.startswith("embeddings."):
        return None if name.endswith("position_ids") else name
    if name.startswith("encoder.layer."):
        rest = name[len("encoder.layer.") :]
        index, _, sub = rest.partition(".")
        module, _, param = sub.rpartition(".")
        mapped = _LAYER_NAMES.get(module)
        if mapped is None:
            return None
        # HF LayerNorms of old checkpoints say gamma/beta.
        param = {"gamma": "weight", "beta": "bias"}.get(param, param)
        return f"layers.{index}.{mapped}.{param}"
    return None


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            try:
                return load_file(str(path))
            except Exception as e:
                raise TrainingError(f"cannot read {name}: {type(e).__name__}: {e}") from None
    raise TrainingError(
        "the pretrained folder has no model.safetensors (weights must be safetensors; "
        "pickled pytorch_model.bin is not loaded)"
    )


def load_encoder(folder: Path) -> tuple[BertEncoder, dict[str, torch.Tensor]]:
    """The encoder with its pretrained weights, and every raw tensor (heads live there too)."""
    config = BertConfig.load(folder)
    weights = read_weights(folder)
    encoder = BertEncoder(config)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in weights.items():
        mapped = _rename(name)
        if mapped is not None:
            state[mapped] = tensor.float()
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise TrainingError(
            "the safetensors weights do not fit a BERT encoder of this config.json; "
            f"missing: {', '.join(missing[:8]) or '-'}; "
            f"unexpected: {', '.join(unexpected[:8]) or '-'}"
        )
    return encoder.eval(), weights


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


class SentenceEmbedder(nn.Module):
    """sentence-transformers: encoder, then mean (or CLS) pooling, then optional L2 norm."""

    def __init__(self, encoder: BertEncoder, pooling: str = "mean", normalize: bool = True):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids, attention_mask)
        out = hidden[:, 0] if self.pooling == "cls" else mean_pool(hidden, attention_mask)
        if self.normalize:
            out = F.normalize(out, p=2.0, dim=1)
        return out


class SequenceClassifier(nn.Module):
    """BertForSequenceClassification: pooler (dense + tanh on [CLS]) and classifier -> softmax."""

    def __init__(self, encoder: BertEncoder, weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        h = encoder.config.hidden_size
        try:
            cls_w = weights["classifier.weight"].float()
            cls_b = weights["classifier.bias"].float()
            pool_w = weights.get("bert.pooler.dense.weight", weights.get("pooler.dense.weight"))
            pool_b = weights.get("bert.pooler.dense.bias", weights.get("pooler.dense.bias"))
        except KeyError:
            raise TrainingError(
                "a sequence-classification folder needs classifier.weight/bias in its weights"
            ) from None
        if pool_w is None or pool_b is None:
            raise TrainingError("a sequence-classification folder needs the BERT pooler weights")
        self.encoder = encoder
        self.pooler = nn.Linear(h, h)
        self.classifier = nn.Linear(h, cls_w.shape[0])
        with torch.no_grad():
            self.pooler.weight.copy_(pool_w.float())
            self.pooler.bias.copy_(pool_b.float())
            self.classifier.weight.copy_(cls_w)
            self.classifier.bias.copy_(cls_b)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids, attention_mask)
        pooled = torch.tanh(self.pooler(hidden[:, 0]))
        return torch.softmax(self.classifier(pooled), dim=1)


class FinetuneClassifier(nn.Module):
    """The finetune recipe: encoder, mean pooling, dropout, linear head -> logits.

    Takes input_ids only: the mask is input_ids != pad_id (a pad token never occurs in text),
    so the trainer's single-tensor batches work unchanged.
    """

    def __init__(self, encoder: BertEncoder, n_classes: int, pad_id: int, dropout: float):
        super().__init__()
        self.encoder = encoder
        self.pad_id = pad_id
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, n_classes)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = (input_ids != self.pad_id).to(torch.int64)
        hidden = self.encoder(input_ids, mask)
        return self.head(self.dropout(mean_pool(hidden, mask)))
