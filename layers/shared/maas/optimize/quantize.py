"""The optimizer's recipe search: quantize an fp32 ONNX graph several ways, measure, choose.

Runs inside the optimizer Lambda, so it imports onnx, onnxruntime and numpy only (never torch).

``optimize_model`` runs these steps, each a function here; the candidates themselves are the
recipes registered in ``maas.optimize.recipes.RECIPES``:

1. ``reference``: the fp32 graph as delivered, loaded, smoke-run and scored (every candidate
   is compared with it), and ``preprocess``: ``quant_pre_process`` (shape inference + basic
   graph optimisation). Symbolic shape inference fails on some graphs (transformers); it is
   retried with ``skip_symbolic_shape=True``; if that fails too the raw graph is quantized
   and the manifest says so.
2. ``build_and_score``: each applicable recipe, in registry order, written to ``workdir``:
     - ``dynamic-int8-per-tensor``       ``quantize_dynamic``, one scale per weight tensor
     - ``dynamic-int8-per-channel``      ``quantize_dynamic``, one scale per output channel
     - ``static-qdq-int8-per-channel``   ``quantize_static`` (QDQ, MinMax over calibration.npz),
                                         only when calibration data is given
     - ``fused-dynamic-int8-per-channel`` transformer encoders only (``transformer`` names the
                                         model type, heads and width): ONNX Runtime's
                                         transformer fusions (Attention, BiasGelu, ...) on the
                                         fp32 graph, then dynamic int8 per channel, so that
                                         attention runs as one QAttention kernel
   Only MatMul/Gemm are quantized (plus Gather for text models), so the label head
   (ArgMax + Gather over a string initializer) is left alone. A candidate that fails to
   build, to load, to run, or that changes the graph's input/output names or types is
   recorded with ``error`` and is never chosen.
   Quality on sample.npz (held-out test split): classification compares the argmax of
   "probabilities" with ``target`` (accuracy) and with fp32's argmax (agreement);
   embedding compares the first output (or "embedding") with fp32's row-wise by cosine.
   Scored in runs of BATCH_N rows: dynamic int8 takes one activation scale over the whole
   batch, so a row's result depends on its batch-mates; BATCH_N matches the timed batch.
3. ``gate``: classification passes when ``fp32_accuracy - accuracy <= max_accuracy_drop``
   (without targets: ``1 - agreement <= max_accuracy_drop``); regression when
   ``fp32_r2 - r2 <= max_r2_drop``; embedding when ``cosine_mean >= min_cosine``.
4. ``time_side_by_side``: all candidates in one process, interleaved round-robin (the starting
   candidate rotates every round) so that clock and thermal drift hit all of them alike:
   batch 1 (first sample row) and batch N (min(32, n) rows); p50 and p90 in ms.
   Compression candidates (``bases``: the training job's smaller students of the same model,
   contract.COMPRESSED_FILE) go through step 2 as well: each student's own fp32 graph is a
   candidate named after it (``layers-4``), and every applicable recipe is built on it too
   (``layers-4+dynamic-int8-per-channel``). All of them are scored against the *unpruned*
   fp32 model, gated, timed and chosen by the same rule as the rest.
5. ``choose`` (the rule): a quantized candidate is *eligible* when it passed the gate, ran
   without error, and wins clearly at one batch size without losing at the other:
       (speedup_1 >= min_speedup and speedup_N >= 1/min_speedup)  or
       (speedup_N >= min_speedup and speedup_1 >= 1/min_speedup)
   where ``speedup_b = fp32.batchb_p50 / candidate.batchb_p50`` and ``min_speedup`` is
   1.05 by default (5%, above the run-to-run noise of interleaved p50s). Among eligible
   candidates the one with the lowest batch-1 p50 wins (Lambda requests are mostly single
   rows); ties go to lower batch-N p50, then to the smaller file. No eligible candidate:
   fp32 is kept, and the reason lists why each candidate lost.
"""

from __future__ import annotations

import gc
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from maas.core.contract import (
    EMBEDDING_OUTPUT,
    PREDICTION_OUTPUT,
    PROBABILITIES_OUTPUT,
    TARGET_KEY,
)
from maas.optimize import recipes
from maas.optimize.feeds import Feeds, feeds_for, n_rows, rows
from maas.optimize.recipes import Recipe, RecipeInput
from maas.serving.ortsession import new_session

log = logging.getLogger(__name__)

FP32 = "fp32"  # the reference's name among the candidates; no recipe takes it

CLASSIFICATION_TASKS = ("classification", "text-classification")
EMBEDDING_TASKS = ("embedding",)
REGRESSION_TASKS = ("regression",)

BATCH_N = 32
EVAL_CHUNK_ROWS = BATCH_N  # rows per run when scoring: dynamic int8 scales span the batch
WARMUP_RUNS = 5
MIN_TIMING_ROUNDS = 5
GATE_EPS = 1e-9

Interface = tuple[list[tuple[str, str]], list[tuple[str, str]]]  # (inputs, outputs): name, type
Sessions = dict[str, ort.InferenceSession]  # by candidate name: the ones that built and ran


@dataclass
class Candidate:
    recipe: str
    path: Path
    size_bytes: int = 0
    quality: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    passed_gate: bool = False
    reason: str = ""
    error: str | None = None
    build_s: float = 0.0
    note: str = ""  # how it was built (e.g. the activation type static quantization settled on)
    base: str = FP32  # the graph it was built from: fp32, or a compression candidate's name

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "file": self.path.name,
            "size_bytes": int(self.size_bytes),
            "quality": {k: _finite(v) for k, v in self.quality.items()},
            "latency_ms": {k: _finite(v) for k, v in self.latency_ms.items()},
            "passed_gate": bool(self.passed_gate),
            "reason": self.reason,
            "error": self.error,
            "build_s": round(self.build_s, 3),
            "note": self.note,
            "base": self.base,
        }


@dataclass(frozen=True)
class Base:
    """A compression candidate: a smaller fp32 graph of the same model (contract.Compressed)."""

    name: str
    path: Path
    how: str = ""


@dataclass
class Selection:
    chosen: Candidate
    candidates: list[Candidate]  # fp32 first, then every quantized candidate tried
    fp32: Candidate
    reason: str = ""
    task: str = "classification"
    gate: dict[str, float] = field(default_factory=dict)
    preprocess: str = ""
    timing: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    total_s: float = 0.0
    bases: list[dict[str, Any]] = field(default_factory=list)  # the compression candidates

    def to_manifest(self) -> dict[str, Any]:
        """JSON-able summary for manifest.json (no NaN, no paths)."""
        return {
            "recipe": self.chosen.recipe,
            "reason": self.reason,
            "task": self.task,
            "gate": dict(self.gate),
            "preprocess": self.preprocess,
            "timing": dict(self.timing),
            "notes": list(self.notes),
            "size_bytes": int(self.chosen.size_bytes),
            "fp32_size_bytes": int(self.fp32.size_bytes),
            "quality": {k: _finite(v) for k, v in self.chosen.quality.items()},
            "latency_ms": {k: _finite(v) for k, v in self.chosen.latency_ms.items()},
            "candidates": [c.to_dict() for c in self.candidates],
            "compression": list(self.bases),
            "optimize_s": round(self.total_s, 3),
            "onnxruntime": ort.__version__,
        }


def _finite(v: float, digits: int = 6) -> float | None:
    f = float(v)
    return round(f, digits) if math.isfinite(f) else None


@dataclass
class Reference:
    """The fp32 graph as served: what every candidate is checked, scored and timed against."""

    candidate: Candidate
    session: ort.InferenceSession
    interface: Interface
    kind: str  # classification | regression | embedding
    feeds: Feeds  # the whole sample
    feeds1: Feeds  # its first row (batch-1 timing, smoke runs)
    feeds_n: Feeds  # its first batch_n rows (batch-N timing)
    batch_n: int
    calibration: Feeds | None  # calibration.npz as feeds, when it fits the graph
    output: str  # the output scored
    expected: np.ndarray  # fp32's output on the sample
    targets: np.ndarray | None  # the sample's labels (classification, when given)

    def score(self, out: np.ndarray) -> dict[str, float]:
        n = n_rows(self.feeds)
        if self.kind == "classification":
            pred = out.reshape(n, -1).argmax(axis=1)
            ref_pred = self.expected.reshape(n, -1).argmax(axis=1)
            q = {"agreement": float(np.mean(pred == ref_pred))}
            if self.targets is not None:
                q = {"accuracy": float(np.mean(pred == self.targets)), **q}
            return q
        if self.kind == "regression":
            return _regression_quality(out.reshape(-1), self.expected.reshape(-1), self.targets)
        cos = _cosine_rows(out, self.expected)
        return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}


# --------------------------------------------------------------------------- the search


def optimize_model(
    fp32_path: Path,
    sample: dict[str, np.ndarray],
    calibration: dict[str, np.ndarray] | None,
    workdir: Path,
    *,
    task: str = "classification",
    max_accuracy_drop: float = 0.01,
    min_cosine: float = 0.99,
    max_r2_drop: float = 0.01,
    threads: int | None = None,
    timing_repeats: int = 200,
    timing_budget_s: float = 20.0,
    min_speedup: float = 1.05,
    op_types: Sequence[str] | None = None,
    transformer: dict[str, Any] | None = None,
    bases: Sequence[Base] = (),
) -> Selection:
    """Build the candidates, score and time them side by side, choose one (see module doc).

    ``timing_repeats`` is the number of interleaved rounds (each times every candidate once
    at batch 1 and once at batch N); rounds stop early once ``timing_budget_s`` is spent
    (never fewer than MIN_TIMING_ROUNDS). Raises only when the fp32 graph itself cannot be
    loaded or scored; every quantized failure is recorded on its Candidate.
    """
    t_start = time.perf_counter()
    kind = _task_kind(task)
    fp32_path = Path(fp32_path)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []

    ref = reference(fp32_path, sample, calibration, kind=kind, threads=threads, notes=notes)
    graph, how = preprocess(fp32_path, workdir / "model.pre.onnx")
    if not how.startswith("quant_pre_process"):
        notes.append(how)
    inp = RecipeInput(
        fp32=fp32_path,
        graph=graph,
        workdir=workdir,
        task=task,
        op_types=recipes.default_op_types(task) if op_types is None else tuple(op_types),
        calibration=ref.calibration,
        transformer=transformer,
    )
    candidates, sessions = build_and_score(
        ref, applicable(recipes.RECIPES, inp, notes), inp, threads
    )
    for base in bases:
        more, base_sessions = build_base(ref, base, inp, threads, notes)
        candidates += more
        sessions |= base_sessions
    gate(candidates[1:], ref.candidate, kind, max_accuracy_drop, min_cosine, max_r2_drop)
    timed = [c for c in candidates if c.recipe in sessions]
    rounds = time_side_by_side(timed, sessions, ref, timing_repeats, timing_budget_s)
    chosen, reason = choose(ref.candidate, candidates, ref.batch_n, min_speedup)
    return Selection(
        chosen=chosen,
        candidates=candidates,
        fp32=ref.candidate,
        reason=reason,
        task=task,
        gate={
            "embedding": {"min_cosine": min_cosine},
            "regression": {"max_r2_drop": max_r2_drop},
        }.get(kind, {"max_accuracy_drop": max_accuracy_drop}),
        preprocess=how,
        timing={
            "threads": threads or 1,
            "batch_n": ref.batch_n,
            "rounds": rounds,
            "warmup_runs": WARMUP_RUNS,
            "min_speedup": min_speedup,
            "sample_rows": n_rows(ref.feeds),
            "interleaved": True,
        },
        notes=notes,
        total_s=time.perf_counter() - t_start,
        bases=[{"name": b.name, "how": b.how, "size_bytes": b.path.stat().st_size} for b in bases],
    )


def _task_kind(task: str) -> str:
    if task in CLASSIFICATION_TASKS:
        return "classification"
    if task in EMBEDDING_TASKS:
        return "embedding"
    if task in REGRESSION_TASKS:
        return "regression"
    raise ValueError(f"unknown task {task!r}")


# --------------------------------------------------------------------------- 1. reference


def reference(
    fp32_path: Path,
    sample: dict[str, np.ndarray],
    calibration: dict[str, np.ndarray] | None,
    *,
    kind: str,
    threads: int | None,
    notes: list[str],
) -> Reference:
    """Load, smoke-run and score the fp32 graph; raises when it cannot (nothing to compare to)."""
    fp32 = Candidate(recipe=FP32, path=fp32_path, size_bytes=fp32_path.stat().st_size)
    sess = _session(fp32_path, threads)
    interface = _interface(sess)
    feeds = feeds_for(sample, sess)
    n = n_rows(feeds)
    feeds1 = rows(feeds, 0, 1)
    _smoke(sess, feeds1)
    cal_feeds: Feeds | None = None
    if calibration:
        try:
            cal_feeds = feeds_for(calibration, sess)
        except ValueError as e:
            notes.append(f"calibration data unusable ({e})")

    targets: np.ndarray | None = None
    if kind == "regression":
        out_name = PREDICTION_OUTPUT
        if TARGET_KEY not in sample:
            raise ValueError("a regression's sample needs its targets (the R^2 gate)")
        targets = np.asarray(sample[TARGET_KEY], dtype=np.float64).reshape(-1)
        if targets.shape[0] != n:
            raise ValueError(f"sample target has {targets.shape[0]} rows, inputs have {n}")
    elif kind == "classification":
        out_name = _prob_name(interface[1])
        if TARGET_KEY in sample:
            targets = np.asarray(sample[TARGET_KEY]).reshape(-1).astype(np.int64)
            if targets.shape[0] != n:
                raise ValueError(f"sample target has {targets.shape[0]} rows, inputs have {n}")
        else:
            notes.append("sample has no target: gate uses 1 - agreement with fp32")
    else:
        out_name = _embedding_name(interface[1])
    batch_n = min(BATCH_N, n)
    ref = Reference(
        candidate=fp32,
        session=sess,
        interface=interface,
        kind=kind,
        feeds=feeds,
        feeds1=feeds1,
        feeds_n=rows(feeds, 0, batch_n),
        batch_n=batch_n,
        calibration=cal_feeds,
        output=out_name,
        expected=_run_output(sess, feeds, out_name),
        targets=targets,
    )
    fp32.quality = ref.score(ref.expected)
    fp32.passed_gate = True
    fp32.reason = "reference"
    return ref


def preprocess(fp32_path: Path, out: Path) -> tuple[Path, str]:
    """The graph the recipes quantize, and how it was prepared (a manifest note)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    errors: list[str] = []
    for skip_symbolic in (False, True):
        try:
            quant_pre_process(str(fp32_path), str(out), skip_symbolic_shape=skip_symbolic)
            if out.exists() and out.stat().st_size > 0:
                note = "quant_pre_process" + (" (skip_symbolic_shape)" if skip_symbolic else "")
                return out, note
            errors.append("quant_pre_process wrote nothing")
        except Exception as e:  # quantizer tooling raises anything
            errors.append(f"{type(e).__name__}: {e}"[:300])
            log.warning("quant_pre_process(skip_symbolic_shape=%s) failed: %s", skip_symbolic, e)
    return fp32_path, "none: quant_pre_process failed (" + " | ".join(errors) + "); raw graph"


# --------------------------------------------------------------------------- 2. build and score


def applicable(registry: Sequence[Recipe], inp: RecipeInput, notes: list[str]) -> list[Recipe]:
    """The recipes that apply to this model, in registry order; a skip is noted when it says why."""
    chosen = []
    for recipe in registry:
        if recipe.applies(inp):
            chosen.append(recipe)
        elif recipe.skipped:
            notes.append(f"skipped {recipe.name}: {recipe.skipped}")
    return chosen


def build_and_score(
    ref: Reference, to_build: Sequence[Recipe], inp: RecipeInput, threads: int | None
) -> tuple[list[Candidate], Sessions]:
    """fp32 first, then one candidate per recipe; the sessions of those that built and ran."""
    candidates = [ref.candidate]
    sessions: Sessions = {FP32: ref.session}
    for recipe in to_build:
        cand, sess = _build_one(recipe, ref, inp, threads)
        candidates.append(cand)
        if sess is not None:
            sessions[recipe.name] = sess
    return candidates, sessions


def build_base(
    ref: Reference, base: Base, inp: RecipeInput, threads: int | None, notes: list[str]
) -> tuple[list[Candidate], Sessions]:
    """A compression candidate as it is (its own fp32 graph), then every recipe built on it."""
    as_is = Recipe(base.name, _as_delivered(base.path))
    workdir = inp.workdir / f"base-{base.name}"
    workdir.mkdir(parents=True, exist_ok=True)
    first, sess = _build_one(as_is, ref, replace(inp, workdir=workdir), threads, base=base.name)
    first.note = base.how
    if sess is None:  # it does not load or run: nothing to build on it
        return [first], {}
    graph, how = preprocess(base.path, workdir / "model.pre.onnx")
    if not how.startswith("quant_pre_process"):
        notes.append(f"{base.name}: {how}")
    on_base = replace(inp, fp32=base.path, graph=graph, workdir=workdir)
    built, sessions = [first], {first.recipe: sess}
    for recipe in applicable(recipes.RECIPES, on_base, []):
        cand, s = _build_one(recipe, ref, on_base, threads, base=base.name)
        built.append(cand)
        if s is not None:
            sessions[cand.recipe] = s
    return built, sessions


def _as_delivered(path: Path) -> Callable[[RecipeInput, Path], str | None]:
    def build(inp: RecipeInput, dst: Path) -> str | None:
        shutil.copyfile(path, dst)
        return None

    return build


def _build_one(
    recipe: Recipe, ref: Reference, inp: RecipeInput, threads: int | None, base: str = FP32
) -> tuple[Candidate, ort.InferenceSession | None]:
    """Build, load, check the interface, smoke-run and score; a failure is recorded, not raised.

    On a compression candidate (`base`), the candidate is named `<base>+<recipe>` (the base
    itself: `<base>`)."""
    name = recipe.name if base == FP32 else base if recipe.name == base else f"{base}+{recipe.name}"
    cand = Candidate(recipe=name, path=inp.workdir / f"model.{name}.onnx", base=base)
    t0 = time.perf_counter()
    stage = "build"
    try:
        build_note = recipe.build(inp, cand.path)
        cand.build_s = time.perf_counter() - t0
        cand.size_bytes = cand.path.stat().st_size
        stage = "load"
        sess = _session(cand.path, threads)
        if _interface(sess) != ref.interface:
            raise ValueError(
                f"interface changed: {_interface(sess)} != {ref.interface} (inputs, outputs)"
            )
        stage = "run"
        _smoke(sess, ref.feeds1)
        cand.quality = ref.score(_run_output(sess, ref.feeds, ref.output))
        cand.note = build_note or ""
        return cand, sess
    except Exception as e:
        cand.build_s = cand.build_s or time.perf_counter() - t0
        cand.error = f"{stage}: {type(e).__name__}: {e}"[:1000]
        cand.reason = f"failed to {stage}"
        log.warning("candidate %s failed to %s: %s", name, stage, e)
        return cand, None


def _session(path: Path, threads: int | None) -> ort.InferenceSession:
    """The serving function's session (maas.serving.ortsession): candidates are timed as served."""
    return new_session(path, threads or 1)


def _interface(sess: ort.InferenceSession) -> Interface:
    return (
        [(i.name, i.type) for i in sess.get_inputs()],
        [(o.name, o.type) for o in sess.get_outputs()],
    )


def _run_output(sess: ort.InferenceSession, feeds: Feeds, name: str) -> np.ndarray:
    n = n_rows(feeds)
    parts = [
        np.asarray(sess.run([name], rows(feeds, s, s + EVAL_CHUNK_ROWS))[0])
        for s in range(0, n, EVAL_CHUNK_ROWS)
    ]
    return np.concatenate(parts, axis=0)


def _smoke(sess: ort.InferenceSession, feeds1: Feeds) -> list[Any]:
    """One batch-1 run fetching every output (the label head included)."""
    return list(sess.run(None, feeds1))


def _prob_name(outputs: list[tuple[str, str]]) -> str:
    names = [n for n, _ in outputs]
    if PROBABILITIES_OUTPUT in names:
        return PROBABILITIES_OUTPUT
    floats = [n for n, t in outputs if t in ("tensor(float)", "tensor(double)", "tensor(float16)")]
    if not floats:
        raise ValueError("classification model has no float output to score")
    return floats[0]


def _embedding_name(outputs: list[tuple[str, str]]) -> str:
    names = [n for n, _ in outputs]
    return EMBEDDING_OUTPUT if EMBEDDING_OUTPUT in names else names[0]


def _regression_quality(
    out: np.ndarray, expected: np.ndarray, targets: np.ndarray | None
) -> dict[str, float]:
    """R^2 on the sample's targets, and the largest difference from fp32's prediction."""
    y = np.asarray(targets, dtype=np.float64)
    pred = out.astype(np.float64)
    sst = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum((pred - y) ** 2)) / sst if sst > 0 else 0.0
    return {"r2": r2, "max_abs_diff": float(np.max(np.abs(pred - expected))) if len(y) else 0.0}


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = den == 0
    cos = np.where(both_zero, 1.0, num / np.where(both_zero, 1.0, den))
    return np.asarray(cos)


# --------------------------------------------------------------------------- 3. gate


def gate(
    quantized: Sequence[Candidate],
    fp32: Candidate,
    kind: str,
    max_accuracy_drop: float,
    min_cosine: float,
    max_r2_drop: float = 0.01,
) -> None:
    """Set passed_gate and the reason on every candidate that built and ran."""
    for cand in quantized:
        if not cand.ok:
            continue
        if kind == "regression":
            drop = fp32.quality["r2"] - cand.quality["r2"]
            cand.passed_gate = drop <= max_r2_drop + GATE_EPS
            op = "<=" if cand.passed_gate else ">"
            cand.reason = f"R^2 drop {drop:.4f} {op} {max_r2_drop:.4f}"
        elif kind == "classification":
            if "accuracy" in cand.quality:
                drop = fp32.quality["accuracy"] - cand.quality["accuracy"]
                what = "accuracy drop"
            else:
                drop = 1.0 - cand.quality["agreement"]
                what = "disagreement with fp32"
            cand.passed_gate = drop <= max_accuracy_drop + GATE_EPS
            op = "<=" if cand.passed_gate else ">"
            cand.reason = f"{what} {drop:.3f} {op} {max_accuracy_drop:.3f}"
        else:
            cm = cand.quality["cosine_mean"]
            cand.passed_gate = cm >= min_cosine - GATE_EPS
            op = ">=" if cand.passed_gate else "<"
            cand.reason = (
                f"cosine mean {cm:.4f} {op} {min_cosine:.4f} (min {cand.quality['cosine_min']:.4f})"
            )


# --------------------------------------------------------------------------- 4. time


def time_side_by_side(
    timed: list[Candidate],
    sessions: Sessions,
    ref: Reference,
    repeats: int,
    budget_s: float,
) -> int:
    """Round-robin timing; the first candidate of each round rotates. Returns rounds run."""
    feeds1, feeds_n = ref.feeds1, ref.feeds_n
    b1: dict[str, list[int]] = {c.recipe: [] for c in timed}
    bn: dict[str, list[int]] = {c.recipe: [] for c in timed}
    for c in timed:  # warm-up: allocations, kernel selection, caches
        sess = sessions[c.recipe]
        for _ in range(WARMUP_RUNS):
            sess.run(None, feeds1)
            sess.run(None, feeds_n)
    rounds = 0
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        deadline = time.perf_counter() + budget_s
        perf = time.perf_counter_ns
        for r in range(max(repeats, MIN_TIMING_ROUNDS)):
            if r >= MIN_TIMING_ROUNDS and time.perf_counter() > deadline:
                break
            k = r % len(timed)
            for c in timed[k:] + timed[:k]:
                sess = sessions[c.recipe]
                t0 = perf()
                sess.run(None, feeds1)
                t1 = perf()
                sess.run(None, feeds_n)
                t2 = perf()
                b1[c.recipe].append(t1 - t0)
                bn[c.recipe].append(t2 - t1)
            rounds += 1
    finally:
        if gc_was_enabled:
            gc.enable()
    for c in timed:
        c.latency_ms = {
            "batch1_p50": _percentile_ms(b1[c.recipe], 50),
            "batch1_p90": _percentile_ms(b1[c.recipe], 90),
            "batchN_p50": _percentile_ms(bn[c.recipe], 50),
            "batchN_p90": _percentile_ms(bn[c.recipe], 90),
            "batchN_rows": float(ref.batch_n),
        }
    return rounds


def _percentile_ms(ns: list[int], q: float) -> float:
    return float(np.percentile(np.asarray(ns, dtype=np.float64), q)) / 1e6


# --------------------------------------------------------------------------- 5. choose


def _speedups(fp32: Candidate, c: Candidate) -> tuple[float, float]:
    s1 = fp32.latency_ms["batch1_p50"] / max(c.latency_ms["batch1_p50"], 1e-9)
    sn = fp32.latency_ms["batchN_p50"] / max(c.latency_ms["batchN_p50"], 1e-9)
    return s1, sn


def ruled_out(c: Candidate) -> str:
    """Why a candidate cannot be chosen whatever its speed (it failed, or failed the gate)."""
    if not c.ok:
        return f"{c.recipe}: {c.error}"
    if not c.passed_gate:
        return f"{c.recipe}: failed gate ({c.reason})"
    return ""


def choose(
    fp32: Candidate,
    candidates: list[Candidate],
    batch_n: int,
    min_speedup: float,
) -> tuple[Candidate, str]:
    """The rule in the module docstring; candidates[0] is fp32."""
    eligible: list[Candidate] = []
    losers: list[str] = []
    for c in candidates[1:]:
        out = ruled_out(c)
        if out:
            losers.append(out)
            continue
        s1, sn = _speedups(fp32, c)
        floor = 1.0 / min_speedup
        if (s1 >= min_speedup and sn >= floor) or (sn >= min_speedup and s1 >= floor):
            eligible.append(c)
        else:
            losers.append(
                f"{c.recipe}: not faster enough "
                f"({s1:.2f}x at batch 1, {sn:.2f}x at batch {batch_n})"
            )
    if not eligible:
        detail = "; ".join(losers) if losers else "no quantized candidate was built"
        return fp32, (
            f"fp32 kept: no quantized candidate passed the gate and was >= {min_speedup:.2f}x "
            f"faster than fp32 at batch 1 or {batch_n} without dropping below "
            f"{1.0 / min_speedup:.2f}x at the other ({detail})"
        )
    eligible.sort(
        key=lambda c: (c.latency_ms["batch1_p50"], c.latency_ms["batchN_p50"], c.size_bytes)
    )
    best = eligible[0]
    s1, sn = _speedups(fp32, best)
    size_ratio = best.size_bytes / max(fp32.size_bytes, 1)
    return best, (
        f"{best.recipe}: {s1:.2f}x faster at batch 1 than fp32 "
        f"({best.latency_ms['batch1_p50']:.3f} ms vs {fp32.latency_ms['batch1_p50']:.3f} ms), "
        f"{sn:.2f}x at batch {batch_n}, {best.reason}, size {size_ratio:.2f}x fp32"
    )
