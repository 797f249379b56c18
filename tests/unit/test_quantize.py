"""The optimizer's recipe search (maas.optimize.quantize) and its recipes (maas.optimize.recipes)
on a small MLP trained on sklearn digits.

The graph is built here with onnx.helper the way training exports it: standardisation inside
the graph, Gemm/MatMul layers, Softmax -> "probabilities", ArgMax + Gather over a string
initializer -> "label".
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from maas.optimize import quantize as q
from maas.optimize import recipes as r
from maas.optimize.feeds import load_npz
from maas.optimize.quantize import Candidate, optimize_model
from onnx import TensorProto, helper, numpy_helper

CLASSES = [f"digit-{i}" for i in range(10)]
REPEATS = 20  # timing rounds in tests: enough to exercise the code, quick


@pytest.fixture(scope="module")
def mlp() -> dict:
    sklearn = pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    assert sklearn
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    mean = x_tr.mean(0)
    std = x_tr.std(0)
    # Constant-in-training pixels get std 1, as training does: dividing by a tiny epsilon turns
    # a test-time non-zero into a 1e6 activation, which wrecks int8 activation scales.
    std = np.where(std < 1e-3, 1.0, std)
    clf = MLPClassifier(hidden_layer_sizes=(128, 128), max_iter=40, random_state=0)
    # One BLAS thread: on a few cores an oversubscribed BLAS makes this fit 10x slower.
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: 40 epochs is plenty here
        clf.fit((x_tr - mean) / std, y_tr)
    return {
        "W": [w.astype(np.float32) for w in clf.coefs_],
        "B": [b.astype(np.float32) for b in clf.intercepts_],
        "mean": mean.astype(np.float32),
        "std": std.astype(np.float32),
        "sample": {"input__input": x_te, "target": y_te.astype(np.int64)},
        "calibration": {"input__input": x_tr[:256]},
    }


def build_graph(mlp: dict, *, use_gemm: bool = True, embedding: bool = False) -> onnx.ModelProto:
    """64 -> 128 -> 128 -> 10 classifier (or the 128-d hidden layer as "embedding")."""
    inits = [
        numpy_helper.from_array(mlp["mean"], "mean"),
        numpy_helper.from_array(mlp["std"], "std"),
    ]
    nodes = [
        helper.make_node("Sub", ["input", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["h0"]),
    ]
    layers = list(zip(mlp["W"], mlp["B"], strict=True))
    if embedding:
        layers = layers[:-1]
    for i, (w, b) in enumerate(layers):
        last = i == len(layers) - 1
        z = "embedding" if (embedding and last) else f"z{i}"
        if use_gemm:
            inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), f"W{i}"))
            inits.append(numpy_helper.from_array(b, f"B{i}"))
            nodes.append(helper.make_node("Gemm", [f"h{i}", f"W{i}", f"B{i}"], [z], transB=1))
        else:
            inits.append(numpy_helper.from_array(w, f"W{i}"))
            inits.append(numpy_helper.from_array(b, f"B{i}"))
            nodes.append(helper.make_node("MatMul", [f"h{i}", f"W{i}"], [f"m{i}"]))
            nodes.append(helper.make_node("Add", [f"m{i}", f"B{i}"], [z]))
        if not last:
            nodes.append(helper.make_node("Relu", [z], [f"h{i + 1}"]))
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])]
    if embedding:
        outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 128])]
    else:
        inits.append(numpy_helper.from_array(np.array(CLASSES, dtype=object), "classes"))
        nodes += [
            helper.make_node("Softmax", [f"z{len(layers) - 1}"], ["probabilities"], axis=-1),
            helper.make_node("ArgMax", ["probabilities"], ["label_index"], axis=1, keepdims=0),
            helper.make_node("Gather", ["classes", "label_index"], ["label"], axis=0),
        ]
        outputs = [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10]),
            helper.make_tensor_value_info("label", TensorProto.STRING, ["batch"]),
        ]
    graph = helper.make_graph(nodes, "mlp", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_model(mlp: dict, path: Path, **kw) -> Path:
    onnx.save(build_graph(mlp, **kw), str(path))
    return path


@pytest.fixture(scope="module")
def selection(mlp, tmp_path_factory):
    work = tmp_path_factory.mktemp("opt")
    fp32 = write_model(mlp, work / "model.onnx")
    return optimize_model(
        fp32, mlp["sample"], mlp["calibration"], work / "candidates", timing_repeats=REPEATS
    )


def by_recipe(sel) -> dict[str, Candidate]:
    return {c.recipe: c for c in sel.candidates}


# --------------------------------------------------------------------------- full run


def test_every_candidate_is_built_scored_and_timed(selection):
    cands = by_recipe(selection)
    assert list(cands) == [
        q.FP32,
        r.DYNAMIC_PER_TENSOR,
        r.DYNAMIC_PER_CHANNEL,
        r.STATIC_QDQ_PER_CHANNEL,
    ]
    assert selection.fp32 is cands[q.FP32]
    assert selection.preprocess.startswith("quant_pre_process")
    fp32 = selection.fp32
    assert fp32.quality["accuracy"] > 0.9
    assert fp32.quality["agreement"] == 1.0
    for c in selection.candidates:
        assert c.error is None, c.error
        assert c.path.exists()
        assert c.size_bytes == c.path.stat().st_size
        assert set(c.quality) == {"accuracy", "agreement"}
        lat = c.latency_ms
        assert 0 < lat["batch1_p50"] <= lat["batch1_p90"]
        assert 0 < lat["batchN_p50"] <= lat["batchN_p90"]
        assert c.reason
    for c in selection.candidates[1:]:
        # ~26k weights: int8 must be well under half of fp32.
        assert c.size_bytes < 0.5 * fp32.size_bytes, (c.recipe, c.size_bytes, fp32.size_bytes)
        # int8 on this MLP keeps essentially every prediction.
        assert c.quality["agreement"] >= 0.97
    assert selection.timing["rounds"] == REPEATS
    assert selection.timing["batch_n"] == 32


def test_choice_passes_gate_and_follows_the_rule(selection):
    chosen = selection.chosen
    assert chosen in selection.candidates
    assert chosen.passed_gate and chosen.error is None
    assert selection.reason.startswith(chosen.recipe if chosen.recipe != q.FP32 else "fp32 kept")
    if chosen.recipe != q.FP32:
        s1, sn = q._speedups(selection.fp32, chosen)
        assert max(s1, sn) >= 1.05 and min(s1, sn) >= 1 / 1.05
        assert "faster at batch 1" in selection.reason
    else:
        # Every quantized candidate is named with why it lost.
        for c in selection.candidates[1:]:
            assert c.recipe in selection.reason


def test_manifest_is_json(selection):
    manifest = selection.to_manifest()
    text = json.dumps(manifest, allow_nan=False)
    back = json.loads(text)
    assert back["recipe"] == selection.chosen.recipe
    assert back["reason"] == selection.reason
    assert [c["recipe"] for c in back["candidates"]] == [c.recipe for c in selection.candidates]
    for c in back["candidates"]:
        assert {"size_bytes", "quality", "latency_ms", "passed_gate", "reason", "error"} <= set(c)
    assert back["gate"] == {"max_accuracy_drop": 0.01}
    assert back["timing"]["interleaved"] is True


def test_quantized_graphs_keep_interface_and_string_labels(selection, mlp):
    x = mlp["sample"]["input__input"]
    fp32 = ort.InferenceSession(str(selection.fp32.path))
    names = ([i.name for i in fp32.get_inputs()], [o.name for o in fp32.get_outputs()])
    for c in selection.candidates:
        sess = ort.InferenceSession(str(c.path))
        assert ([i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()]) == names
        assert sess.get_outputs()[1].type == "tensor(string)"
        probs, labels = sess.run(None, {"input": x})
        assert labels.dtype == object and labels.shape == (len(x),)
        assert list(labels) == [CLASSES[i] for i in probs.argmax(1)]


def test_quantized_graphs_are_really_quantized(selection):
    ops = {
        c.recipe: Counter(n.op_type for n in onnx.load(str(c.path)).graph.node)
        for c in selection.candidates
    }
    assert "MatMulInteger" in ops[r.DYNAMIC_PER_TENSOR]
    assert "MatMulInteger" in ops[r.DYNAMIC_PER_CHANNEL]
    assert ops[r.STATIC_QDQ_PER_CHANNEL]["DequantizeLinear"] >= 3
    for recipe, counter in ops.items():
        # The label head is untouched: still one ArgMax and one Gather over strings.
        assert counter["ArgMax"] == 1 and counter["Gather"] == 1, recipe
    static = onnx.load(str(by_recipe(selection)[r.STATIC_QDQ_PER_CHANNEL].path))
    classes = [i for i in static.graph.initializer if i.name == "classes"]
    assert classes and classes[0].data_type == TensorProto.STRING


# --------------------------------------------------------------------------- fp32 kept


def test_impossible_gate_keeps_fp32(mlp, tmp_path):
    fp32 = write_model(mlp, tmp_path / "model.onnx")
    sel = optimize_model(
        fp32, mlp["sample"], None, tmp_path / "w", max_accuracy_drop=-1, timing_repeats=REPEATS
    )
    assert sel.chosen is sel.fp32
    assert sel.reason.startswith("fp32 kept")
    assert "failed gate" in sel.reason
    for c in sel.candidates[1:]:
        assert c.error is None
        assert not c.passed_gate
        assert "> -1.000" in c.reason


def test_unreachable_speedup_keeps_fp32(mlp, tmp_path):
    fp32 = write_model(mlp, tmp_path / "model.onnx")
    sel = optimize_model(
        fp32, mlp["sample"], None, tmp_path / "w", min_speedup=1e6, timing_repeats=REPEATS
    )
    assert sel.chosen is sel.fp32
    assert "not faster enough" in sel.reason and ">= 1000000.00x faster" in sel.reason
    assert all(c.passed_gate for c in sel.candidates)


def test_no_calibration_skips_static(mlp, tmp_path):
    fp32 = write_model(mlp, tmp_path / "model.onnx", use_gemm=False)  # MatMul + Add export
    sel = optimize_model(fp32, mlp["sample"], None, tmp_path / "w", timing_repeats=REPEATS)
    assert [c.recipe for c in sel.candidates] == [
        q.FP32,
        r.DYNAMIC_PER_TENSOR,
        r.DYNAMIC_PER_CHANNEL,
    ]
    assert any(r.STATIC_QDQ_PER_CHANNEL in n for n in sel.notes)
    assert all(c.error is None for c in sel.candidates)
    assert sel.chosen.passed_gate


def test_gate_rejects_int8_wrecked_by_an_activation_outlier(mlp, tmp_path):
    """A pixel constant in training, standardised with a tiny epsilon, is 1e6 at test time.

    Dynamic int8 computes one activation scale over the whole batch, so one such row zeroes
    every other row's inputs; the gate must catch it and keep a candidate that still works.
    """
    constant = np.flatnonzero(mlp["std"] == 1.0)
    assert constant.size
    broken = {**mlp, "std": np.where(mlp["std"] == 1.0, 1e-6, mlp["std"]).astype(np.float32)}
    x = mlp["sample"]["input__input"].copy()
    x[::32, constant[0]] = mlp["mean"][constant[0]] + 1.0  # one outlier row per 32-row batch
    sample = {"input__input": x, "target": mlp["sample"]["target"]}
    fp32 = write_model(broken, tmp_path / "model.onnx")
    sel = optimize_model(fp32, sample, None, tmp_path / "w", timing_repeats=REPEATS)
    assert sel.fp32.quality["accuracy"] > 0.8
    for recipe in (r.DYNAMIC_PER_TENSOR, r.DYNAMIC_PER_CHANNEL):
        cand = by_recipe(sel)[recipe]
        assert cand.error is None and not cand.passed_gate, cand.quality
        assert cand.quality["accuracy"] < 0.5
    assert sel.chosen is sel.fp32 and "failed gate" in sel.reason


# --------------------------------------------------------------------------- failures


def test_candidate_that_fails_to_build_is_recorded_not_chosen(mlp, tmp_path, monkeypatch):
    real = r._build_dynamic

    def flaky(src, dst, *, per_channel, op_types):
        if not per_channel:
            raise RuntimeError("boom")
        return real(src, dst, per_channel=per_channel, op_types=op_types)

    monkeypatch.setattr(r, "_build_dynamic", flaky)
    fp32 = write_model(mlp, tmp_path / "model.onnx")
    sel = optimize_model(fp32, mlp["sample"], None, tmp_path / "w", timing_repeats=REPEATS)
    bad = by_recipe(sel)[r.DYNAMIC_PER_TENSOR]
    assert bad.error and "boom" in bad.error and bad.error.startswith("build")
    assert not bad.passed_gate and bad.latency_ms == {}
    assert sel.chosen is not bad
    assert by_recipe(sel)[r.DYNAMIC_PER_CHANNEL].error is None
    json.dumps(sel.to_manifest(), allow_nan=False)


def test_candidate_that_changes_the_interface_is_rejected(mlp, tmp_path, monkeypatch):
    def renaming(src, dst, *, per_channel, op_types):
        m = onnx.load(str(src))
        m.graph.output[1].name = "renamed"
        for n in m.graph.node:
            n.output[:] = ["renamed" if o == "label" else o for o in n.output]
        onnx.save(m, str(dst))

    monkeypatch.setattr(r, "_build_dynamic", renaming)
    fp32 = write_model(mlp, tmp_path / "model.onnx")
    sel = optimize_model(fp32, mlp["sample"], None, tmp_path / "w", timing_repeats=REPEATS)
    for c in sel.candidates[1:]:
        assert c.error and "interface changed" in c.error
    assert sel.chosen is sel.fp32


def test_preprocess_retries_without_symbolic_shapes(mlp, tmp_path, monkeypatch):
    from onnxruntime.quantization import shape_inference

    real = shape_inference.quant_pre_process
    calls: list[bool] = []

    def picky(src, dst, *, skip_symbolic_shape=False, **kw):
        calls.append(skip_symbolic_shape)
        if not skip_symbolic_shape:
            raise RuntimeError("symbolic shape inference failed")
        return real(src, dst, skip_symbolic_shape=True, **kw)

    monkeypatch.setattr(shape_inference, "quant_pre_process", picky)
    fp32 = write_model(mlp, tmp_path / "model.onnx")
    sel = optimize_model(fp32, mlp["sample"], None, tmp_path / "w", timing_repeats=REPEATS)
    assert calls == [False, True]
    assert sel.preprocess == "quant_pre_process (skip_symbolic_shape)"
    assert all(c.error is None for c in sel.candidates)


def test_preprocess_failure_quantizes_raw_graph(mlp, tmp_path, monkeypatch):
    from onnxruntime.quantization import shape_inference

    def broken(*a, **kw):
        raise RuntimeError("nope")

    monkeypatch.setattr(shape_inference, "quant_pre_process", broken)
    fp32 = write_model(mlp, tmp_path / "model.onnx")
    sel = optimize_model(
        fp32, mlp["sample"], mlp["calibration"], tmp_path / "w", timing_repeats=REPEATS
    )
    assert sel.preprocess.startswith("none: quant_pre_process failed")
    assert "nope" in sel.preprocess and sel.preprocess in sel.notes
    assert len(sel.candidates) == 4
    assert all(c.error is None for c in sel.candidates), [c.error for c in sel.candidates]


def test_bad_inputs_raise(mlp, tmp_path):
    fp32 = write_model(mlp, tmp_path / "model.onnx")
    with pytest.raises(ValueError, match="input__input"):
        optimize_model(fp32, {"target": mlp["sample"]["target"]}, None, tmp_path / "w")
    with pytest.raises(ValueError, match="unknown task"):
        optimize_model(fp32, mlp["sample"], None, tmp_path / "w", task="forecasting")
    # Calibration data that does not fit the graph only costs the static candidate.
    sel = optimize_model(
        fp32, mlp["sample"], {"input__other": np.ones((4, 64))}, tmp_path / "w", timing_repeats=5
    )
    assert r.STATIC_QDQ_PER_CHANNEL not in by_recipe(sel)
    assert any("calibration data unusable" in n for n in sel.notes)


def test_sample_without_targets_gates_on_agreement(mlp, tmp_path):
    fp32 = write_model(mlp, tmp_path / "model.onnx")
    sample = {"input__input": mlp["sample"]["input__input"].astype(np.float64)}  # cast too
    sel = optimize_model(fp32, sample, None, tmp_path / "w", timing_repeats=REPEATS)
    assert set(sel.fp32.quality) == {"agreement"}
    assert any("no target" in n for n in sel.notes)
    for c in sel.candidates[1:]:
        assert "disagreement with fp32" in c.reason


# --------------------------------------------------------------------------- embedding


def test_embedding_task_gates_on_cosine(mlp, tmp_path):
    fp32 = write_model(mlp, tmp_path / "model.onnx", embedding=True)
    sample = {"input__input": mlp["sample"]["input__input"]}
    sel = optimize_model(
        fp32,
        sample,
        mlp["calibration"],
        tmp_path / "w",
        task="embedding",
        timing_repeats=REPEATS,
    )
    assert len(sel.candidates) == 4
    assert sel.fp32.quality["cosine_mean"] == pytest.approx(1.0)
    for c in sel.candidates[1:]:
        assert c.error is None, c.error
        assert set(c.quality) == {"cosine_mean", "cosine_min"}
        assert c.quality["cosine_min"] <= c.quality["cosine_mean"] <= 1.0 + 1e-9
        assert "cosine mean" in c.reason
    assert by_recipe(sel)[r.DYNAMIC_PER_CHANNEL].quality["cosine_mean"] > 0.99
    assert sel.to_manifest()["gate"]["min_cosine"] == 0.99

    strict = optimize_model(
        fp32,
        sample,
        None,
        tmp_path / "w2",
        task="embedding",
        min_cosine=1.01,
        timing_repeats=REPEATS,
    )
    assert strict.chosen is strict.fp32 and "failed gate" in strict.reason


# --------------------------------------------------------------------------- the rule


def _cand(recipe, b1, bn, *, passed=True, error=None, size=100):
    return Candidate(
        recipe=recipe,
        path=Path(f"{recipe}.onnx"),
        size_bytes=size,
        quality={"accuracy": 0.9},
        latency_ms={"batch1_p50": b1, "batchN_p50": bn},
        passed_gate=passed,
        reason="accuracy drop 0.000 <= 0.010",
        error=error,
    )


def test_choose_rule():
    fp32 = _cand("fp32", 1.0, 10.0, size=400)

    def choose(*cands):
        return q.choose(fp32, [fp32, *cands], 32, 1.05)

    # Clear batch-1 win.
    chosen, reason = choose(_cand("a", 0.5, 10.0))
    assert chosen.recipe == "a" and reason.startswith("a: 2.00x faster at batch 1")
    # Within noise at both sizes: fp32.
    chosen, reason = choose(_cand("a", 0.97, 9.7))
    assert chosen is fp32 and "not faster enough" in reason
    # Wins at batch N, on par at batch 1: eligible.
    assert choose(_cand("a", 1.02, 5.0))[0].recipe == "a"
    # Wins at batch 1 but clearly loses at batch N: not eligible.
    assert choose(_cand("a", 0.5, 12.0))[0] is fp32
    # Fastest at batch 1 among eligible wins; failed gate and errors never chosen.
    chosen, _ = choose(
        _cand("slow", 0.8, 8.0),
        _cand("fast", 0.6, 9.0),
        _cand("faster-but-bad", 0.3, 3.0, passed=False),
        _cand("broken", 0.1, 1.0, passed=False, error="build: boom"),
    )
    assert chosen.recipe == "fast"
    # Tie at batch 1 goes to batch N, then to size.
    assert choose(_cand("x", 0.6, 9.0), _cand("y", 0.6, 8.0))[0].recipe == "y"
    assert choose(_cand("x", 0.6, 8.0, size=90), _cand("y", 0.6, 8.0, size=80))[0].recipe == "y"
    # Nothing built.
    chosen, reason = choose()
    assert chosen is fp32 and "no quantized candidate was built" in reason


# --------------------------------------------------------------------------- the registry

PAD = 1024  # width of the padding branch in padded_graph


def padded_graph(mlp: dict) -> onnx.ModelProto:
    """The classifier plus a wide branch multiplied by zero: the same outputs, far more work."""
    model = build_graph(mlp)
    rng = np.random.default_rng(0)
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(rng.standard_normal((64, PAD)).astype(np.float32), "pad_w0"),
            numpy_helper.from_array(rng.standard_normal((PAD, PAD)).astype(np.float32), "pad_w1"),
            numpy_helper.from_array(np.zeros((1,), np.float32), "pad_zero"),
        ]
    )
    logits = f"z{len(mlp['W']) - 1}"
    padding = [
        helper.make_node("MatMul", ["h0", "pad_w0"], ["pad0"]),
        helper.make_node("MatMul", ["pad0", "pad_w1"], ["pad1"]),
        helper.make_node("ReduceMean", ["pad1"], ["pad2"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["pad2", "pad_zero"], ["pad3"]),
        helper.make_node("Add", [logits, "pad3"], ["padded_logits"]),
    ]
    nodes = list(model.graph.node)
    softmax = next(i for i, n in enumerate(nodes) if n.op_type == "Softmax")
    nodes[softmax].input[0] = "padded_logits"
    del model.graph.node[:]
    model.graph.node.extend(nodes[:softmax] + padding + nodes[softmax:])
    onnx.checker.check_model(model)
    return model


def test_registered_recipe_is_built_scored_gated_timed_and_chosen(mlp, tmp_path, monkeypatch):
    # GIVEN a graph padded with work its outputs never see, and two recipes registered in the
    # one registry: one that strips the padding (by writing the unpadded graph), one that
    # never applies
    built: list[r.RecipeInput] = []

    def build_unpadded(inp: r.RecipeInput, dst: Path) -> str:
        built.append(inp)
        write_model(mlp, dst)
        return "padding stripped"

    unpadded = r.Recipe(
        "test-unpadded", build_unpadded, applies=lambda i: i.task == "classification"
    )
    never = r.Recipe("test-never", build_unpadded, applies=lambda i: False, skipped="not here")
    monkeypatch.setattr(r, "RECIPES", (*r.RECIPES, unpadded, never))
    fp32 = tmp_path / "model.onnx"
    onnx.save(padded_graph(mlp), str(fp32))
    # WHEN the optimizer runs exactly as the service calls it
    sel = optimize_model(fp32, mlp["sample"], None, tmp_path / "w", timing_repeats=REPEATS)
    # THEN the recipe was built once, from the search's input, after the built-in ones
    assert [c.recipe for c in sel.candidates] == [
        q.FP32,
        r.DYNAMIC_PER_TENSOR,
        r.DYNAMIC_PER_CHANNEL,
        "test-unpadded",
    ]
    assert len(built) == 1 and built[0].fp32 == fp32 and built[0].task == "classification"
    assert (
        built[0].graph.name == "model.pre.onnx" and built[0].op_types == r.CLASSIFICATION_OP_TYPES
    )
    assert "skipped test-never: not here" in sel.notes
    cand = by_recipe(sel)["test-unpadded"]
    assert cand.error is None, cand.error
    assert cand.path.name == "model.test-unpadded.onnx" and cand.note == "padding stripped"
    assert cand.size_bytes == cand.path.stat().st_size < 0.1 * sel.fp32.size_bytes
    # AND scored and gated like every candidate (the padding adds exactly zero)
    assert cand.quality == {"accuracy": sel.fp32.quality["accuracy"], "agreement": 1.0}
    assert cand.passed_gate and cand.reason == "accuracy drop 0.000 <= 0.010"
    # AND timed side by side with the others
    assert 0 < cand.latency_ms["batch1_p50"] <= cand.latency_ms["batch1_p90"]
    assert 0 < cand.latency_ms["batchN_p50"] <= cand.latency_ms["batchN_p90"]
    # AND listed in the manifest
    entry = next(c for c in sel.to_manifest()["candidates"] if c["recipe"] == "test-unpadded")
    assert entry["file"] == cand.path.name and entry["note"] == "padding stripped"
    assert entry["passed_gate"] is True and entry["error"] is None
    # AND chosen under the same rule: clearly faster at both batch sizes, the fastest at batch 1
    s1, sn = q._speedups(sel.fp32, cand)
    assert s1 >= 1.05 and sn >= 1.05, (s1, sn)
    assert sel.chosen is cand and sel.reason.startswith("test-unpadded: ")
    assert sel.to_manifest()["recipe"] == "test-unpadded"


def test_builtin_recipes_are_registered_once_in_order():
    names = [recipe.name for recipe in r.RECIPES]
    assert names == [
        r.DYNAMIC_PER_TENSOR,
        r.DYNAMIC_PER_CHANNEL,
        r.STATIC_QDQ_PER_CHANNEL,
        r.FUSED_DYNAMIC_PER_CHANNEL,
        r.INT4_BLOCK32,
        r.INT4_BLOCK128,
        r.INT4_BLOCK32_ACC4,
        r.INT4_BLOCK32_HEAD_INT8,
    ]
    assert len(set(names)) == len(names) and q.FP32 not in names


def test_recipes_apply_by_calibration_and_transformer(tmp_path):
    plain = r.RecipeInput(
        fp32=tmp_path / "model.onnx",
        graph=tmp_path / "model.pre.onnx",
        workdir=tmp_path,
        task="embedding",
        op_types=r.EMBEDDING_OP_TYPES,
        calibration=None,
        transformer=None,
    )

    def applicable(inp: r.RecipeInput) -> tuple[list[str], list[str]]:
        notes: list[str] = []
        return [x.name for x in q.applicable(r.RECIPES, inp, notes)], notes

    assert applicable(plain) == (
        [r.DYNAMIC_PER_TENSOR, r.DYNAMIC_PER_CHANNEL],
        [f"skipped {r.STATIC_QDQ_PER_CHANNEL}: no calibration data"],
    )
    full = replace(
        plain, calibration={"input": np.ones((2, 64))}, transformer={"model_type": "bert"}
    )
    weight_only = [r.INT4_BLOCK32, r.INT4_BLOCK128, r.INT4_BLOCK32_ACC4, r.INT4_BLOCK32_HEAD_INT8]
    assert applicable(full) == (
        [recipe.name for recipe in r.RECIPES if recipe.name not in weight_only],
        [],
    )
    # A causal LM gets dynamic int8 per channel and the 4-bit weight-only candidates.
    lm = replace(plain, task=r.TEXT_GENERATION)
    assert applicable(lm) == (
        [r.DYNAMIC_PER_CHANNEL, *weight_only],
        [f"skipped {r.STATIC_QDQ_PER_CHANNEL}: no calibration data"],
    )
    # A transformer whose graph the offline fusions do not know gets no fused candidate.
    other = replace(full, transformer={"model_type": "gpt2"})
    assert r.FUSED_DYNAMIC_PER_CHANNEL not in applicable(other)[0]


# --------------------------------------------------------------------------- misc


def test_load_npz_roundtrip(tmp_path):
    p = tmp_path / "s.npz"
    np.savez(p, input__input=np.ones((3, 2), np.float32), target=np.arange(3))
    d = load_npz(p)
    assert set(d) == {"input__input", "target"} and d["target"].tolist() == [0, 1, 2]


# --------------------------------------------------------------------------- compression bases


def narrow(mlp: dict, width: int) -> dict:
    """The same MLP with each hidden layer cut to its first `width` units (a crude student)."""
    w0, w1, w2 = mlp["W"]
    b0, b1, b2 = mlp["B"]
    return {
        **mlp,
        "W": [w0[:, :width], w1[:width, :width], w2[:width]],
        "B": [b0[:width], b1[:width], b2],
    }


def slowed(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same function with dead weight: a large MatMul branch multiplied by 0 and added to the
    logits, so that a student without it is faster at identical outputs."""
    g = model.graph
    softmax = next(n for n in g.node if n.op_type == "Softmax")
    logits = softmax.input[0]
    rng = np.random.default_rng(0)
    g.initializer.extend(
        [
            numpy_helper.from_array(rng.standard_normal((64, 1536)).astype(np.float32), "Wd0"),
            numpy_helper.from_array(rng.standard_normal((1536, 1536)).astype(np.float32), "Wd1"),
            numpy_helper.from_array(np.zeros((1,), np.float32), "zero"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        ]
    )
    dead = [
        helper.make_node("MatMul", ["input", "Wd0"], ["d0"]),
        helper.make_node("Relu", ["d0"], ["d1"]),
        helper.make_node("MatMul", ["d1", "Wd1"], ["d2"]),
        helper.make_node("ReduceSum", ["d2", "axis1"], ["d3"], keepdims=1),
        helper.make_node("Mul", ["d3", "zero"], ["d4"]),
        helper.make_node("Add", [logits, "d4"], ["logits_slow"]),
    ]
    position = list(g.node).index(softmax)
    for i, node in enumerate(dead):
        g.node.insert(position + i, node)
    softmax.input[0] = "logits_slow"
    onnx.checker.check_model(model)
    return model


def test_compression_candidate_that_passes_the_gate_and_is_fastest_is_served(mlp, tmp_path):
    # GIVEN an fp32 model carrying dead weight, and a student with the same outputs without it
    fp32 = tmp_path / "model.onnx"
    onnx.save(slowed(build_graph(mlp)), str(fp32))
    student = write_model(mlp, tmp_path / "student.onnx")
    base = q.Base("lean", student, "the dead branch removed")
    # WHEN the search runs with it as a base
    sel = optimize_model(
        fp32, mlp["sample"], mlp["calibration"], tmp_path / "w", timing_repeats=REPEATS,
        bases=[base],
    )  # fmt: skip
    cands = by_recipe(sel)
    # THEN the student and every recipe on it are candidates, scored against the unpruned model
    on_base = [c for c in sel.candidates if c.base == "lean"]
    assert [c.recipe for c in on_base][:2] == ["lean", "lean+dynamic-int8-per-tensor"]
    assert "lean+static-qdq-int8-per-channel" in cands
    assert cands["lean"].quality["agreement"] == 1.0 and cands["lean"].passed_gate
    assert all(c.latency_ms["batch1_p50"] > 0 for c in on_base if c.ok)
    # AND the served one follows the rule: the fastest within the gate, and it is a student
    assert sel.chosen.base == "lean" and sel.chosen.passed_gate
    eligible = [c for c in sel.candidates[1:] if c.ok and c.passed_gate]
    assert sel.chosen.latency_ms["batch1_p50"] == min(
        c.latency_ms["batch1_p50"] for c in eligible if q._speedups(sel.fp32, c)[0] >= 1.05
    )
    doc = json.loads(json.dumps(sel.to_manifest()))
    assert doc["compression"] == [
        {"name": "lean", "how": "the dead branch removed", "size_bytes": student.stat().st_size}
    ]
    assert {c["base"] for c in doc["candidates"]} == {"fp32", "lean"}


def test_failing_compression_candidate_is_never_served(mlp, tmp_path):
    # GIVEN a student far too small to keep the model's accuracy (4 hidden units), and faster
    fp32 = write_model(mlp, tmp_path / "model.onnx")
    tiny = write_model(narrow(mlp, 4), tmp_path / "tiny.onnx")
    sel = optimize_model(
        fp32, mlp["sample"], None, tmp_path / "w", timing_repeats=REPEATS,
        bases=[q.Base("hidden-4", tiny)],
    )  # fmt: skip
    cands = by_recipe(sel)
    # THEN it and its quantized forms fail the gate against the unpruned fp32 model
    for name in ("hidden-4", "hidden-4+dynamic-int8-per-channel"):
        assert cands[name].ok and not cands[name].passed_gate
        assert "accuracy drop" in cands[name].reason
    assert cands["hidden-4"].latency_ms["batch1_p50"] > 0  # timed beside the others all the same
    # AND what is served is fp32 or a quantized form of it, never the student
    assert sel.chosen.base == q.FP32
    assert "hidden-4: failed gate" in sel.reason or sel.chosen.recipe != q.FP32


def test_compression_candidate_with_another_interface_is_recorded_not_chosen(mlp, tmp_path):
    fp32 = write_model(mlp, tmp_path / "model.onnx")
    other = build_graph(mlp)
    other.graph.input[0].name = "features"
    for node in other.graph.node:
        node.input[:] = ["features" if i == "input" else i for i in node.input]
    odd = tmp_path / "odd.onnx"
    onnx.save(other, str(odd))
    sel = optimize_model(
        fp32, mlp["sample"], None, tmp_path / "w", timing_repeats=REPEATS,
        bases=[q.Base("odd", odd)],
    )  # fmt: skip
    (cand,) = [c for c in sel.candidates if c.base == "odd"]  # nothing is built on it
    assert cand.error and "interface" in cand.error and sel.chosen is not cand


def test_compressed_json_entries_become_bases_and_bad_ones_notes(mlp, tmp_path):
    from maas.core.contract import COMPRESSED_DIR, COMPRESSED_FILE
    from maas.optimize.service import compression_bases

    (tmp_path / COMPRESSED_DIR).mkdir()
    write_model(narrow(mlp, 64), tmp_path / COMPRESSED_DIR / "hidden-64.onnx")
    entries = [
        {"name": "hidden-64", "file": f"{COMPRESSED_DIR}/hidden-64.onnx", "how": "narrower"},
        {"name": "gone", "file": f"{COMPRESSED_DIR}/gone.onnx"},
        {"name": "escape", "file": "model.onnx"},
        {"name": "../x", "file": f"{COMPRESSED_DIR}/x.onnx"},
        {"name": "fp32", "file": f"{COMPRESSED_DIR}/hidden-64.onnx"},
        "not an object",
    ]
    (tmp_path / COMPRESSED_FILE).write_text(json.dumps(entries))
    bases, notes = compression_bases(tmp_path)
    assert [(b.name, b.path.name, b.how) for b in bases] == [
        ("hidden-64", "hidden-64.onnx", "narrower")
    ]
    assert len(notes) == 5 and all("skipped" in n for n in notes)
    (tmp_path / COMPRESSED_FILE).write_text("{")
    assert compression_bases(tmp_path) == (
        [],
        [f"{COMPRESSED_FILE} is not JSON: no compression candidates"],
    )
    (tmp_path / COMPRESSED_FILE).unlink()
    assert compression_bases(tmp_path) == ([], [])
