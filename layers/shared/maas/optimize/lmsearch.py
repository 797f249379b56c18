"""The recipe search for text-generation models: perplexity, next-token agreement and speed.

The same candidates, registry and manifest as every other family (maas.optimize.quantize,
maas.optimize.recipes); what differs is how a candidate is scored and timed:

- quality, on the held-out token windows of sample.npz, teacher-forced (each window run whole
  from an empty cache): perplexity, and top-1 next-token agreement with fp32's argmax;
- speed, at batch 1 as the generation loop runs it, interleaved round-robin across candidates:
  time to first token (the prompt pass over PROMPT_TOKENS tokens) and decode tokens/s (cached
  single-token steps after it);
- the gate: perplexity up by at most ``max_perplexity_increase`` (5 %) and agreement at least
  ``min_agreement`` (0.95), both from job.json's quality_gate;
- the choice: among candidates that passed, built and ran, the one with the most decode
  tokens/s, if it is at least ``min_speedup`` times fp32's without a first token slower than
  1/min_speedup of fp32's; else fp32, with why each candidate lost.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from maas.core.contract import INPUT_IDS, INPUT_PREFIX, LOGITS_OUTPUT
from maas.optimize import recipes
from maas.optimize.quantize import (
    FP32,
    Candidate,
    Selection,
    applicable,
    preprocess,
    ruled_out,
)
from maas.optimize.recipes import RecipeInput
from maas.serving.ortsession import new_session

PROMPT_TOKENS = 32  # the declared prompt length of the first-token timing
DECODE_TOKENS = 32  # cached steps timed per round
TIMING_ROUNDS = 5


@dataclass
class LMRef:
    session: ort.InferenceSession
    rows: np.ndarray  # [n, L] token windows
    preds: np.ndarray  # fp32's argmax per position, [n, L-1]
    empty: dict[str, np.ndarray]  # the empty KV cache feeds


def _empty_past(sess: ort.InferenceSession) -> dict[str, np.ndarray]:
    out = {}
    for i in sess.get_inputs()[1:]:
        shape = [1, int(i.shape[1]), 0, int(i.shape[3])]
        out[i.name] = np.zeros(shape, np.float32)
    return out


def score(sess: ort.InferenceSession, rows: np.ndarray, empty: dict[str, np.ndarray]):
    """(perplexity, argmax predictions [n, L-1]) over rows, teacher-forced."""
    nll, count, preds = 0.0, 0, []
    for row in rows:
        logits = sess.run([LOGITS_OUTPUT], {INPUT_IDS: row[None], **empty})[0][0, :-1]
        logits = logits.astype(np.float64)
        shift = logits.max(axis=1, keepdims=True)
        logp = logits - shift - np.log(np.exp(logits - shift).sum(axis=1, keepdims=True))
        nll -= float(logp[np.arange(len(row) - 1), row[1:]].sum())
        count += len(row) - 1
        preds.append(logits.argmax(axis=1))
    return math.exp(min(nll / max(1, count), 50.0)), np.stack(preds)


def _quality(ref: LMRef, sess: ort.InferenceSession) -> dict[str, float]:
    ppl, preds = score(sess, ref.rows, ref.empty)
    return {"perplexity": ppl, "agreement": float(np.mean(preds == ref.preds))}


def _time_one(sess: ort.InferenceSession, prompt: np.ndarray, empty: dict[str, np.ndarray]):
    """(first-token seconds, seconds per cached decode step) for one generation."""
    names = [o.name for o in sess.get_outputs()]
    t0 = time.perf_counter()
    out = sess.run(names, {INPUT_IDS: prompt, **empty})
    t1 = time.perf_counter()
    past_names = list(empty)
    token = np.array([[int(out[0][0, -1].argmax())]], dtype=np.int64)
    for _ in range(DECODE_TOKENS):
        out = sess.run(names, {INPUT_IDS: token, **dict(zip(past_names, out[1:], strict=True))})
        token = np.array([[int(out[0][0, -1].argmax())]], dtype=np.int64)
    t2 = time.perf_counter()
    return t1 - t0, (t2 - t1) / DECODE_TOKENS


def time_side_by_side(timed: list[Candidate], sessions: dict[str, Any], ref: LMRef) -> None:
    """Interleaved rounds (the starting candidate rotates); medians into latency_ms."""
    prompt = np.ascontiguousarray(ref.rows[0][:PROMPT_TOKENS][None])
    first: dict[str, list[float]] = {c.recipe: [] for c in timed}
    step: dict[str, list[float]] = {c.recipe: [] for c in timed}
    for c in timed:  # warm-up
        _time_one(sessions[c.recipe], prompt, ref.empty)
    was = gc.isenabled()
    gc.disable()
    try:
        for r in range(TIMING_ROUNDS):
            k = r % len(timed)
            for c in timed[k:] + timed[:k]:
                a, b = _time_one(sessions[c.recipe], prompt, ref.empty)
                first[c.recipe].append(a)
                step[c.recipe].append(b)
    finally:
        if was:
            gc.enable()
    for c in timed:
        per_token = float(np.median(step[c.recipe]))
        c.latency_ms = {
            "first_token_ms": float(np.median(first[c.recipe])) * 1000,
            "decode_ms_per_token": per_token * 1000,
            "decode_tokens_per_s": 1.0 / max(per_token, 1e-9),
            "prompt_tokens": float(prompt.shape[1]),
        }


def gate(cands: list[Candidate], fp32: Candidate, max_increase: float, min_agreement: float):
    base = fp32.quality["perplexity"]
    for c in cands:
        if not c.ok:
            continue
        rise = c.quality["perplexity"] / base - 1.0
        agree = c.quality["agreement"]
        c.passed_gate = rise <= max_increase + 1e-9 and agree >= min_agreement - 1e-9
        c.reason = (
            f"perplexity {c.quality['perplexity']:.3f} ({rise:+.1%} vs fp32, limit "
            f"+{max_increase:.0%}), agreement {agree:.3f} (min {min_agreement:.2f})"
        )


def choose(fp32: Candidate, cands: list[Candidate], min_speedup: float) -> tuple[Candidate, str]:
    eligible, losers = [], []
    for c in cands:
        out = ruled_out(c)
        if out:
            losers.append(out)
            continue
        up = c.latency_ms["decode_tokens_per_s"] / fp32.latency_ms["decode_tokens_per_s"]
        first = fp32.latency_ms["first_token_ms"] / max(c.latency_ms["first_token_ms"], 1e-9)
        if up >= min_speedup and first >= 1.0 / min_speedup:
            eligible.append((c, up, first))
        else:
            losers.append(f"{c.recipe}: {up:.2f}x decode, {first:.2f}x first token")
    if not eligible:
        return fp32, (
            f"fp32 kept: no quantized candidate passed the gate and decoded >= {min_speedup:.2f}x "
            f"faster ({'; '.join(losers) or 'none built'})"
        )
    eligible.sort(key=lambda e: (-e[0].latency_ms["decode_tokens_per_s"], e[0].size_bytes))
    best, up, first = eligible[0]
    ratio = best.size_bytes / max(fp32.size_bytes, 1)
    return best, (
        f"{best.recipe}: {up:.2f}x fp32's decode tokens/s, {first:.2f}x its first-token speed, "
        f"{best.reason}, size {ratio:.2f}x fp32"
    )


def _build(recipe: Any, inp: RecipeInput, ref: LMRef) -> tuple[Candidate, Any]:
    cand = Candidate(recipe=recipe.name, path=inp.workdir / f"model.{recipe.name}.onnx")
    t0 = time.perf_counter()
    stage = "build"
    try:
        cand.note = recipe.build(inp, cand.path) or ""
        cand.build_s = time.perf_counter() - t0
        cand.size_bytes = cand.path.stat().st_size
        stage = "load"
        sess = new_session(cand.path, 1)
        stage = "run"
        cand.quality = _quality(ref, sess)
        return cand, sess
    except Exception as e:
        cand.build_s = cand.build_s or time.perf_counter() - t0
        cand.error = f"{stage}: {type(e).__name__}: {e}"[:1000]
        cand.reason = f"failed to {stage}"
        return cand, None


def optimize_lm(
    fp32_path: Path,
    sample: dict[str, np.ndarray],
    workdir: Path,
    *,
    max_perplexity_increase: float = 0.05,
    min_agreement: float = 0.95,
    min_speedup: float = 1.05,
) -> Selection:
    """Build, score, gate, time and choose (module doc); fp32 first among the candidates."""
    t_start = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    sess = new_session(fp32_path, 1)
    empty = _empty_past(sess)
    rows = np.asarray(sample[INPUT_PREFIX + INPUT_IDS], dtype=np.int64)
    ppl, preds = score(sess, rows, empty)
    ref = LMRef(sess, rows, preds, empty)
    fp32 = Candidate(
        FP32, fp32_path, fp32_path.stat().st_size, {"perplexity": ppl, "agreement": 1.0}
    )
    fp32.passed_gate, fp32.reason = True, "reference"
    notes: list[str] = []
    inp = RecipeInput(
        fp32=fp32_path,
        graph=preprocess(fp32_path, workdir / "model.pre.onnx")[0],
        workdir=workdir,
        task=recipes.TEXT_GENERATION,
        op_types=("MatMul", "Gather"),
        calibration=None,
        transformer=None,
    )
    cands, sessions = [], {FP32: sess}
    for recipe in applicable(recipes.RECIPES, inp, notes):
        cand, s = _build(recipe, inp, ref)
        cands.append(cand)
        if s is not None:
            sessions[cand.recipe] = s
    gate(cands, fp32, max_perplexity_increase, min_agreement)
    time_side_by_side([c for c in [fp32, *cands] if c.recipe in sessions], sessions, ref)
    chosen, reason = choose(fp32, cands, min_speedup)
    return Selection(
        chosen=chosen,
        candidates=[fp32, *cands],
        fp32=fp32,
        reason=reason,
        task=recipes.TEXT_GENERATION,
        gate={"max_perplexity_increase": max_perplexity_increase, "min_agreement": min_agreement},
        preprocess="quant_pre_process",
        timing={
            "threads": 1,
            "rounds": TIMING_ROUNDS,
            "prompt_tokens": PROMPT_TOKENS,
            "decode_tokens": DECODE_TOKENS,
            "sample_windows": len(rows),
            "interleaved": True,
            "min_speedup": min_speedup,
        },
        notes=notes,
        total_s=time.perf_counter() - t_start,
    )
