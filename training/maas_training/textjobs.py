"""The text jobs: text classification (ngram, finetune) and pretrained import (embedding, import).

Tokenisation is maas/serving/textprep.py (loaded by maas_training.textprep): the code the inference
function runs on each request, so the ids the model is trained and gated on are the ids it is
served. The model dir gets, besides the tabular files, text.json (the encoder spec) and, for
tokenizer-based models, tokenizer.json.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from maas_training import log
from maas_training.config import Hyperparameters, Paths
from maas_training.errors import TrainingError

MODEL_FILE = "model.onnx"
SAMPLE_FILE = "sample.npz"
CALIBRATION_FILE = "calibration.npz"
METRICS_FILE = "metrics.json"
LABELS_FILE = "labels.json"
SCHEMA_FILE = "schema.json"
INPUT_PREFIX = "input__"
TARGET_KEY = "target"
SAMPLE_TEXT_KEY = "text"  # the raw texts beside the ids (unicode array, no pickle)
CALIBRATION_ROWS = 512
IMPORT_SAMPLE_TEXTS = 128
TEXT_INPUT = {"name": "text", "datatype": "BYTES", "shape": [-1]}


def _write_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def _save_npz(path: Path, feeds: dict[str, np.ndarray], texts: list[str], y=None) -> None:
    arrays = {INPUT_PREFIX + k: np.ascontiguousarray(v) for k, v in feeds.items()}
    arrays[SAMPLE_TEXT_KEY] = np.asarray(texts, dtype=np.str_)
    if y is not None:
        arrays[TARGET_KEY] = np.ascontiguousarray(y, dtype=np.int64)
    with path.open("wb") as f:
        np.savez(f, **arrays)


def _copy_metrics(paths: Paths, metrics: dict[str, Any]) -> None:
    _write_json(paths.model_dir / METRICS_FILE, metrics)
    try:
        paths.output_data_dir.mkdir(parents=True, exist_ok=True)
        _write_json(paths.output_data_dir / METRICS_FILE, metrics)
    except OSError as e:
        log.warn(f"could not copy metrics to {paths.output_data_dir}: {e}")


def run(paths: Paths, hp: Hyperparameters) -> dict[str, Any]:
    if hp.recipe == "import":
        return run_import(paths, hp)
    return run_text_classification(paths, hp)


# --------------------------------------------------------------------------- the pretrained folder


def find_model_folder(channel: Path, what: str) -> Path:
    """The shallowest folder under channel holding config.json (a Hugging Face model folder)."""
    if not channel.is_dir():
        raise TrainingError(f"{what} channel {channel} does not exist or is not a directory")
    found = sorted(channel.rglob("config.json"), key=lambda p: (len(p.parts), str(p)))
    for cfg in found:
        if (cfg.parent / "tokenizer.json").is_file():
            return cfg.parent
    raise TrainingError(
        f"no Hugging Face model folder in the {what} channel: need config.json, "
        "model.safetensors and tokenizer.json side by side"
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def sentence_transformers_head(folder: Path) -> tuple[str, bool] | None:
    """(pooling, normalize) from modules.json and its Pooling config; None if not an ST folder."""
    modules = _read_json(folder / "modules.json")
    if not isinstance(modules, list):
        return None
    pooling, normalize = "mean", False
    for m in modules:
        kind = str(m.get("type", ""))
        if kind.endswith("Pooling"):
            cfg = _read_json(folder / str(m.get("path", "")) / "config.json") or {}
            if cfg.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif cfg.get("pooling_mode_mean_tokens", True):
                pooling = "mean"
            else:
                raise TrainingError(f"unsupported sentence-transformers pooling: {cfg}")
        elif kind.endswith("Normalize"):
            normalize = True
    return pooling, normalize


def token_limit(folder: Path, max_positions: int, fallback: int) -> int:
    """Tokens per text: sentence-transformers' max_seq_length, else tokenizer.json's truncation."""
    sbert = _read_json(folder / "sentence_bert_config.json") or {}
    tok = _read_json(folder / "tokenizer.json") or {}
    limit = sbert.get("max_seq_length") or (tok.get("truncation") or {}).get("max_length")
    return int(min(max_positions, int(limit) if limit else fallback))


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _sentences(text: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", text):
        if re.search(r"^\s*(```|>>>|\||#|- |\* |\$ )", para, re.M):
            continue
        for s in _SENTENCE.split(" ".join(para.split())):
            if 20 <= len(s) <= 400 and sum(c.isalpha() for c in s) > 0.6 * len(s):
                out.append(s)
    return out


def _stdlib_sentences(limit: int) -> list[str]:
    """Real English prose that every container has: the standard library's docstrings."""
    import importlib
    import inspect

    out: list[str] = []
    for name in ("json", "csv", "email.message", "http.client", "logging", "argparse", "pathlib"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for _, obj in [(name, module), *inspect.getmembers(module)]:
            doc = inspect.getdoc(obj) if inspect.isclass(obj) or inspect.ismodule(obj) else None
            if doc:
                out.extend(_sentences(doc))
            if len(out) >= limit:
                return list(dict.fromkeys(out))[:limit]
    return list(dict.fromkeys(out))[:limit]


def sample_texts(
    channel: Path, folder: Path, text_column: str, limit: int
) -> tuple[list[str], str]:
    """Texts for the quality gate: the run folder's own data, else prose found locally."""
    from maas_training.data import DATA_SUFFIXES, _read_file

    texts: list[str] = []
    for path in sorted(channel.rglob("*")):
        if not path.is_file() or folder in path.parents or path.parent == folder:
            continue
        if path.suffix.lower() == ".txt":
            texts += [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
        elif path.suffix.lower() in DATA_SUFFIXES:
            frame = _read_file(path)
            if text_column in frame.columns:
                texts += [str(v) for v in frame[text_column].dropna().to_list()]
    texts = [t for t in dict.fromkeys(texts) if t]
    if texts:
        return texts[:limit], "run folder"
    readme = folder / "README.md"
    found = _sentences(readme.read_text(errors="replace")) if readme.is_file() else []
    found = list(dict.fromkeys(found + _stdlib_sentences(limit)))
    if not found:
        raise TrainingError("no sample text for the quality gate: add a .txt file to the run")
    return found[:limit], "model README + Python docstrings"


# --------------------------------------------------------------------------- import


def run_import(paths: Paths, hp: Hyperparameters) -> dict[str, Any]:
    """A Hugging Face folder -> fp32 ONNX (ids in) + the tokenizer that serves it."""
    t_start = time.perf_counter()
    import torch

    from maas_training.bert import SentenceEmbedder, SequenceClassifier, load_encoder
    from maas_training.textexport import (
        PROBABILITIES_NAME,
        export_text_model,
        metadata_for,
        run_onnx,
        run_torch,
    )
    from maas_training.textprep import load as load_textprep

    textprep = load_textprep()
    folder = find_model_folder(paths.train_channel, "train")
    log.info(f"pretrained folder: {folder.relative_to(paths.train_channel) or '.'}")
    encoder, weights = load_encoder(folder)
    config = encoder.config
    head = sentence_transformers_head(folder)
    if hp.task == "embedding":
        pooling, normalize = head or ("mean", False)
        module: torch.nn.Module = SentenceEmbedder(encoder, pooling, normalize).eval()
        output, labels = "embedding", None
        kind = f"sentence embedding ({pooling} pooling{', normalized' if normalize else ''})"
    else:
        if "classifier.weight" not in weights:
            raise TrainingError(
                "task text-classification with recipe import needs a sequence-classification "
                "folder (classifier weights and id2label in config.json)"
            )
        module = SequenceClassifier(encoder, weights).eval()
        n = module.classifier.out_features
        labels = [config.id2label.get(i, f"LABEL_{i}") for i in range(n)]
        output, kind = PROBABILITIES_NAME, f"sequence classifier ({n} labels)"
    max_length = token_limit(folder, config.max_position_embeddings, hp.max_length)
    inputs = ["input_ids", "attention_mask"]
    tokenizer_json = (folder / "tokenizer.json").read_text(encoding="utf-8")
    tokenizer = textprep.HFTokenizer(tokenizer_json, max_length=max_length, inputs=inputs)
    texts, origin = sample_texts(paths.train_channel, folder, hp.text, IMPORT_SAMPLE_TEXTS)
    feeds = tokenizer.encode(texts)
    log.info(
        f"importing a {kind}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"max {max_length} tokens; gate sample: {len(texts)} texts from the {origin}"
    )
    model_dir = paths.model_dir
    model_dir.mkdir(parents=True, exist_ok=True)
    info = export_text_model(
        module,
        model_dir / MODEL_FILE,
        feeds=feeds,
        output_name=output,
        class_names=labels,
        metadata=metadata_for(hp.task, hp.recipe, labels),
        prefer="torchscript",  # its attention subgraph is the one ONNX Runtime fuses
    )
    ref = run_torch(module, feeds)
    got = run_onnx(model_dir / MODEL_FILE, feeds, output)
    cos = _cosine_rows(got, ref)
    log.metric_line(onnx_cosine_mean=float(cos.mean()), onnx_cosine_min=float(cos.min()))
    _save_npz(model_dir / SAMPLE_FILE, feeds, texts)
    (model_dir / textprep.TOKENIZER_FILE).write_text(tokenizer_json, encoding="utf-8")
    _write_json(model_dir / textprep.SPEC_FILE, textprep.tokenizer_spec(max_length, inputs))
    _write_json(model_dir / LABELS_FILE, labels or [])
    dim = int(ref.shape[1])
    outputs = (
        [{"name": output, "datatype": "FP32", "shape": [-1, dim]}]
        if labels is None
        else [
            {"name": PROBABILITIES_NAME, "datatype": "FP32", "shape": [-1, dim]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ]
    )
    _write_json(
        model_dir / SCHEMA_FILE,
        {
            "task": hp.task,
            "text_column": hp.text,
            "labels": labels or [],
            "inputs": [TEXT_INPUT],
            "graph_inputs": inputs,
            "outputs": outputs,
            # For the optimizer's transformer fusions (maas.optimize.quantize).
            "transformer": {
                "model_type": "bert",
                "num_heads": config.num_attention_heads,
                "hidden_size": config.hidden_size,
            },
        },
    )
    metrics = {
        "task": hp.task,
        "recipe": hp.recipe,
        "architecture": list(config.architectures),
        "pretrained": kind,
        "hidden_size": config.hidden_size,
        "layers": config.num_hidden_layers,
        "max_length": max_length,
        "output_dim": dim,
        "sample_texts": len(texts),
        "sample_origin": origin,
        "onnx_cosine_mean": float(cos.mean()),
        "onnx_cosine_min": float(cos.min()),
        "exporter": info.exporter,
        "onnx_opset": info.opset,
        "onnx_ir_version": info.ir_version,
        "onnx_max_abs_diff": info.max_abs_diff,
        "torch_version": torch.__version__,
        "total_seconds": round(time.perf_counter() - t_start, 3),
        "hyperparameters": hp.as_dict(),
    }
    _copy_metrics(paths, metrics)
    log.info(f"done: imported {kind} in {metrics['total_seconds']:.1f}s; wrote {model_dir}")
    return metrics


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64 = a.reshape(len(a), -1).astype(np.float64)
    b64 = b.reshape(len(b), -1).astype(np.float64)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return np.asarray(np.sum(a64 * b64, axis=1) / np.where(den == 0, 1.0, den))


# --------------------------------------------------------------------------- classification


def run_text_classification(paths: Paths, hp: Hyperparameters) -> dict[str, Any]:
    t_start = time.perf_counter()
    from maas_training.data import load_text_dataset, split_indices
    from maas_training.textprep import load as load_textprep

    textprep = load_textprep()
    dataset = load_text_dataset(paths.train_channel, hp.text, hp.label)
    split = split_indices(dataset.targets, hp.validation_fraction, hp.test_fraction, hp.seed)
    texts = np.asarray(dataset.texts, dtype=object)
    y = dataset.targets
    log.info(
        f"split ({'stratified' if split.stratified else 'shuffled'}, seed {hp.seed}): "
        f"train {len(split.train)}, validation {len(split.validation)}, test {len(split.test)}"
    )

    import torch

    from maas_training.model import Probabilities
    from maas_training.trainer import (
        Checkpointer,
        bf16_ok,
        evaluate,
        init_distributed,
        pick_device,
        shutdown_distributed,
        train,
    )

    base_folder: Path | None = None
    tokenizer_json = ""
    if hp.recipe == "finetune":
        base_folder = find_model_folder(paths.base_channel, "base")
        tokenizer_json = (base_folder / "tokenizer.json").read_text(encoding="utf-8")
        encoder_spec = textprep.tokenizer_spec(hp.max_length, ["input_ids"])
        text_encoder = textprep.HFTokenizer(tokenizer_json, hp.max_length, ["input_ids"])
        input_name = "input_ids"
    else:
        text_encoder = textprep.HashedNgrams(buckets=hp.buckets)
        encoder_spec = text_encoder.spec()
        input_name = "ids"
    t0 = time.perf_counter()
    ids = text_encoder.encode(dataset.texts)[input_name]
    log.info(f"tokenised {len(ids)} texts in {time.perf_counter() - t0:.1f}s: width {ids.shape[1]}")

    ctx = init_distributed()
    try:
        torch.manual_seed(hp.seed)
        device = pick_device(ctx)
        use_bf16 = bf16_ok(device)
        log.info(
            f"device {device}{' (bf16 autocast)' if use_bf16 else ''}; torch {torch.__version__}"
        )
        from maas_training.main import _fingerprint

        fingerprint = _fingerprint(dataset.fingerprint(), hp, ctx.world_size)
        n_classes = len(dataset.class_names)

        def build() -> torch.nn.Module:
            torch.manual_seed(hp.seed)
            if hp.recipe == "finetune":
                from maas_training.bert import FinetuneClassifier, load_encoder

                assert base_folder is not None
                encoder, _ = load_encoder(base_folder)
                return FinetuneClassifier(encoder, n_classes, text_encoder.pad_id, hp.dropout)
            from maas_training.textmodels import NgramClassifier

            return NgramClassifier(hp.buckets, hp.embedding_dim, n_classes, hp.dropout)

        eval_batch = 64 if hp.recipe == "finetune" else 2048

        def fit(xs, ys, phase: str, epochs: int, refit: bool):
            model = build()
            ckpt = Checkpointer(
                paths.checkpoint_dir, fingerprint, ctx.is_main, name=f"checkpoint-{phase}.pt"
            )
            outcome = train(
                model,
                xs,
                ys,
                ids[split.validation],
                y[split.validation],
                epochs=epochs,
                batch_size=hp.batch_size,
                learning_rate=hp.learning_rate,
                weight_decay=hp.weight_decay,
                patience=epochs + 1 if refit else hp.patience,
                seed=hp.seed,
                device=device,
                use_bf16=use_bf16,
                ctx=ctx,
                checkpointer=ckpt,
                keep_last=refit,
                eval_batch=eval_batch,
            )
            return model, outcome

        model, result = fit(ids[split.train], y[split.train], hp.recipe, hp.epochs, refit=False)
        refit_epochs = 0
        if hp.recipe == "ngram":
            # As the tabular "auto" recipe: the epochs validation chose, on train + validation.
            both = np.concatenate([split.train, split.validation])
            refit_epochs = max(1, round(result.best_epoch * len(both) / len(split.train)))
            log.info(f"refit on train + validation ({len(both)} rows) for {refit_epochs} epochs")
            model, _ = fit(ids[both], y[both], f"{hp.recipe}-refit", refit_epochs, refit=True)
        if not ctx.is_main:
            _barrier(ctx)
            return {}

        x_te, y_te = ids[split.test], y[split.test]
        test_loss, test_accuracy = evaluate(
            model, torch.from_numpy(x_te), torch.from_numpy(y_te), eval_batch
        )
        log.metric_line(test_accuracy=test_accuracy, test_loss=test_loss)
        with torch.no_grad():
            pred = np.concatenate(
                [
                    model(torch.from_numpy(x_te[s : s + eval_batch])).argmax(dim=1).numpy()
                    for s in range(0, len(x_te), eval_batch)
                ]
            )

        from maas_training.plots import PLOT_FILE, write_training_plot
        from maas_training.textexport import export_text_model, metadata_for, run_onnx

        model_dir = paths.model_dir
        model_dir.mkdir(parents=True, exist_ok=True)
        check = {input_name: _trim(ids[split.validation][:64], text_encoder.pad_id)}
        info = export_text_model(
            Probabilities(model),
            model_dir / MODEL_FILE,
            feeds=check,
            output_name="probabilities",
            class_names=dataset.class_names,
            metadata=metadata_for(hp.task, hp.recipe, dataset.class_names),
        )
        probs = run_onnx(model_dir / MODEL_FILE, {input_name: x_te}, "probabilities")
        onnx_accuracy = float((probs.argmax(axis=1) == y_te).mean())
        test_texts = [str(t) for t in texts[split.test]]
        _save_npz(model_dir / SAMPLE_FILE, {input_name: x_te}, test_texts, y_te)
        if hp.recipe == "ngram":
            rng = np.random.default_rng(hp.seed)
            calib = np.sort(rng.permutation(split.train)[:CALIBRATION_ROWS])
            _save_npz(
                model_dir / CALIBRATION_FILE,
                {input_name: _trim(ids[calib], text_encoder.pad_id)},
                [str(t) for t in texts[calib]],
                y[calib],
            )
        _write_json(model_dir / textprep.SPEC_FILE, encoder_spec)
        if tokenizer_json:
            (model_dir / textprep.TOKENIZER_FILE).write_text(tokenizer_json, encoding="utf-8")
        _write_json(model_dir / LABELS_FILE, dataset.class_names)
        _write_json(
            model_dir / SCHEMA_FILE,
            {
                "task": hp.task,
                "label_column": dataset.label_column,
                "text_column": dataset.text_column,
                "labels": dataset.class_names,
                "inputs": [TEXT_INPUT],
                "graph_inputs": [input_name],
                "outputs": [
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, n_classes]},
                    {"name": "label", "datatype": "BYTES", "shape": [-1]},
                ],
            },
        )
        write_training_plot(
            model_dir / PLOT_FILE,
            result.history,
            y_te,
            pred,
            dataset.class_names,
            f"{hp.task} / {hp.recipe}: test accuracy {test_accuracy:.3f}",
        )
        metrics = {
            "task": hp.task,
            "recipe": hp.recipe,
            "test_accuracy": test_accuracy,
            "test_loss": test_loss,
            "onnx_test_accuracy": onnx_accuracy,
            "val_loss": result.best_val_loss,
            "val_accuracy": result.best_val_accuracy,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "refit_epochs": refit_epochs,
            "stopped_early": result.stopped_early,
            "resumed_from_epoch": result.resumed_from_epoch,
            "history": result.history,
            "text_encoder": encoder_spec,
            "n_train": len(split.train),
            "n_validation": len(split.validation),
            "n_test": len(split.test),
            "n_classes": n_classes,
            "stratified_split": split.stratified,
            "device": str(device),
            "bf16": use_bf16,
            "world_size": ctx.world_size,
            "total_seconds": round(time.perf_counter() - t_start, 3),
            "exporter": info.exporter,
            "onnx_opset": info.opset,
            "onnx_ir_version": info.ir_version,
            "onnx_max_abs_diff": info.max_abs_diff,
            "torch_version": torch.__version__,
            "data_files": dataset.files,
            "hyperparameters": hp.as_dict(),
        }
        _copy_metrics(paths, metrics)
        log.info(
            f"done: test_accuracy {test_accuracy:.4f} (onnx {onnx_accuracy:.4f}), "
            f"{metrics['total_seconds']:.1f}s; wrote {model_dir}"
        )
        _barrier(ctx)
        return metrics
    finally:
        shutdown_distributed(ctx)


def _trim(ids: np.ndarray, pad_id: int) -> np.ndarray:
    """Drop all-padding columns on the right (a smaller export/check batch)."""
    used = np.flatnonzero((ids != pad_id).any(axis=0))
    width = int(used[-1]) + 1 if len(used) else 1
    return np.ascontiguousarray(ids[:, :width])


def _barrier(ctx) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()
