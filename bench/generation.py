"""Text generation: the served loop against transformers fp32 eager generate, one thread each.

    python -m bench.generation [--quick]     (also part of `make bench`)

One model for every side: a randomly initialised Llama folder (maas_devkit.lmfolders; width
512, 8 layers, 8,192 tokens of vocabulary, ~29 M parameters) imported by the real training job
(KV-cache export checked against torch) and put through the optimizer's LM search (the
quantization table's LM rows). Measured side by side, interleaved, one intra-op thread:

- decode tokens/s at batch 1 and time to first token (a PROMPT-token prompt) in a warm
  process: the inference function's generation loop (maas.serving.generation) on the fp32
  graph and on the optimizer's choice, against ``transformers`` ``generate`` (fp32, eager
  attention, its KV cache, greedy);
- time to first token from a fresh process: process start -> imports -> model load ->
  tokenize -> first token, the served stack against torch + transformers;
- llama.cpp: llama-cpp-python from PyPI, built here into its own environment (`make
  llamacpp`), on the same folder written as f32 GGUF (bench/llamacpp_side.py), one thread,
  the same prompt ids; run in its own process after the side-by-side rounds. Without that
  environment the reason is recorded.

Writes bench/generation.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "generation.json"
PROMPT = 32  # tokens
NEW = 64  # tokens generated per timed run
WIDTH, LAYERS, VOCAB = 512, 8, 8192


def build(work: Path) -> tuple[Path, Path]:
    """(the Hugging Face folder, the import job's model dir)."""
    from maas_devkit.lmfolders import tiny_folder

    folder = tiny_folder("llama", work / "folder", width=WIDTH, layers=LAYERS, vocab_size=VOCAB)
    base = work / "job"
    channel = base / "input" / "data" / "train" / "model"
    channel.mkdir(parents=True)
    for f in folder.iterdir():
        (channel / f.name).write_bytes(f.read_bytes())
    (base / "input" / "config").mkdir(parents=True)
    hp = {"task": json.dumps("text-generation"), "recipe": json.dumps("import")}
    (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hp))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "MAAS_"))}
    env["MAAS_OPT_ML"] = str(base)
    done = subprocess.run(
        [sys.executable, str(REPO / "training" / "train.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return folder, base / "model"


def prompt_ids(model_dir: Path) -> list[int]:
    import numpy as np

    rows = np.load(model_dir / "sample.npz")["input__input_ids"]
    return [int(t) for t in rows[0][:PROMPT]]


def served(graph: Path, model_dir: Path) -> Any:
    from maas.serving.generation import Generator
    from maas.serving.ortsession import new_session
    from maas.serving.textprep import PromptTokenizer

    spec = json.loads((model_dir / "generation.json").read_text())
    spec["eos_token_ids"] = []  # a random model: time exactly NEW tokens
    tok = PromptTokenizer.from_spec((model_dir / "tokenizer.json").read_text(), spec)
    return Generator(new_session(graph, 1), spec, tok)


def time_served(gen: Any, ids: list[int]) -> tuple[float, float]:
    """(first token s, decode tokens/s) of one greedy generation of NEW tokens."""
    from maas.serving.generation import Sampling

    t0 = time.perf_counter()
    stamps = [time.perf_counter() for _ in gen.tokens(ids, Sampling(NEW, temperature=0.0))]
    return stamps[0] - t0, (len(stamps) - 1) / (stamps[-1] - stamps[0])


def time_torch(model: Any, ids: list[int]) -> tuple[float, float]:
    import torch

    x = torch.tensor([ids])
    with torch.no_grad():
        t0 = time.perf_counter()
        model.generate(x, max_new_tokens=1, min_new_tokens=1, do_sample=False)
        t1 = time.perf_counter()
        model.generate(x, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
        t2 = time.perf_counter()
    first = t1 - t0
    return first, (NEW - 1) / max(1e-9, (t2 - t1) - first)


def warm(folder: Path, model_dir: Path, chosen: Path | None, rounds: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    ref = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    ids = prompt_ids(model_dir)
    g1 = served(model_dir / "model.onnx", model_dir)
    sides: dict[str, Any] = {
        "served fp32": lambda: time_served(g1, ids),
        "transformers fp32 eager": lambda: time_torch(ref, ids),
    }
    if chosen is not None:
        g2 = served(chosen, model_dir)
        sides[f"served {chosen.stem.removeprefix('model.')}"] = lambda: time_served(g2, ids)
    for fn in sides.values():
        fn()  # warm-up
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in sides}
    names = list(sides)
    for r in range(rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            got[k].append(sides[k]())
    return {
        k: {
            "first_token_ms": statistics.median(a for a, _ in v) * 1000,
            "decode_tokens_per_s": statistics.median(b for _, b in v),
            "runs": len(v),
        }
        for k, v in got.items()
    }


FRESH_SERVED = """
import time, json, sys
t0 = time.time()
from maas.serving.generation import Generator, Sampling
from maas.serving.ortsession import new_session
from maas.serving.textprep import PromptTokenizer
d = sys.argv[1]
spec = json.load(open(d + "/generation.json"))
tok = PromptTokenizer.from_spec(open(d + "/tokenizer.json").read(), spec)
gen = Generator(new_session(sys.argv[2], 1), spec, tok)
ids = tok.encode(sys.argv[3])
next(iter(gen.tokens(ids, Sampling(1, temperature=0.0))), None)
print(json.dumps({"after_start_s": time.time() - t0}))
"""
FRESH_TORCH = """
import time, json, sys
t0 = time.time()
import torch
torch.set_num_threads(1)
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], attn_implementation="eager").eval()
with torch.no_grad():
    m.generate(tok(sys.argv[3], return_tensors="pt")["input_ids"], max_new_tokens=1)
print(json.dumps({"after_start_s": time.time() - t0}))
"""


def fresh(folder: Path, model_dir: Path, graph: Path, rounds: int) -> dict[str, Any]:
    """Seconds from process start to the first token, interleaved, median."""
    prompt = "The standard library provides"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs: dict[str, list[float]] = {"served": [], "transformers": []}
    for _ in range(rounds):
        for side, code, arg in (
            ("served", FRESH_SERVED, str(model_dir)),
            ("transformers", FRESH_TORCH, str(folder)),
        ):
            start = time.time()
            done = subprocess.run(
                [sys.executable, "-c", code, arg, str(graph), prompt],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-1500:])
            runs[side].append(time.time() - start)
    return {k: {"first_token_s": statistics.median(v), "runs": len(v)} for k, v in runs.items()}


LLAMACPP_PY = REPO / ".venv" / "llamacpp" / "bin" / "python"


def llama_cpp(folder: Path, model_dir: Path, work: Path, rounds: int) -> dict[str, Any]:
    """llama.cpp (its own environment, `make llamacpp`) on the same folder as f32 GGUF."""
    if not LLAMACPP_PY.exists():
        return {"status": f"not measured: {LLAMACPP_PY} missing (make llamacpp builds it)"}
    ids = prompt_ids(model_dir)
    done = subprocess.run(
        [
            str(LLAMACPP_PY),
            str(REPO / "bench" / "llamacpp_side.py"),
            str(folder),
            str(work / "model.f32.gguf"),
            json.dumps(ids),
            str(NEW),
            str(rounds),
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        return {"status": f"failed: {done.stderr.strip().splitlines()[-1:]}"}
    got = json.loads(done.stdout.strip().splitlines()[-1])
    from maas.serving.generation import Sampling

    gen = served(model_dir / "model.onnx", model_dir)
    ours = list(gen.tokens(ids, Sampling(NEW, temperature=0.0)))
    same = sum(a == b for a, b in zip(ours, got.pop("tokens"), strict=False)) / NEW
    return {
        "status": "measured (f32 GGUF, one thread)",
        "greedy_agreement_with_served": same,
        **got,
    }


def optimize(model_dir: Path, work: Path) -> tuple[Any, Path | None]:
    from maas.optimize.feeds import load_npz
    from maas.optimize.lmsearch import optimize_lm

    sel = optimize_lm(model_dir / "model.onnx", load_npz(model_dir / "sample.npz"), work)
    chosen = None if sel.chosen.recipe == "fp32" else sel.chosen.path
    return sel, chosen


def table(result: dict[str, Any]) -> str:
    lines = [
        "| side (one thread) | decode tokens/s | first token, warm (ms) |",
        "|---|---|---|",
    ]
    for k, v in result["warm"].items():
        lines.append(f"| {k} | {v['decode_tokens_per_s']:.1f} | {v['first_token_ms']:.2f} |")
    f = result["fresh"]
    lines += [
        "",
        "| first token from a fresh process (s) | served | transformers | ratio |",
        "|---|---|---|---|",
        f"| {PROMPT}-ish token prompt | {f['served']['first_token_s']:.2f} | "
        f"{f['transformers']['first_token_s']:.2f} | "
        f"{f['served']['first_token_s'] / f['transformers']['first_token_s']:.3f} |",
        "",
        "| LM quantization candidate | size (MB) | perplexity | agreement | first token (ms) | "
        "decode tokens/s | |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in result["candidates"]:
        q, lat = c["quality"], c["latency_ms"]
        served_mark = "served" if c["recipe"] == result["chosen"] else ""
        lines.append(
            f"| {c['recipe']} | {c['size_bytes'] / 1e6:.1f} | {q.get('perplexity', 0):.2f} | "
            f"{q.get('agreement', 0):.3f} | {lat.get('first_token_ms', 0):.2f} | "
            f"{lat.get('decode_tokens_per_s', 0):.1f} | {served_mark} |"
        )
    return "\n".join(lines)


def run(quick: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="maas-bench-gen-") as tmp:
        work = Path(tmp)
        folder, model_dir = build(work)
        sel, chosen = optimize(model_dir, work / "candidates")
        result = {
            "model": {"width": WIDTH, "layers": LAYERS, "vocab": VOCAB, "prompt_tokens": PROMPT},
            "new_tokens": NEW,
            "warm": warm(folder, model_dir, chosen, 3 if quick else 7),
            "fresh": fresh(
                folder, model_dir, chosen or model_dir / "model.onnx", 2 if quick else 5
            ),
            "llama_cpp": llama_cpp(folder, model_dir, work, 3 if quick else 7),
            "chosen": sel.chosen.recipe,
            "reason": sel.reason,
            "candidates": [c.to_dict() for c in sel.candidates],
        }
    w = result["warm"]
    best = max(v["decode_tokens_per_s"] for k, v in w.items() if k.startswith("served"))
    torch_side = w["transformers fp32 eager"]
    f = result["fresh"]
    result["ratios"] = {
        "served_decode_over_torch": best / torch_side["decode_tokens_per_s"],
        "fresh_first_token_served_over_torch": f["served"]["first_token_s"]
        / f["transformers"]["first_token_s"],
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    result = run(p.parse_args().quick)
    print(table(result))
    print(json.dumps(result["ratios"], indent=2))
    print(f"llama.cpp: {json.dumps(result['llama_cpp'])}")


if __name__ == "__main__":
    main()
