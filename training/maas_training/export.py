"""fp32 ONNX export of every model the job writes, checked against torch in onnxruntime.

One exporter policy for every recipe: torch.onnx.export(..., dynamo=True), the torch.export
based exporter and the default since torch 2.9, unless the recipe prefers the TorchScript one
(dynamo=False). Pretrained BERT encoders do: ONNX Runtime's transformer fusions recognise its
attention subgraph and not the dynamo exporter's, and the fused int8 attention is what makes the
served encoder fast (maas.optimize.quantize, bench/results.md). MAAS_ONNX_EXPORTER=dynamo or
torchscript overrides the preference (TorchScript exports a small MLP in well under a second
where dynamo spends ~5-10 s building its op registry). When the first exporter fails (e.g.
onnxscript missing in an older container) the other is tried once; metrics.json records which.

Graph contract (maas/core/contract.py): the recipe's inputs with a dynamic batch dim (and a
dynamic sequence dim for token ids), its output, and for classifiers the STRING "label" output
after "probabilities" (ArgMax + Gather over a string initializer of class names).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from maas_training import log
from maas_training.errors import TrainingError
from maas_training.shared import contract

EXPORTERS = ("dynamo", "torchscript")
BATCH_DIM = "batch"
SEQ_DIM = "sequence"
RAW_OUTPUT = "maas_raw_output"  # exported under this name, then renamed (see _claim_output_name)
# onnxruntime 1.20 (the oldest the serving layer allows) reads IR <= 10 and opset <= 21.
OPSET = 18
MAX_OPSET = 21
MAX_IR_VERSION = 10
Example = tuple[torch.Tensor, ...]  # one tensor per graph input
Names = Sequence[str]


@dataclass(frozen=True)
class ExportInfo:
    exporter: str
    opset: int
    ir_version: int
    max_abs_diff: float
    # The check feeds through onnxruntime and through torch (for recipes that report more).
    outputs: np.ndarray = field(repr=False, compare=False)
    reference: np.ndarray = field(repr=False, compare=False)


def _torch_export(module, example, names: Sequence[str], path: Path, **options) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=list(names),
            output_names=[RAW_OUTPUT],
            opset_version=OPSET,
            **options,
        )


# The dynamo exporter's op registry logs a warning for each torchvision op it cannot register
# when torchvision is absent (it is: no recipe uses it). Quieted at that logger, which says
# nothing else: a person reading the job's log would take them for a problem.
OP_REGISTRY_LOGGER = "torch.onnx._internal.exporter._registration"


def _export_dynamo(module: nn.Module, example: Example, names: Names, path: Path, seq: bool):
    logging.getLogger(OP_REGISTRY_LOGGER).setLevel(logging.ERROR)
    batch = torch.export.Dim(BATCH_DIM)
    sequence = torch.export.Dim(SEQ_DIM)
    shapes = tuple({0: batch, 1: sequence} if seq and t.ndim == 2 else {0: batch} for t in example)
    _torch_export(module, example, names, path, dynamo=True, dynamic_shapes=shapes, verbose=False)


def _export_torchscript(module: nn.Module, example: Example, names: Names, path: Path, seq: bool):
    axes: dict[str, dict[int, str]] = {
        n: {0: BATCH_DIM, 1: SEQ_DIM} if seq and t.ndim == 2 else {0: BATCH_DIM}
        for n, t in zip(names, example, strict=True)
    }
    axes[RAW_OUTPUT] = {0: BATCH_DIM}
    _torch_export(
        module, example, names, path, dynamo=False, dynamic_axes=axes, do_constant_folding=True
    )


def _rename_value(graph, old: str, new: str) -> None:  # onnx.GraphProto
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.name == old:
            vi.name = new
    for init in graph.initializer:
        if init.name == old:
            init.name = new


def _claim_output_name(graph, name: str) -> None:  # onnx.GraphProto
    """The dynamo exporter names internal values after ops ("embedding"): move them aside."""
    used = {n for node in graph.node for n in [*node.input, *node.output]}
    used |= {i.name for i in graph.initializer}
    if name in used:
        _rename_value(graph, name, f"{name}__internal")
    _rename_value(graph, RAW_OUTPUT, name)


def _name_dims(graph, example: tuple[torch.Tensor, ...], seq: bool) -> None:  # onnx.GraphProto
    """Dynamic dims get their names; every other dim must be the example's."""
    for vi, t in zip(graph.input, example, strict=True):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) != t.ndim:
            raise RuntimeError(f"exported input {vi.name} has rank {len(dims)}, not {t.ndim}")
        for i, d in enumerate(dims):
            name = BATCH_DIM if i == 0 else SEQ_DIM if i == 1 and seq else None
            if name is not None:
                d.ClearField("dim_value")
                d.dim_param = name
            elif d.dim_value != t.shape[i]:
                raise RuntimeError(f"exported input {vi.name} is not of shape {list(t.shape)}")
    for vi in graph.output:
        d = vi.type.tensor_type.shape.dim[0]
        d.ClearField("dim_value")
        d.dim_param = BATCH_DIM


def _raw_export(kind, module, example, names, output_name, seq, directory: Path):
    """Export with one exporter and check the bare signature (ModelProto, or raise)."""
    import onnx

    raw = directory / f"{kind}.onnx"
    (_export_dynamo if kind == "dynamo" else _export_torchscript)(module, example, names, raw, seq)
    proto = onnx.load(str(raw))  # pulls in external data, if the exporter wrote any
    got_in = [i.name for i in proto.graph.input]
    got_out = [o.name for o in proto.graph.output]
    if got_in != list(names) or got_out != [RAW_OUTPUT]:
        raise RuntimeError(f"unexpected exported graph: inputs {got_in}, outputs {got_out}")
    _claim_output_name(proto.graph, output_name)
    _name_dims(proto.graph, example, seq)
    return proto


def add_label_head(model, class_names: list[str]):  # onnx.ModelProto -> onnx.ModelProto
    """Append ArgMax(probabilities) -> Gather(class names) as the STRING output "label"."""
    from onnx import TensorProto, helper

    graph = model.graph
    used = {i.name for i in graph.initializer} | {n for node in graph.node for n in node.output}
    names_init, index_name, label = "maas_class_names", "maas_label_index", contract.LABEL_OUTPUT
    if names_init in used or index_name in used or label in used:
        raise RuntimeError("exported graph already uses the names of the label head")
    graph.initializer.append(
        helper.make_tensor(
            names_init,
            TensorProto.STRING,
            [len(class_names)],
            [c.encode("utf-8") for c in class_names],
        )
    )
    graph.node.append(
        helper.make_node(
            "ArgMax",
            [contract.PROBABILITIES_OUTPUT],
            [index_name],
            name="maas_label_argmax",
            axis=1,
            keepdims=0,
        )
    )
    graph.node.append(
        helper.make_node(
            "Gather", [names_init, index_name], [label], name="maas_label_gather", axis=0
        )
    )
    graph.output.append(helper.make_tensor_value_info(label, TensorProto.STRING, [BATCH_DIM]))
    return model


def finish_graph(proto, class_names: list[str] | None, metadata: dict[str, str]) -> int:
    """The label head (classifiers), the opset and IR checks, the metadata, the ONNX checker."""
    import onnx

    if class_names is not None:
        add_label_head(proto, class_names)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset > MAX_OPSET:
        raise RuntimeError(f"exported opset {opset} is newer than onnxruntime 1.20 reads (21)")
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    proto.producer_name = "maas_training"
    del proto.metadata_props[:]
    for key, value in metadata.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    return opset


def run_onnx(path: Path, feeds: dict[str, np.ndarray], output: str, batch: int = 32) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    n = len(next(iter(feeds.values())))
    parts = [
        sess.run([output], {k: v[s : s + batch] for k, v in feeds.items()})[0]
        for s in range(0, n, batch)
    ]
    return np.concatenate(parts)


@torch.no_grad()
def run_torch(module: nn.Module, feeds: dict[str, np.ndarray], batch: int = 32) -> np.ndarray:
    n = len(next(iter(feeds.values())))
    parts = []
    for s in range(0, n, batch):
        args = [torch.from_numpy(np.ascontiguousarray(v[s : s + batch])) for v in feeds.values()]
        parts.append(module(*args).float().numpy())
    return np.concatenate(parts)


def verify(
    path: Path,
    feeds: dict[str, np.ndarray],
    expected: np.ndarray,
    output_name: str,
    limit: float,
) -> tuple[float, np.ndarray]:
    """onnxruntime's output_name on feeds vs torch's (expected); fails past limit (max abs)."""
    try:
        got = run_onnx(path, feeds, output_name)
    except ImportError:
        raise TrainingError(
            "onnxruntime is not installed in the training container (see training/requirements.txt)"
        ) from None
    diff = float(np.max(np.abs(got - expected))) if len(got) else 0.0
    if not diff < limit:
        raise TrainingError(
            f"ONNX export check failed: onnxruntime {output_name} differs from torch by "
            f"{diff:.3g} (limit {limit:g})"
        )
    return diff, got


def _check_signature(path: Path, feeds, got: np.ndarray, output_name, class_names) -> None:
    one = run_onnx(path, {k: v[:1] for k, v in feeds.items()}, output_name)
    if one.shape != (1, *got.shape[1:]):
        raise TrainingError(f"ONNX export check failed: batch of 1 gave shape {one.shape}")
    if class_names is not None:
        labels = run_onnx(path, feeds, contract.LABEL_OUTPUT)
        names = np.asarray(class_names, dtype=object)[got.argmax(axis=1)]
        if [str(x) for x in labels] != [str(x) for x in names]:
            raise TrainingError("ONNX export check failed: the label output does not match argmax")


def _exporter(prefer: str) -> str:
    exporter = os.environ.get("MAAS_ONNX_EXPORTER", prefer).strip().lower() or prefer
    if exporter not in EXPORTERS:
        raise TrainingError(f"MAAS_ONNX_EXPORTER must be dynamo or torchscript: {exporter!r}")
    return exporter


def export_model(
    module: nn.Module,
    path: Path,
    *,
    feeds: dict[str, np.ndarray],
    output_name: str,
    class_names: list[str] | None,
    metadata: dict[str, str],
    prefer: str = "dynamo",
    sequence: bool = False,
    max_abs_diff: float = 1e-3,
) -> ExportInfo:
    """Export module(*feeds.values()) -> output_name (+ the label head when class_names is
    given) to path, then check it against torch on feeds.

    ``sequence``: dim 1 of every 2-D input is dynamic too (token ids)."""
    import onnx

    module = module.to("cpu").float().eval()
    names = list(feeds)
    # Two rows: an example batch of 1 would let the exporter specialise the batch dim.
    example = tuple(
        torch.from_numpy(np.ascontiguousarray(v[np.arange(2) % len(v)])) for v in feeds.values()
    )
    exporter = _exporter(prefer)
    with tempfile.TemporaryDirectory(prefix="maas-export-") as tmp:
        try:
            proto = _raw_export(exporter, module, example, names, output_name, sequence, Path(tmp))
        except Exception as e:
            other = next(x for x in EXPORTERS if x != exporter)
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            log.warn(
                f"{exporter} ONNX export failed ({type(e).__name__}: {first[:300]}); "
                f"falling back to the {other} exporter"
            )
            exporter = other
            proto = _raw_export(exporter, module, example, names, output_name, sequence, Path(tmp))
    opset = finish_graph(proto, class_names, metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    ir = int(proto.ir_version)
    log.info(f"exported {path.name} with the {exporter} exporter (opset {opset}, IR {ir})")
    reference = run_torch(module, feeds)
    diff, got = verify(path, feeds, reference, output_name, max_abs_diff)
    _check_signature(path, feeds, got, output_name, class_names)
    log.info(f"onnxruntime matches torch fp32: max abs diff {diff:.3g}")
    return ExportInfo(exporter, opset, ir, diff, got, reference)


def export_plain(module: nn.Module, feeds: dict[str, np.ndarray], output: str, path: Path) -> None:
    """The bare graph of a module (TorchScript exporter, no label head, no checks): for
    measuring a candidate's size and latency, not for serving."""
    import onnx

    module = module.to("cpu").float().eval()
    example = tuple(
        torch.from_numpy(np.ascontiguousarray(v[np.arange(2) % len(v)])) for v in feeds.values()
    )
    with tempfile.TemporaryDirectory(prefix="maas-export-") as tmp:
        proto = _raw_export("torchscript", module, example, list(feeds), output, False, Path(tmp))
    onnx.save(proto, str(path))


def metadata_for(task: str, recipe: str, labels: list[str] | None) -> dict[str, str]:
    meta = {"maas.task": task, "maas.recipe": recipe}
    if labels is not None:
        meta["maas.labels"] = json.dumps(labels)
    return meta
