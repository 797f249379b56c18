"""Quantization recipes: each one names a candidate, says when it applies and builds it.

The search (maas.optimize.quantize) tries every recipe in RECIPES, in order, that applies to the
model at hand; each builder writes one candidate file, which the search then loads, checks,
scores, gates and times against fp32. Adding a recipe is one builder and one Recipe in RECIPES.

Builders import onnx and onnxruntime's quantization tooling lazily: they are heavy, and only the
optimizer function needs them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maas.optimize.feeds import Feeds, n_rows, rows

DYNAMIC_PER_TENSOR = "dynamic-int8-per-tensor"
DYNAMIC_PER_CHANNEL = "dynamic-int8-per-channel"
STATIC_QDQ_PER_CHANNEL = "static-qdq-int8-per-channel"
FUSED_DYNAMIC_PER_CHANNEL = "fused-dynamic-int8-per-channel"
# Text generation: weight-only MatMulNBits, 4-bit (block size, accuracy level, an 8-bit output
# head as measured choices) beside dynamic int8.
INT4_BLOCK32 = "int4-block32"
INT4_BLOCK128 = "int4-block128"
INT4_BLOCK32_ACC4 = "int4-block32-acc4"
INT4_BLOCK32_HEAD_INT8 = "int4-block32-head-int8"
TEXT_GENERATION = "text-generation"
# Transformer graphs ONNX Runtime's offline fusions (onnxruntime.transformers) know.
FUSABLE_MODEL_TYPES = ("bert",)

# Ops handed to the quantizer: weights-heavy matmuls; Gather too for embedding tables. The label
# head (ArgMax + Gather over a string initializer) is thereby left alone for tabular models.
CLASSIFICATION_OP_TYPES = ("MatMul", "Gemm")
EMBEDDING_OP_TYPES = ("MatMul", "Gemm", "Gather")

CALIBRATION_BATCH_ROWS = 64
CALIBRATION_MAX_ROWS = 1024


def default_op_types(task: str) -> tuple[str, ...]:
    # Text models keep most of their weights in an embedding table: Gather too.
    tabular = task in ("classification", "regression")
    return CLASSIFICATION_OP_TYPES if tabular else EMBEDDING_OP_TYPES


@dataclass(frozen=True)
class RecipeInput:
    """What every recipe builds from; the search fills it once per optimization."""

    fp32: Path  # the training graph as delivered
    graph: Path  # quant_pre_process's output, or the fp32 graph when preprocessing failed
    workdir: Path  # for a builder's intermediate files
    task: str
    op_types: tuple[str, ...]
    calibration: Feeds | None  # calibration.npz cast to the graph's inputs, when usable
    transformer: dict[str, Any] | None  # schema.json's entry: model type, heads, hidden size


# Writes the candidate to the given path; returns a note on how it was built (or None).
Builder = Callable[[RecipeInput, Path], str | None]


def always(_: RecipeInput) -> bool:
    return True


@dataclass(frozen=True)
class Recipe:
    name: str  # the candidate's name in the manifest; the file is model.<name>.onnx
    build: Builder
    applies: Callable[[RecipeInput], bool] = always
    skipped: str = ""  # why it does not apply, noted in the manifest ("" skips silently)


# --------------------------------------------------------------------------- builders


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


def build_dynamic_per_tensor(inp: RecipeInput, dst: Path) -> None:
    _build_dynamic(inp.graph, dst, per_channel=False, op_types=inp.op_types)


def build_dynamic_per_channel(inp: RecipeInput, dst: Path) -> None:
    _build_dynamic(inp.graph, dst, per_channel=True, op_types=inp.op_types)


class _NpzReader:
    """CalibrationDataReader over calibration.npz, in batches of CALIBRATION_BATCH_ROWS."""

    def __init__(self, feeds: Feeds) -> None:
        self.feeds = rows(feeds, 0, CALIBRATION_MAX_ROWS)
        self.n = n_rows(self.feeds)
        self._it: Iterator[Feeds] = iter(())
        self.rewind()

    def _batches(self) -> Iterator[Feeds]:
        for s in range(0, self.n, CALIBRATION_BATCH_ROWS):
            yield rows(self.feeds, s, s + CALIBRATION_BATCH_ROWS)

    def get_next(self) -> Feeds | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._batches()


def _calibration_reader(feeds: Feeds) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(_NpzReader, CalibrationDataReader):
        pass

    return Reader(feeds)


def build_static_qdq(inp: RecipeInput, dst: Path) -> str:
    """QDQ, per-channel int8 weights; uint8 activations, falling back to int8. Returns a note."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if inp.calibration is None:
        raise ValueError("no calibration data")
    errors: list[str] = []
    for act in (QuantType.QUInt8, QuantType.QInt8):
        try:
            quantize_static(
                str(inp.graph),
                str(dst),
                _calibration_reader(inp.calibration),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(inp.op_types),
                per_channel=True,
                activation_type=act,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
            return f"activations {act.name}"
        except Exception as e:
            errors.append(f"{act.name}: {type(e).__name__}: {e}"[:300])
    raise RuntimeError("quantize_static failed: " + " | ".join(errors))


def build_fused_dynamic(inp: RecipeInput, dst: Path) -> str:
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

    transformer = inp.transformer or {}
    model_type = str(transformer["model_type"])
    options = FusionOptions(model_type)
    options.enable_skip_layer_norm = False
    fused = fuse(
        str(inp.fp32),
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
    fused_path = inp.workdir / "model.fused.onnx"
    fused.save_model_to_file(str(fused_path))
    # Shape inference cannot type the outputs of contrib ops (Attention, BiasGelu): the
    # tensors it leaves untyped are fp32 activations.
    _build_dynamic(
        fused_path,
        dst,
        per_channel=True,
        op_types=(*inp.op_types, "Attention"),
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )
    return "fused " + ", ".join(f"{k} {v}" for k, v in sorted(stats.items()))


def _head_node(graph: Any) -> str | None:
    """The MatMul that produces the logits (the output head), by name."""
    for node in graph.node:
        if node.op_type == "MatMul" and "logits" in node.output:
            return str(node.name)
    return None


def _nbits(src: Any, bits: int, block: int, accuracy: int | None, **nodes: Any) -> Any:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(
        src, bits=bits, block_size=block, is_symmetric=True, accuracy_level=accuracy, **nodes
    )
    q.process()
    return q.model.model


def build_weight_only(
    inp: RecipeInput, dst: Path, block: int, accuracy: int | None, head_bits: int = 4
) -> str:
    """4-bit weight-only MatMulNBits (symmetric, per block), the head at head_bits."""
    import onnx

    model = onnx.load(str(inp.fp32))
    head = _head_node(model.graph)
    if head_bits == 4 or head is None:
        out = _nbits(model, 4, block, accuracy)
    else:
        out = _nbits(model, 4, block, accuracy, nodes_to_exclude=[head])
        out = _nbits(out, head_bits, block, accuracy, nodes_to_include=[head])
    onnx.save(out, str(dst))
    n = sum(1 for node in out.graph.node if node.op_type == "MatMulNBits")
    level = "" if accuracy is None else f", accuracy_level {accuracy}"
    head_note = f", output head {head_bits}-bit" if head_bits != 4 and head else ""
    return f"{n} MatMulNBits, block {block}{level}{head_note}"


def is_text_generation(inp: RecipeInput) -> bool:
    return inp.task == TEXT_GENERATION


def not_text_generation(inp: RecipeInput) -> bool:
    return inp.task != TEXT_GENERATION


def has_calibration(inp: RecipeInput) -> bool:
    return inp.calibration is not None


def is_fusable_transformer(inp: RecipeInput) -> bool:
    return (inp.transformer or {}).get("model_type") in FUSABLE_MODEL_TYPES


# --------------------------------------------------------------------------- the registry

# Built and listed in this order (the manifest's candidates follow it, after fp32).
RECIPES: tuple[Recipe, ...] = (
    Recipe(DYNAMIC_PER_TENSOR, build_dynamic_per_tensor, applies=not_text_generation),
    Recipe(DYNAMIC_PER_CHANNEL, build_dynamic_per_channel),
    Recipe(
        STATIC_QDQ_PER_CHANNEL,
        build_static_qdq,
        applies=has_calibration,
        skipped="no calibration data",
    ),
    Recipe(FUSED_DYNAMIC_PER_CHANNEL, build_fused_dynamic, applies=is_fusable_transformer),
    Recipe(
        INT4_BLOCK32,
        lambda inp, dst: build_weight_only(inp, dst, 32, None),
        applies=is_text_generation,
    ),
    Recipe(
        INT4_BLOCK128,
        lambda inp, dst: build_weight_only(inp, dst, 128, None),
        applies=is_text_generation,
    ),
    Recipe(
        INT4_BLOCK32_ACC4,
        lambda inp, dst: build_weight_only(inp, dst, 32, 4),
        applies=is_text_generation,
    ),
    Recipe(
        INT4_BLOCK32_HEAD_INT8,
        lambda inp, dst: build_weight_only(inp, dst, 32, None, head_bits=8),
        applies=is_text_generation,
    ),
)
