"""Causal language models in plain torch, with the KV cache as explicit inputs and outputs.

One module family covers the Hugging Face folders the ``text-generation`` recipes import,
train and fine-tune: Llama (and what shares its layout: SmolLM, TinyLlama, Mistral without a
sliding window in reach), Qwen2 (q/k/v biases), Qwen3 (RMSNorm on q and k) and GPT-2. The
parameter names are the Hugging Face ones, so a ``model.safetensors`` loads as it is and a
model trained here saves as a folder ``transformers`` loads (``save_folder``).

``forward(input_ids, *past) -> (logits, *present)``: ``past`` is two tensors per layer (key,
value: [batch, kv_heads, past_len, head_dim]); positions continue from past_len. That is the
graph the job exports (maas_training.lmexport) and the inference function's generation loop
feeds (maas/serving/generation.py), no attention mask: one sequence per batch row, no padding.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from maas_training.errors import TrainingError

LLAMA_LIKE = {"llama", "mistral", "qwen2", "qwen3"}
SUPPORTED = (*sorted(LLAMA_LIKE), "gpt2")
WEIGHT_FILE = "model.safetensors"


@dataclass(frozen=True)
class DecoderConfig:
    model_type: str  # llama | mistral | qwen2 | qwen3 | gpt2
    vocab_size: int
    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int
    context_length: int
    norm_eps: float
    rope_theta: float = 10000.0
    rope_scaling: float = 1.0  # "linear" rope scaling's factor
    qkv_bias: bool = False
    qk_norm: bool = False
    tie_embeddings: bool = False
    architecture: str = ""

    @property
    def is_gpt2(self) -> bool:
        return self.model_type == "gpt2"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rope(cfg: dict[str, Any]) -> tuple[float, float]:
    """(theta, linear factor) from config.json: rope_parameters (transformers 5) or rope_*."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    theta = float(params.get("rope_theta") or cfg.get("rope_theta") or 10000.0)
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind == "default":
        return theta, 1.0
    if kind == "linear":
        return theta, float(params.get("factor") or scaling.get("factor") or 1.0)
    raise TrainingError(f"rope scaling {kind!r} is not supported (default and linear are)")


def config_from_hf(cfg: dict[str, Any]) -> DecoderConfig:
    """Our config from a Hugging Face config.json; a clear error for what is not supported."""
    model_type = str(cfg.get("model_type", ""))
    arch = ",".join(cfg.get("architectures") or [])
    if model_type == "gpt2":
        hidden = int(cfg["n_embd"])
        heads = int(cfg["n_head"])
        return DecoderConfig(
            model_type="gpt2",
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            layers=int(cfg["n_layer"]),
            heads=heads,
            kv_heads=heads,
            head_dim=hidden // heads,
            intermediate_size=int(cfg.get("n_inner") or 4 * hidden),
            context_length=int(cfg.get("n_positions", 1024)),
            norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
            tie_embeddings=True,
            architecture=arch or "GPT2LMHeadModel",
        )
    if model_type not in LLAMA_LIKE:
        raise TrainingError(
            f"model_type {model_type!r} ({arch or 'no architectures'}) is not supported for "
            f"text-generation; supported: {', '.join(SUPPORTED)}"
        )
    if cfg.get("hidden_act", "silu") != "silu":
        raise TrainingError(f"hidden_act {cfg.get('hidden_act')!r} is not supported (silu is)")
    heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    theta, factor = _rope(cfg)
    return DecoderConfig(
        model_type=model_type,
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=hidden,
        layers=int(cfg["num_hidden_layers"]),
        heads=heads,
        kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        intermediate_size=int(cfg["intermediate_size"]),
        context_length=int(cfg.get("max_position_embeddings", 2048)),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=factor,
        qkv_bias=model_type == "qwen2" or bool(cfg.get("attention_bias", False)),
        qk_norm=model_type == "qwen3",
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        architecture=arch,
    )


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past_len: torch.Tensor):
    """Causal attention of q [B, H, S, D] over k, v [B, H, P+S, D], queries at P .. P+S-1."""
    s, total = q.shape[2], k.shape[2]
    query_pos = torch.arange(s, device=q.device).unsqueeze(1) + past_len
    key_pos = torch.arange(total, device=q.device).unsqueeze(0)
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(key_pos > query_pos, torch.finfo(scores.dtype).min)
    return torch.matmul(torch.softmax(scores.float(), dim=-1).to(v.dtype), v)


class LlamaAttention(nn.Module):
    def __init__(self, c: DecoderConfig) -> None:
        super().__init__()
        self.c = c
        self.q_proj = nn.Linear(c.hidden_size, c.heads * c.head_dim, bias=c.qkv_bias)
        self.k_proj = nn.Linear(c.hidden_size, c.kv_heads * c.head_dim, bias=c.qkv_bias)
        self.v_proj = nn.Linear(c.hidden_size, c.kv_heads * c.head_dim, bias=c.qkv_bias)
        self.o_proj = nn.Linear(c.heads * c.head_dim, c.hidden_size, bias=False)
        if c.qk_norm:
            self.q_norm = RMSNorm(c.head_dim, c.norm_eps)
            self.k_norm = RMSNorm(c.head_dim, c.norm_eps)

    def forward(self, x, cos, sin, past_k, past_v, past_len):
        b, s, _ = x.shape
        c = self.c
        q = self.q_proj(x).view(b, s, c.heads, c.head_dim)
        k = self.k_proj(x).view(b, s, c.kv_heads, c.head_dim)
        v = self.v_proj(x).view(b, s, c.kv_heads, c.head_dim).transpose(1, 2)
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k = torch.cat([past_k, k], dim=2)
        v = torch.cat([past_v, v], dim=2)
        groups = c.heads // c.kv_heads
        kk = k.repeat_interleave(groups, dim=1) if groups > 1 else k
        vv = v.repeat_interleave(groups, dim=1) if groups > 1 else v
        out = attend(q, kk, vv, past_len).transpose(1, 2).reshape(b, s, c.heads * c.head_dim)
        return self.o_proj(out), k, v


class LlamaMLP(nn.Module):
    def __init__(self, c: DecoderConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaLayer(nn.Module):
    def __init__(self, c: DecoderConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.norm_eps)
        self.self_attn = LlamaAttention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.norm_eps)
        self.mlp = LlamaMLP(c)

    def forward(self, x, cos, sin, past_k, past_v, past_len):
        h, k, v = self.self_attn(self.input_layernorm(x), cos, sin, past_k, past_v, past_len)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), k, v


class LlamaBody(nn.Module):
    def __init__(self, c: DecoderConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(LlamaLayer(c) for _ in range(c.layers))
        self.norm = RMSNorm(c.hidden_size, c.norm_eps)


class Conv1D(nn.Module):
    """GPT-2's linear layer: weight [in, out] (so its checkpoints load as they are)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(
            *x.shape[:-1], self.weight.shape[1]
        )


class GPT2Attention(nn.Module):
    def __init__(self, c: DecoderConfig) -> None:
        super().__init__()
        self.c = c
        self.c_attn = Conv1D(c.hidden_size, 3 * c.hidden_size)
        self.c_proj = Conv1D(c.hidden_size, c.hidden_size)

    def forward(self, x, past_k, past_v, past_len):
        b, s, _ = x.shape
        c = self.c
        q, k, v = self.c_attn(x).split(c.hidden_size, dim=2)
        q, k, v = (t.view(b, s, c.heads, c.head_dim).transpose(1, 2) for t in (q, k, v))
        k = torch.cat([past_k, k], dim=2)
        v = torch.cat([past_v, v], dim=2)
        out = attend(q, k, v, past_len).transpose(1, 2).reshape(b, s, c.hidden_size)
        return self.c_proj(out), k, v


class GPT2MLP(nn.Module):
    def __init__(self, c: DecoderConfig) -> None:
        super().__init__()
        self.c_fc = Conv1D(c.hidden_size, c.intermediate_size)
        self.c_proj = Conv1D(c.intermediate_size, c.hidden_size)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class GPT2Block(nn.Module):
    def __init__(self, c: DecoderConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.hidden_size, eps=c.norm_eps)
        self.attn = GPT2Attention(c)
        self.ln_2 = nn.LayerNorm(c.hidden_size, eps=c.norm_eps)
        self.mlp = GPT2MLP(c)

    def forward(self, x, past_k, past_v, past_len):
        h, k, v = self.attn(self.ln_1(x), past_k, past_v, past_len)
        x = x + h
        return x + self.mlp(self.ln_2(x)), k, v


class GPT2Body(nn.Module):
    def __init__(self, c: DecoderConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(c.vocab_size, c.hidden_size)
        self.wpe = nn.Embedding(c.context_length, c.hidden_size)
        self.h = nn.ModuleList(GPT2Block(c) for _ in range(c.layers))
        self.ln_f = nn.LayerNorm(c.hidden_size, eps=c.norm_eps)


class CausalLM(nn.Module):
    """forward(input_ids [B, S], *past) -> (logits [B, S, V], *present); see the module doc."""

    def __init__(self, c: DecoderConfig) -> None:
        super().__init__()
        self.config = c
        if c.is_gpt2:
            self.transformer = GPT2Body(c)
        else:
            self.model = LlamaBody(c)
            inv = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2).float() / c.head_dim))
            self.register_buffer("inv_freq", inv / c.rope_scaling, persistent=False)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.embeddings().weight

    def embeddings(self) -> nn.Embedding:
        return self.transformer.wte if self.config.is_gpt2 else self.model.embed_tokens

    def empty_past(self, batch: int = 1, device: Any = "cpu") -> list[torch.Tensor]:
        c = self.config
        shape = (batch, c.kv_heads, 0, c.head_dim)
        return [torch.zeros(shape, device=device) for _ in range(2 * c.layers)]

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor):
        c = self.config
        if not past:
            past = tuple(self.empty_past(input_ids.shape[0], input_ids.device))
        past_len = past[0].shape[2]
        positions = torch.arange(input_ids.shape[1], device=input_ids.device) + past_len
        presents: list[torch.Tensor] = []
        if c.is_gpt2:
            t = self.transformer
            x = t.wte(input_ids) + t.wpe(positions).unsqueeze(0)
            for i, block in enumerate(t.h):
                x, k, v = block(x, past[2 * i], past[2 * i + 1], past_len)
                presents += [k, v]
            x = t.ln_f(x)
        else:
            m = self.model
            freqs = positions.float().unsqueeze(1) * self.inv_freq.unsqueeze(0)
            emb = torch.cat([freqs, freqs], dim=-1)
            cos, sin = emb.cos().to(m.embed_tokens.weight.dtype), emb.sin()
            sin = sin.to(cos.dtype)
            x = m.embed_tokens(input_ids)
            for i, layer in enumerate(m.layers):
                x, k, v = layer(x, cos, sin, past[2 * i], past[2 * i + 1], past_len)
                presents += [k, v]
            x = m.norm(x)
        return (self.lm_head(x), *presents)


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TrainingError(f"cannot read {path.name}: {e}") from None
    if not isinstance(doc, dict):
        raise TrainingError("config.json must hold a JSON object")
    return doc


def _gpt2_key(name: str) -> str | None:
    """A GPT-2 checkpoint's name as this module's: "transformer." prefixed; buffers dropped."""
    if name.endswith((".attn.bias", ".attn.masked_bias")):
        return None
    if name.startswith("lm_head."):
        return name
    return name if name.startswith("transformer.") else f"transformer.{name}"


def load_folder(folder: Path) -> CausalLM:
    """A Hugging Face causal-LM folder (config.json + *.safetensors) as a CausalLM, fp32."""
    from safetensors.torch import load_file

    config = config_from_hf(read_config(folder))
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise TrainingError(
            "the model folder has no *.safetensors weights (pickled .bin files are not loaded)"
        )
    weights: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            weights.update(load_file(str(path)))
        except Exception as e:
            raise TrainingError(f"cannot read {path.name}: {type(e).__name__}: {e}") from None
    if config.is_gpt2:
        weights = {k2: v for k, v in weights.items() if (k2 := _gpt2_key(k)) is not None}
    model = CausalLM(config)
    if config.tie_embeddings:
        weights.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(
        {k: v.float() for k, v in weights.items()}, strict=False
    )
    missing = [k for k in missing if not (config.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise TrainingError(
            f"{config.architecture or config.model_type} weights do not fit its config: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.float().eval()


def hf_config(c: DecoderConfig, **tokens: Any) -> dict[str, Any]:
    """config.json for a Llama-style model trained here (what ``transformers`` loads)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.layers,
        "num_attention_heads": c.heads,
        "num_key_value_heads": c.kv_heads,
        "head_dim": c.head_dim,
        "max_position_embeddings": c.context_length,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": c.tie_embeddings,
        "torch_dtype": "float32",
        **tokens,
    }


def save_weights(model: CausalLM, folder: Path) -> None:
    """model.safetensors under the Hugging Face names (tied weights stored once)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(folder / WEIGHT_FILE), metadata={"format": "pt"})


def save_folder(model: CausalLM, folder: Path, **tokens: Any) -> None:
    """config.json + model.safetensors of a Llama-style model trained here."""
    c = model.config
    if c.model_type != "llama":
        raise TrainingError("only Llama-style models trained here are saved with a new config")
    save_weights(model, folder)
    (folder / "config.json").write_text(json.dumps(hf_config(c, **tokens), indent=2) + "\n")
