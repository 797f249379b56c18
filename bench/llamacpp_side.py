"""llama.cpp's side of bench/generation.py, run by .venv/llamacpp's Python (`make llamacpp`):
the Hugging Face Llama folder written as GGUF at the served bit width (f32), then greedy
generation timed with llama-cpp-python, one thread, from the same prompt token ids.

    python bench/llamacpp_side.py FOLDER OUT.gguf IDS_JSON NEW ROUNDS

Prints one JSON line: first-token ms, decode tokens/s (medians) and the greedy tokens, which
bench/generation.py compares with the served loop's (a check on the conversion).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face's rotary layout (halves) to llama.cpp's (interleaved pairs), as llama.cpp's
    own convert_hf_to_gguf.py does for q_proj / k_proj."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def write_gguf(folder: Path, out: Path) -> None:
    import gguf
    from safetensors.numpy import load_file

    cfg = json.loads((folder / "config.json").read_text())
    tok = json.loads((folder / "tokenizer.json").read_text())
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    w = load_file(str(folder / "model.safetensors"))
    g = gguf.GGUFWriter(str(out), "llama")
    g.add_context_length(cfg["max_position_embeddings"])
    g.add_embedding_length(cfg["hidden_size"])
    g.add_block_count(cfg["num_hidden_layers"])
    g.add_feed_forward_length(cfg["intermediate_size"])
    g.add_head_count(heads)
    g.add_head_count_kv(kv)
    g.add_rope_dimension_count(head_dim)
    g.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    g.add_rope_freq_base(float((cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)))
    g.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab = tok["model"]["vocab"]
    specials = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    vocab.update(specials)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv_: kv_[1])]
    g.add_tokenizer_model("gpt2")
    g.add_tokenizer_pre("default")
    g.add_token_list(tokens)
    g.add_token_types([3 if t in specials else 1 for t in tokens])
    merges = tok["model"]["merges"]
    g.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    g.add_bos_token_id(cfg.get("bos_token_id") or 0)
    g.add_eos_token_id(cfg.get("eos_token_id") or 0)
    g.add_add_bos_token(False)
    f32 = {k: v.astype(np.float32) for k, v in w.items()}
    g.add_tensor("token_embd.weight", f32["model.embed_tokens.weight"])
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        b = f"blk.{i}."
        g.add_tensor(b + "attn_norm.weight", f32[p + "input_layernorm.weight"])
        g.add_tensor(b + "attn_q.weight", permute(f32[p + "self_attn.q_proj.weight"], heads))
        g.add_tensor(b + "attn_k.weight", permute(f32[p + "self_attn.k_proj.weight"], kv))
        g.add_tensor(b + "attn_v.weight", f32[p + "self_attn.v_proj.weight"])
        g.add_tensor(b + "attn_output.weight", f32[p + "self_attn.o_proj.weight"])
        g.add_tensor(b + "ffn_norm.weight", f32[p + "post_attention_layernorm.weight"])
        g.add_tensor(b + "ffn_gate.weight", f32[p + "mlp.gate_proj.weight"])
        g.add_tensor(b + "ffn_up.weight", f32[p + "mlp.up_proj.weight"])
        g.add_tensor(b + "ffn_down.weight", f32[p + "mlp.down_proj.weight"])
    g.add_tensor("output_norm.weight", f32["model.norm.weight"])
    if "lm_head.weight" in f32:
        g.add_tensor("output.weight", f32["lm_head.weight"])
    g.write_header_to_file()
    g.write_kv_data_to_file()
    g.write_tensors_to_file()
    g.close()


def generate(llm, ids: list[int], new: int) -> tuple[float, float, list[int]]:
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    t1 = time.perf_counter()
    out = [token]
    for _ in range(new - 1):
        llm.eval([token])
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
    t2 = time.perf_counter()
    return t1 - t0, (new - 1) / (t2 - t1), out


def main() -> None:
    from llama_cpp import Llama

    folder, out, ids_json, new, rounds = sys.argv[1:6]
    write_gguf(Path(folder), Path(out))
    llm = Llama(model_path=out, n_threads=1, n_threads_batch=1, n_ctx=512, verbose=False,
                logits_all=True)  # fmt: skip
    ids = json.loads(ids_json)
    generate(llm, ids, int(new))  # warm-up
    runs = [generate(llm, ids, int(new)) for _ in range(int(rounds))]
    print(
        json.dumps(
            {
                "first_token_ms": statistics.median(r[0] for r in runs) * 1000,
                "decode_tokens_per_s": statistics.median(r[1] for r in runs),
                "runs": len(runs),
                "tokens": runs[0][2],
                "gguf_bytes": Path(out).stat().st_size,
            }
        )
    )


if __name__ == "__main__":
    main()
