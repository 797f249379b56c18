"""The text jobs of training/train.py under the SageMaker contract (subprocesses, as the runner).

ngram on real sentences, finetune of the real all-MiniLM-L6-v2 encoder (channel "base"), and
the import of a sequence-classification folder. Exporters: TorchScript here for speed (the
dynamo default is exercised by the e2e import of MiniLM).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from maas.core import contract
from maas.serving import textprep
from pretrained import minilm_folder

REPO = Path(__file__).resolve().parents[2]
TRAIN_PY = REPO / "training" / "train.py"


def _corpus(per_topic: int, topics: tuple[str, ...]) -> pd.DataFrame:
    from textcorpus import labelled_sentences

    rows: list[tuple[str, str]] = []
    for topic in topics:
        rows += [r for r in labelled_sentences() if r[1] == topic][:per_topic]
    return pd.DataFrame(rows, columns=["sentence", "topic"])


def _job(base: Path, frame: pd.DataFrame | None, hp: dict[str, object], **env: str):
    channel = base / "input" / "data" / "train"
    channel.mkdir(parents=True, exist_ok=True)
    if frame is not None:
        frame.to_json(channel / "data.jsonl", orient="records", lines=True)
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(
        json.dumps({k: json.dumps(v) for k, v in hp.items()})
    )
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "MAAS_"))}
    run_env.update({"MAAS_OPT_ML": str(base), "MAAS_ONNX_EXPORTER": "torchscript", **env})
    proc = subprocess.run(
        [sys.executable, str(TRAIN_PY)], env=run_env, capture_output=True, text=True, timeout=600
    )
    return proc


def _onnx(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.mark.slow
def test_ngram_text_classification_writes_the_text_contract(tmp_path: Path) -> None:
    frame = _corpus(150, ("email", "numbers", "logging"))
    proc = _job(tmp_path, frame, {"task": "text-classification", "text": "sentence",
                                  "label": "topic", "epochs": 8})  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    model_dir = tmp_path / "model"
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["recipe"] == "ngram" and metrics["test_accuracy"] >= 0.6
    spec = json.loads((model_dir / contract.TEXT_SPEC_FILE).read_text())
    assert spec["kind"] == textprep.HASHED_NGRAMS
    schema = json.loads((model_dir / "schema.json").read_text())
    assert schema["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert schema["graph_inputs"] == ["ids"]
    # The served path: text -> maas.serving.textprep -> graph, agreeing with the job's test score
    with np.load(model_dir / "sample.npz", allow_pickle=False) as z:
        texts, target, ids = z["text"], z["target"], z["input__ids"]
    assert texts.dtype.kind == "U" and len(texts) == len(target) == len(ids)
    feeds = textprep.load_encoder(spec).encode(list(texts))
    probs, labels = _onnx(model_dir / "model.onnx", feeds)
    assert float((probs.argmax(axis=1) == target).mean()) == pytest.approx(
        metrics["onnx_test_accuracy"]
    )
    assert set(labels) <= {"email", "logging", "numbers"}
    assert (model_dir / "training.png").read_bytes()[:4] == b"\x89PNG"
    assert "epoch=1 train_loss=" in proc.stdout and "test_accuracy=" in proc.stdout


@pytest.mark.slow
def test_finetune_recipe_tunes_the_pretrained_encoder_from_channel_base(tmp_path: Path) -> None:
    frame = _corpus(60, ("email", "numbers"))
    proc = _job(
        tmp_path,
        frame,
        {"task": "text-classification", "recipe": "finetune", "text": "sentence",
         "label": "topic", "epochs": 2, "max_length": 32, "batch_size": 16,
         "compress_candidates": 2, "compress_seconds": 30},
        SM_CHANNEL_BASE=str(minilm_folder()),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    model_dir = tmp_path / "model"
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["recipe"] == "finetune" and metrics["epochs_run"] <= 2
    assert metrics["test_accuracy"] >= 0.7
    spec = json.loads((model_dir / contract.TEXT_SPEC_FILE).read_text())
    assert spec == textprep.tokenizer_spec(32, ["input_ids"], contract.TOKENIZER_FILE)
    assert (model_dir / "tokenizer.json").read_bytes() == (
        minilm_folder() / "tokenizer.json"
    ).read_bytes()
    feeds = textprep.load_encoder(spec, model_dir).encode(["Return the mean of the data."])
    probs, labels = _onnx(model_dir / "model.onnx", feeds)
    assert probs.shape == (1, 2) and labels[0] in ("email", "numbers")
    # AND its compression candidates: 4 of 6 layers, and half the FFN channels, distilled
    entries = json.loads((model_dir / contract.COMPRESSED_FILE).read_text())
    assert [e["name"] for e in entries] == ["layers-4", "ffn-50"]
    for e in entries:
        assert e["parameters"] < e["teacher_parameters"] and e["distillation"]["steps"] > 0
        assert e["distillation"]["loss_kind"] == "logits"
        student_probs, student_labels = _onnx(model_dir / e["file"], feeds)
        assert student_probs.shape == (1, 2) and student_labels[0] in ("email", "numbers")
    # AND the optimizer's table has them and what is built on them, gated against model.onnx
    _optimizer_table(model_dir, "text-classification", {"layers-4", "ffn-50"})


def _optimizer_table(model_dir: Path, task: str, students: set[str]) -> None:
    from maas.optimize.feeds import load_npz
    from maas.optimize.quantize import optimize_model
    from maas.optimize.service import compression_bases

    bases, notes = compression_bases(model_dir)
    assert {b.name for b in bases} == students and not notes
    sel = optimize_model(
        model_dir / contract.MODEL_FILE, load_npz(model_dir / contract.SAMPLE_FILE), None,
        model_dir.parent / "optimize", task=task, timing_repeats=10, timing_budget_s=5.0,
        bases=bases,
    )  # fmt: skip
    for c in sel.candidates:
        print(f"candidate {c.recipe:<40} {c.quality} b1 {c.latency_ms.get('batch1_p50')} ms "
              f"{c.reason}{' <- served' if c is sel.chosen else ''}")  # fmt: skip
    on_students = [c for c in sel.candidates if c.base in students]
    assert {c.base for c in on_students} == students
    assert all(c.quality and c.latency_ms["batch1_p50"] > 0 for c in on_students if c.ok)
    assert sel.chosen.passed_gate


@pytest.mark.slow
def test_sequence_classification_folder_is_imported_with_its_labels(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    # GIVEN a BertForSequenceClassification folder: MiniLM's weights plus a pooler and a head
    folder = tmp_path / "input" / "data" / "train" / "model"
    shutil.copytree(minilm_folder(), folder)
    weights = {f"bert.{k}": v for k, v in load_file(str(folder / "model.safetensors")).items()}
    torch.manual_seed(0)
    weights["classifier.weight"] = torch.randn(3, 384) * 0.2
    weights["classifier.bias"] = torch.zeros(3)
    save_file(weights, str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["BertForSequenceClassification"]
    config["id2label"] = {"0": "negative", "1": "neutral", "2": "positive"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modules.json").unlink()
    (tmp_path / "input" / "data" / "train" / "texts.txt").write_text(
        "\n".join(["I loved it.", "It was fine, I suppose.", "Terrible service, never again."])
    )
    # WHEN imported as text-classification
    proc = _job(tmp_path, None, {"task": "text-classification", "recipe": "import"})
    # THEN the graph gives probabilities and a label from id2label, and the gate sample is
    # the run folder's own text
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    model_dir = tmp_path / "model"
    assert json.loads((model_dir / "labels.json").read_text()) == [
        "negative",
        "neutral",
        "positive",
    ]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["sample_origin"] == "run folder" and metrics["sample_texts"] == 3
    spec = json.loads((model_dir / contract.TEXT_SPEC_FILE).read_text())
    feeds = textprep.load_encoder(spec, model_dir).encode(["I loved it."])
    probs, labels = _onnx(model_dir / "model.onnx", feeds)
    assert probs.shape == (1, 3) and labels[0] in ("negative", "neutral", "positive")
    np.testing.assert_allclose(probs.sum(), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("frame", "hp", "message"),
    [
        (pd.DataFrame({"body": ["a b"] * 20, "topic": ["x", "y"] * 10}), {}, "text column 'text'"),
        (
            pd.DataFrame({"text": ["a b", ""] * 10, "label": ["x", "y"] * 10}),
            {},
            "empty or non-text value",
        ),
        (
            pd.DataFrame({"text": ["a b"] * 20, "label": ["x"] * 20}),
            {},
            "at least 2 classes",
        ),
        (
            pd.DataFrame({"text": ["a b"] * 20, "label": ["x", "y"] * 10}),
            {"recipe": "finetune"},
            "no Hugging Face model folder in the base channel",
        ),
    ],
)
def test_bad_text_jobs_fail_with_a_reason(
    tmp_path: Path, frame: pd.DataFrame, hp: dict, message: str
) -> None:
    (tmp_path / "input" / "data" / "base").mkdir(parents=True)
    proc = _job(tmp_path, frame, {"task": "text-classification", **hp})
    assert proc.returncode == 1
    assert message in (tmp_path / "output" / "failure").read_text()
