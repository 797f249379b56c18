"""The optimizer's recipe search: quantize an fp32 ONNX graph several ways, measure, choose.

Runs inside the optimizer Lambda, so it imports onnx, onnxruntime and numpy only (never torch).

Steps (``optimize_model``):

1. ``quant_pre_process`` (shape inference + basic graph optimisation). Symbolic shape
   inference fails on some graphs (transformers); it is retried with
   ``skip_symbolic_shape=True``; if that fails too the raw graph is quantized and the
   manifest says so.
2. Candidates, each written to ``workdir``:
     - ``fp32``                          the training graph as delivered (the reference)
     - ``dynamic-int8-per-tensor``       ``quantize_dynamic``, one scale per weight tensor
     - ``dynamic-int8-per-channel``      ``quantize_dynamic``, one scale per output channel
     - ``static-qdq-int8-per-channel``   ``quantize_static`` (QDQ, MinMax over calibration.npz),
                                         only when calibration data is given
   Only MatMul/Gemm are quantized (plus Gather for text models), so the label head
   (ArgMax + Gather over a string initializer) is left alone. A candidate that fails to
   build, to load, to run, or that changes the graph's input/output names or types is
   recorded with ``error`` and is never chosen.
     - ``fused-dynamic-int8-per-channel`` transformer encoders only (``transformer`` names the
                                         model type, heads and width): ONNX Runtime's
                                         transformer fusions (Attention, BiasGelu, ...) on the
                                         fp32 graph, then dynamic int8 per channel, so that
                                         attention runs as one QAttention kernel
3. Quality on sample.npz (held-out test split): classification compares the argmax of
   "probabilities" with ``target`` (accuracy) and with fp32's argmax (agreement);
   embedding compares the first output (or "embedding") with fp32's row-wise by cosine.
   Scored in runs of BATCH_N rows: dynamic int8 takes one activation scale over the whole
   batch, so a row's result depends on its batch-mates; BATCH_N matches the timed batch.
4. Latency, all candidates in one process, interleaved round-robin (the starting candidate
   rotates every round) so that clock and thermal drift hit all of them alike: batch 1
   (first sample row) and batch N (min(32, n) rows); p50 and p90 in ms.
5. Gate: classification passes when ``fp32_accuracy - accuracy <= max_accuracy_drop``
   (without targets: ``1 - agreement <= max_accuracy_drop``); embedding passes when
   ``cosine_mean >= min_cosine``.
6. Choice (the rule): a quantized candidate is *eligible* when it passed the gate, ran
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
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from maas.core.contract import INPUT_PREFIX, TARGET_KEY
from maas.serving.ortsession import new_session

log = logging.getLogger(__name__)

FP32 = "fp32"
DYNAMIC_PER_TENSOR = "dynamic-int8-per-tensor"
DYNAMIC_PER_CHANNEL = "dynamic-int8-per-channel"
STATIC_QDQ_PER_CHANNEL = "static-qdq-int8-per-channel"
FUSED_DYNAMIC_PER_CHANNEL = "fused-dynamic-int8-per-channel"
# Transformer graphs ONNX Runtime's offline fusions (onnxruntime.transformers) know.
FUSABLE_MODEL_TYPES = ("bert",)

CLASSIFICATION_TASKS = ("classification", "text-classification")
EMBEDDING_TASKS = ("embedding",)
PROBABILITIES = "probabilities"
EMBEDDING = "embedding"

# Ops handed to the quantizer: weights-heavy matmuls; Gather too for embedding tables.
CLASSIFICATION_OP_TYPES = ("MatMul", "Gemm")
EMBEDDING_OP_TYPES = ("MatMul", "Gemm", "Gather")

BATCH_N = 32
EVAL_CHUNK_ROWS = BATCH_N  # rows per run when scoring: dynamic int8 scales span the batch
CALIBRATION_BATCH_ROWS = 64
CALIBRATION_MAX_ROWS = 1024
WARMUP_RUNS = 5
MIN_TIMING_ROUNDS = 5
GATE_EPS = 1e-9

_ORT_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


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
        }


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
            "optimize_s": round(self.total_s, 3),
            "onnxruntime": ort.__version__,
        }


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _finite(v: float, digits: int = 6) -> float | None:
    f = float(v)
    return round(f, digits) if math.isfinite(f) else None


# --------------------------------------------------------------------------- sessions


def _session(path: Path, threads: int | None) -> ort.InferenceSession:
    """The serving function's session (maas.serving.ortsession): candidates are timed as served."""
    return new_session(path, threads or 1)


def _interface(sess: ort.InferenceSession) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    return (
        [(i.name, i.type) for i in sess.get_inputs()],
        [(o.name, o.type) for o in sess.get_outputs()],
    )


def _feeds(sample: dict[str, np.ndarray], sess: ort.InferenceSession) -> dict[str, np.ndarray]:
    """{input name: array} from the "input__<name>" keys, cast to the graph's dtypes."""
    feeds: dict[str, np.ndarray] = {}
    for i in sess.get_inputs():
        key = INPUT_PREFIX + i.name
        if key not in sample:
            raise ValueError(f"sample has no {key!r} for model input {i.name!r}")
        arr = np.asarray(sample[key])
        dtype = _ORT_NUMPY.get(i.type)
        if dtype is not None and arr.dtype != dtype:
            arr = arr.astype(dtype)
        feeds[i.name] = np.ascontiguousarray(arr)
    rows = {a.shape[0] if a.ndim else 0 for a in feeds.values()}
    if len(rows) != 1 or 0 in rows:
        raise ValueError(f"sample inputs need one shared, non-zero row count; got {sorted(rows)}")
    return feeds


def _rows(feeds: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    return {k: v[start:stop] for k, v in feeds.items()}


def _n_rows(feeds: dict[str, np.ndarray]) -> int:
    return int(next(iter(feeds.values())).shape[0])


def _run_output(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], name: str) -> np.ndarray:
    n = _n_rows(feeds)
    parts = [
        np.asarray(sess.run([name], _rows(feeds, s, s + EVAL_CHUNK_ROWS))[0])
        for s in range(0, n, EVAL_CHUNK_ROWS)
    ]
    return np.concatenate(parts, axis=0)


def _smoke(sess: ort.InferenceSession, feeds1: dict[str, np.ndarray]) -> list[Any]:
    """One batch-1 run fetching every output (the label head included)."""
    return list(sess.run(None, feeds1))


# --------------------------------------------------------------------------- building


def _preprocess(fp32_path: Path, out: Path) -> tuple[Path, str]:
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


class _NpzReader:
    """CalibrationDataReader over calibration.npz, in batches of CALIBRATION_BATCH_ROWS."""

    def __init__(self, feeds: dict[str, np.ndarray]) -> None:
        self.feeds = _rows(feeds, 0, CALIBRATION_MAX_ROWS)
        self.n = _n_rows(self.feeds)
        self._it: Iterator[dict[str, np.ndarray]] = iter(())
        self.rewind()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for s in range(0, self.n, CALIBRATION_BATCH_ROWS):
            yield _rows(self.feeds, s, s + CALIBRATION_BATCH_ROWS)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._batches()


def _calibration_reader(feeds: dict[str, np.ndarray]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(_NpzReader, CalibrationDataReader):
        pass

    return Reader(feeds)


def _build_dynamic(
    src: Path,
    dst: Path,
    *,
    per_channel: bool,
    op_types: Sequence[str],
    extra_options: dict[str, Any] | None = None,
) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        op_types_to_quantize=list(op_types),
        per_channel=per_channel,
        weight_type=QuantType.QInt8,
        extra_options=extra_options,
    )


def _build_fused_dynamic(
    src: Path,
    dst: Path,
    *,
    transformer: dict[str, Any],
    op_types: Sequence[str],
    workdir: Path,
) -> str:
    """ONNX Runtime's transformer fusions on the fp32 graph, then dynamic int8 per channel.

    Python-level fusions only (opt_level 0): the session applies its own graph optimisations
    when it loads the file. SkipLayerNormalization stays unfused, as in serving sessions
    (maas.serving.ortsession says why). Returns the fused operator counts (the candidate's note);
    raises when attention did not fuse, since the candidate would then be
    dynamic-int8-per-channel again.
    """
    from onnx import TensorProto
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model as fuse

    model_type = str(transformer["model_type"])
    options = FusionOptions(model_type)
    options.enable_skip_layer_norm = False
    fused = fuse(
        str(src),
        model_type=model_type,
        num_heads=int(transformer.get("num_heads") or 0),
        hidden_size=int(transformer.get("hidden_size") or 0),
        optimization_options=options,
        opt_level=0,
        use_gpu=False,
    )
    stats = {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
    if not stats.get("Attention"):
        raise ValueError(f"attention did not fuse (fused: {stats or 'nothing'})")
    fused_path = workdir / "model.fused.onnx"
    fused.save_model_to_file(str(fused_path))
    # Shape inference cannot type the outputs of contrib ops (Attention, BiasGelu): the
    # tensors it leaves untyped are fp32 activations.
    _build_dynamic(
        fused_path,
        dst,
        per_channel=True,
        op_types=(*op_types, "Attention"),
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )
    return "fused " + ", ".join(f"{k} {v}" for k, v in sorted(stats.items()))


def _build_static(
    src: Path, dst: Path, *, calibration: dict[str, np.ndarray], op_types: Sequence[str]
) -> str:
    """QDQ, per-channel int8 weights; uint8 activations, falling back to int8. Returns a note."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    errors: list[str] = []
    for act in (QuantType.QUInt8, QuantType.QInt8):
        try:
            quantize_static(
                str(src),
                str(dst),
                _calibration_reader(calibration),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(op_types),
                per_channel=True,
                activation_type=act,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
            return f"activations {act.name}"
        except Exception as e:
            errors.append(f"{act.name}: {type(e).__name__}: {e}"[:300])
    raise RuntimeError("quantize_static failed: " + " | ".join(errors))


# --------------------------------------------------------------------------- quality


def _prob_name(outputs: list[tuple[str, str]]) -> str:
    names = [n for n, _ in outputs]
    if PROBABILITIES in names:
        return PROBABILITIES
    floats = [n for n, t in outputs if t in ("tensor(float)", "tensor(double)", "tensor(float16)")]
    if not floats:
        raise ValueError("classification model has no float output to score")
    return floats[0]


def _embedding_name(outputs: list[tuple[str, str]]) -> str:
    names = [n for n, _ in outputs]
    return EMBEDDING if EMBEDDING in names else names[0]


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = den == 0
    cos = np.where(both_zero, 1.0, num / np.where(both_zero, 1.0, den))
    return np.asarray(cos)


def _percentile_ms(ns: list[int], q: float) -> float:
    return float(np.percentile(np.asarray(ns, dtype=np.float64), q)) / 1e6


# --------------------------------------------------------------------------- main


def optimize_model(
    fp32_path: Path,
    sample: dict[str, np.ndarray],
    calibration: dict[str, np.ndarray] | None,
    workdir: Path,
    *,
    task: str = "classification",
    max_accuracy_drop: float = 0.01,
    min_cosine: float = 0.99,
    threads: int | None = None,
    timing_repeats: int = 200,
    timing_budget_s: float = 20.0,
    min_speedup: float = 1.05,
    op_types: Sequence[str] | None = None,
    transformer: dict[str, Any] | None = None,
) -> Selection:
    """Build the candidates, score and time them side by side, choose one (see module doc).

    ``timing_repeats`` is the number of interleaved rounds (each times every candidate once
    at batch 1 and once at batch N); rounds stop early once ``timing_budget_s`` is spent
    (never fewer than MIN_TIMING_ROUNDS). Raises only when the fp32 graph itself cannot be
    loaded or scored; every quantized failure is recorded on its Candidate.
    """
    t_start = time.perf_counter()
    if task in CLASSIFICATION_TASKS:
        kind = "classification"
    elif task in EMBEDDING_TASKS:
        kind = "embedding"
    else:
        raise ValueError(f"unknown task {task!r}")
    if op_types is None:
        # Text models keep most of their weights in an embedding table: Gather too.
        op_types = CLASSIFICATION_OP_TYPES if task == "classification" else EMBEDDING_OP_TYPES
    fp32_path = Path(fp32_path)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []

    # ---- fp32 reference
    fp32 = Candidate(recipe=FP32, path=fp32_path, size_bytes=fp32_path.stat().st_size)
    fp32_sess = _session(fp32_path, threads)
    interface = _interface(fp32_sess)
    feeds = _feeds(sample, fp32_sess)
    n = _n_rows(feeds)
    batch_n = min(BATCH_N, n)
    feeds1 = _rows(feeds, 0, 1)
    feeds_n = _rows(feeds, 0, batch_n)
    _smoke(fp32_sess, feeds1)
    cal_feeds: dict[str, np.ndarray] | None = None
    if calibration:
        try:
            cal_feeds = _feeds(calibration, fp32_sess)
        except ValueError as e:
            notes.append(f"calibration data unusable ({e})")

    targets: np.ndarray | None = None
    if kind == "classification":
        out_name = _prob_name(interface[1])
        if TARGET_KEY in sample:
            targets = np.asarray(sample[TARGET_KEY]).reshape(-1).astype(np.int64)
            if targets.shape[0] != n:
                raise ValueError(f"sample target has {targets.shape[0]} rows, inputs have {n}")
        else:
            notes.append("sample has no target: gate uses 1 - agreement with fp32")
    else:
        out_name = _embedding_name(interface[1])
    ref = _run_output(fp32_sess, feeds, out_name)
    ref_pred = ref.reshape(n, -1).argmax(axis=1) if kind == "classification" else None

    def score(out: np.ndarray) -> dict[str, float]:
        if kind == "classification":
            assert ref_pred is not None
            pred = out.reshape(n, -1).argmax(axis=1)
            q = {"agreement": float(np.mean(pred == ref_pred))}
            if targets is not None:
                q = {"accuracy": float(np.mean(pred == targets)), **q}
            return q
        cos = _cosine_rows(out, ref)
        return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}

    fp32.quality = score(ref)
    fp32.passed_gate = True
    fp32.reason = "reference"

    # ---- preprocess + build
    pre_path, preprocess = _preprocess(fp32_path, workdir / "model.pre.onnx")
    if not preprocess.startswith("quant_pre_process"):
        notes.append(preprocess)

    builders: list[tuple[str, Callable[[Path], str | None]]] = [
        (
            DYNAMIC_PER_TENSOR,
            lambda dst: _build_dynamic(pre_path, dst, per_channel=False, op_types=op_types),
        ),
        (
            DYNAMIC_PER_CHANNEL,
            lambda dst: _build_dynamic(pre_path, dst, per_channel=True, op_types=op_types),
        ),
    ]
    if cal_feeds is not None:
        cal = cal_feeds
        builders.append(
            (
                STATIC_QDQ_PER_CHANNEL,
                lambda dst: _build_static(pre_path, dst, calibration=cal, op_types=op_types),
            )
        )
    else:
        notes.append(f"skipped {STATIC_QDQ_PER_CHANNEL}: no calibration data")
    if transformer and transformer.get("model_type") in FUSABLE_MODEL_TYPES:
        arch = transformer
        builders.append(
            (
                FUSED_DYNAMIC_PER_CHANNEL,
                lambda dst: _build_fused_dynamic(
                    fp32_path, dst, transformer=arch, op_types=op_types, workdir=workdir
                ),
            )
        )

    candidates = [fp32]
    sessions: dict[str, ort.InferenceSession] = {FP32: fp32_sess}
    for recipe, build in builders:
        cand = Candidate(recipe=recipe, path=workdir / f"model.{recipe}.onnx")
        candidates.append(cand)
        t0 = time.perf_counter()
        stage = "build"
        try:
            build_note = build(cand.path)
            cand.build_s = time.perf_counter() - t0
            cand.size_bytes = cand.path.stat().st_size
            stage = "load"
            sess = _session(cand.path, threads)
            if _interface(sess) != interface:
                raise ValueError(
                    f"interface changed: {_interface(sess)} != {interface} (inputs, outputs)"
                )
            stage = "run"
            _smoke(sess, feeds1)
            cand.quality = score(_run_output(sess, feeds, out_name))
            sessions[recipe] = sess
            cand.note = build_note or ""
        except Exception as e:
            cand.build_s = cand.build_s or time.perf_counter() - t0
            cand.error = f"{stage}: {type(e).__name__}: {e}"[:1000]
            cand.reason = f"failed to {stage}"
            log.warning("candidate %s failed to %s: %s", recipe, stage, e)

    # ---- gate
    for cand in candidates[1:]:
        if not cand.ok:
            continue
        if kind == "classification":
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

    # ---- latency, interleaved
    timed = [c for c in candidates if c.recipe in sessions]
    rounds = _time_side_by_side(
        timed, sessions, feeds1, feeds_n, timing_repeats, timing_budget_s, batch_n
    )

    # ---- choice
    chosen, reason = _choose(fp32, candidates, batch_n, min_speedup)
    return Selection(
        chosen=chosen,
        candidates=candidates,
        fp32=fp32,
        reason=reason,
        task=task,
        gate={"min_cosine": min_cosine}
        if kind == "embedding"
        else {"max_accuracy_drop": max_accuracy_drop},
        preprocess=preprocess,
        timing={
            "threads": threads or 1,
            "batch_n": batch_n,
            "rounds": rounds,
            "warmup_runs": WARMUP_RUNS,
            "min_speedup": min_speedup,
            "sample_rows": n,
            "interleaved": True,
        },
        notes=notes,
        total_s=time.perf_counter() - t_start,
    )


def _time_side_by_side(
    timed: list[Candidate],
    sessions: dict[str, ort.InferenceSession],
    feeds1: dict[str, np.ndarray],
    feeds_n: dict[str, np.ndarray],
    repeats: int,
    budget_s: float,
    batch_n: int,
) -> int:
    """Round-robin timing; the first candidate of each round rotates. Returns rounds run."""
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
            "batchN_rows": float(batch_n),
        }
    return rounds


def _speedups(fp32: Candidate, c: Candidate) -> tuple[float, float]:
    s1 = fp32.latency_ms["batch1_p50"] / max(c.latency_ms["batch1_p50"], 1e-9)
    sn = fp32.latency_ms["batchN_p50"] / max(c.latency_ms["batchN_p50"], 1e-9)
    return s1, sn


def _choose(
    fp32: Candidate,
    candidates: list[Candidate],
    batch_n: int,
    min_speedup: float,
) -> tuple[Candidate, str]:
    """The rule in the module docstring; candidates[0] is fp32."""
    eligible: list[Candidate] = []
    losers: list[str] = []
    for c in candidates[1:]:
        if not c.ok:
            losers.append(f"{c.recipe}: {c.error}")
            continue
        if not c.passed_gate:
            losers.append(f"{c.recipe}: failed gate ({c.reason})")
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
